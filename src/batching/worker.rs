//! Inference worker threads around the scheduling core. Workers are plain OS
//! threads (never tokio workers); the async side submits under a short lock
//! and awaits a oneshot reply.
//!
//! Faults: an engine call that panics or returns an error answers its batch
//! `500 inference_failed` and counts in `slimserve_worker_faults_total`; the
//! worker thread is then replaced by a new one, which first runs a probe
//! batch of one on the variant that failed (retrying with a growing pause)
//! before it takes work again. While no worker takes work the batcher is
//! unhealthy: requests are refused with `503 inference_unavailable` and the
//! server reports not ready.

use super::inputs::Inputs;
use super::profile::LatencyModel;
use super::state::{Next, Payload, Policy, Queued, ShedReason, State, VariantMeta};
use crate::engine::Engine;
use crate::error::ServeError;
use crate::metrics::Metrics;
use crate::routing::{RouteReason, RouteRequest};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A preprocessed image waiting for inference.
pub struct Job {
    pub input: Inputs,
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
    /// Every worker thread started (replacements too), joined at shutdown.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Workers taking work (not re-probing after a fault).
    serving: AtomicUsize,
}

pub struct Batcher {
    shared: Arc<Shared>,
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
        metrics.workers_serving.set(workers as i64);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
            engine,
            metrics,
            threads: Mutex::new(Vec::new()),
            serving: AtomicUsize::new(workers),
        });
        for w in 0..workers {
            spawn_worker(&shared, w, None).expect("spawning an inference thread");
        }
        Arc::new(Batcher { shared })
    }

    /// Whether any worker takes work: false while every worker is being
    /// replaced after faults (readiness follows it).
    pub fn healthy(&self) -> bool {
        self.shared.serving.load(Ordering::SeqCst) > 0
    }

    /// Route and queue a preprocessed image; the receiver yields the answer.
    pub fn submit(
        &self,
        route: &RouteRequest,
        arrival: Instant,
        deadline: Instant,
        input: Inputs,
    ) -> Result<(usize, oneshot::Receiver<Result<Outcome, ServeError>>), ServeError> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(ServeError::ShuttingDown);
        }
        if !self.healthy() {
            return Err(ServeError::WorkersFailing);
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
        if !self.healthy() {
            return Err(ServeError::WorkersFailing);
        }
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
        // A worker replaced meanwhile adds its successor: join until none is left.
        loop {
            let Some(t) = self.shared.threads.lock().expect("threads lock").pop() else {
                break;
            };
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

/// What a failed batch leaves for the worker's replacement to probe.
struct Fault {
    variant: usize,
    /// Floats per image of the failed batch.
    image_len: usize,
}

fn spawn_worker(shared: &Arc<Shared>, w: usize, after: Option<Fault>) -> std::io::Result<()> {
    let s = shared.clone();
    let t = std::thread::Builder::new()
        .name(format!("infer-{w}"))
        .spawn(move || {
            if let Some(f) = after {
                if !probe(&s, &f) {
                    return;
                }
            }
            if let Some(f) = worker_loop(&s, w) {
                replace(&s, w, f);
            }
        })?;
    shared.threads.lock().expect("threads lock").push(t);
    Ok(())
}

/// The worker `w` faulted: it stops serving and a new thread takes its place.
fn replace(s: &Arc<Shared>, w: usize, f: Fault) {
    let serving = s.serving.fetch_sub(1, Ordering::SeqCst) - 1;
    s.metrics.workers_serving.set(serving as i64);
    if serving == 0 {
        tracing::error!("no inference worker is serving: refusing requests until a replacement's probe succeeds");
    }
    if let Err(e) = spawn_worker(s, w, Some(f)) {
        tracing::error!(
            worker = w,
            "could not start a replacement inference thread: {e}"
        );
    }
}

/// Before taking work, a replacement runs a batch of one on the variant that
/// failed, retrying with a growing pause until it succeeds (true) or the
/// batcher stops (false).
fn probe(s: &Shared, f: &Fault) -> bool {
    let mut pause = Duration::from_millis(100);
    loop {
        if s.stopping.load(Ordering::SeqCst) {
            return false;
        }
        let input = vec![0.0f32; f.image_len.max(1)];
        let ok = matches!(
            catch_unwind(AssertUnwindSafe(|| s.engine.infer(f.variant, 1, input))),
            Ok(Ok(_))
        );
        let outcome = if ok { "ok" } else { "failed" };
        s.metrics
            .worker_restarts
            .with_label_values(&[outcome])
            .inc();
        if ok {
            let serving = s.serving.fetch_add(1, Ordering::SeqCst) + 1;
            s.metrics.workers_serving.set(serving as i64);
            tracing::info!(serving, "replacement inference worker passed its probe");
            return true;
        }
        tracing::warn!(
            variant = f.variant,
            "replacement inference worker's probe failed; retrying in {pause:?}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Serve batches until shutdown (None) or a fault (the worker must be replaced).
fn worker_loop(s: &Shared, w: usize) -> Option<Fault> {
    loop {
        let mut st = s.state.lock().expect("batcher lock");
        let batch = loop {
            let now = Instant::now();
            let shed = st.shed(now);
            if !shed.is_empty() {
                answer_shed(&s.metrics, &st.variants, shed, now);
            }
            if s.stopping.load(Ordering::SeqCst) && st.queued() == 0 {
                return None;
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
        if let Err(f) = run_batch(s, w, batch, &name) {
            return Some(f);
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

fn run_batch(
    s: &Shared,
    w: usize,
    batch: super::state::Batch<Job>,
    name: &str,
) -> Result<(), Fault> {
    let (v, size) = (batch.variant, batch.items.len());
    let mut input = Vec::with_capacity(size * s.engine.input_len(v));
    for q in &batch.items {
        match q.payload.input.for_variant(v) {
            Some(t) => t.append_to(&mut input),
            None => {
                // Routing only picks variants the request was preprocessed
                // for; should that ever break, answer instead of panicking.
                tracing::error!(variant = name, "a request has no input for its variant");
                s.state.lock().expect("batcher lock").release(w);
                for q in batch.items {
                    let _ = q.payload.reply.send(Err(ServeError::Internal(
                        "no preprocessed input for the chosen variant".into(),
                    )));
                }
                return Ok(());
            }
        }
    }
    let image_len = input.len() / size.max(1);
    let started = Instant::now();
    let result = match catch_unwind(AssertUnwindSafe(|| s.engine.infer(v, size, input))) {
        Ok(Ok(logits)) => Ok(logits),
        Ok(Err(e)) => Err(("error", format!("{e:#}"))),
        Err(p) => Err((
            "panic",
            format!("the engine panicked: {}", panic_message(p.as_ref())),
        )),
    };
    let took = started.elapsed();
    let m = &s.metrics;
    let logits = match result {
        Ok(logits) => logits,
        Err((kind, msg)) => {
            s.state.lock().expect("batcher lock").failed(w);
            m.worker_faults.with_label_values(&[name, kind]).inc();
            tracing::error!(
                variant = name,
                batch = size,
                worker = w,
                kind,
                "inference failed: {msg}; replacing the worker"
            );
            for q in batch.items {
                let _ = q
                    .payload
                    .reply
                    .send(Err(ServeError::InferenceFailed(msg.clone())));
            }
            return Err(Fault {
                variant: v,
                image_len,
            });
        }
    };
    s.state
        .lock()
        .expect("batcher lock")
        .finish(w, v, size, took);
    m.batch_size.with_label_values(&[name]).observe(size as f64);
    m.inference
        .with_label_values(&[name])
        .observe(took.as_secs_f64());
    m.predicted_error
        .with_label_values(&[name])
        .observe(took.as_secs_f64() - batch.predicted.as_secs_f64());
    let per = logits.len() / size.max(1);
    for (i, q) in batch.items.into_iter().enumerate() {
        let queue = started.saturating_duration_since(q.enqueued);
        m.queue
            .with_label_values(&[name])
            .observe(queue.as_secs_f64());
        let out = Outcome {
            variant: v,
            reason: q.reason,
            logits: logits
                .get(i * per..(i + 1) * per)
                .unwrap_or_default()
                .to_vec(),
            batch_size: size,
            queue,
            inference: took,
        };
        let _ = q.payload.reply.send(Ok(out));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::{FakeEngine, FakeFault, FakeVariant};

    fn batcher(workers: usize) -> (Arc<FakeEngine>, Arc<Batcher>, Arc<Metrics>) {
        let engine = Arc::new(FakeEngine::new(vec![FakeVariant {
            sizes: vec![1],
            fixed: Duration::from_millis(2),
            per_image: Duration::ZERO,
            class: 3,
        }]));
        let mut profile = LatencyModel::new(&[vec![1]]);
        profile.seed(0, 1, &[Duration::from_millis(2); 4]);
        let metrics = Arc::new(Metrics::new());
        let b = Batcher::start(
            engine.clone(),
            vec![VariantMeta {
                name: "v".into(),
                top1: Some(0.7),
                off_front: false,
            }],
            profile,
            BatcherConfig {
                workers,
                policy: Policy::default(),
            },
            metrics.clone(),
        );
        (engine, b, metrics)
    }

    fn ask(b: &Batcher) -> Result<Outcome, ServeError> {
        let now = Instant::now();
        let route = RouteRequest {
            pinned: None,
            min_top1: None,
        };
        let (_, rx) = b.submit(
            &route,
            now,
            now + Duration::from_secs(5),
            vec![0.5; 12].into(),
        )?;
        rx.blocking_recv().expect("an answer")
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_panicking_or_failing_engine_answers_500_and_the_worker_is_replaced() {
        let (engine, b, m) = batcher(1);
        assert_eq!(ask(&b).unwrap().logits[3], 10.0);
        for (fault, kind) in [(FakeFault::Panic, "panic"), (FakeFault::Error, "error")] {
            engine.inject(fault, 1);
            let e = ask(&b).unwrap_err();
            assert!(matches!(e, ServeError::InferenceFailed(_)), "{e}");
            assert_eq!(e.http_status(), 500);
            assert_eq!(
                m.worker_faults.with_label_values(&["v", kind]).get(),
                1,
                "{kind}"
            );
            // The one worker's replacement probes, then serves the queue again.
            wait_for("the replacement serving", || b.healthy());
            assert_eq!(ask(&b).unwrap().logits[3], 10.0);
        }
        assert_eq!(m.worker_restarts.with_label_values(&["ok"]).get(), 2);
        assert_eq!(m.workers_serving.get(), 1);
        b.shutdown();
    }

    #[test]
    fn an_engine_that_keeps_failing_makes_the_batcher_unhealthy_until_it_heals() {
        let (engine, b, m) = batcher(2);
        engine.inject(FakeFault::Panic, usize::MAX);
        // Each fault takes one worker out; their probes keep failing.
        for _ in 0..2 {
            if let Err(e) = ask(&b) {
                assert!(
                    matches!(
                        e,
                        ServeError::InferenceFailed(_) | ServeError::WorkersFailing
                    ),
                    "{e}"
                );
            }
        }
        wait_for("no worker serving", || !b.healthy());
        assert_eq!(m.workers_serving.get(), 0);
        let e = ask(&b).unwrap_err();
        assert!(matches!(e, ServeError::WorkersFailing), "{e}");
        assert_eq!((e.http_status(), e.kind()), (503, "inference_unavailable"));
        wait_for("a failed probe", || {
            m.worker_restarts.with_label_values(&["failed"]).get() >= 2
        });
        engine.heal();
        wait_for("both replacements serving", || m.workers_serving.get() == 2);
        assert!(b.healthy());
        assert_eq!(ask(&b).unwrap().logits[3], 10.0);
        b.shutdown();
    }

    #[test]
    fn shutdown_ends_a_replacement_that_is_still_probing() {
        let (engine, b, _) = batcher(1);
        engine.inject(FakeFault::Error, usize::MAX);
        let _ = ask(&b);
        wait_for("no worker serving", || !b.healthy());
        let t0 = Instant::now();
        b.shutdown();
        assert!(t0.elapsed() < Duration::from_secs(6));
    }
}
