//! The batching and routing core: plain state fed by events, with the clock
//! passed in, so every decision can be unit-tested with a fake clock.
//!
//! - `submit` routes a request (most accurate variant predicted to meet its
//!   deadline, given the work already queued ahead of it) and queues it;
//! - `next` is called by an idle worker: it sheds requests that can no longer
//!   make their deadline or whose client went away, then picks the queue whose
//!   head has the earliest deadline (EDF across variants: fair, no
//!   starvation) and forms a batch, waiting for more requests only when a
//!   larger batch pays off in the latency profile and the oldest deadline
//!   still allows it;
//! - `finish` feeds the measured execution time back into the profile.

use super::profile::LatencyModel;
use crate::error::ServeError;
use crate::routing::{self, RouteReason, RouteRequest};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the core needs to know about a queued payload.
pub trait Payload {
    /// The client is gone: drop the request before inference.
    fn is_cancelled(&self) -> bool {
        false
    }
}

#[derive(Debug)]
pub struct Queued<T> {
    pub arrival: Instant,
    pub deadline: Instant,
    pub enqueued: Instant,
    /// When the backlog model predicted, at admission, that it would start.
    pub predicted_start: Instant,
    pub reason: RouteReason,
    pub payload: T,
}

#[derive(Debug, Clone)]
pub struct VariantMeta {
    pub name: String,
    /// `None`: unknown accuracy (see `routing::candidates`).
    pub top1: Option<f64>,
    /// Off the accuracy/latency front (by the manifest, or beaten on this
    /// machine: `routing::dominated`): not chosen for speed.
    pub off_front: bool,
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// Requests queued at most, over all variants.
    pub queue_capacity: usize,
    /// Longest a request waits for its batch to fill.
    pub max_batch_wait: Duration,
    /// Whether batches larger than 1 may be formed at all.
    pub batching: bool,
    /// Fraction of each budget kept in reserve when routing, for the time
    /// the answer takes to reach the client and for prediction error.
    pub slack: f64,
    /// Graded downgrading (0: off). With `n` eligible variants, the one
    /// ranked `i`-th by accuracy (0 = most accurate) is only chosen while
    /// the predicted wait is at most `(i + 1) / n × headroom × budget`; the
    /// fastest is chosen whenever it meets the deadline: the router steps
    /// down before the deadline forces it. Measured under overload (README,
    /// "Routing"): more requests within budget, at a lower mean accuracy,
    /// hence off by default.
    pub headroom: f64,
    /// Load-aware routing (0: off): the busiest the workers may be, as a
    /// fraction of their time, when the router picks the rungs whose
    /// throughput matches the measured arrival rate (`routing::ceiling`).
    /// A request then takes the most accurate of those rungs (or a faster
    /// one) that meets its deadline.
    pub utilization: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            queue_capacity: 256,
            max_batch_wait: Duration::from_millis(10),
            batching: true,
            slack: 0.0,
            headroom: 0.0,
            utilization: 0.0,
        }
    }
}

/// Time constant of the arrival-rate estimate.
const RATE_TAU: Duration = Duration::from_secs(1);

/// Routed arrivals per second: a count decayed exponentially with
/// `RATE_TAU`.
#[derive(Debug, Clone, Default)]
struct ArrivalRate {
    mass: f64,
    at: Option<Instant>,
}

impl ArrivalRate {
    fn mass_at(&self, now: Instant) -> f64 {
        self.at.map_or(0.0, |t| {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            self.mass * (-dt / RATE_TAU.as_secs_f64()).exp()
        })
    }

    fn per_second(&self, now: Instant) -> f64 {
        self.mass_at(now) / RATE_TAU.as_secs_f64()
    }

    fn arrive(&mut self, now: Instant) {
        self.mass = self.mass_at(now) + 1.0;
        self.at = Some(self.at.map_or(now, |t| t.max(now)));
    }
}

#[derive(Debug)]
pub struct Batch<T> {
    pub variant: usize,
    pub items: Vec<Queued<T>>,
    pub predicted: Duration,
}

#[derive(Debug)]
pub enum Next<T> {
    Run(Batch<T>),
    /// Nothing to run before this instant (a batch is filling).
    WaitUntil(Instant),
    Idle,
}

/// Why a queued request was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// Its deadline passed, or will before the fastest execution could end.
    Expired,
    /// Its client disconnected.
    Cancelled,
}

impl ShedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::Expired => "expired",
            ShedReason::Cancelled => "client_gone",
        }
    }
}

#[derive(Debug)]
pub struct Admitted {
    pub variant: usize,
    pub reason: RouteReason,
    pub predicted_latency: Duration,
    /// Predicted start of its execution.
    pub predicted_start: Instant,
}

pub struct State<T> {
    pub variants: Vec<VariantMeta>,
    pub profile: LatencyModel,
    pub policy: Policy,
    queues: Vec<VecDeque<Queued<T>>>,
    /// Predicted end of the batch each worker runs; None when idle.
    busy_until: Vec<Option<Instant>>,
    queued: usize,
    arrivals: ArrivalRate,
    /// Error diffusion of the ceiling's share: which requests may take the
    /// rung above it.
    dither: f64,
}

impl<T: Payload> State<T> {
    pub fn new(
        variants: Vec<VariantMeta>,
        profile: LatencyModel,
        policy: Policy,
        workers: usize,
    ) -> Self {
        let queues = variants.iter().map(|_| VecDeque::new()).collect();
        State {
            variants,
            profile,
            policy,
            queues,
            busy_until: vec![None; workers.max(1)],
            queued: 0,
            arrivals: ArrivalRate::default(),
            dither: 0.0,
        }
    }

    /// Routed (not pinned) arrivals per second, as measured.
    pub fn arrival_rate(&self, now: Instant) -> f64 {
        self.arrivals.per_second(now)
    }

    /// The batch sizes `v` may run: those that pay, or 1 with batching off.
    fn sizes(&self, v: usize) -> Vec<usize> {
        if self.policy.batching {
            self.profile.paying_sizes(v)
        } else {
            vec![1]
        }
    }

    /// Worker time of one request on `v`: the least per image among the
    /// batch sizes that pay.
    fn cost(&self, v: usize) -> Duration {
        let sizes = self.sizes(v);
        sizes
            .iter()
            .map(|b| self.profile.mean(v, *b).div_f64((*b).max(1) as f64))
            .min()
            .unwrap_or_else(|| self.profile.mean(v, 1))
    }

    /// The load-aware ceiling for the candidates `cands` at `now`.
    pub fn ceiling(&self, cands: &[usize], now: Instant) -> routing::Ceiling {
        if self.policy.utilization <= 0.0 || cands.len() < 2 {
            return routing::Ceiling::NONE;
        }
        let cost: Vec<Duration> = cands.iter().map(|v| self.cost(*v)).collect();
        routing::ceiling(
            &cost,
            self.arrivals.per_second(now),
            self.workers(),
            self.policy.utilization.min(1.0),
        )
    }

    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn queued_for(&self, v: usize) -> usize {
        self.queues[v].len()
    }

    pub fn workers(&self) -> usize {
        self.busy_until.len()
    }

    /// When a request with `deadline` could start: list-schedule the running
    /// batches and the queued requests that EDF would serve before it.
    fn predicted_start(&self, deadline: Instant, now: Instant) -> Instant {
        let mut free: Vec<Instant> = self
            .busy_until
            .iter()
            .map(|b| b.unwrap_or(now).max(now))
            .collect();
        let mut ahead: Vec<(Instant, usize)> = self
            .queues
            .iter()
            .enumerate()
            .flat_map(|(v, q)| {
                q.iter()
                    .filter(|r| r.deadline <= deadline)
                    .map(move |r| (r.deadline, v))
            })
            .collect();
        ahead.sort();
        for (_, v) in ahead {
            let w = (0..free.len()).min_by_key(|i| free[*i]).unwrap_or(0);
            free[w] += self.profile.mean(v, 1);
        }
        free.into_iter().min().unwrap_or(now)
    }

    /// The variant a request would be routed to if it were queued at `now`:
    /// the most accurate eligible one whose predicted completion (backlog
    /// ahead of it, plus the measured lateness of starts, plus its own
    /// execution) fits the deadline with the policy's slack to spare.
    pub fn route(
        &self,
        req: &RouteRequest,
        arrival: Instant,
        deadline: Instant,
        now: Instant,
    ) -> Result<Admitted, ServeError> {
        self.route_from(req, self.candidates(req), arrival, deadline, now, 0)
    }

    /// The candidates of `req`, most accurate first.
    fn candidates(&self, req: &RouteRequest) -> Vec<usize> {
        let top1: Vec<Option<f64>> = self.variants.iter().map(|v| v.top1).collect();
        let off: Vec<bool> = self.variants.iter().map(|v| v.off_front).collect();
        routing::candidates(&top1, &off, req)
    }

    /// `route` among `all` (the candidates of `req`), allowing only those
    /// from the `from`-th (most accurate first; the fastest always), as the
    /// load-aware ceiling says.
    fn route_from(
        &self,
        req: &RouteRequest,
        all: Vec<usize>,
        arrival: Instant,
        deadline: Instant,
        now: Instant,
        from: usize,
    ) -> Result<Admitted, ServeError> {
        let top1: Vec<Option<f64>> = self.variants.iter().map(|v| v.top1).collect();
        if all.is_empty() {
            let best = top1.iter().flatten().copied().fold(0.0, f64::max);
            let min = req.min_top1.unwrap_or(0.0);
            return Err(ServeError::NoVariantAccurateEnough { min, best });
        }
        let cands = all[from.min(all.len() - 1)..].to_vec();
        let start = self.predicted_start(deadline, now);
        let wait = start.saturating_duration_since(now) + self.profile.wait_error.margin();
        let budget = deadline.saturating_duration_since(arrival);
        let left = deadline
            .saturating_duration_since(now)
            .saturating_sub(budget.mul_f64(self.policy.slack));
        let pinned = req.pinned.is_some();
        let predict = |v: usize| wait + self.profile.predict(v, 1);
        let graded = routing::graded(&cands, wait, budget.mul_f64(self.policy.headroom.max(0.0)));
        // Graded downgrading never refuses what the deadline alone admits.
        let chosen = match routing::choose(&graded, pinned, left, predict) {
            Ok(c) => Ok(c),
            Err(_) => routing::choose(&cands, pinned, left, predict),
        };
        match chosen {
            Ok((variant, _, predicted)) => Ok(Admitted {
                variant,
                reason: match () {
                    _ if pinned => RouteReason::Pinned,
                    _ if variant != all[0] => RouteReason::Downgraded,
                    _ if top1[variant].is_none() => RouteReason::AccuracyUnknown,
                    _ => RouteReason::MostAccurate,
                },
                predicted_latency: now.saturating_duration_since(arrival) + predicted,
                predicted_start: start,
            }),
            Err((v, best)) => Err(ServeError::BudgetUnmeetable {
                budget_ms: budget.as_secs_f64() * 1e3,
                best_ms: (now.saturating_duration_since(arrival) + best).as_secs_f64() * 1e3,
                variant: self.variants[v].name.clone(),
            }),
        }
    }

    /// Route and queue a request. On rejection the payload comes back with
    /// the error to answer.
    #[allow(clippy::result_large_err)]
    pub fn submit(
        &mut self,
        req: &RouteRequest,
        arrival: Instant,
        deadline: Instant,
        payload: T,
        now: Instant,
    ) -> Result<Admitted, (ServeError, T)> {
        if self.queued >= self.policy.queue_capacity {
            return Err((
                ServeError::QueueFull {
                    capacity: self.policy.queue_capacity,
                },
                payload,
            ));
        }
        let mut from = 0;
        let cands = self.candidates(req);
        if req.pinned.is_none() {
            self.arrivals.arrive(now);
            let c = self.ceiling(&cands, now);
            self.dither += c.share_above;
            from = if self.dither >= 1.0 && c.index > 0 {
                self.dither -= 1.0;
                c.index - 1
            } else {
                c.index
            };
        }
        match self.route_from(req, cands, arrival, deadline, now, from) {
            Ok(a) => {
                let q = Queued {
                    arrival,
                    deadline,
                    enqueued: now,
                    predicted_start: a.predicted_start,
                    reason: a.reason,
                    payload,
                };
                self.queues[a.variant].push_back(q);
                self.queued += 1;
                Ok(a)
            }
            Err(e) => {
                let idle = self.queued == 0 && self.predicted_start(deadline, now) <= now;
                if idle && matches!(e, ServeError::BudgetUnmeetable { .. }) {
                    self.profile.relax();
                }
                Err((e, payload))
            }
        }
    }

    /// Remove requests that cannot be served in time or whose client left.
    pub fn shed(&mut self, now: Instant) -> Vec<(usize, Queued<T>, ShedReason)> {
        let mut out = Vec::new();
        for v in 0..self.queues.len() {
            let fastest = self.profile.mean(v, 1);
            let q = &mut self.queues[v];
            let mut i = 0;
            while i < q.len() {
                let r = &q[i];
                let why = if r.payload.is_cancelled() {
                    Some(ShedReason::Cancelled)
                } else if now + fastest > r.deadline {
                    Some(ShedReason::Expired)
                } else {
                    None
                };
                match why {
                    Some(why) => out.push((v, q.remove(i).expect("index in range"), why)),
                    None => i += 1,
                }
            }
        }
        self.queued -= out.len();
        out
    }

    /// Called by idle worker `w`. Call `shed` first.
    pub fn next(&mut self, w: usize, now: Instant) -> Next<T> {
        let mut order: Vec<usize> = (0..self.queues.len())
            .filter(|v| !self.queues[*v].is_empty())
            .collect();
        order.sort_by_key(|v| self.queues[*v][0].deadline);
        let mut wait: Option<Instant> = None;
        for v in order {
            match self.batch_size(v, now) {
                Ok(size) => {
                    let items: Vec<Queued<T>> = self.queues[v].drain(..size).collect();
                    self.queued -= items.len();
                    for it in &items {
                        let late = now
                            .saturating_duration_since(it.predicted_start)
                            .as_secs_f64()
                            - it.predicted_start
                                .saturating_duration_since(now)
                                .as_secs_f64();
                        self.profile.wait_error.observe(late);
                    }
                    let predicted = self.profile.predict(v, size);
                    self.busy_until[w] = Some(now + predicted);
                    return Next::Run(Batch {
                        variant: v,
                        items,
                        predicted,
                    });
                }
                Err(until) => wait = Some(wait.map_or(until, |w| w.min(until))),
            }
        }
        wait.map_or(Next::Idle, Next::WaitUntil)
    }

    /// The batch to take now from queue `v`, or the instant until which it
    /// is worth waiting for a larger batch.
    fn batch_size(&self, v: usize, now: Instant) -> Result<usize, Instant> {
        let n = self.queues[v].len();
        let sizes = self.sizes(v);
        let largest = *sizes.last().unwrap_or(&1);
        let head = &self.queues[v][0];
        // Another worker idle: the next request has a worker of its own, so
        // waiting to batch would only add latency (batches then form from
        // the backlog, once every worker is busy).
        let others_idle = self.busy_until.iter().filter(|b| b.is_none()).count() > 1;
        if n < largest && !others_idle {
            // A larger batch pays off: wait for it while the oldest request
            // can still afford the larger batch, and no longer than max wait.
            let latest = head
                .deadline
                .checked_sub(self.profile.predict(v, largest))
                .unwrap_or(now);
            let until = latest.min(head.enqueued + self.policy.max_batch_wait);
            if until > now {
                return Err(until);
            }
        }
        // Largest paying size available that still meets the head's deadline.
        Ok(sizes
            .iter()
            .rev()
            .copied()
            .find(|b| *b <= n && (*b == 1 || now + self.profile.predict(v, *b) <= head.deadline))
            .unwrap_or(1))
    }

    /// Worker `w` is idle again without having run its batch.
    pub fn release(&mut self, w: usize) {
        self.busy_until[w] = None;
    }

    /// Worker `w` finished a batch of `size` on variant `v` in `took`.
    pub fn finish(&mut self, w: usize, v: usize, size: usize, took: Duration) {
        self.profile.observe(v, size, took);
        self.busy_until[w] = None;
    }

    /// Worker `w`'s batch failed (engine error or panic): the worker is free
    /// again, and the failed run says nothing about latency.
    pub fn failed(&mut self, w: usize) {
        self.busy_until[w] = None;
    }

    /// Drain every queue (shutdown).
    pub fn drain(&mut self) -> Vec<Queued<T>> {
        self.queued = 0;
        self.queues.iter_mut().flat_map(|q| q.drain(..)).collect()
    }
}

#[cfg(test)]
mod tests;
