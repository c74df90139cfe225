//! Axum handlers for the `/v2` endpoints: JSON and binary-extension
//! encoding over the transport-independent `model` and `infer` modules.

use super::binary;
use super::infer::{self, bad, InputData, OutputData, Param, Params};
use super::model::{self, Kind, Model, VERSION};
use super::stats::ModelStats;
use super::types::{InferRequest, InferResponse, ModelMetadata, ResponseOutput, ServerMetadata};
use crate::error::ServeError;
use crate::http::body::{checked_before_body, discard, read_limited};
use crate::http::classify::options_from_headers;
use crate::http::AppState;
use crate::service::Service;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/stats", get(model_stats))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/config", get(model_config))
        .route("/v2/models/{model}/stats", get(model_stats))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready),
        )
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config),
        )
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(model_stats),
        )
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
}

impl Params for Map<String, Value> {
    fn get_param(&self, name: &str) -> Option<Param> {
        Some(match self.get(name)? {
            Value::Bool(b) => Param::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Param::Int(i),
                None => Param::Float(n.as_f64()?),
            },
            Value::String(s) => Param::Str(s.clone()),
            // Arrays, objects, null: kept as text, so a number is refused.
            v => Param::Str(v.to_string()),
        })
    }
}

fn resolve_model(svc: &Service, params: &HashMap<String, String>) -> Result<Model, ServeError> {
    let name = params.get("model").map(String::as_str).unwrap_or("");
    let version = params.get("version").map(String::as_str).unwrap_or("");
    model::resolve(svc, name, version)
}

async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "slimserve",
        version: env!("CARGO_PKG_VERSION"),
        extensions: super::EXTENSIONS.to_vec(),
    })
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(State(st): State<AppState>) -> StatusCode {
    match st.ready_service() {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn model_ready(
    State(st): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<StatusCode, ServeError> {
    let svc = st.ready_service()?;
    resolve_model(svc, &params)?;
    Ok(StatusCode::OK)
}

async fn model_metadata(
    State(st): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<ModelMetadata>, ServeError> {
    let svc = st.ready_service()?;
    let m = resolve_model(svc, &params)?;
    Ok(Json(model::metadata(svc, &m)))
}

async fn model_config(
    State(st): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ServeError> {
    let svc = st.ready_service()?;
    let m = resolve_model(svc, &params)?;
    let c = model::config(svc, &m);
    let input = match m.kind {
        Kind::Tensor => json!({
            "name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": c.input_dims
        }),
        Kind::Image => json!({ "name": "image", "data_type": "TYPE_STRING", "dims": c.input_dims }),
    };
    Ok(Json(json!({
        "name": c.name,
        "platform": model::PLATFORM,
        "backend": "tract",
        "version_policy": { "latest": { "num_versions": 1 } },
        "max_batch_size": c.max_batch_size,
        "input": [input],
        "output": [{ "name": "logits", "data_type": "TYPE_FP32", "dims": c.output_dims }],
        "instance_group": [{ "name": format!("{}_cpu", c.name), "kind": "KIND_CPU", "count": c.instances }],
        "dynamic_batching": {
            "preferred_batch_size": c.preferred_batch_sizes,
            "max_queue_delay_microseconds": c.max_queue_delay.as_micros() as u64,
        },
        "parameters": { "variant": { "string_value": c.variant } },
    })))
}

fn tally(t: super::stats::Tally) -> Value {
    json!({ "count": t.count, "ns": t.ns })
}

fn stats_json(name: &str, s: &ModelStats) -> Value {
    let batches: Vec<Value> = s
        .batches
        .iter()
        .map(|(b, t)| json!({ "batch_size": b, "compute_infer": tally(*t) }))
        .collect();
    json!({
        "name": name,
        "version": VERSION,
        "last_inference": s.last_inference,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": tally(s.success),
            "fail": tally(s.fail),
            "queue": tally(s.queue),
            "compute_input": tally(s.compute_input),
            "compute_infer": tally(s.compute_infer),
            "compute_output": tally(s.compute_output),
        },
        "batch_stats": batches,
    })
}

/// `/v2/models/stats` (every model) or one model's statistics.
async fn model_stats(
    State(st): State<AppState>,
    params: Option<Path<HashMap<String, String>>>,
) -> Result<Json<Value>, ServeError> {
    let svc = st.ready_service()?;
    let names = match params {
        Some(Path(p)) if p.contains_key("model") => vec![resolve_model(svc, &p)?.name],
        _ => model::all_models(svc).into_iter().map(|m| m.name).collect(),
    };
    let stats: Vec<Value> = st
        .kserve_stats
        .snapshot(&names)
        .iter()
        .map(|(n, s)| stats_json(n, s))
        .collect();
    Ok(Json(json!({ "model_stats": stats })))
}

fn flatten_numbers(v: &Value, out: &mut Vec<f32>) -> Result<(), ServeError> {
    match v {
        Value::Number(n) => {
            let x = n.as_f64().ok_or_else(|| bad("data", "not a number"))?;
            out.push(x as f32);
            Ok(())
        }
        Value::Array(a) => a.iter().try_for_each(|e| flatten_numbers(e, out)),
        _ => Err(bad("data", "FP32 data must be an array of numbers")),
    }
}

fn flatten_strings(v: &Value, out: &mut Vec<Bytes>) -> Result<(), ServeError> {
    match v {
        Value::String(s) => {
            out.push(Bytes::copy_from_slice(s.as_bytes()));
            Ok(())
        }
        Value::Array(a) => a.iter().try_for_each(|e| flatten_strings(e, out)),
        _ => Err(bad("data", "BYTES data must be an array of strings")),
    }
}

async fn run(
    st: &AppState,
    svc: Arc<Service>,
    params: HashMap<String, String>,
    req: Request,
    arrival: Instant,
) -> Result<(Response, String, bool), ServeError> {
    let limit = st.max_body_bytes;
    let (parts, body) = req.into_parts();
    let early = resolve_model(&svc, &params)
        .and_then(|model| Ok((model, options_from_headers(&parts.headers)?)));
    let ((model, mut opts), body) = checked_before_body(early, body, limit).await?;
    let headers = parts.headers;
    let body = read_limited(body, limit, |msg| bad("body", msg)).await?;
    let (head, raw) = binary::split_body(&headers, body)?;
    let ir: InferRequest = serde_json::from_slice(&head)
        .map_err(|e| bad("body", format!("not a valid inference request: {e}")))?;
    opts.budget = infer::budget(&ir.parameters, opts.budget)?;
    let spec = {
        let requested: Vec<(&str, &dyn Params)> = ir
            .outputs
            .iter()
            .map(|o| (o.name.as_str(), &o.parameters as &dyn Params))
            .collect();
        let default_binary = ir
            .parameters
            .get_bool("binary_data_output")
            .unwrap_or(false);
        infer::output_spec(&svc, &requested, default_binary)?
    };
    let [input] = ir.inputs.as_slice() else {
        return Err(bad(
            "inputs",
            format!(
                "model '{}' takes exactly one input, '{}'",
                model.name,
                model.input_name()
            ),
        ));
    };
    let n = infer::check_input(&svc, &model, &input.name, &input.datatype, &input.shape)?;
    let data = match input.parameters.get_usize("binary_data_size") {
        Some(Ok(size)) => {
            let mut offset = 0;
            let part = binary::take(&raw, &mut offset, size)?;
            if offset != raw.len() {
                return Err(bad(
                    "binary_data_size",
                    format!(
                        "the binary part has {} bytes, the input uses {offset}",
                        raw.len()
                    ),
                ));
            }
            match model.kind {
                Kind::Tensor => InputData::RawF32(part),
                Kind::Image => InputData::RawElements(part),
            }
        }
        Some(Err(())) => return Err(bad("binary_data_size", "must be a non-negative integer")),
        None => {
            if !raw.is_empty() {
                return Err(bad(
                    "binary_data_size",
                    format!("the binary part has {} bytes, the input uses 0", raw.len()),
                ));
            }
            let v = input
                .data
                .as_ref()
                .ok_or_else(|| bad("data", format!("input '{}' has no data", input.name)))?;
            match model.kind {
                Kind::Tensor => {
                    let mut out = Vec::new();
                    flatten_numbers(v, &mut out)?;
                    InputData::F32(out)
                }
                Kind::Image => {
                    let mut out = Vec::new();
                    flatten_strings(v, &mut out)?;
                    InputData::Elements(out)
                }
            }
        }
    };
    let items = infer::items(&svc, &model, n, data)?;
    let done = infer::execute(svc.clone(), &st.kserve_stats, &model, opts, items, arrival).await?;
    let out = infer::render(&svc, spec.classes, &done.outcomes);

    let (raw_out, json_data) = match (&out.data, spec.binary) {
        (OutputData::F32(v), true) => (Some(binary::f32_to_le(v)), None),
        (OutputData::F32(v), false) => (None, Some(json!(v))),
        (OutputData::Strings(v), true) => (Some(binary::bytes_to_le(v)), None),
        (OutputData::Strings(v), false) => (None, Some(json!(v))),
    };
    let mut out_params = Map::new();
    if let Some(r) = &raw_out {
        out_params.insert("binary_data_size".into(), json!(r.len()));
    }
    let mut resp_params = Map::new();
    resp_params.insert("variant".into(), json!(done.variant));
    resp_params.insert("route".into(), json!(done.route));
    resp_params.insert("batch_size".into(), json!(done.batch_size));
    resp_params.insert(
        "total_ms".into(),
        json!(arrival.elapsed().as_secs_f64() * 1e3),
    );
    let body = InferResponse {
        model_name: model.name.clone(),
        model_version: VERSION.into(),
        id: ir.id.clone(),
        parameters: resp_params,
        outputs: vec![ResponseOutput {
            name: "logits".into(),
            datatype: out.datatype,
            shape: out.shape,
            parameters: out_params,
            data: json_data,
        }],
    };
    let json_bytes =
        serde_json::to_vec(&body).map_err(|e| ServeError::Internal(format!("encoding: {e}")))?;
    let mut response = match raw_out {
        None => {
            let mut r = Response::new(Body::from(json_bytes));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Some(raw) => {
            let head_len = json_bytes.len();
            let mut all = json_bytes;
            all.extend_from_slice(&raw);
            let mut r = Response::new(Body::from(all));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(binary::HEADER_LENGTH, HeaderValue::from(head_len));
            r
        }
    };
    if let Ok(v) = HeaderValue::from_str(&done.variant) {
        response.headers_mut().insert("x-variant", v);
    }
    let met = done.met(arrival);
    Ok((response, done.variant, met))
}

async fn infer(
    State(st): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    req: Request,
) -> Response {
    let arrival = Instant::now();
    let svc = match st.ready_service() {
        Ok(s) => s.clone(),
        Err(e) => {
            discard(req.into_body(), st.max_body_bytes).await;
            return e.into_response();
        }
    };
    match run(&st, svc.clone(), params, req, arrival).await {
        Ok((response, variant, met)) => {
            svc.record(Some(&variant), 200, arrival, Some(met));
            response
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

    #[test]
    fn json_params_read_as_protocol_params() {
        let p: Map<String, Value> =
            serde_json::from_value(json!({"a": 3, "b": 2.5, "c": "x", "d": true, "e": [1]}))
                .unwrap();
        assert_eq!(p.get_param("a"), Some(Param::Int(3)));
        assert_eq!(p.get_param("b"), Some(Param::Float(2.5)));
        assert_eq!(p.get_param("c"), Some(Param::Str("x".into())));
        assert_eq!(p.get_bool("d"), Some(true));
        assert_eq!(p.get_usize("e"), Some(Err(())));
        assert_eq!(p.get_param("f"), None);
    }

    #[test]
    fn json_data_flattens_and_rejects_non_numbers() {
        let mut out = Vec::new();
        flatten_numbers(&json!([[1, 2.5], [3]]), &mut out).unwrap();
        assert_eq!(out, vec![1.0, 2.5, 3.0]);
        assert!(flatten_numbers(&json!([1, "a"]), &mut out).is_err());
        let mut s = Vec::new();
        flatten_strings(&json!(["ab", ["c"]]), &mut s).unwrap();
        assert_eq!(s.len(), 2);
        assert!(flatten_strings(&json!([1]), &mut s).is_err());
    }
}
