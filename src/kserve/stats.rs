//! Per-model cumulative statistics (Triton's statistics extension), which
//! `perf_analyzer` reads before and after each measurement to show the
//! server-side view. Counted for requests through the protocol's models.

use crate::batching::Outcome;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A count and a total duration in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub ns: u64,
}

impl Tally {
    fn add(&mut self, n: u64, d: Duration) {
        self.count += n;
        self.ns += u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// Milliseconds since the epoch of the last successful request.
    pub last_inference: u64,
    /// Images answered.
    pub inference_count: u64,
    /// Model executions those images took part in (a batch of b counts 1/b
    /// per image, rounded per request).
    pub execution_count: u64,
    /// Requests answered, and their end-to-end time.
    pub success: Tally,
    /// Requests refused or failed, and their time until then.
    pub fail: Tally,
    /// Per image: time queued for a worker.
    pub queue: Tally,
    /// Per image: decoding and preprocessing (zero time for FP32 models).
    pub compute_input: Tally,
    /// Per image: the model execution.
    pub compute_infer: Tally,
    /// Per image: shaping the output (not timed apart from the response:
    /// counted with zero time, as clients want the three compute counts
    /// equal).
    pub compute_output: Tally,
    /// Per batch size: executions and their time.
    pub batches: BTreeMap<usize, Tally>,
}

#[derive(Debug, Default)]
pub struct Stats {
    models: Mutex<BTreeMap<String, ModelStats>>,
}

impl Stats {
    /// `ok`: the outcomes and the summed preprocessing time of an answered
    /// request; `None` for a failed one.
    pub fn record(&self, model: &str, arrival: Instant, ok: Option<(&[Outcome], Duration)>) {
        let took = arrival.elapsed();
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        let s = models.entry(model.to_string()).or_default();
        let Some((outcomes, preprocess)) = ok else {
            s.fail.add(1, took);
            return;
        };
        let n = outcomes.len() as u64;
        s.success.add(1, took);
        s.inference_count += n;
        let mut executions = 0.0;
        for o in outcomes {
            s.queue.add(1, o.queue);
            s.compute_infer.add(1, o.inference);
            let b = o.batch_size.max(1);
            executions += 1.0 / b as f64;
            s.batches.entry(b).or_default().add(1, o.inference);
        }
        s.execution_count += (executions.round() as u64).max(1);
        s.compute_input.add(n, preprocess);
        s.compute_output.add(n, Duration::ZERO);
        s.last_inference = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
    }

    /// Statistics of `names` (models never used report zeros).
    pub fn snapshot(&self, names: &[String]) -> Vec<(String, ModelStats)> {
        let models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        names
            .iter()
            .map(|n| (n.clone(), models.get(n).cloned().unwrap_or_default()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::RouteReason;

    fn outcome(batch: usize, ms: u64) -> Outcome {
        Outcome {
            variant: 0,
            reason: RouteReason::Pinned,
            logits: vec![],
            batch_size: batch,
            queue: Duration::from_millis(1),
            inference: Duration::from_millis(ms),
        }
    }

    #[test]
    fn counts_images_executions_and_failures() {
        let s = Stats::default();
        let t = Instant::now();
        s.record(
            "m",
            t,
            Some((&[outcome(1, 10), outcome(1, 12)], Duration::ZERO)),
        );
        s.record(
            "m",
            t,
            Some((&[outcome(2, 20), outcome(2, 20)], Duration::from_millis(4))),
        );
        s.record("m", t, None);
        let got = s.snapshot(&["m".into(), "unused".into()]);
        let m = &got[0].1;
        assert_eq!(m.inference_count, 4);
        assert_eq!(m.execution_count, 3);
        assert_eq!((m.success.count, m.fail.count), (2, 1));
        assert_eq!(
            m.compute_infer,
            Tally {
                count: 4,
                ns: 62_000_000
            }
        );
        assert_eq!(
            m.compute_input,
            Tally {
                count: 4,
                ns: 4_000_000
            }
        );
        assert_eq!(m.compute_output.count, m.compute_infer.count);
        assert_eq!(m.batches[&2].count, 2);
        assert!(m.last_inference > 0);
        assert_eq!(got[1].1, ModelStats::default());
    }
}
