//! What the server answered over the last minute, per variant: the served
//! mix and the SLA attainment the try-it page's live panel shows. Plain
//! state with the clock passed in; one-second buckets in a ring.

use std::time::{Duration, Instant};

/// The window the figures cover.
pub const WINDOW: Duration = Duration::from_secs(60);
const BUCKETS: usize = 60;

#[derive(Debug, Clone, Default)]
struct Bucket {
    /// Seconds since `start` this bucket holds; stale when older than the window.
    second: u64,
    /// Per variant: (answered, answered within the budget).
    served: Vec<(u64, u64)>,
    /// Requests refused or failed before or without an answer.
    refused: u64,
}

/// Counts over the last minute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Per variant: (answered, within the budget).
    pub served: Vec<(u64, u64)>,
    pub refused: u64,
}

impl Summary {
    pub fn answered(&self) -> u64 {
        self.served.iter().map(|s| s.0).sum()
    }
    pub fn met(&self) -> u64 {
        self.served.iter().map(|s| s.1).sum()
    }
    /// Every request that reached the service.
    pub fn requests(&self) -> u64 {
        self.answered() + self.refused
    }
}

#[derive(Debug)]
pub struct Recent {
    start: Instant,
    variants: usize,
    ring: Vec<Bucket>,
}

impl Recent {
    pub fn new(variants: usize, start: Instant) -> Recent {
        Recent {
            start,
            variants,
            ring: vec![Bucket::default(); BUCKETS],
        }
    }

    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let second = now.saturating_duration_since(self.start).as_secs();
        let n = self.variants;
        let b = &mut self.ring[(second % BUCKETS as u64) as usize];
        if b.second != second || b.served.len() != n {
            *b = Bucket {
                second,
                served: vec![(0, 0); n],
                refused: 0,
            };
        }
        b
    }

    /// An answer from variant `v`, within its budget or not.
    pub fn answered(&mut self, v: usize, met: bool, now: Instant) {
        if let Some(s) = self.bucket(now).served.get_mut(v) {
            s.0 += 1;
            s.1 += u64::from(met);
        }
    }

    /// A request refused or failed (shed, expired, bad input, ...).
    pub fn refused(&mut self, now: Instant) {
        self.bucket(now).refused += 1;
    }

    /// The last `WINDOW` (the current second and the 59 before it).
    pub fn summary(&self, now: Instant) -> Summary {
        let second = now.saturating_duration_since(self.start).as_secs();
        let mut out = Summary {
            served: vec![(0, 0); self.variants],
            refused: 0,
        };
        for b in &self.ring {
            let fresh = b.second <= second && second - b.second < BUCKETS as u64;
            if !fresh || b.served.len() != self.variants {
                continue;
            }
            for (o, s) in out.served.iter_mut().zip(&b.served) {
                o.0 += s.0;
                o.1 += s.1;
            }
            out.refused += b.refused;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_last_minute_only() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_millis(s * 1000 + 500);
        let mut r = Recent::new(2, t0);
        assert_eq!(r.summary(t0).requests(), 0);
        r.answered(0, true, at(0));
        r.answered(0, false, at(0));
        r.answered(1, true, at(10));
        r.refused(at(30));
        let s = r.summary(at(59));
        assert_eq!(s.served, vec![(2, 1), (1, 1)]);
        assert_eq!(
            (s.answered(), s.met(), s.refused, s.requests()),
            (3, 2, 1, 4)
        );
        // Second 0 leaves the window at second 60; second 10 at 70.
        assert_eq!(r.summary(at(60)).served, vec![(0, 0), (1, 1)]);
        assert_eq!(r.summary(at(75)).served, vec![(0, 0), (0, 0)]);
        assert_eq!(r.summary(at(75)).refused, 1);
        // A bucket reused a minute later starts from zero.
        r.answered(1, false, at(70));
        assert_eq!(r.summary(at(70)).served, vec![(0, 0), (1, 0)]);
        assert_eq!(r.summary(at(200)).requests(), 0);
    }
}
