//! Axum handlers for the `/v2` endpoints.

use super::binary;
use super::types::{
    InferRequest, InferResponse, ModelMetadata, RequestInput, ResponseOutput, ServerMetadata,
    TensorMetadata,
};
use crate::engine::top_k;
use crate::error::ServeError;
use crate::http::classify::options_from_headers;
use crate::http::AppState;
use crate::service::Service;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The routed model (no pinned variant, BYTES image input).
pub const ROUTED_MODEL: &str = "slimserve";
const IMAGE_SUFFIX: &str = "_image";
const VERSION: &str = "1";
const PLATFORM: &str = "tract_onnx";
/// Advertised `max_batch_size` of every model, and the most images one
/// request may carry.
const MAX_BATCH_SIZE: usize = 8;
const MAX_IMAGES_PER_REQUEST: usize = 64;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/config", get(model_config))
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
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
}

fn bad(name: &'static str, reason: impl Into<String>) -> ServeError {
    ServeError::BadParameter {
        name,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// FP32 preprocessed tensor input.
    Tensor,
    /// BYTES encoded image input.
    Image,
}

#[derive(Debug, Clone)]
struct Model {
    name: String,
    kind: Kind,
    variant: Option<String>,
}

impl Model {
    fn input_name(&self) -> &'static str {
        match self.kind {
            Kind::Tensor => "input",
            Kind::Image => "image",
        }
    }

    fn input_datatype(&self) -> &'static str {
        match self.kind {
            Kind::Tensor => "FP32",
            Kind::Image => "BYTES",
        }
    }
}

fn resolve_model(svc: &Service, params: &HashMap<String, String>) -> Result<Model, ServeError> {
    let name = params.get("model").map(String::as_str).unwrap_or("");
    if let Some(v) = params.get("version") {
        if v != VERSION {
            return Err(ServeError::UnknownModel {
                name: format!("{name} version {v}"),
            });
        }
    }
    let has = |n: &str| svc.specs.iter().any(|s| s.name == n);
    let model = if name == ROUTED_MODEL {
        Model {
            name: name.into(),
            kind: Kind::Image,
            variant: None,
        }
    } else if has(name) {
        Model {
            name: name.into(),
            kind: Kind::Tensor,
            variant: Some(name.into()),
        }
    } else if let Some(v) = name.strip_suffix(IMAGE_SUFFIX).filter(|v| has(v)) {
        Model {
            name: name.into(),
            kind: Kind::Image,
            variant: Some(v.into()),
        }
    } else {
        return Err(ServeError::UnknownModel { name: name.into() });
    };
    Ok(model)
}

fn num_classes(svc: &Service) -> usize {
    svc.labels.len()
}

fn crop(svc: &Service) -> i64 {
    i64::from(svc.preprocess.crop)
}

async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "slimserve",
        version: env!("CARGO_PKG_VERSION"),
        extensions: vec![
            "classification",
            "binary_tensor_data",
            "model_configuration",
            "parameters",
        ],
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
    let c = crop(svc);
    let shape = match m.kind {
        Kind::Tensor => vec![-1, 3, c, c],
        Kind::Image => vec![-1],
    };
    Ok(Json(ModelMetadata {
        name: m.name.clone(),
        versions: vec![VERSION],
        platform: PLATFORM,
        inputs: vec![TensorMetadata {
            name: m.input_name(),
            datatype: m.input_datatype(),
            shape,
        }],
        outputs: vec![TensorMetadata {
            name: "logits",
            datatype: "FP32",
            shape: vec![-1, num_classes(svc) as i64],
        }],
    }))
}

async fn model_config(
    State(st): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ServeError> {
    let svc = st.ready_service()?;
    let m = resolve_model(svc, &params)?;
    let c = crop(svc);
    let input = match m.kind {
        Kind::Tensor => json!({
            "name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, c, c]
        }),
        Kind::Image => json!({ "name": "image", "data_type": "TYPE_STRING", "dims": [1] }),
    };
    Ok(Json(json!({
        "name": m.name,
        "platform": PLATFORM,
        "backend": "tract",
        "version_policy": { "latest": { "num_versions": 1 } },
        "max_batch_size": MAX_BATCH_SIZE,
        "input": [input],
        "output": [{ "name": "logits", "data_type": "TYPE_FP32", "dims": [num_classes(svc)] }],
        "dynamic_batching": { "max_queue_delay_microseconds": 5000 },
        "parameters": { "variant": { "string_value": m.variant.unwrap_or_default() } },
    })))
}

/// The budget: the smallest of `sla_ms`, `timeout` (µs) and `X-SLA-Ms`.
fn budget(
    params: &Map<String, Value>,
    header: Option<Duration>,
) -> Result<Option<Duration>, ServeError> {
    let mut out = header;
    for (name, per_ms) in [("sla_ms", 1.0), ("timeout", 1e3)] {
        let Some(v) = params.get(name) else {
            continue;
        };
        let d = v
            .as_f64()
            .map(|x| x / per_ms)
            .filter(|ms| ms.is_finite() && *ms > 0.0 && *ms <= 3.6e6)
            .map(|ms| Duration::from_secs_f64(ms / 1e3))
            .ok_or_else(|| bad(name, format!("{v} is not a positive number")))?;
        out = Some(out.map_or(d, |o| o.min(d)));
    }
    Ok(out)
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

fn param_usize(params: &Map<String, Value>, name: &str) -> Option<Option<usize>> {
    params
        .get(name)
        .map(|v| v.as_u64().and_then(|x| usize::try_from(x).ok()))
}

fn param_bool(params: &Map<String, Value>, name: &str) -> Option<bool> {
    params.get(name).and_then(Value::as_bool)
}

/// The images of one request: preprocessed tensors or encoded images.
enum Items {
    Tensors(Vec<Vec<f32>>),
    Images(Vec<Bytes>),
}

fn read_input(
    svc: &Service,
    model: &Model,
    input: &RequestInput,
    binary: &Bytes,
    offset: &mut usize,
) -> Result<Items, ServeError> {
    if input.name != model.input_name() {
        return Err(bad(
            "inputs",
            format!(
                "unknown input '{}' for model '{}': expected '{}'",
                input.name,
                model.name,
                model.input_name()
            ),
        ));
    }
    if input.datatype != model.input_datatype() {
        return Err(bad(
            "datatype",
            format!(
                "input '{}' has datatype {}, expected {}",
                input.name,
                input.datatype,
                model.input_datatype()
            ),
        ));
    }
    let raw = match param_usize(&input.parameters, "binary_data_size") {
        Some(Some(size)) => Some(binary::take(binary, offset, size)?),
        Some(None) => return Err(bad("binary_data_size", "must be a non-negative integer")),
        None => None,
    };
    let n = input.shape.first().copied().unwrap_or(0);
    let n = usize::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_IMAGES_PER_REQUEST).contains(n))
        .ok_or_else(|| {
            bad(
                "shape",
                format!("batch dimension must be in 1..={MAX_IMAGES_PER_REQUEST}"),
            )
        })?;
    match model.kind {
        Kind::Tensor => {
            let c = crop(svc);
            let want = [3, c, c];
            if input.shape.len() != 4 || input.shape[1..] != want {
                return Err(bad(
                    "shape",
                    format!(
                        "input 'input' has shape {:?}, expected [N,3,{c},{c}]",
                        input.shape
                    ),
                ));
            }
            let per = (3 * c * c) as usize;
            let data = match (raw, &input.data) {
                (Some(raw), _) => binary::f32_from_le(&raw)?,
                (None, Some(v)) => {
                    let mut out = Vec::with_capacity(per * n);
                    flatten_numbers(v, &mut out)?;
                    out
                }
                (None, None) => return Err(bad("data", "input 'input' has no data")),
            };
            if data.len() != per * n {
                return Err(bad(
                    "data",
                    format!(
                        "input 'input' has {} elements, shape {:?} needs {}",
                        data.len(),
                        input.shape,
                        per * n
                    ),
                ));
            }
            Ok(Items::Tensors(
                data.chunks_exact(per).map(<[f32]>::to_vec).collect(),
            ))
        }
        Kind::Image => {
            let ok_shape = matches!(input.shape.as_slice(), [_] | [_, 1]);
            if !ok_shape {
                return Err(bad(
                    "shape",
                    format!(
                        "input 'image' has shape {:?}, expected [N] or [N,1]",
                        input.shape
                    ),
                ));
            }
            let items = match (raw, &input.data) {
                (Some(raw), _) => binary::bytes_elements(&raw)?,
                (None, Some(v)) => {
                    let mut out = Vec::new();
                    flatten_strings(v, &mut out)?;
                    out
                }
                (None, None) => return Err(bad("data", "input 'image' has no data")),
            };
            if items.len() != n {
                return Err(bad(
                    "data",
                    format!(
                        "input 'image' has {} elements, shape {:?} needs {n}",
                        items.len(),
                        input.shape
                    ),
                ));
            }
            Ok(Items::Images(items))
        }
    }
}

/// What the client wants back.
struct OutputSpec {
    classes: Option<usize>,
    binary: bool,
}

fn output_spec(svc: &Service, req: &InferRequest) -> Result<OutputSpec, ServeError> {
    let default_binary = param_bool(&req.parameters, "binary_data_output").unwrap_or(false);
    match req.outputs.as_slice() {
        [] => Ok(OutputSpec {
            classes: None,
            binary: default_binary,
        }),
        [o] => {
            if o.name != "logits" {
                return Err(bad(
                    "outputs",
                    format!("unknown output '{}': the only output is 'logits'", o.name),
                ));
            }
            let classes = match param_usize(&o.parameters, "classification") {
                None | Some(Some(0)) => None,
                Some(Some(k)) if k <= svc.config.max_top_k.min(num_classes(svc)) => Some(k),
                _ => {
                    return Err(bad(
                        "classification",
                        format!(
                            "must be an integer in 1..={}",
                            svc.config.max_top_k.min(num_classes(svc))
                        ),
                    ))
                }
            };
            Ok(OutputSpec {
                classes,
                binary: param_bool(&o.parameters, "binary_data").unwrap_or(default_binary),
            })
        }
        _ => Err(bad("outputs", "the only output is 'logits'")),
    }
}

struct Answer {
    response: Response,
    variant: String,
    met: bool,
}

async fn run(
    svc: Arc<Service>,
    params: HashMap<String, String>,
    req: Request,
    limit: usize,
    arrival: Instant,
) -> Result<Answer, ServeError> {
    let model = resolve_model(&svc, &params)?;
    let mut opts = options_from_headers(req.headers())?;
    let headers: HeaderMap = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| {
            let msg = e.to_string();
            if msg.contains("length limit") || msg.contains("too large") {
                ServeError::BodyTooLarge { limit }
            } else {
                bad("body", format!("reading the body: {msg}"))
            }
        })?;
    let (head, raw) = binary::split_body(&headers, body)?;
    let ir: InferRequest = serde_json::from_slice(&head)
        .map_err(|e| bad("body", format!("not a valid inference request: {e}")))?;
    opts.budget = budget(&ir.parameters, opts.budget)?;
    // `V` and `V_image` pin their variant; `slimserve` honours `X-Variant`.
    if model.variant.is_some() {
        opts.variant = model.variant.clone();
    }
    let out_spec = output_spec(&svc, &ir)?;
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
    let mut offset = 0;
    let items = read_input(&svc, &model, input, &raw, &mut offset)?;
    if offset != raw.len() {
        return Err(bad(
            "binary_data_size",
            format!(
                "the binary part has {} bytes, the inputs use {offset}",
                raw.len()
            ),
        ));
    }
    let (route, budget) = svc.resolve(&opts)?;
    let deadline = arrival + budget;

    // Every image goes to the batcher on its own; they are awaited together.
    let mut set = tokio::task::JoinSet::new();
    let n = match items {
        Items::Tensors(ts) => {
            let n = ts.len();
            for (i, t) in ts.into_iter().enumerate() {
                let (svc, route) = (svc.clone(), route.clone());
                set.spawn(async move { (i, svc.infer(t, &route, arrival, deadline).await) });
            }
            n
        }
        Items::Images(imgs) => {
            let n = imgs.len();
            for (i, b) in imgs.into_iter().enumerate() {
                let (svc, route) = (svc.clone(), route.clone());
                set.spawn(async move {
                    let r = async {
                        let (t, _) = svc.preprocess_image(b).await?;
                        svc.infer(t, &route, arrival, deadline).await
                    }
                    .await;
                    (i, r)
                });
            }
            n
        }
    };
    let mut outcomes = vec![None; n];
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.map_err(|e| ServeError::Internal(format!("inference task: {e}")))?;
        if let Some(slot) = outcomes.get_mut(i) {
            *slot = Some(r?);
        }
    }
    let outcomes: Vec<_> = outcomes.into_iter().flatten().collect();
    let first = outcomes
        .first()
        .ok_or_else(|| ServeError::Internal("no inference result".into()))?;
    let variant = svc
        .specs
        .get(first.variant)
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let batch_size = first.batch_size;
    let classes = num_classes(&svc);

    let (datatype, shape, raw_out, json_data) = match out_spec.classes {
        None => {
            let mut logits = Vec::with_capacity(n * classes);
            for o in &outcomes {
                logits.extend_from_slice(&o.logits);
            }
            let width = outcomes.first().map_or(classes, |o| o.logits.len());
            let shape = vec![n, width];
            if out_spec.binary {
                ("FP32", shape, Some(binary::f32_to_le(&logits)), None)
            } else {
                ("FP32", shape, None, Some(json!(logits)))
            }
        }
        Some(k) => {
            let mut items = Vec::with_capacity(n * k);
            for o in &outcomes {
                for (index, score) in top_k(&o.logits, k) {
                    let label = svc.labels.get(index).map(String::as_str).unwrap_or("");
                    items.push(format!("{score}:{index}:{label}"));
                }
            }
            let shape = vec![n, k];
            if out_spec.binary {
                ("BYTES", shape, Some(binary::bytes_to_le(&items)), None)
            } else {
                ("BYTES", shape, None, Some(json!(items)))
            }
        }
    };
    let mut out_params = Map::new();
    if let Some(r) = &raw_out {
        out_params.insert("binary_data_size".into(), json!(r.len()));
    }
    let total = arrival.elapsed();
    let mut resp_params = Map::new();
    resp_params.insert("variant".into(), json!(variant));
    resp_params.insert("route".into(), json!(first.reason.as_str()));
    resp_params.insert("batch_size".into(), json!(batch_size));
    resp_params.insert("total_ms".into(), json!(total.as_secs_f64() * 1e3));
    let body = InferResponse {
        model_name: model.name.clone(),
        model_version: VERSION.into(),
        id: ir.id.clone(),
        parameters: resp_params,
        outputs: vec![ResponseOutput {
            name: "logits".into(),
            datatype,
            shape,
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
    if let Ok(v) = HeaderValue::from_str(&variant) {
        response.headers_mut().insert("x-variant", v);
    }
    Ok(Answer {
        response,
        variant,
        met: total <= budget,
    })
}

async fn infer(
    State(st): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    req: Request,
) -> Response {
    let arrival = Instant::now();
    let svc = match st.ready_service() {
        Ok(s) => s.clone(),
        Err(e) => return e.into_response(),
    };
    match run(svc.clone(), params, req, st.max_body_bytes, arrival).await {
        Ok(a) => {
            svc.record(Some(&a.variant), 200, arrival, Some(a.met));
            a.response
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
    fn budget_takes_the_smallest() {
        let mut p = Map::new();
        assert_eq!(budget(&p, None).unwrap(), None);
        p.insert("sla_ms".into(), json!(200));
        p.insert("timeout".into(), json!(50_000));
        assert_eq!(
            budget(&p, Some(Duration::from_millis(100))).unwrap(),
            Some(Duration::from_millis(50))
        );
        p.insert("sla_ms".into(), json!("x"));
        assert!(budget(&p, None).is_err());
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
