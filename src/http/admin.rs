//! Health, variants and metrics endpoints.

use super::openapi::ErrorBody;
use super::AppState;
use crate::error::ServeError;
use crate::manifest::Preprocess;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;

/// `{"status": "live"}` or `{"status": "ready"}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    #[schema(example = "ready")]
    pub status: &'static str,
}

/// The live latency model of one batch size.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LatencyInfo {
    pub batch_size: usize,
    /// Decayed mean execution time of a batch.
    pub mean_ms: f64,
    /// Decayed mean absolute deviation.
    pub deviation_ms: f64,
    /// What routing assumes: mean + k × deviation.
    pub predicted_ms: f64,
    pub observations: u64,
}

/// One loaded variant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VariantInfo {
    pub name: String,
    pub description: String,
    pub file: String,
    /// Model input and output tensor names.
    pub input: String,
    pub output: String,
    /// Manifest top-1 accuracy; `null`: unknown (routed to only when pinned or alone).
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    pub file_bytes: u64,
    pub params: u64,
    /// Multiply-accumulates per image.
    pub macs: u64,
    pub sha256: String,
    /// `[-1, 3, crop, crop]` (NCHW) or `[-1, crop, crop, 3]` (NHWC).
    pub input_shape: Vec<i64>,
    /// Side the model runs at when its graph resizes the crop first (a
    /// resolution rung); `null`: it runs at the crop's side.
    pub resize: Option<u32>,
    /// Why it stays although another variant is faster and at least as
    /// accurate; `null`: on the accuracy/latency front. The router does not
    /// pick such a variant for speed.
    pub off_front: Option<String>,
    /// The variant that beats it on this machine (at least as accurate by
    /// the manifest, faster by more than 10 % at warm-up); `null`: none.
    /// Such a variant is not chosen for speed either.
    pub dominated_by: Option<String>,
    /// How an image becomes this variant's input.
    pub preprocess: Preprocess,
    /// Growth of resident memory while it loaded, less the plans dropped
    /// after warm-up.
    pub resident_bytes: i64,
    /// Where its memory goes.
    pub memory: VariantMemory,
    pub batch_sizes_paying_off: Vec<usize>,
    pub latency: Vec<LatencyInfo>,
}

/// A variant's memory by part (also `slimserve_variant_memory_bytes`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VariantMemory {
    /// Resident growth while the ONNX file was parsed and its weights
    /// dequantized; freed once the plans are built.
    pub loaded_weights_bytes: i64,
    /// The fast kernels' packed weights its plans use: one copy, shared by
    /// every plan, and with every variant of the same weights.
    pub packed_weights_bytes: i64,
    /// Of those, the bytes another variant packed first (a resolution rung
    /// shares its file's packs): counted once, under that variant.
    pub packed_weights_shared_bytes: i64,
    /// Resident growth while the plans kept after warm-up were built.
    pub plans_bytes: i64,
    /// Peak activations alive in one batch-1 run (from the plan's shapes);
    /// each inference worker needs this much while it runs.
    pub activations_per_run_bytes: i64,
}

/// `GET /v1/variants`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Variants {
    pub variants: Vec<VariantInfo>,
    /// Mean decode + preprocessing time of an image.
    pub preprocess_mean_ms: f64,
    /// Inference worker threads.
    pub workers: usize,
}

#[utoipa::path(get, path = "/health/live", operation_id = "health_live", tag = "health",
    summary = "Liveness: the process serves HTTP",
    responses((status = 200, description = "The process is live", body = Status)))]
pub async fn live() -> impl IntoResponse {
    Json(Status { status: "live" })
}

#[utoipa::path(get, path = "/health/ready", operation_id = "health_ready", tag = "health",
    summary = "Readiness: every variant is loaded and warmed, and the server is not draining",
    responses((status = 200, description = "Ready to classify", body = Status),
        (status = 503, description = "`not_ready` (loading) or `shutting_down`", body = ErrorBody)))]
pub async fn ready(State(st): State<AppState>) -> Result<impl IntoResponse, ServeError> {
    st.ready_service()?;
    Ok(Json(Status { status: "ready" }))
}

#[utoipa::path(get, path = "/v1/variants", operation_id = "variants", tag = "slimserve",
    summary = "The loaded variants: manifest data, preprocessing, memory, live latency model",
    responses((status = 200, description = "The loaded variants", body = Variants),
        (status = 503, description = "`not_ready`: models are still loading", body = ErrorBody)))]
pub async fn variants(State(st): State<AppState>) -> Result<impl IntoResponse, ServeError> {
    let svc = st.service.get().ok_or(ServeError::NotReady)?;
    let profile = svc.batcher.profile();
    let variants = svc
        .specs
        .iter()
        .enumerate()
        .map(|(i, s)| VariantInfo {
            name: s.name.clone(),
            description: s.description.clone(),
            file: s.file.clone(),
            input: s.input.clone(),
            output: s.output.clone(),
            top1: s.top1,
            top5: s.top5,
            file_bytes: s.file_bytes,
            params: s.params,
            macs: s.macs,
            sha256: s.sha256.clone(),
            input_shape: s.input_shape.clone(),
            resize: s.resize,
            off_front: s.off_front.clone(),
            dominated_by: svc.dominated_by[i].clone(),
            preprocess: s.preprocess.clone(),
            resident_bytes: st
                .metrics
                .variant_resident
                .with_label_values(&[&s.name])
                .get(),
            memory: {
                let part = |p: &str| {
                    st.metrics
                        .variant_memory
                        .with_label_values(&[&s.name, p])
                        .get()
                };
                VariantMemory {
                    loaded_weights_bytes: part("loaded_weights"),
                    packed_weights_bytes: part("packed_weights"),
                    packed_weights_shared_bytes: part("packed_weights_shared"),
                    plans_bytes: part("plans"),
                    activations_per_run_bytes: part("activations_per_run"),
                }
            },
            batch_sizes_paying_off: profile.paying_sizes(i),
            latency: profile.variants[i]
                .by_batch
                .iter()
                .map(|(b, stat)| LatencyInfo {
                    batch_size: *b,
                    mean_ms: stat.mean * 1e3,
                    deviation_ms: stat.dev * 1e3,
                    predicted_ms: profile.predict(i, *b).as_secs_f64() * 1e3,
                    observations: stat.count,
                })
                .collect(),
        })
        .collect();
    Ok(Json(Variants {
        variants,
        preprocess_mean_ms: profile.preprocess.mean * 1e3,
        workers: svc.batcher.workers(),
    }))
}

#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "health",
    summary = "Prometheus metrics (text exposition format): `slimserve_*` and `process_*`",
    responses((status = 200, description = "Prometheus text format 0.0.4",
        content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    if let Some(svc) = st.service.get() {
        let profile = svc.batcher.profile();
        for (i, s) in svc.specs.iter().enumerate() {
            for (b, _) in &profile.variants[i].by_batch {
                st.metrics
                    .predicted_latency
                    .with_label_values(&[&s.name, &b.to_string()])
                    .set(profile.predict(i, *b).as_secs_f64());
            }
        }
        st.metrics.queue_depth.set(svc.batcher.queued() as i64);
    }
    st.metrics.ready.set(i64::from(st.ready_service().is_ok()));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        st.metrics.encode(),
    )
}
