//! Routing: among the eligible variants, the most accurate one predicted to
//! complete within the request's deadline.
//!
//! A variant of unknown accuracy (no `top1` in its manifest, e.g. a model
//! served with `--onnx`) is eligible only when pinned or when every eligible
//! variant's accuracy is unknown; its route then says `accuracy_unknown`.
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
/// the request sets no minimum accuracy, in manifest order.
pub fn candidates(top1: &[Option<f64>], req: &RouteRequest) -> Vec<usize> {
    if let Some(p) = req.pinned {
        return vec![p];
    }
    let mut c: Vec<usize> = (0..top1.len())
        .filter(|v| top1[*v].is_some_and(|a| req.min_top1.is_none_or(|m| a >= m)))
        .collect();
    c.sort_by(|a, b| top1[*b].unwrap_or(0.0).total_cmp(&top1[*a].unwrap_or(0.0)));
    if req.min_top1.is_none() && top1.iter().all(Option::is_none) {
        c = (0..top1.len()).collect();
    }
    c
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
                &RouteRequest::default()
            ),
            vec![1, 2, 0]
        );
        let strict = RouteRequest {
            min_top1: Some(0.72),
            ..Default::default()
        };
        assert_eq!(candidates(&TOP1, &strict), vec![0, 1]);
        let pinned = RouteRequest {
            pinned: Some(2),
            min_top1: Some(0.9),
        };
        assert_eq!(candidates(&TOP1, &pinned), vec![2]);
    }

    #[test]
    fn unknown_accuracy_is_eligible_only_pinned_or_alone() {
        let any = RouteRequest::default();
        let mixed = [Some(0.75), None, Some(0.71)];
        assert_eq!(candidates(&mixed, &any), vec![0, 2]);
        let pinned = RouteRequest {
            pinned: Some(1),
            ..Default::default()
        };
        assert_eq!(candidates(&mixed, &pinned), vec![1]);
        assert_eq!(candidates(&[None], &any), vec![0]);
        assert_eq!(candidates(&[None, None], &any), vec![0, 1]);
        let strict = RouteRequest {
            min_top1: Some(0.5),
            ..Default::default()
        };
        assert!(
            candidates(&[None], &strict).is_empty(),
            "a minimum cannot be checked"
        );
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
