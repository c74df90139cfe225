//! Prometheus metrics. Names are `slimserve_*` with units in the name; label
//! values come from bounded sets (variant names, fixed reasons and statuses).

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub errors: IntCounterVec,
    pub request_duration: HistogramVec,
    pub queue: HistogramVec,
    pub preprocess: prometheus::Histogram,
    pub inference: HistogramVec,
    pub batch_size: HistogramVec,
    pub queue_depth: IntGauge,
    pub routing: IntCounterVec,
    pub shed: IntCounterVec,
    pub sla: IntCounterVec,
    pub predicted_error: HistogramVec,
    pub predicted_latency: prometheus::GaugeVec,
    pub variant_resident: IntGaugeVec,
    /// Per variant and part: `loaded_weights`, `packed_weights`,
    /// `packed_weights_shared`, `plans`,
    /// `activations_per_run` (see `engine::tract::LoadReport`).
    pub variant_memory: IntGaugeVec,
    pub variant_file: IntGaugeVec,
    pub ready: IntGauge,
    /// Connection layer (`http::conn`), by listener (`http`, `grpc`).
    pub connections_open: IntGaugeVec,
    pub connection_limit: IntGauge,
    pub connections: IntCounterVec,
    pub connections_closed: IntCounterVec,
    pub accept_errors: IntCounterVec,
    pub body_timeouts: IntCounterVec,
    /// Inference workers (`batching::worker`).
    pub worker_faults: IntCounterVec,
    pub worker_restarts: IntCounterVec,
    pub workers_serving: IntGauge,
}

fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 1.5, 24).expect("valid buckets") // 1 ms .. ~11 s
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let h = |name: &str, help: &str, labels: &[&str]| {
            let m = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(latency_buckets()),
                labels,
            )
            .expect("valid histogram");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let c = |name: &str, help: &str, labels: &[&str]| {
            let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let g = |name: &str, help: &str, labels: &[&str]| {
            let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let requests = c(
            "slimserve_requests_total",
            "Requests answered, by variant served and HTTP status.",
            &["variant", "status"],
        );
        let errors = c(
            "slimserve_errors_total",
            "Error answers by kind.",
            &["kind"],
        );
        let request_duration = h(
            "slimserve_request_duration_seconds",
            "End-to-end server-side latency of answered requests.",
            &["variant"],
        );
        let queue = h(
            "slimserve_queue_duration_seconds",
            "Time from enqueue to the start of inference.",
            &["variant"],
        );
        let inference = h(
            "slimserve_inference_duration_seconds",
            "Execution time of one batch.",
            &["variant"],
        );
        let predicted_error = HistogramVec::new(
            HistogramOpts::new(
                "slimserve_prediction_error_seconds",
                "Actual minus predicted batch execution time.",
            )
            .buckets(vec![
                -0.05, -0.02, -0.01, -0.005, -0.002, 0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
            ]),
            &["variant"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(predicted_error.clone()))
            .expect("unique metric");
        let preprocess = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "slimserve_preprocess_duration_seconds",
                "Decode, resize and normalise one image.",
            )
            .buckets(latency_buckets()),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(preprocess.clone()))
            .expect("unique metric");
        let batch_size = HistogramVec::new(
            HistogramOpts::new("slimserve_batch_size", "Images per executed batch.")
                .buckets(vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0]),
            &["variant"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(batch_size.clone()))
            .expect("unique metric");
        let queue_depth = IntGauge::new("slimserve_queue_depth", "Requests waiting for inference.")
            .expect("valid gauge");
        registry
            .register(Box::new(queue_depth.clone()))
            .expect("unique metric");
        let ready = IntGauge::new(
            "slimserve_ready",
            "1 once every variant is loaded and warmed.",
        )
        .expect("valid gauge");
        registry
            .register(Box::new(ready.clone()))
            .expect("unique metric");
        let routing = c(
            "slimserve_routing_decisions_total",
            "Variant chosen per request and why (pinned, most_accurate, downgraded).",
            &["variant", "reason"],
        );
        let shed = c(
            "slimserve_shed_total",
            "Queued requests dropped before inference, by reason (expired, client_gone).",
            &["variant", "reason"],
        );
        let sla = c(
            "slimserve_sla_total",
            "Answered requests by whether they met their deadline.",
            &["variant", "outcome"],
        );
        let predicted_latency = prometheus::GaugeVec::new(
            Opts::new(
                "slimserve_predicted_execution_seconds",
                "Latency model: predicted execution time per variant and batch size.",
            ),
            &["variant", "batch"],
        )
        .expect("valid gauge");
        registry
            .register(Box::new(predicted_latency.clone()))
            .expect("unique metric");
        let variant_resident = g(
            "slimserve_variant_resident_bytes",
            "Resident memory growth measured around loading each variant, less the plans dropped after warm-up.",
            &["variant"],
        );
        let variant_memory = g(
            "slimserve_variant_memory_bytes",
            "Memory of each variant by part: loaded_weights (resident growth while parsing, freed after the plans are built), packed_weights (the fast kernels' packs its plans use, one copy shared by its plans), packed_weights_shared (of those, the packs another variant with the same weights made first, held once), plans (resident growth building the plans kept after warm-up), activations_per_run (peak live activations of one batch-1 run, from its shapes).",
            &["variant", "part"],
        );
        let variant_file = g(
            "slimserve_variant_file_bytes",
            "Size on disk of each variant's model file.",
            &["variant"],
        );
        let connections_open = g(
            "slimserve_connections_open",
            "Open client connections, by listener.",
            &["listener"],
        );
        let connection_limit = IntGauge::new(
            "slimserve_connection_limit",
            "Open connections allowed over both listeners (--max-connections, capped by the open-file limit).",
        )
        .expect("valid gauge");
        registry
            .register(Box::new(connection_limit.clone()))
            .expect("unique metric");
        let connections = c(
            "slimserve_connections_total",
            "Accepted TCP connections by listener and outcome (served; refused: at the limit with nothing to evict).",
            &["listener", "outcome"],
        );
        let connections_closed = c(
            "slimserve_connections_closed_by_server_total",
            "Connections the server closed, by listener and reason (header_timeout, idle_timeout, evicted).",
            &["listener", "reason"],
        );
        let accept_errors = c(
            "slimserve_accept_errors_total",
            "Failed accept() calls by listener and kind (no_fds: EMFILE/ENFILE, other).",
            &["listener", "kind"],
        );
        let body_timeouts = c(
            "slimserve_body_timeouts_total",
            "Requests whose body had not arrived by their deadline (or were cut to make room at the connection limit), by listener.",
            &["listener"],
        );
        let worker_faults = c(
            "slimserve_worker_faults_total",
            "Batches whose engine call panicked or failed, by variant and kind (panic, error).",
            &["variant", "kind"],
        );
        let worker_restarts = c(
            "slimserve_worker_restarts_total",
            "Inference workers replaced after a fault, by outcome of the replacement's probe (ok, failed).",
            &["outcome"],
        );
        let workers_serving = IntGauge::new(
            "slimserve_workers_serving",
            "Inference workers taking work (not replaced and re-probing after a fault).",
        )
        .expect("valid gauge");
        registry
            .register(Box::new(workers_serving.clone()))
            .expect("unique metric");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector");
        Metrics {
            registry,
            requests,
            errors,
            request_duration,
            queue,
            preprocess,
            inference,
            batch_size,
            queue_depth,
            routing,
            shed,
            sla,
            predicted_error,
            predicted_latency,
            variant_resident,
            variant_memory,
            variant_file,
            ready,
            connections_open,
            connection_limit,
            connections,
            connections_closed,
            accept_errors,
            body_timeouts,
            worker_faults,
            worker_restarts,
            workers_serving,
        }
    }

    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("prometheus text is utf-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
