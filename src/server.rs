//! `slimserve serve`: load and warm the variants, start the batcher, serve
//! HTTP and gRPC, drain both on SIGTERM/SIGINT within a timeout.

use crate::batching::profile::LatencyModel;
use crate::batching::state::{Policy, VariantMeta};
use crate::batching::{Batcher, BatcherConfig};
use crate::config::{default_workers, ServeArgs};
use crate::engine::tract::TractEngine;
use crate::engine::{timed_runs, Engine};
use crate::http::{self, conn, AppState};
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::preprocess::DecodeLimits;
use crate::service::{Service, ServiceConfig};
use anyhow::{Context, Result};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Run every plan `runs` times on `workers` threads at once (the load the
/// server will put on them), after one untimed run each, to seed the model.
/// A variant's batch sizes take turns, one run each per round, the order
/// reversed every other round: a slow spell of the machine then falls on
/// every size alike instead of on one size's block of runs, whose median it
/// would shift, and the batch payoff (batch b's time per image against
/// batch 1's) compares plans measured under the same conditions.
pub fn warm_up(engine: &dyn Engine, workers: usize, runs: usize) -> LatencyModel {
    let sizes: Vec<Vec<usize>> = (0..engine.num_variants())
        .map(|v| engine.batch_sizes(v))
        .collect();
    let mut model = LatencyModel::new(&sizes);
    for (v, vs) in sizes.iter().enumerate() {
        for &b in vs {
            timed_runs(engine, v, b, workers, true, &|_| false);
        }
        let mut times = vec![Vec::new(); vs.len()];
        for round in 0..runs.max(1) {
            let order: Vec<usize> = if round % 2 == 0 {
                (0..vs.len()).collect()
            } else {
                (0..vs.len()).rev().collect()
            };
            for i in order {
                times[i].extend(timed_runs(engine, v, vs[i], workers, false, &|n| n < 1));
            }
        }
        for (&b, t) in vs.iter().zip(&times) {
            model.seed(v, b, t);
        }
    }
    model
}

/// Load, warm and wire up everything behind the transports.
pub fn build_service(
    args: &ServeArgs,
    manifest: &Manifest,
    metrics: Arc<Metrics>,
) -> Result<Arc<Service>> {
    let t0 = Instant::now();
    crate::engine::fast::par::set_threads(args.intra_op_threads);
    let (engine, specs) = TractEngine::load(
        manifest,
        &args.model.variants,
        &args.batch_sizes,
        args.model.kernels,
    )?;
    for s in &specs {
        metrics
            .variant_file
            .with_label_values(&[&s.name])
            .set(s.file_bytes as i64);
    }
    let reports = engine.reports.clone();
    let engine: Arc<dyn Engine> = Arc::new(engine);
    let service = assemble_service(args, manifest, specs, engine.clone(), metrics.clone())?;
    let mut variants_bytes = 0u64;
    let mut activations = 0usize;
    for (v, r) in reports.iter().enumerate() {
        let kept = engine.batch_sizes(v);
        let plans: u64 = r
            .plans
            .iter()
            .filter(|p| kept.contains(&p.batch))
            .map(|p| p.resident_bytes)
            .sum();
        let dropped: u64 = r
            .plans
            .iter()
            .filter(|p| !kept.contains(&p.batch))
            .map(|p| p.resident_bytes)
            .sum();
        // What the variant holds now: its load growth less the plans dropped.
        let held = r.resident_bytes.saturating_sub(dropped);
        let per_run = r.plans.first().map_or(0, |p| p.activation_bytes);
        activations = activations.max(per_run);
        variants_bytes += held;
        let set = |part: &str, b: u64| {
            metrics
                .variant_memory
                .with_label_values(&[&r.name, part])
                .set(b as i64)
        };
        set("loaded_weights", r.loaded_weights_bytes);
        set("packed_weights", r.packed_bytes as u64);
        set("packed_weights_shared", r.packed_shared_bytes as u64);
        set("plans", plans);
        set("activations_per_run", per_run as u64);
        metrics
            .variant_resident
            .with_label_values(&[&r.name])
            .set(held as i64);
        tracing::info!(
            variant = r.name,
            load_ms = r.load_time.as_millis() as u64,
            resident_at_load_mb = mb(r.resident_bytes),
            resident_mb = mb(held),
            loaded_weights_mb = mb(r.loaded_weights_bytes),
            packed_weights_mb = mb(r.packed_bytes as u64),
            packed_shared_mb = mb(r.packed_shared_bytes as u64),
            kept_plans_mb = mb(plans),
            plans_kept = ?kept,
            activations_per_run_mb = mb(per_run as u64),
            "loaded"
        );
    }
    let resident = crate::memory::trimmed_resident_bytes();
    let workers = service.batcher.workers();
    tracing::info!(
        ready_after_ms = t0.elapsed().as_millis() as u64,
        workers,
        allocator = crate::memory::allocator(),
        resident_mb = mb(resident),
        variants_mb = mb(variants_bytes),
        // Each worker runs one plan at a time: at most this many bytes of
        // activations are alive per worker.
        activations_per_worker_mb = mb(activations as u64),
        rest_mb = mb(resident.saturating_sub(variants_bytes)),
        "ready"
    );
    Ok(service)
}

fn mb(b: u64) -> f64 {
    (b as f64 / (1u64 << 20) as f64 * 10.0).round() / 10.0
}

/// Warm `engine` (serving `specs`, in order) and wire the batcher and the
/// service around it: the real engine, or the fake one in tests.
pub fn assemble_service(
    args: &ServeArgs,
    manifest: &Manifest,
    specs: Vec<crate::manifest::VariantSpec>,
    engine: Arc<dyn Engine>,
    metrics: Arc<Metrics>,
) -> Result<Arc<Service>> {
    let workers = args.workers.unwrap_or_else(default_workers).max(1);
    // Every variant has the same plans (sorted, deduplicated, with 1).
    let mut profile = warm_up(engine.as_ref(), workers, args.warmup_runs);
    profile.freeze_payoff();
    let mut released = 0;
    for (i, s) in specs.iter().enumerate() {
        let paying = if args.no_batching {
            vec![1]
        } else {
            profile.paying_sizes(i)
        };
        let dropped = engine.release_plans(i, &paying);
        released += dropped;
        tracing::info!(variant = s.name, predicted_ms = profile.predict(i, 1).as_secs_f64() * 1e3, paying_batch_sizes = ?paying, plans_dropped = dropped, "warmed");
    }
    if released > 0 {
        // The dropped plans' weights and buffers go back to the system.
        let rss = crate::memory::trimmed_resident_bytes();
        tracing::info!(
            plans_dropped = released,
            resident_mb = rss >> 20,
            "plans that do not pay dropped"
        );
    }
    // Batch sizes some variant still has a plan for (advertised by KServe).
    let mut plans: Vec<usize> = (0..engine.num_variants())
        .flat_map(|v| engine.batch_sizes(v))
        .collect();
    plans.sort_unstable();
    plans.dedup();
    let labels = manifest.labels_for(engine.num_classes())?;
    for s in specs.iter().filter(|s| s.top1.is_none()) {
        tracing::info!(
            variant = s.name,
            "accuracy unknown (no top1 in the manifest): routed to only when pinned or the only one eligible"
        );
    }
    // The front on this machine: a variant another beats on measured
    // latency and manifest accuracy is not chosen for speed.
    let latency: Vec<f64> = (0..specs.len())
        .map(|i| profile.predict(i, 1).as_secs_f64() * 1e3)
        .collect();
    let top1: Vec<Option<f64>> = specs.iter().map(|s| s.top1).collect();
    let dominated = crate::routing::dominated(&top1, &latency);
    for (i, d) in dominated.iter().enumerate() {
        if let Some(u) = d {
            tracing::info!(
                variant = specs[i].name,
                by = specs[*u].name,
                ms = latency[i],
                by_ms = latency[*u],
                "off the front here: another variant is at least as accurate and faster; not chosen for speed"
            );
        }
    }
    let variants: Vec<VariantMeta> = specs
        .iter()
        .zip(&dominated)
        .map(|(s, d)| VariantMeta {
            name: s.name.clone(),
            top1: s.top1,
            off_front: s.off_front.is_some() || d.is_some(),
        })
        .collect();
    let off_front: Vec<bool> = variants.iter().map(|v| v.off_front).collect();
    let dominated_by: Vec<Option<String>> = dominated
        .iter()
        .map(|d| d.map(|u| specs[u].name.clone()))
        .collect();
    let policy = Policy {
        queue_capacity: args.queue_capacity.max(1),
        max_batch_wait: Duration::from_millis(args.max_batch_wait_ms),
        batching: !args.no_batching,
        slack: args.sla_slack.clamp(0.0, 0.9),
        headroom: args.route_headroom.clamp(0.0, 1.0),
        utilization: args.route_utilization.clamp(0.0, 1.0),
    };
    let batcher = Batcher::start(
        engine,
        variants,
        profile,
        BatcherConfig { workers, policy },
        metrics.clone(),
    );
    let config = ServiceConfig {
        decode: DecodeLimits {
            max_pixels: args.max_pixels,
            ..DecodeLimits::default()
        },
        default_budget: Duration::from_millis(args.default_sla_ms.max(1)),
        max_budget: Duration::from_millis(args.max_sla_ms.max(1)),
        max_top_k: args.max_top_k.max(1),
        preprocess_slots: args.preprocess_slots.unwrap_or_else(default_workers),
        batch_sizes: if args.no_batching {
            Vec::new()
        } else {
            plans.into_iter().filter(|b| *b > 1).collect()
        },
        max_batch_wait: Duration::from_millis(args.max_batch_wait_ms),
        workers,
    };
    let mut service = Service::new(specs, labels, batcher, metrics, config);
    service.set_front(off_front, dominated_by);
    Ok(Arc::new(service))
}

/// Serve HTTP on `listener` and gRPC on `grpc` until `shutdown` resolves,
/// then drain both. Both listeners go through the connection layer
/// (`http::conn`: connection limit, header, body and idle timeouts).
pub async fn serve(
    args: ServeArgs,
    listener: TcpListener,
    grpc: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let manifest = args.model.manifest()?;
    // Free pages stay with the allocator while requests flow, and go back
    // to the system after a second without work.
    crate::memory::spawn_idle_purge(crate::memory::IDLE_PURGE_AFTER);
    let load_args = args.clone();
    let load = move |metrics| build_service(&load_args, &manifest, metrics);
    serve_with(args, listener, grpc, shutdown, load).await
}

/// `serve` with the service made by `load` (on the blocking pool, while
/// the listeners already answer liveness).
pub async fn serve_with(
    args: ServeArgs,
    listener: TcpListener,
    grpc: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    load: impl FnOnce(Arc<Metrics>) -> Result<Arc<Service>> + Send + 'static,
) -> Result<()> {
    let (_, nofile, _) = conn::raise_open_file_limit();
    let metrics = Arc::new(Metrics::new());
    let state = AppState::new(metrics.clone(), args.max_body_bytes);
    let pool = conn::Pool::new(
        conn::Limits::new(&args.conn, args.default_sla_ms, nofile),
        metrics.clone(),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut server = tokio::spawn(conn::serve(
        listener,
        conn::Protocol::Http,
        http::app(state.clone()),
        pool.clone(),
        stop_rx.clone(),
    ));
    let (health, mut grpc_server) =
        crate::grpc::start(grpc, state.clone(), pool.clone(), stop_rx.clone()).await;

    let loader = tokio::task::spawn_blocking(move || load(metrics));
    let mut stop = stop_rx.clone();
    let loaded = tokio::select! {
        loaded = loader => Some(loaded.context("loading task")??),
        _ = stop.wait_for(|s| *s) => None,
    };
    if let Some(svc) = loaded {
        let _ = state.service.set(svc);
        health.set(true).await;
    }
    // gRPC health follows the workers: NOT_SERVING while none takes work.
    let mut healthy = true;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let now = state.ready_service().is_ok();
        if now != healthy {
            healthy = now;
            health.set(now).await;
        }
    }
    let open = pool.open();
    tracing::info!(
        open_connections = open,
        "shutting down: draining in-flight requests"
    );
    state.draining.store(true, Ordering::SeqCst);
    health.set(false).await;
    let limit = Duration::from_secs(args.shutdown_timeout_secs);
    let both = async {
        let http = (&mut server).await;
        let grpc = (&mut grpc_server).await;
        (http, grpc)
    };
    match tokio::time::timeout(limit, both).await {
        Ok((http, grpc)) => {
            http.context("http server task")?;
            grpc.context("grpc server task")?;
        }
        Err(_) => {
            tracing::warn!(
                open_connections = pool.open(),
                "in-flight requests still running after {limit:?}: closing"
            );
            server.abort();
            grpc_server.abort();
        }
    }
    if let Some(svc) = state.service.get().cloned() {
        tokio::task::spawn_blocking(move || svc.batcher.shutdown()).await?;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// `slimserve healthcheck`: exit code 0 when the server answers ready.
pub fn healthcheck(addr: std::net::SocketAddr, timeout: Duration) -> Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET /health/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head = String::from_utf8_lossy(&buf);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    anyhow::ensure!(
        status == "200",
        "not ready: {}",
        head.lines().next().unwrap_or("no answer")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::{FakeEngine, FakeVariant};

    fn engine(fixed_ms: u64, per_image_ms: u64) -> FakeEngine {
        FakeEngine::new(vec![FakeVariant {
            sizes: vec![1, 2],
            fixed: Duration::from_millis(fixed_ms),
            per_image: Duration::from_millis(per_image_ms),
            class: 0,
        }])
    }

    #[test]
    fn a_slow_spell_during_the_warm_up_does_not_make_batching_look_cheap() {
        // Batch 2 costs exactly twice batch 1: it does not pay. The machine
        // is three times slower for three runs in a row, just after each
        // plan's untimed run: timed in blocks, all three would be batch 1's
        // and its median would triple; taking turns, each size gets some.
        let e = engine(0, 2);
        e.slow_spell(2..5, 3);
        let mut m = warm_up(&e, 1, 6);
        m.freeze_payoff();
        assert_eq!(m.paying_sizes(0), vec![1], "calls {:?}", e.calls());
        assert_eq!(e.calls().len(), 2 + 2 * 6);
        // A plan that does pay is still found under the same spell.
        let e = engine(4, 1);
        e.slow_spell(2..5, 3);
        let mut m = warm_up(&e, 1, 6);
        m.freeze_payoff();
        assert_eq!(m.paying_sizes(0), vec![1, 2]);
    }
}
