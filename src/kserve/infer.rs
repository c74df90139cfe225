//! One inference request of the protocol, independent of transport: check
//! the input tensor, queue every image through the shared router and
//! batcher, and shape the output (logits or the classification extension).
//! HTTP and gRPC only translate their encodings to and from these types.

use super::model::{num_classes, tensor_dims, Kind, Model, MAX_IMAGES_PER_REQUEST};
use super::stats::Stats;
use crate::batching::Outcome;
use crate::engine::top_k;
use crate::error::ServeError;
use crate::service::{budget_from_ms, RequestOptions, Service};
use axum::body::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn bad(name: &'static str, reason: impl Into<String>) -> ServeError {
    ServeError::BadParameter {
        name,
        reason: reason.into(),
    }
}

/// A parameter value as either protocol carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Param {
    fn number(&self) -> Option<f64> {
        match self {
            Param::Int(i) => Some(*i as f64),
            Param::Float(f) => Some(*f),
            Param::Str(s) => s.trim().parse().ok(),
            Param::Bool(_) => None,
        }
    }
}

/// Look-up of a request's or tensor's parameters.
pub trait Params {
    fn get_param(&self, name: &str) -> Option<Param>;

    /// `Some(Err)` when present but not a non-negative integer.
    fn get_usize(&self, name: &str) -> Option<Result<usize, ()>> {
        self.get_param(name).map(|p| match p {
            Param::Int(i) => usize::try_from(i).map_err(|_| ()),
            Param::Str(s) => s.trim().parse().map_err(|_| ()),
            _ => Err(()),
        })
    }

    fn get_bool(&self, name: &str) -> Option<bool> {
        match self.get_param(name)? {
            Param::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// The budget: the smallest of `sla_ms`, Triton's `timeout` (µs) and the
/// transport's own (the `X-SLA-Ms` header, a gRPC deadline).
pub fn budget(
    params: &dyn Params,
    transport: Option<Duration>,
) -> Result<Option<Duration>, ServeError> {
    let mut out = transport;
    for (name, per_ms) in [("sla_ms", 1.0), ("timeout", 1e3)] {
        let Some(v) = params.get_param(name) else {
            continue;
        };
        let d = v
            .number()
            .and_then(|x| budget_from_ms(x / per_ms))
            .ok_or_else(|| bad(name, format!("{v:?} is not a positive number")))?;
        out = Some(out.map_or(d, |o| o.min(d)));
    }
    Ok(out)
}

/// Check an input tensor's name, datatype and shape against the model;
/// returns the number of images it carries.
pub fn check_input(
    svc: &Service,
    model: &Model,
    name: &str,
    datatype: &str,
    shape: &[i64],
) -> Result<usize, ServeError> {
    if name != model.input_name() {
        return Err(bad(
            "inputs",
            format!(
                "unknown input '{name}' for model '{}': expected '{}'",
                model.name,
                model.input_name()
            ),
        ));
    }
    if datatype != model.input_datatype() {
        return Err(bad(
            "datatype",
            format!(
                "input '{name}' has datatype {datatype}, expected {}",
                model.input_datatype()
            ),
        ));
    }
    let n = shape
        .first()
        .and_then(|n| usize::try_from(*n).ok())
        .filter(|n| (1..=MAX_IMAGES_PER_REQUEST).contains(n))
        .ok_or_else(|| {
            bad(
                "shape",
                format!("batch dimension must be in 1..={MAX_IMAGES_PER_REQUEST}"),
            )
        })?;
    let ok = match model.kind {
        Kind::Tensor => shape.len() == 4 && shape[1..] == tensor_dims(svc, model)[..],
        Kind::Image => matches!(shape, [_] | [_, 1]),
    };
    if !ok {
        let want = match model.kind {
            Kind::Tensor => format!("{:?}", tensor_dims(svc, model)).replacen('[', "[N,", 1),
            Kind::Image => "[N] or [N,1]".into(),
        };
        return Err(bad(
            "shape",
            format!("input '{name}' has shape {shape:?}, expected {want}"),
        ));
    }
    Ok(n)
}

/// An input tensor's data as a transport carried it.
pub enum InputData {
    /// Typed FP32 elements (JSON numbers, `fp32_contents`).
    F32(Vec<f32>),
    /// Raw little-endian FP32 (binary extension, `raw_input_contents`).
    RawF32(Bytes),
    /// BYTES elements (JSON strings, `bytes_contents`).
    Elements(Vec<Bytes>),
    /// Raw BYTES: each element a 4-byte little-endian length + bytes.
    RawElements(Bytes),
}

/// The images of one request: preprocessed tensors or encoded images.
pub enum Items {
    Tensors(Vec<Vec<f32>>),
    Images(Vec<Bytes>),
}

/// Split checked data into `n` images.
pub fn items(svc: &Service, model: &Model, n: usize, data: InputData) -> Result<Items, ServeError> {
    let name = model.input_name();
    match (model.kind, data) {
        (Kind::Tensor, data) => {
            let data = match data {
                InputData::F32(v) => v,
                InputData::RawF32(raw) => super::binary::f32_from_le(&raw)?,
                _ => return Err(bad("data", "input 'input' needs FP32 data")),
            };
            let dims = tensor_dims(svc, model);
            let per = dims.iter().product::<i64>() as usize;
            if data.len() != per * n {
                return Err(bad(
                    "data",
                    format!(
                        "input '{name}' has {} elements, {n} images of {dims:?} need {}",
                        data.len(),
                        per * n
                    ),
                ));
            }
            Ok(Items::Tensors(
                data.chunks_exact(per).map(<[f32]>::to_vec).collect(),
            ))
        }
        (Kind::Image, data) => {
            let elems = match data {
                InputData::Elements(v) => v,
                InputData::RawElements(raw) => super::binary::bytes_elements(&raw)?,
                _ => return Err(bad("data", "input 'image' needs BYTES data")),
            };
            if elems.len() != n {
                return Err(bad(
                    "data",
                    format!(
                        "input '{name}' has {} elements, its shape needs {n}",
                        elems.len()
                    ),
                ));
            }
            Ok(Items::Images(elems))
        }
    }
}

/// What the client asked back: logits, or the top `classes` as
/// `"score:index:label"` strings (the classification extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSpec {
    pub classes: Option<usize>,
    pub binary: bool,
}

/// `requested`: the requested outputs (name and parameters), none meaning
/// "all outputs"; `default_binary` is the request-level default.
pub fn output_spec(
    svc: &Service,
    requested: &[(&str, &dyn Params)],
    default_binary: bool,
) -> Result<OutputSpec, ServeError> {
    match requested {
        [] => Ok(OutputSpec {
            classes: None,
            binary: default_binary,
        }),
        [(name, params)] => {
            if *name != "logits" {
                return Err(bad(
                    "outputs",
                    format!("unknown output '{name}': the only output is 'logits'"),
                ));
            }
            let max = svc.config.max_top_k.min(num_classes(svc));
            let classes = match params.get_usize("classification") {
                None | Some(Ok(0)) => None,
                Some(Ok(k)) if k <= max => Some(k),
                _ => {
                    return Err(bad(
                        "classification",
                        format!("must be an integer in 1..={max}"),
                    ))
                }
            };
            Ok(OutputSpec {
                classes,
                binary: params.get_bool("binary_data").unwrap_or(default_binary),
            })
        }
        _ => Err(bad("outputs", "the only output is 'logits'")),
    }
}

/// A request that went through the batcher.
pub struct Executed {
    pub variant: String,
    pub route: &'static str,
    pub batch_size: usize,
    pub budget: Duration,
    pub outcomes: Vec<Outcome>,
}

impl Executed {
    pub fn met(&self, arrival: Instant) -> bool {
        arrival.elapsed() <= self.budget
    }
}

/// Queue every image of the request through the shared router and batcher
/// (each on its own, awaited together) and record the model statistics.
pub async fn execute(
    svc: Arc<Service>,
    stats: &Stats,
    model: &Model,
    mut opts: RequestOptions,
    items: Items,
    arrival: Instant,
) -> Result<Executed, ServeError> {
    // `V` and `V_image` pin their variant; `slimserve` routes.
    if model.variant.is_some() {
        opts.variant = model.variant.clone();
    }
    let result = run(svc.clone(), &opts, items, arrival).await;
    stats.record(
        &model.name,
        arrival,
        result.as_ref().ok().map(|(e, pre)| (&e.outcomes[..], *pre)),
    );
    result.map(|(e, _)| e)
}

async fn run(
    svc: Arc<Service>,
    opts: &RequestOptions,
    items: Items,
    arrival: Instant,
) -> Result<(Executed, Duration), ServeError> {
    let (route, budget) = svc.resolve(opts)?;
    let deadline = arrival + budget;
    let mut set = tokio::task::JoinSet::new();
    let n = match items {
        Items::Tensors(ts) => {
            let n = ts.len();
            for (i, t) in ts.into_iter().enumerate() {
                let (svc, route) = (svc.clone(), route.clone());
                set.spawn(async move {
                    let r = svc.infer(t, &route, arrival, deadline).await;
                    (i, r.map(|o| (o, Duration::ZERO)))
                });
            }
            n
        }
        Items::Images(imgs) => {
            // Refuse at once what cannot be met, before decoding anything.
            svc.batcher.precheck(&route, arrival, deadline)?;
            let n = imgs.len();
            for (i, b) in imgs.into_iter().enumerate() {
                let (svc, route) = (svc.clone(), route.clone());
                set.spawn(async move {
                    let r = async {
                        let (t, pre) = svc.preprocess_image(b, &route, arrival, deadline).await?;
                        Ok((svc.infer(t, &route, arrival, deadline).await?, pre))
                    }
                    .await;
                    (i, r)
                });
            }
            n
        }
    };
    let mut slots: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
    let mut preprocess = Duration::ZERO;
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.map_err(|e| ServeError::Internal(format!("inference task: {e}")))?;
        let (o, pre) = r?;
        preprocess += pre;
        if let Some(slot) = slots.get_mut(i) {
            *slot = Some(o);
        }
    }
    let outcomes: Vec<Outcome> = slots.into_iter().flatten().collect();
    let first = outcomes
        .first()
        .ok_or_else(|| ServeError::Internal("no inference result".into()))?;
    Ok((
        Executed {
            variant: svc
                .specs
                .get(first.variant)
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            route: first.reason.as_str(),
            batch_size: first.batch_size,
            budget,
            outcomes,
        },
        preprocess,
    ))
}

/// The output tensor's data.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    F32(Vec<f32>),
    Strings(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    pub data: OutputData,
}

/// Logits `[N, classes]`, or with the classification extension BYTES
/// `[N, k]` of `"score:index:label"`, best first.
pub fn render(svc: &Service, classes: Option<usize>, outcomes: &[Outcome]) -> Output {
    let n = outcomes.len();
    match classes {
        None => {
            let width = outcomes
                .first()
                .map_or(num_classes(svc), |o| o.logits.len());
            let mut logits = Vec::with_capacity(n * width);
            for o in outcomes {
                logits.extend_from_slice(&o.logits);
            }
            Output {
                datatype: "FP32",
                shape: vec![n, width],
                data: OutputData::F32(logits),
            }
        }
        Some(k) => {
            let mut items = Vec::with_capacity(n * k);
            for o in outcomes {
                for (index, score) in top_k(&o.logits, k) {
                    let label = svc.labels.get(index).map(String::as_str).unwrap_or("");
                    items.push(format!("{score}:{index}:{label}"));
                }
            }
            Output {
                datatype: "BYTES",
                shape: vec![n, k],
                data: OutputData::Strings(items),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    impl Params for HashMap<&str, Param> {
        fn get_param(&self, name: &str) -> Option<Param> {
            self.get(name).cloned()
        }
    }

    #[test]
    fn budget_takes_the_smallest_and_rejects_junk() {
        let mut p: HashMap<&str, Param> = HashMap::new();
        assert_eq!(budget(&p, None).unwrap(), None);
        p.insert("sla_ms", Param::Int(200));
        p.insert("timeout", Param::Int(50_000));
        assert_eq!(
            budget(&p, Some(Duration::from_millis(100))).unwrap(),
            Some(Duration::from_millis(50))
        );
        p.insert("timeout", Param::Float(500_000.0));
        assert_eq!(budget(&p, None).unwrap(), Some(Duration::from_millis(200)));
        p.insert("sla_ms", Param::Str("x".into()));
        assert!(budget(&p, None).is_err());
        p.insert("sla_ms", Param::Int(-5));
        assert!(budget(&p, None).is_err());
        p.insert("sla_ms", Param::Bool(true));
        assert!(budget(&p, None).is_err());
    }

    #[test]
    fn usize_parameters_refuse_negatives() {
        let mut p: HashMap<&str, Param> = HashMap::new();
        p.insert("k", Param::Int(-1));
        assert_eq!(p.get_usize("k"), Some(Err(())));
        p.insert("k", Param::Int(3));
        assert_eq!(p.get_usize("k"), Some(Ok(3)));
        assert_eq!(p.get_usize("absent"), None);
    }
}
