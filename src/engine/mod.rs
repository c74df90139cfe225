//! The inference engine behind a small trait, so the batcher and the
//! transports can be tested with a fake engine. All tract calls live in
//! `tract.rs`, `dequant.rs` (which edits the ONNX graph before tract
//! builds plans from it), `rescale.rs` (the `Resize` in front of a
//! resolution rung's graph), `inspect.rs` (what a model file says about
//! itself: names, shapes, parameter and MAC counts), `footprint.rs` (the
//! activation memory of a plan) and the project's own ops in `fast/`.

pub mod dequant;
pub mod fake;
pub mod fast;
pub mod footprint;
pub mod inspect;
pub mod profile;
pub mod rescale;
pub mod simd;
pub mod tract;

use anyhow::Result;

/// Runs a batch of preprocessed images through one variant.
pub trait Engine: Send + Sync + 'static {
    /// Number of variants, indexed 0..n in manifest order.
    fn num_variants(&self) -> usize;
    /// Batch sizes for which variant `v` has a plan, ascending; always holds 1.
    fn batch_sizes(&self, v: usize) -> Vec<usize>;
    /// Drop the plans of variant `v` for batch sizes not in `keep` (the
    /// warm-up found they do not pay), freeing their memory; the plan for 1
    /// stays. Returns how many plans were dropped.
    fn release_plans(&self, v: usize, keep: &[usize]) -> usize {
        let _ = (v, keep);
        0
    }
    /// Logits per image.
    fn num_classes(&self) -> usize;
    /// Elements of one preprocessed image of variant `v`.
    fn input_len(&self, v: usize) -> usize {
        let _ = v;
        3 * 224 * 224
    }
    /// `input` holds `batch` images back to back, each `input_len(v)` values in
    /// the variant's layout; returns `batch` rows of logits.
    fn infer(&self, v: usize, batch: usize, input: Vec<f32>) -> Result<Vec<f32>>;
}

/// Softmax of one row of logits, then the `k` best (index, probability).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|x| (x - max).exp()).sum();
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return vec![];
    }
    idx.select_nth_unstable_by(k - 1, |a, b| logits[*b].total_cmp(&logits[*a]));
    idx.truncate(k);
    idx.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
    idx.into_iter()
        .map(|i| (i, (logits[i] - max).exp() / sum))
        .collect()
}

/// Run batches of `batch` on variant `v` from `workers` threads at once and
/// return every timed run. With `discard_first` each thread's first run is
/// not timed; each thread keeps going while `more(runs it has timed)`, and
/// stops at a failed run. Used by warm-up and by `bench`.
pub fn timed_runs(
    engine: &dyn Engine,
    v: usize,
    batch: usize,
    workers: usize,
    discard_first: bool,
    more: &(dyn Fn(usize) -> bool + Sync),
) -> Vec<std::time::Duration> {
    let input = vec![0.1f32; engine.input_len(v) * batch];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                let input = &input;
                s.spawn(move || {
                    if discard_first && engine.infer(v, batch, input.clone()).is_err() {
                        return Vec::new();
                    }
                    let mut t = Vec::new();
                    while more(t.len()) {
                        let start = std::time::Instant::now();
                        if engine.infer(v, batch, input.clone()).is_err() {
                            break;
                        }
                        t.push(start.elapsed());
                    }
                    t
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_softmax() {
        let logits = [1.0, 3.0, 2.0, -1.0];
        let t = top_k(&logits, 2);
        assert_eq!(t.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2]);
        let total: f32 = top_k(&logits, 10).iter().map(|p| p.1).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(t[0].1 > t[1].1);
        assert!(top_k(&logits, 0).is_empty());
    }
}
