//! Splitting one inference's kernels over the cores the other inferences
//! leave idle.
//!
//! Under load every core runs its own request and nothing is split. At low
//! load a request would run on one core while the others wait: then each
//! large op cuts the rows of its output into parts for the idle cores, and
//! the request's latency drops by up to the number of idle cores. Whether to
//! split is decided per op from the number of inferences running at that
//! moment (`Running`), so a request arriving mid-run takes its core back
//! within one op.
//!
//! Each inference worker runs its inferences on a rayon pool of its own
//! (`threads` threads, [`install`]); an op splits with `rayon::join` /
//! `rayon::scope`, so an idle thread of that pool steals the other part
//! while the caller waits actively (a helper woken from sleep for every op
//! cost more than the split saved). One pool per worker, not one shared:
//! a thread waiting in `join` steals whatever its pool holds, and in a
//! shared pool that was another worker's whole inference.
//!
//! Off (`threads = 1`) unless [`set_threads`] is called with more: `serve
//! --intra-op-threads N` and `bench --intra-op-threads N` do (default 1:
//! under open-loop load the split cost more CPU than it saved, see
//! `ServeArgs::intra_op_threads`).

use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Threads one inference may use when no other runs.
static THREADS: AtomicUsize = AtomicUsize::new(1);
/// Inferences running now.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The calling worker's pool, with its size.
    static POOL: RefCell<Option<(usize, rayon::ThreadPool)>> = const { RefCell::new(None) };
}

/// Multiply-accumulates (or comparable work) below which an op is not
/// split: handing rows to another thread costs a few microseconds.
pub const MIN_WORK: usize = 400_000;

/// Let one inference use up to `threads` threads while the others are
/// idle (1: never split).
pub fn set_threads(threads: usize) {
    THREADS.store(threads.max(1), Ordering::SeqCst);
}

/// Run one inference: on the calling worker's pool when splitting is on
/// (its ops can then hand parts to the pool's other threads), else right
/// here.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = threads();
    if threads <= 1 || rayon::current_thread_index().is_some() {
        return f();
    }
    POOL.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(n, _)| *n != threads) {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("slimserve-intra-op-{i}"))
                .build();
            match pool {
                Ok(p) => *slot = Some((threads, p)),
                // No threads to be had: run unsplit.
                Err(_) => return f(),
            }
        }
        match slot.as_ref() {
            Some((_, pool)) => pool.install(f),
            None => f(),
        }
    })
}

/// The threads one inference may use when alone.
pub fn threads() -> usize {
    THREADS.load(Ordering::Relaxed)
}

/// Marks an inference as running while alive.
pub struct Running(());

impl Running {
    pub fn start() -> Running {
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        Running(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Into how many parts an op of `work` may split now: one per core the
/// running inferences leave idle, plus its own.
pub fn parts(work: usize) -> usize {
    let threads = threads();
    if threads <= 1 || work < MIN_WORK {
        return 1;
    }
    let active = ACTIVE.load(Ordering::Relaxed).max(1);
    threads.saturating_sub(active - 1).clamp(1, threads)
}

/// `0..n` cut into `parts` contiguous ranges whose lengths are multiples
/// of `align` (but the last), none empty.
pub fn ranges(n: usize, parts: usize, align: usize) -> Vec<Range<usize>> {
    let align = align.max(1);
    let parts = parts.clamp(1, n.div_ceil(align).max(1));
    let per = n.div_ceil(parts).div_ceil(align) * align;
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    while start < n {
        let end = (start + per).min(n);
        out.push(start..end);
        start = end;
    }
    if out.is_empty() {
        out.push(0..0);
    }
    out
}

/// Run `f` on every item: in parallel on the pool when called from one of
/// its threads (the caller takes the first and helps with the rest while
/// it waits), else one after the other; returns when all are done.
pub fn run<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    if items.len() < 2 || rayon::current_thread_index().is_none() {
        items.into_iter().for_each(f);
        return;
    }
    let f = &f;
    let mut items = items.into_iter();
    let first = items.next();
    let rest: Vec<T> = items.collect();
    if rest.len() == 1 {
        let second = rest.into_iter().next();
        rayon::join(
            || first.into_iter().for_each(f),
            || second.into_iter().for_each(f),
        );
        return;
    }
    rayon::scope(|s| {
        for item in rest {
            s.spawn(move |_| f(item));
        }
        first.into_iter().for_each(f);
    });
}

/// Run `f` on every range of `rows` (which tile the rows of `data`, each
/// `stride` values long, in order) with that range's rows of `data`, as
/// [`run`] does: in parallel on the pool when called from one of its
/// threads.
pub fn for_rows<T: Send>(
    data: &mut [T],
    stride: usize,
    rows: Vec<Range<usize>>,
    f: impl Fn(Range<usize>, &mut [T]) + Sync,
) {
    let parts = split_rows(data, stride, &rows);
    run(rows.into_iter().zip(parts).collect(), |(r, part)| {
        f(r, part)
    });
}

/// `data` (rows of `stride` values) cut at the row ranges `rows` (which
/// tile `0..n` in order) into disjoint mutable slices.
fn split_rows<'a, T>(
    mut data: &'a mut [T],
    stride: usize,
    rows: &[Range<usize>],
) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let len = (r.len() * stride).min(data.len());
        let (head, tail) = std::mem::take(&mut data).split_at_mut(len);
        out.push(head);
        data = tail;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_tile_the_rows_aligned() {
        for n in [0, 1, 5, 12, 13, 49, 100, 12544] {
            for parts in 1..5 {
                for align in [1, 8, 12] {
                    let r = ranges(n, parts, align);
                    assert!(r.len() <= parts.max(1), "{n} {parts} {align}: {r:?}");
                    assert_eq!(r.first().unwrap().start, 0);
                    assert_eq!(r.last().unwrap().end, n);
                    for w in r.windows(2) {
                        assert_eq!(w[0].end, w[1].start);
                        assert_eq!(w[0].len() % align, 0);
                        assert!(!w[1].is_empty());
                    }
                }
            }
        }
    }

    #[test]
    fn every_item_runs_once_whatever_the_pool() {
        set_threads(2);
        let hits: Vec<AtomicUsize> = (0..7).map(|_| AtomicUsize::new(0)).collect();
        install(|| {
            run((0..7).collect(), |i: usize| {
                hits[i].fetch_add(1, Ordering::SeqCst);
            })
        });
        assert!(hits.iter().all(|h| h.load(Ordering::SeqCst) == 1));
        let mut data = vec![0u32; 30];
        install(|| {
            for_rows(&mut data, 3, ranges(10, 3, 2), |r, chunk| {
                for (i, v) in chunk.iter_mut().enumerate() {
                    *v = (r.start * 3 + i) as u32;
                }
            })
        });
        assert_eq!(data, (0..30).collect::<Vec<u32>>());
        set_threads(1);
        assert_eq!(parts_now(), 1);
    }

    fn parts_now() -> usize {
        parts(usize::MAX)
    }
}
