//! `POST /classify`: the raw image as the body, or multipart field `image`.

use super::body::{
    body_error, checked_before_body, discard, read_limited, refuse_declared_oversize,
};
use super::AppState;
use crate::error::ServeError;
use crate::service::{budget_from_ms, RequestOptions};
use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::time::Instant;

#[derive(Debug, serde::Deserialize)]
struct Params {
    top_k: Option<usize>,
}

fn header_str<'a>(h: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, ServeError> {
    h.get(name)
        .map(|v| {
            v.to_str()
                .map(str::trim)
                .map_err(|_| ServeError::BadHeader {
                    name,
                    reason: "not visible ASCII".into(),
                })
        })
        .transpose()
}

/// `X-SLA-Ms`, `X-Variant`, `X-Min-Accuracy`.
pub fn options_from_headers(h: &HeaderMap) -> Result<RequestOptions, ServeError> {
    let budget = header_str(h, "x-sla-ms")?
        .map(|s| {
            s.parse::<f64>()
                .ok()
                .and_then(budget_from_ms)
                .ok_or_else(|| ServeError::BadHeader {
                    name: "x-sla-ms",
                    reason: format!("'{s}' is not a positive number of milliseconds"),
                })
        })
        .transpose()?;
    let variant = header_str(h, "x-variant")?.map(str::to_owned);
    let min_top1 = header_str(h, "x-min-accuracy")?
        .map(|s| {
            s.parse::<f64>()
                .ok()
                .filter(|v| (0.0..=1.0).contains(v))
                .ok_or_else(|| ServeError::BadHeader {
                    name: "x-min-accuracy",
                    reason: format!("'{s}' is not a fraction in 0..=1"),
                })
        })
        .transpose()?;
    Ok(RequestOptions {
        variant,
        budget,
        min_top1,
    })
}

async fn read_image(req: Request, limit: usize) -> Result<Bytes, ServeError> {
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = ctype.split(';').next().unwrap_or("").trim().to_string();
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, refuse_declared_oversize(body, limit).await?);
    if essence == "multipart/form-data" {
        let mut mp = axum::extract::Multipart::from_request(req, &())
            .await
            .map_err(|e| ServeError::BadMultipart(e.body_text()))?;
        let bad = |e: axum::extract::multipart::MultipartError| {
            body_error(&e).unwrap_or_else(|| ServeError::BadMultipart(e.body_text()))
        };
        while let Some(field) = mp.next_field().await.map_err(bad)? {
            if field.name() == Some("image") {
                return field.bytes().await.map_err(|e| {
                    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                        ServeError::BodyTooLarge { limit }
                    } else {
                        bad(e)
                    }
                });
            }
        }
        return Err(ServeError::BadMultipart("no field named 'image'".into()));
    }
    let accepted = essence.is_empty()
        || essence.starts_with("image/")
        || essence == "application/octet-stream"
        || essence == "application/x-www-form-urlencoded"; // curl --data-binary's default
    if !accepted {
        discard(req.into_body(), limit).await;
        return Err(ServeError::UnsupportedMediaType(essence));
    }
    read_limited(req.into_body(), limit, ServeError::BadImage).await
}

#[utoipa::path(post, path = "/classify", operation_id = "classify", tag = "slimserve",
    summary = "Classify one image within a latency budget",
    description = "The body is the encoded image (raw) or a multipart form with the image in field `image`. The server routes the request to the most accurate variant predicted to meet the budget, or refuses it at once (503 `budget_unmeetable`) rather than answering late.",
    params(
        ("top_k" = Option<usize>, Query, description = "Labels to return (default 5, at most --max-top-k)", minimum = 1),
        ("X-SLA-Ms" = Option<f64>, Header, description = "Latency budget in milliseconds (default --default-sla-ms); the deadline is arrival + budget"),
        ("X-Variant" = Option<String>, Header, description = "Pin a variant by name (400 `unknown_variant` lists the valid ones)"),
        ("X-Min-Accuracy" = Option<f64>, Header, description = "Exclude variants whose manifest top-1 is lower (0..1); variants of unknown accuracy are excluded too"),
    ),
    request_body(content(
        (super::openapi::ImageBody = "image/*"),
        (super::openapi::ImageBody = "application/octet-stream"),
        (super::openapi::ClassifyForm = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "The answer", body = crate::service::Classification, headers(
            ("X-Variant" = String, description = "The variant that answered"),
            ("X-Route" = String, description = "Why: pinned, most_accurate, downgraded, accuracy_unknown"),
            ("X-Batch-Size" = usize, description = "Size of the batch it ran in"),
            ("X-Queue-Ms" = f64, description = "Time queued"),
            ("X-Preprocess-Ms" = f64, description = "Decode and preprocessing time"),
            ("X-Inference-Ms" = f64, description = "Inference time of the batch"),
            ("X-Total-Ms" = f64, description = "Arrival to answer"),
        )),
        (status = 400, description = "Bad input: `empty_body`, `bad_image`, `bad_multipart`, `bad_header`, `bad_parameter`, `unknown_variant`, `no_variant_accurate_enough`", body = super::openapi::ErrorBody),
        (status = 413, description = "`body_too_large`, `image_too_large`", body = super::openapi::ErrorBody),
        (status = 415, description = "`unsupported_media_type`, `unknown_image_format`", body = super::openapi::ErrorBody),
        (status = 503, description = "`budget_unmeetable`, `queue_full` (with Retry-After), `not_ready`, `shutting_down`", body = super::openapi::ErrorBody),
        (status = 504, description = "`deadline_expired`, `answer_late`: never answered late", body = super::openapi::ErrorBody),
        (status = 500, description = "`internal`", body = super::openapi::ErrorBody),
    ))]
pub async fn classify(State(st): State<AppState>, req: Request) -> Response {
    let arrival = Instant::now();
    let svc = match st.ready_service() {
        Ok(s) => s.clone(),
        Err(e) => {
            discard(req.into_body(), st.max_body_bytes).await;
            return e.into_response();
        }
    };
    let result = async {
        let (parts, body) = req.into_parts();
        let early = options_from_headers(&parts.headers).and_then(|opts| {
            Query::<Params>::try_from_uri(&parts.uri)
                .map(|params| (opts, params))
                .map_err(|e| ServeError::BadParameter {
                    name: "query",
                    reason: e.body_text(),
                })
        });
        let ((opts, params), body) = checked_before_body(early, body, st.max_body_bytes).await?;
        let bytes = read_image(Request::from_parts(parts, body), st.max_body_bytes).await?;
        svc.classify(bytes, &opts, params.top_k.unwrap_or(5), arrival)
            .await
    }
    .await;
    match result {
        Ok(c) => {
            let met = c.timings.total_ms <= c.budget_ms;
            svc.record(Some(&c.variant), 200, arrival, Some(met));
            let mut resp = Json(&c).into_response();
            let h = resp.headers_mut();
            let mut put = |k: &'static str, v: String| {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(k, v);
                }
            };
            put("x-variant", c.variant.clone());
            put("x-route", c.route.to_string());
            put("x-batch-size", c.batch_size.to_string());
            put("x-queue-ms", c.timings.queue_ms.to_string());
            put("x-preprocess-ms", c.timings.preprocess_ms.to_string());
            put("x-inference-ms", c.timings.inference_ms.to_string());
            put("x-total-ms", c.timings.total_ms.to_string());
            resp
        }
        Err(e) => {
            svc.record_error(&e, arrival);
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn sla_header_parses_and_rejects_garbage() {
        let o = options_from_headers(&headers(&[("x-sla-ms", " 150 ")])).unwrap();
        assert_eq!(o.budget, Some(Duration::from_millis(150)));
        for bad in ["", "abc", "-5", "0", "NaN", "inf", "1e99"] {
            let e = options_from_headers(&headers(&[("x-sla-ms", bad)])).unwrap_err();
            assert!(
                matches!(
                    e,
                    ServeError::BadHeader {
                        name: "x-sla-ms",
                        ..
                    }
                ),
                "{bad}: {e}"
            );
        }
        let e = options_from_headers(&headers(&[("x-min-accuracy", "75")])).unwrap_err();
        assert!(matches!(
            e,
            ServeError::BadHeader {
                name: "x-min-accuracy",
                ..
            }
        ));
        let mut h = HeaderMap::new();
        h.insert("x-variant", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        assert!(options_from_headers(&h).is_err());
    }
}
