//! `GET /v1/live`: what the try-it page's live panel shows, as JSON (the
//! page does not scrape Prometheus text): each variant's predicted latency
//! from the batcher's latency model, the served mix and the SLA attainment
//! over the last minute.

use super::AppState;
use crate::recent::WINDOW;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use std::time::Instant;

/// One variant in the live panel.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LiveVariant {
    pub name: String,
    /// Manifest top-1; `null`: unknown.
    pub top1: Option<f64>,
    /// Predicted execution time of one image (batch 1), what routing uses.
    pub predicted_ms: f64,
    /// Answers it gave over the window.
    pub served: u64,
    /// Its share of all answers over the window; `null` with no answer.
    pub share: Option<f64>,
    /// Its answers that met their budget.
    pub met: u64,
    /// `met / served`; `null` with no answer.
    pub sla_attainment: Option<f64>,
}

/// `GET /v1/live`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Live {
    /// Whether the models are loaded (the other figures are empty until then).
    pub ready: bool,
    /// Seconds the counts cover.
    pub window_s: u64,
    pub workers: usize,
    /// Requests queued for inference now.
    pub queued: usize,
    /// Mean decode + preprocessing time.
    pub preprocess_ms: f64,
    /// Requests answered, or refused by the server (503/504/500), over the window; bad input (4xx) is not counted.
    pub requests: u64,
    pub answered: u64,
    /// Answers within their budget.
    pub met: u64,
    /// Refused (shed, expired, late) or failed.
    pub refused: u64,
    /// `met / requests`; `null` with no request.
    pub sla_attainment: Option<f64>,
    pub variants: Vec<LiveVariant>,
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

#[utoipa::path(get, path = "/v1/live", operation_id = "live", tag = "slimserve",
    summary = "Live figures: predicted latency per variant, served mix and SLA attainment over the last minute",
    responses((status = 200, description = "The live figures", body = Live)))]
pub async fn live(State(st): State<AppState>) -> Json<Live> {
    let Some(svc) = st.service.get() else {
        return Json(Live {
            ready: false,
            window_s: WINDOW.as_secs(),
            workers: 0,
            queued: 0,
            preprocess_ms: 0.0,
            requests: 0,
            answered: 0,
            met: 0,
            refused: 0,
            sla_attainment: None,
            variants: vec![],
        });
    };
    let profile = svc.batcher.profile();
    let sum = svc
        .recent
        .lock()
        .map(|r| r.summary(Instant::now()))
        .unwrap_or_default();
    let answered = sum.answered();
    let variants = svc
        .specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (served, met) = sum.served.get(i).copied().unwrap_or_default();
            LiveVariant {
                name: s.name.clone(),
                top1: s.top1,
                predicted_ms: profile.predict(i, 1).as_secs_f64() * 1e3,
                served,
                share: ratio(served, answered),
                met,
                sla_attainment: ratio(met, served),
            }
        })
        .collect();
    Json(Live {
        ready: st.ready_service().is_ok(),
        window_s: WINDOW.as_secs(),
        workers: svc.batcher.workers(),
        queued: svc.batcher.queued(),
        preprocess_ms: profile.preprocess.mean * 1e3,
        requests: sum.requests(),
        answered,
        met: sum.met(),
        refused: sum.refused,
        sla_attainment: ratio(sum.met(), sum.requests()),
        variants,
    })
}
