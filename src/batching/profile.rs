//! Latency model: per variant and batch size, a decayed mean and a decayed
//! mean absolute deviation of execution time, seeded at warm-up and updated
//! from every real execution. Predictions are mean + k × deviation.

use serde::Serialize;
use std::time::Duration;

/// Exponentially decayed mean and absolute deviation, in seconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stat {
    pub mean: f64,
    pub dev: f64,
    pub count: u64,
    /// The warm-up's median and deviation (`seed`), which `relax` moves
    /// the figures back toward.
    #[serde(skip)]
    pub warm: Option<(f64, f64)>,
}

impl Stat {
    const ALPHA: f64 = 0.1;

    pub fn observe(&mut self, secs: f64) {
        if self.count == 0 {
            self.mean = secs;
            self.dev = secs * 0.05;
        } else {
            let err = secs - self.mean;
            self.mean += Self::ALPHA * err;
            self.dev += Self::ALPHA * (err.abs() - self.dev);
        }
        self.count += 1;
    }
}

/// How late requests start compared with the start predicted when they were
/// admitted (seconds, signed: decayed mean and mean absolute deviation).
/// Near saturation the backlog model misses work it cannot see (images
/// still being decoded, executions slowed by decoding on the same cores);
/// this error, measured on every started request, is added back as a
/// margin when routing.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WaitError {
    pub mean: f64,
    pub dev: f64,
    pub count: u64,
}

impl WaitError {
    const ALPHA: f64 = 0.05;

    /// Forget a share of the measured lateness (see `LatencyModel::relax`).
    fn relax(&mut self, share: f64) {
        self.mean *= 1.0 - share;
        self.dev *= 1.0 - share;
    }

    pub fn observe(&mut self, late_secs: f64) {
        let err = late_secs - self.mean;
        self.mean += Self::ALPHA * err;
        self.dev += Self::ALPHA * (err.abs() - self.dev);
        self.count += 1;
    }

    /// What to add to a predicted wait: mean lateness plus one deviation,
    /// never negative.
    pub fn margin(&self) -> Duration {
        Duration::from_secs_f64((self.mean + self.dev).clamp(0.0, 10.0))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VariantProfile {
    /// (batch size, execution time of the whole batch).
    pub by_batch: Vec<(usize, Stat)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyModel {
    pub variants: Vec<VariantProfile>,
    pub preprocess: Stat,
    /// Lateness of real starts against predicted ones.
    pub wait_error: WaitError,
    /// Spread multiplier used in predictions.
    pub k: f64,
    /// A batch size "pays off" when its time per image is below this
    /// fraction of batch 1's. Not higher: full's batch-4 plan costs 0.92x
    /// per image on the AVX-512 machine, yet a server that batched it
    /// (payoff 0.95) answered less within budget at 130 req/s than one that
    /// did not (two runs each: 112 and 122 vs 127 and 124.5 req/s): a batch
    /// holds four answers until the last is done.
    pub payoff: f64,
    /// Paying batch sizes per variant, fixed from the warm-up (see
    /// `freeze_payoff`); `None`: computed from the live figures.
    pub paying: Option<Vec<Vec<usize>>>,
}

impl LatencyModel {
    pub fn new(sizes: &[Vec<usize>]) -> LatencyModel {
        let variants = sizes
            .iter()
            .map(|s| VariantProfile {
                by_batch: s.iter().map(|b| (*b, Stat::default())).collect(),
            })
            .collect();
        LatencyModel {
            variants,
            preprocess: Stat::default(),
            wait_error: WaitError::default(),
            k: 2.0,
            payoff: 0.9,
            paying: None,
        }
    }

    /// Decide, from the figures so far (the warm-up, where every plan ran
    /// under the same load), which batch sizes pay off, and keep that
    /// decision. Live executions still refine every prediction, but would
    /// skew the comparison: a batch size that rarely runs keeps its
    /// quiet-machine time while batch 1's grows under load, and would look
    /// cheaper than it is.
    pub fn freeze_payoff(&mut self) {
        let paying = (0..self.variants.len())
            .map(|v| self.live_paying_sizes(v))
            .collect();
        self.paying = Some(paying);
    }

    fn stat(&self, v: usize, batch: usize) -> Option<&Stat> {
        self.variants[v]
            .by_batch
            .iter()
            .find(|(b, _)| *b == batch)
            .map(|(_, s)| s)
    }

    /// Seed a batch size from warm-up runs: the median and the mean absolute
    /// deviation from it (a decayed mean would mostly remember the first
    /// run, and warm-up runs are few and noisy).
    pub fn seed(&mut self, v: usize, batch: usize, runs: &[Duration]) {
        if runs.is_empty() {
            return;
        }
        let mut xs: Vec<f64> = runs.iter().map(Duration::as_secs_f64).collect();
        xs.sort_by(f64::total_cmp);
        let median = xs[xs.len() / 2];
        let dev = xs.iter().map(|x| (x - median).abs()).sum::<f64>() / xs.len() as f64;
        if let Some((_, s)) = self.variants[v]
            .by_batch
            .iter_mut()
            .find(|(b, _)| *b == batch)
        {
            *s = Stat {
                mean: median,
                dev,
                count: xs.len() as u64,
                warm: Some((median, dev)),
            };
        }
    }

    pub fn observe(&mut self, v: usize, batch: usize, took: Duration) {
        if let Some((_, s)) = self.variants[v]
            .by_batch
            .iter_mut()
            .find(|(b, _)| *b == batch)
        {
            s.observe(took.as_secs_f64());
        }
    }

    /// Move every figure that has grown above its warm-up value a share of
    /// the way back, and forget a share of the measured lateness. Called
    /// when an idle server refuses a request: predictions only learn from
    /// executions, so after a slow spell a prediction above every budget
    /// would refuse everything for ever; relaxed, it lets a request through
    /// again, whose execution then re-measures the variant.
    pub fn relax(&mut self) {
        const SHARE: f64 = 0.1;
        for p in &mut self.variants {
            for (_, s) in &mut p.by_batch {
                if let Some((mean, dev)) = s.warm {
                    if s.mean > mean {
                        s.mean += SHARE * (mean - s.mean);
                        s.dev += SHARE * (dev - s.dev);
                    }
                }
            }
        }
        self.wait_error.relax(SHARE);
    }

    /// Mean execution time of a batch; batch 1's cost × batch when unmeasured.
    pub fn mean(&self, v: usize, batch: usize) -> Duration {
        match self.stat(v, batch) {
            Some(s) if s.count > 0 => Duration::from_secs_f64(s.mean),
            _ => self.stat(v, 1).map_or(Duration::ZERO, |s| {
                Duration::from_secs_f64(s.mean * batch as f64)
            }),
        }
    }

    /// Conservative prediction: mean + k × deviation.
    pub fn predict(&self, v: usize, batch: usize) -> Duration {
        match self.stat(v, batch) {
            Some(s) if s.count > 0 => Duration::from_secs_f64(s.mean + self.k * s.dev),
            _ => self.predict(v, 1).mul_f64(batch as f64),
        }
    }

    /// Batch sizes whose measured time per image beats batch 1 clearly.
    pub fn paying_sizes(&self, v: usize) -> Vec<usize> {
        match &self.paying {
            Some(p) => p.get(v).cloned().unwrap_or_else(|| vec![1]),
            None => self.live_paying_sizes(v),
        }
    }

    fn live_paying_sizes(&self, v: usize) -> Vec<usize> {
        let one = self.mean(v, 1).as_secs_f64();
        self.variants[v]
            .by_batch
            .iter()
            .filter(|(b, s)| *b == 1 || (s.count > 0 && s.mean / (*b as f64) < one * self.payoff))
            .map(|(b, _)| *b)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_margin_follows_lateness_and_is_never_negative() {
        let mut e = WaitError::default();
        assert_eq!(e.margin(), Duration::ZERO);
        for _ in 0..200 {
            e.observe(-0.002);
        }
        assert_eq!(e.margin(), Duration::ZERO, "early starts give no credit");
        for _ in 0..200 {
            e.observe(0.008);
        }
        let m = e.margin().as_secs_f64();
        assert!((0.007..0.010).contains(&m), "{m}");
    }

    #[test]
    fn decayed_mean_tracks_a_shift() {
        let mut s = Stat::default();
        for _ in 0..50 {
            s.observe(0.010);
        }
        assert!((s.mean - 0.010).abs() < 1e-9);
        for _ in 0..50 {
            s.observe(0.020);
        }
        assert!((s.mean - 0.020).abs() < 0.001, "{}", s.mean);
    }

    #[test]
    fn seeding_takes_the_median_not_the_first_run() {
        let ms = Duration::from_millis;
        let mut m = LatencyModel::new(&[vec![1]]);
        m.seed(0, 1, &[ms(30), ms(10), ms(11), ms(10), ms(12)]);
        assert_eq!(m.mean(0, 1), ms(11));
        assert!(m.predict(0, 1) > ms(11) && m.predict(0, 1) < ms(30));
    }

    #[test]
    fn the_payoff_decision_is_kept_from_the_warm_up() {
        let ms = Duration::from_millis;
        let mut m = LatencyModel::new(&[vec![1, 2]]);
        m.observe(0, 1, ms(9));
        m.observe(0, 2, ms(20));
        m.freeze_payoff();
        assert_eq!(m.paying_sizes(0), vec![1]);
        // Under load batch 1 slows down (decoding shares the cores) while
        // batch 2 never runs: its stale time must not start to look cheap.
        for _ in 0..100 {
            m.observe(0, 1, ms(14));
        }
        assert_eq!(m.paying_sizes(0), vec![1]);
        assert!(m.mean(0, 1) > ms(13), "predictions still follow the load");
    }

    #[test]
    fn only_sub_linear_batches_pay_off() {
        let mut m = LatencyModel::new(&[vec![1, 2, 4], vec![1, 2, 4]]);
        let ms = Duration::from_millis;
        // Variant 0: batches cost 1.6x per image (this CPU with tract).
        m.observe(0, 1, ms(30));
        m.observe(0, 2, ms(96));
        m.observe(0, 4, ms(192));
        // Variant 1: strongly sub-linear batches.
        m.observe(1, 1, ms(30));
        m.observe(1, 2, ms(36));
        m.observe(1, 4, ms(48));
        assert_eq!(m.paying_sizes(0), vec![1]);
        assert_eq!(m.paying_sizes(1), vec![1, 2, 4]);
        assert!(m.predict(0, 1) >= m.mean(0, 1));
        // No plan measured for 8: extrapolated linearly from batch 1.
        assert!((m.mean(0, 8).as_secs_f64() - 0.240).abs() < 1e-6);
    }
}
