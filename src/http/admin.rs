//! Health, variants and metrics endpoints.

use super::AppState;
use crate::error::ServeError;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use std::sync::atomic::Ordering;

pub async fn live() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "live" }))
}

pub async fn ready(State(st): State<AppState>) -> Result<impl IntoResponse, ServeError> {
    st.ready_service()?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

pub async fn variants(State(st): State<AppState>) -> Result<impl IntoResponse, ServeError> {
    let svc = st.service.get().ok_or(ServeError::NotReady)?;
    let profile = svc.batcher.profile();
    let list: Vec<_> = svc
        .specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let latency: Vec<_> = profile.variants[i]
                .by_batch
                .iter()
                .map(|(b, stat)| {
                    serde_json::json!({
                        "batch_size": b,
                        "mean_ms": stat.mean * 1e3,
                        "deviation_ms": stat.dev * 1e3,
                        "predicted_ms": profile.predict(i, *b).as_secs_f64() * 1e3,
                        "observations": stat.count,
                    })
                })
                .collect();
            serde_json::json!({
                "name": s.name,
                "description": s.description,
                "file": s.file,
                "top1": s.top1,
                "top5": s.top5,
                "file_bytes": s.file_bytes,
                "params": s.params,
                "macs": s.macs,
                "sha256": s.sha256,
                "input_shape": s.input_shape,
                "resident_bytes": st.metrics.variant_resident.with_label_values(&[&s.name]).get(),
                "batch_sizes_paying_off": profile.paying_sizes(i),
                "latency": latency,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "variants": list,
        "preprocess_mean_ms": profile.preprocess.mean * 1e3,
        "workers": svc.batcher.workers(),
    })))
}

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
    st.metrics.ready.set(i64::from(
        st.service.get().is_some() && !st.draining.load(Ordering::SeqCst),
    ));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        st.metrics.encode(),
    )
}
