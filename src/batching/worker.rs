//! Inference worker threads around the scheduling core. Workers are plain OS
//! threads (never tokio workers); the async side submits under a short lock
//! and awaits a oneshot reply.

use super::profile::LatencyModel;
use super::state::{Next, Payload, Policy, Queued, ShedReason, State, VariantMeta};
use crate::engine::Engine;
use crate::error::ServeError;
use crate::metrics::Metrics;
use crate::routing::{RouteReason, RouteRequest};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A preprocessed image waiting for inference.
pub struct Job {
    pub input: Vec<f32>,
    reply: oneshot::Sender<Result<Outcome, ServeError>>,
}

impl Payload for Job {
    fn is_cancelled(&self) -> bool {
        self.reply.is_closed()
    }
}

/// A successful inference.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub variant: usize,
    pub reason: RouteReason,
    pub logits: Vec<f32>,
    pub batch_size: usize,
    pub queue: Duration,
    pub inference: Duration,
}

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    pub workers: usize,
    pub policy: Policy,
}

struct Shared {
    state: Mutex<State<Job>>,
    wake: Condvar,
    stopping: AtomicBool,
    engine: Arc<dyn Engine>,
    metrics: Arc<Metrics>,
}

pub struct Batcher {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Batcher {
    pub fn start(
        engine: Arc<dyn Engine>,
        variants: Vec<VariantMeta>,
        profile: LatencyModel,
        cfg: BatcherConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Batcher> {
        let workers = cfg.workers.max(1);
        let state = State::new(variants, profile, cfg.policy, workers);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
            engine,
            metrics,
        });
        let threads = (0..workers)
            .map(|w| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("infer-{w}"))
                    .spawn(move || worker_loop(&s, w))
                    .expect("spawning an inference thread")
            })
            .collect();
        Arc::new(Batcher {
            shared,
            threads: Mutex::new(threads),
        })
    }

    /// Route and queue a preprocessed image; the receiver yields the answer.
    pub fn submit(
        &self,
        route: &RouteRequest,
        arrival: Instant,
        deadline: Instant,
        input: Vec<f32>,
    ) -> Result<(usize, oneshot::Receiver<Result<Outcome, ServeError>>), ServeError> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(ServeError::ShuttingDown);
        }
        let (tx, rx) = oneshot::channel();
        let job = Job { input, reply: tx };
        let mut st = self.shared.state.lock().expect("batcher lock");
        let admitted = st
            .submit(route, arrival, deadline, job, Instant::now())
            .map_err(|(e, _)| e)?;
        let m = &self.shared.metrics;
        m.queue_depth.set(st.queued() as i64);
        m.routing
            .with_label_values(&[
                &st.variants[admitted.variant].name,
                admitted.reason.as_str(),
            ])
            .inc();
        drop(st);
        self.shared.wake.notify_one();
        Ok((admitted.variant, rx))
    }

    /// Early admission, before the image is decoded: would the request be
    /// routed if it were queued once preprocessed (predicted from the
    /// preprocessing estimate)? Refusing here costs no decoding, which keeps
    /// an overloaded server's CPU for the requests it can answer.
    pub fn precheck(
        &self,
        route: &RouteRequest,
        arrival: Instant,
        deadline: Instant,
    ) -> Result<(), ServeError> {
        let st = self.shared.state.lock().expect("batcher lock");
        if st.queued() >= st.policy.queue_capacity {
            return Err(ServeError::QueueFull {
                capacity: st.policy.queue_capacity,
            });
        }
        let ready_at = Instant::now() + Duration::from_secs_f64(st.profile.preprocess.mean);
        st.route(route, arrival, deadline, ready_at).map(|_| ())
    }

    /// A snapshot of the latency model.
    pub fn profile(&self) -> LatencyModel {
        self.shared
            .state
            .lock()
            .expect("batcher lock")
            .profile
            .clone()
    }

    pub fn record_preprocess(&self, took: Duration) {
        self.shared
            .state
            .lock()
            .expect("batcher lock")
            .profile
            .preprocess
            .observe(took.as_secs_f64());
    }

    pub fn workers(&self) -> usize {
        self.shared.state.lock().expect("batcher lock").workers()
    }

    pub fn queued(&self) -> usize {
        self.shared.state.lock().expect("batcher lock").queued()
    }

    /// Stop the workers once the queues are empty; in-flight work finishes.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        for t in self.threads.lock().expect("threads lock").drain(..) {
            let _ = t.join();
        }
    }
}

fn answer_shed(
    m: &Metrics,
    variants: &[VariantMeta],
    shed: Vec<(usize, Queued<Job>, ShedReason)>,
    now: Instant,
) {
    for (v, q, why) in shed {
        m.shed
            .with_label_values(&[&variants[v].name, why.as_str()])
            .inc();
        let err = ServeError::DeadlineExpired {
            budget_ms: q
                .deadline
                .saturating_duration_since(q.arrival)
                .as_secs_f64()
                * 1e3,
            waited_ms: now.saturating_duration_since(q.arrival).as_secs_f64() * 1e3,
        };
        let _ = q.payload.reply.send(Err(err));
    }
}

fn worker_loop(s: &Shared, w: usize) {
    loop {
        let mut st = s.state.lock().expect("batcher lock");
        let batch = loop {
            let now = Instant::now();
            let shed = st.shed(now);
            if !shed.is_empty() {
                answer_shed(&s.metrics, &st.variants, shed, now);
            }
            if s.stopping.load(Ordering::SeqCst) && st.queued() == 0 {
                return;
            }
            match st.next(w, now) {
                Next::Run(b) => break b,
                Next::WaitUntil(t) => {
                    st = s
                        .wake
                        .wait_timeout(st, t.saturating_duration_since(now))
                        .expect("batcher lock")
                        .0;
                }
                Next::Idle => st = s.wake.wait(st).expect("batcher lock"),
            }
        };
        let name = st.variants[batch.variant].name.clone();
        s.metrics.queue_depth.set(st.queued() as i64);
        drop(st);
        run_batch(s, w, batch, &name);
    }
}

fn run_batch(s: &Shared, w: usize, batch: super::state::Batch<Job>, name: &str) {
    let (v, size) = (batch.variant, batch.items.len());
    let mut input = Vec::with_capacity(batch.items.iter().map(|q| q.payload.input.len()).sum());
    for q in &batch.items {
        input.extend_from_slice(&q.payload.input);
    }
    let started = Instant::now();
    let result = s.engine.infer(v, size, input);
    let took = started.elapsed();
    s.state
        .lock()
        .expect("batcher lock")
        .finish(w, v, size, took);
    let m = &s.metrics;
    m.batch_size.with_label_values(&[name]).observe(size as f64);
    m.inference
        .with_label_values(&[name])
        .observe(took.as_secs_f64());
    m.predicted_error
        .with_label_values(&[name])
        .observe(took.as_secs_f64() - batch.predicted.as_secs_f64());
    match result {
        Ok(logits) => {
            let per = logits.len() / size.max(1);
            for (i, q) in batch.items.into_iter().enumerate() {
                let queue = started.saturating_duration_since(q.enqueued);
                m.queue
                    .with_label_values(&[name])
                    .observe(queue.as_secs_f64());
                let out = Outcome {
                    variant: v,
                    reason: q.reason,
                    logits: logits[i * per..(i + 1) * per].to_vec(),
                    batch_size: size,
                    queue,
                    inference: took,
                };
                let _ = q.payload.reply.send(Ok(out));
            }
        }
        Err(e) => {
            tracing::error!(variant = name, batch = size, "inference failed: {e:#}");
            for q in batch.items {
                let _ = q
                    .payload
                    .reply
                    .send(Err(ServeError::Internal(format!("inference failed: {e}"))));
            }
        }
    }
}
