//! HTTP transport (axum): thin handlers over `Service`.

mod admin;
pub(crate) mod body;
pub(crate) mod classify;
pub mod conn;
pub mod deadline;
pub mod live;
pub mod openapi;
pub mod page;

use crate::error::ServeError;
use crate::metrics::Metrics;
use crate::service::Service;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Shared by every handler of both transports (HTTP and gRPC). The service appears once models are loaded and
/// warmed; until then the server is live but not ready.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<OnceLock<Arc<Service>>>,
    pub metrics: Arc<Metrics>,
    pub draining: Arc<AtomicBool>,
    pub max_body_bytes: usize,
    /// Per-model statistics of the inference protocol (HTTP and gRPC).
    pub kserve_stats: Arc<crate::kserve::stats::Stats>,
}

impl AppState {
    pub fn new(metrics: Arc<Metrics>, max_body_bytes: usize) -> AppState {
        AppState {
            service: Arc::new(OnceLock::new()),
            metrics,
            draining: Arc::new(AtomicBool::new(false)),
            max_body_bytes,
            kserve_stats: Arc::default(),
        }
    }

    pub fn ready_service(&self) -> Result<&Arc<Service>, ServeError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(ServeError::ShuttingDown);
        }
        let svc = self.service.get().ok_or(ServeError::NotReady)?;
        if !svc.batcher.healthy() {
            return Err(ServeError::WorkersFailing);
        }
        Ok(svc)
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = Json(serde_json::json!({ "error": self.to_string(), "kind": self.kind() }));
        let mut resp = (status, body).into_response();
        if let Some(after) = self.retry_after() {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        resp
    }
}

async fn not_found() -> ServeError {
    ServeError::NoSuchEndpoint
}

/// The REST routes, each registered with its OpenAPI annotation (so the
/// document cannot miss one of them): `openapi::document` is built from this.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(<openapi::ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(classify::classify))
        .routes(routes!(admin::variants))
        .routes(routes!(live::live))
        .routes(routes!(admin::live))
        .routes(routes!(admin::ready))
        .routes(routes!(admin::metrics))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(page::index))
        .routes(routes!(page::asset))
}

pub fn app(state: AppState) -> Router {
    let (api, _) = api_router().split_for_parts();
    api.merge(crate::kserve::router())
        .fallback(not_found)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ServeError::Internal("handler panicked".into()).into_response()
        }))
        .with_state(state)
}
