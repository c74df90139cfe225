//! Routing: among the eligible variants, the most accurate one predicted to
//! complete within the request's deadline.
//!
//! A variant of unknown accuracy (no `top1` in its manifest, e.g. a model
//! served with `--onnx`) is eligible only when pinned or when every eligible
//! variant's accuracy is unknown; its route then says `accuracy_unknown`.
//!
//! A variant marked off the front (`off_front` in its manifest: another is
//! both faster and at least as accurate, and it stays for another reason,
//! such as its file size) is never chosen for speed: it is eligible only
//! when pinned or when no variant on the front is.
//!
//! Under load (`ceiling`, when enabled), the candidates a request may take
//! start at the rung whose throughput matches the measured arrival rate.
//!
//! Policy when none can: the fastest eligible variant is tried last (it is
//! part of the candidate list), and if even it cannot meet the deadline the
//! request is rejected at once with the best predicted latency, rather than
//! answered late.

use serde::Serialize;
use std::time::Duration;

/// Why a request was served by the variant it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteReason {
    /// The client pinned this variant with `X-Variant`.
    Pinned,
    /// The most accurate eligible variant meets the budget.
    MostAccurate,
    /// A more accurate variant was predicted to miss the budget.
    Downgraded,
    /// Chosen because no variant of known accuracy is loaded; this one's
    /// accuracy is unknown.
    AccuracyUnknown,
}

impl RouteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteReason::Pinned => "pinned",
            RouteReason::MostAccurate => "most_accurate",
            RouteReason::Downgraded => "downgraded",
            RouteReason::AccuracyUnknown => "accuracy_unknown",
        }
    }
}

/// What a request asks of the router.
#[derive(Debug, Clone, Default)]
pub struct RouteRequest {
    /// Variant index pinned by the client.
    pub pinned: Option<usize>,
    /// Minimum top-1 accuracy (as in the manifest).
    pub min_top1: Option<f64>,
}

/// The eligible variants, most accurate first. Variants of unknown
/// accuracy (`None`) only when no variant of known accuracy is loaded and
/// the request sets no minimum accuracy, in manifest order. Variants with
/// `off_front[v]` only when no other is eligible.
pub fn candidates(top1: &[Option<f64>], off_front: &[bool], req: &RouteRequest) -> Vec<usize> {
    if let Some(p) = req.pinned {
        return vec![p];
    }
    let accurate = |v: &usize| top1[*v].is_some_and(|a| req.min_top1.is_none_or(|m| a >= m));
    let on_front = |v: &usize| !off_front.get(*v).copied().unwrap_or(false);
    let mut c: Vec<usize> = (0..top1.len()).filter(accurate).filter(on_front).collect();
    if c.is_empty() {
        c = (0..top1.len()).filter(accurate).collect();
    }
    c.sort_by(|a, b| top1[*b].unwrap_or(0.0).total_cmp(&top1[*a].unwrap_or(0.0)));
    if req.min_top1.is_none() && top1.iter().all(Option::is_none) {
        c = (0..top1.len()).collect();
    }
    c
}

/// How much faster (fraction of its latency) another variant must run to
/// push one off the front: measured latencies within this of each other
/// count as a tie.
pub const DOMINANCE_MARGIN: f64 = 0.1;

/// For each variant, the variant that beats it on this machine, if any: at
/// least as accurate (manifest top-1) and faster by more than
/// `DOMINANCE_MARGIN` (`latency`: measured at warm-up, batch 1, any unit);
/// of several, the fastest. Such a variant is off the front here and is
/// not chosen for speed (`candidates`): on a CPU with integer dot products
/// the int8 model beats full at full's accuracy, on one without it is the
/// slower of the two, so the front is measured, not written down.
pub fn dominated(top1: &[Option<f64>], latency: &[f64]) -> Vec<Option<usize>> {
    (0..top1.len())
        .map(|v| {
            let acc = top1[v]?;
            (0..top1.len())
                .filter(|&u| {
                    u != v
                        && top1[u].is_some_and(|a| a >= acc)
                        && latency[u] < latency[v] * (1.0 - DOMINANCE_MARGIN)
                })
                .min_by(|&a, &b| latency[a].total_cmp(&latency[b]))
        })
        .collect()
}

/// The candidates (most accurate first) that graded downgrading allows
/// after a predicted wait of `wait`: the `i`-th of `n` while `wait ≤ (i + 1)
/// / n × headroom`, the last (fastest) always. A zero `headroom` allows all.
pub fn graded(candidates: &[usize], wait: Duration, headroom: Duration) -> Vec<usize> {
    let n = candidates.len();
    if headroom.is_zero() || n < 2 {
        return candidates.to_vec();
    }
    candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| *i + 1 == n || wait <= headroom.mul_f64((*i + 1) as f64 / n as f64))
        .map(|(_, v)| *v)
        .collect()
}

/// Load-aware routing: the most accurate rungs a request may take so that
/// the workers keep up with the arrivals.
///
/// With requests arriving at `rate` per second on `workers` workers, and
/// `cost[i]` the worker time of one request on the `i`-th candidate (most
/// accurate first), the rung `index` is the most accurate one on which
/// every request could be served while the workers stay busy at most
/// `target` of the time. Where a share of the requests can afford the next
/// more accurate rung (`index - 1`) with the rest on `index`, and the mix
/// still fits, `share_above` is that share. Greedy per-request routing
/// fills the queue up to the deadline first and then downgrades everyone
/// at once; this picks, from the measured load, the rungs whose throughput
/// matches it, so the queue stays short.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ceiling {
    pub index: usize,
    pub share_above: f64,
}

impl Ceiling {
    /// No restriction: every candidate is allowed.
    pub const NONE: Ceiling = Ceiling {
        index: 0,
        share_above: 0.0,
    };
}

pub fn ceiling(cost: &[Duration], rate: f64, workers: usize, target: f64) -> Ceiling {
    let capacity = target * workers as f64; // worker-seconds per second
    let demand = |i: usize| rate * cost[i].as_secs_f64();
    let Some(index) = (0..cost.len()).find(|i| demand(*i) <= capacity) else {
        return Ceiling {
            index: cost.len().saturating_sub(1),
            share_above: 0.0,
        };
    };
    if index == 0 {
        return Ceiling::NONE;
    }
    // index - 1 does not fit, index does: above > capacity >= here
    let (here, above) = (demand(index), demand(index - 1));
    Ceiling {
        index,
        share_above: ((capacity - here) / (above - here)).clamp(0.0, 1.0),
    }
}

/// Pick the first candidate whose predicted latency fits `budget_left`.
/// `Err` carries the best (smallest) prediction and its variant.
pub fn choose(
    candidates: &[usize],
    pinned: bool,
    budget_left: Duration,
    predict: impl Fn(usize) -> Duration,
) -> Result<(usize, RouteReason, Duration), (usize, Duration)> {
    let mut best: Option<(usize, Duration)> = None;
    for (i, &v) in candidates.iter().enumerate() {
        let p = predict(v);
        if p <= budget_left {
            let reason = match (pinned, i) {
                (true, _) => RouteReason::Pinned,
                (false, 0) => RouteReason::MostAccurate,
                _ => RouteReason::Downgraded,
            };
            return Ok((v, reason, p));
        }
        if best.is_none_or(|(_, b)| p < b) {
            best = Some((v, p));
        }
    }
    Err(best.unwrap_or((0, Duration::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP1: [Option<f64>; 3] = [Some(0.75), Some(0.73), Some(0.71)];

    #[test]
    fn candidates_are_most_accurate_first_and_filtered() {
        assert_eq!(
            candidates(
                &[Some(0.71), Some(0.75), Some(0.73)],
                &[],
                &RouteRequest::default()
            ),
            vec![1, 2, 0]
        );
        let strict = RouteRequest {
            min_top1: Some(0.72),
            ..Default::default()
        };
        assert_eq!(candidates(&TOP1, &[], &strict), vec![0, 1]);
        let pinned = RouteRequest {
            pinned: Some(2),
            min_top1: Some(0.9),
        };
        assert_eq!(candidates(&TOP1, &[], &pinned), vec![2]);
    }

    #[test]
    fn unknown_accuracy_is_eligible_only_pinned_or_alone() {
        let any = RouteRequest::default();
        let mixed = [Some(0.75), None, Some(0.71)];
        assert_eq!(candidates(&mixed, &[], &any), vec![0, 2]);
        let pinned = RouteRequest {
            pinned: Some(1),
            ..Default::default()
        };
        assert_eq!(candidates(&mixed, &[], &pinned), vec![1]);
        assert_eq!(candidates(&[None], &[], &any), vec![0]);
        assert_eq!(candidates(&[None, None], &[], &any), vec![0, 1]);
        let strict = RouteRequest {
            min_top1: Some(0.5),
            ..Default::default()
        };
        assert!(
            candidates(&[None], &[], &strict).is_empty(),
            "a minimum cannot be checked"
        );
    }

    #[test]
    fn a_variant_is_dominated_by_a_faster_one_at_least_as_accurate() {
        // full, int8 (as accurate, twice as fast), pruned, a rung, unknown
        let top1 = [Some(0.89), Some(0.89), Some(0.865), Some(0.80), None];
        let fast_int8 = [10.0, 5.0, 7.5, 6.0, 1.0];
        assert_eq!(
            dominated(&top1, &fast_int8),
            vec![Some(1), None, Some(1), Some(1), None]
        );
        // Without integer dot products int8 is the slower one.
        let slow_int8 = [10.0, 18.0, 7.5, 5.5, 1.0];
        assert_eq!(
            dominated(&top1, &slow_int8),
            vec![None, Some(0), None, None, None]
        );
        // Within the margin it is a tie: neither is pushed off.
        let near = [10.0, 9.5, 7.5, 5.5, 1.0];
        assert_eq!(dominated(&top1, &near), vec![None, None, None, None, None]);
        // A less accurate variant never dominates, however fast.
        assert_eq!(
            dominated(&[Some(0.9), Some(0.5)], &[10.0, 1.0]),
            vec![None, None]
        );
    }

    #[test]
    fn off_front_variants_are_not_chosen_for_speed() {
        // 1 is off the front (say int8: as accurate as 0, slower, smaller file)
        let top1 = [Some(0.89), Some(0.89), Some(0.86), Some(0.80)];
        let off = [false, true, false, false];
        let any = RouteRequest::default();
        assert_eq!(candidates(&top1, &off, &any), vec![0, 2, 3]);
        let pinned = RouteRequest {
            pinned: Some(1),
            ..Default::default()
        };
        assert_eq!(candidates(&top1, &off, &pinned), vec![1]);
        // alone (or the only one accurate enough), it is eligible
        assert_eq!(candidates(&[Some(0.89)], &[true], &any), vec![0]);
        let strict = RouteRequest {
            min_top1: Some(0.885),
            ..Default::default()
        };
        assert_eq!(
            candidates(&top1, &[true, true, false, false], &strict),
            vec![0, 1]
        );
        assert_eq!(candidates(&top1, &off, &strict), vec![0]);
    }

    #[test]
    fn graded_downgrading_keeps_accurate_rungs_for_short_waits() {
        let ms = Duration::from_millis;
        let c = [3, 1, 0, 2]; // most accurate first
        assert_eq!(graded(&c, ms(500), Duration::ZERO), c, "off");
        // headroom 80 ms over 4 rungs: thresholds 20, 40, 60 ms, the last always
        assert_eq!(graded(&c, ms(0), ms(80)), c);
        assert_eq!(graded(&c, ms(20), ms(80)), c);
        assert_eq!(graded(&c, ms(21), ms(80)), [1, 0, 2]);
        assert_eq!(graded(&c, ms(45), ms(80)), [0, 2]);
        assert_eq!(graded(&c, ms(1000), ms(80)), [2]);
        assert_eq!(graded(&[5], ms(1000), ms(80)), [5], "alone");
    }

    #[test]
    fn the_ceiling_matches_the_rungs_throughput_to_the_arrival_rate() {
        let ms = Duration::from_millis;
        let cost = [ms(20), ms(10), ms(5)]; // most accurate first
                                            // 2 workers at 90 %: 1.8 worker-seconds per second
        assert_eq!(ceiling(&cost, 50.0, 2, 0.9), Ceiling::NONE, "1.0 s/s fits");
        assert_eq!(ceiling(&cost, 90.0, 2, 0.9), Ceiling::NONE, "exactly full");
        // 120/s: all on rung 0 needs 2.4, all on rung 1 needs 1.2; a share p
        // on rung 0 with 1.2 + p × 1.2 = 1.8 gives p = 0.5
        let c = ceiling(&cost, 120.0, 2, 0.9);
        assert_eq!(c.index, 1);
        assert!((c.share_above - 0.5).abs() < 1e-9, "{c:?}");
        // 300/s: rung 1 needs 3.0, rung 2 1.5: p = 0.3 / 1.5 = 0.2 on rung 1
        let c = ceiling(&cost, 300.0, 2, 0.9);
        assert_eq!(c.index, 2);
        assert!((c.share_above - 0.2).abs() < 1e-9, "{c:?}");
        // beyond even the fastest: the fastest for all
        let c = ceiling(&cost, 1000.0, 2, 0.9);
        assert_eq!((c.index, c.share_above), (2, 0.0));
        // no arrivals yet, or one candidate: no restriction
        assert_eq!(ceiling(&cost, 0.0, 2, 0.9), Ceiling::NONE);
        assert_eq!(ceiling(&[ms(20)], 1000.0, 2, 0.9).index, 0);
        // costs need not fall with accuracy: the first rung that fits
        let c = ceiling(&[ms(30), ms(10), ms(12)], 160.0, 2, 0.9);
        assert_eq!(c.index, 1);
        assert!((c.share_above - 0.0625).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn downgrades_until_the_budget_fits_then_rejects() {
        let ms = Duration::from_millis;
        let pred = |v: usize| ms([50, 30, 20][v]);
        assert_eq!(choose(&[0, 1, 2], false, ms(60), pred).unwrap().0, 0);
        let (v, why, _) = choose(&[0, 1, 2], false, ms(40), pred).unwrap();
        assert_eq!((v, why), (1, RouteReason::Downgraded));
        assert_eq!(
            choose(&[0, 1, 2], false, ms(10), pred).unwrap_err(),
            (2, ms(20))
        );
        assert_eq!(
            choose(&[0], true, ms(60), pred).unwrap().1,
            RouteReason::Pinned
        );
    }
}
