//! The models the protocol exposes, resolved from a name and version, and
//! what their metadata and configuration say, independent of transport.

use super::types::{ModelMetadata, TensorMetadata};
use crate::error::ServeError;
use crate::service::Service;
use std::time::Duration;

/// The routed model (no pinned variant, BYTES image input).
pub const ROUTED_MODEL: &str = "slimserve";
pub const IMAGE_SUFFIX: &str = "_image";
pub const VERSION: &str = "1";
pub const PLATFORM: &str = "tract_onnx";
/// The most images one request may carry (each is queued on its own).
pub const MAX_IMAGES_PER_REQUEST: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// FP32 preprocessed tensor input.
    Tensor,
    /// BYTES encoded image input.
    Image,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub kind: Kind,
    /// The pinned variant; `None` for the routed model.
    pub variant: Option<String>,
}

impl Model {
    pub fn input_name(&self) -> &'static str {
        match self.kind {
            Kind::Tensor => "input",
            Kind::Image => "image",
        }
    }

    pub fn input_datatype(&self) -> &'static str {
        match self.kind {
            Kind::Tensor => "FP32",
            Kind::Image => "BYTES",
        }
    }

    /// The input shape with `-1` for the batch dimension: the config's dims
    /// behind it, as Triton reports a batching model (clients such as
    /// perf_analyzer take the shape of one item from what follows the `-1`).
    pub fn input_shape(&self, svc: &Service) -> Vec<i64> {
        let mut shape = vec![-1];
        shape.extend(tensor_dims(svc, self));
        shape
    }
}

/// One image's input dims without the batch: the pinned variant's input
/// (`[3, 224, 224]` for the bundled models, NHWC for an NHWC model), or
/// `[1]` for the encoded-image models.
pub fn tensor_dims(svc: &Service, m: &Model) -> Vec<i64> {
    let spec = m
        .variant
        .as_deref()
        .and_then(|n| svc.specs.iter().find(|s| s.name == n));
    match (m.kind, spec) {
        (Kind::Tensor, Some(s)) => s.input_shape[1..].to_vec(),
        _ => vec![1],
    }
}

pub fn num_classes(svc: &Service) -> usize {
    svc.labels.len()
}

/// Every model name the server exposes, in a stable order.
pub fn all_models(svc: &Service) -> Vec<Model> {
    let mut out = vec![Model {
        name: ROUTED_MODEL.into(),
        kind: Kind::Image,
        variant: None,
    }];
    for s in &svc.specs {
        out.push(Model {
            name: s.name.clone(),
            kind: Kind::Tensor,
            variant: Some(s.name.clone()),
        });
        out.push(Model {
            name: format!("{}{IMAGE_SUFFIX}", s.name),
            kind: Kind::Image,
            variant: Some(s.name.clone()),
        });
    }
    out
}

/// `version` empty means "the latest", as both protocols allow.
pub fn resolve(svc: &Service, name: &str, version: &str) -> Result<Model, ServeError> {
    if !version.is_empty() && version != VERSION {
        return Err(ServeError::UnknownModel {
            name: format!("{name} version {version}"),
        });
    }
    let has = |n: &str| svc.specs.iter().any(|s| s.name == n);
    if name == ROUTED_MODEL {
        Ok(Model {
            name: name.into(),
            kind: Kind::Image,
            variant: None,
        })
    } else if has(name) {
        Ok(Model {
            name: name.into(),
            kind: Kind::Tensor,
            variant: Some(name.into()),
        })
    } else if let Some(v) = name.strip_suffix(IMAGE_SUFFIX).filter(|v| has(v)) {
        Ok(Model {
            name: name.into(),
            kind: Kind::Image,
            variant: Some(v.into()),
        })
    } else {
        Err(ServeError::UnknownModel { name: name.into() })
    }
}

pub fn metadata(svc: &Service, m: &Model) -> ModelMetadata {
    ModelMetadata {
        name: m.name.clone(),
        versions: vec![VERSION],
        platform: PLATFORM,
        inputs: vec![TensorMetadata {
            name: m.input_name(),
            datatype: m.input_datatype(),
            shape: m.input_shape(svc),
        }],
        outputs: vec![TensorMetadata {
            name: "logits",
            datatype: "FP32",
            shape: vec![-1, num_classes(svc) as i64],
        }],
    }
}

/// What Triton's model configuration says about a model, from the server's
/// real settings (both transports render it).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigInfo {
    pub name: String,
    pub variant: String,
    /// Images one request may carry.
    pub max_batch_size: usize,
    /// Input dims without the batch dimension.
    pub input_dims: Vec<i64>,
    pub output_dims: Vec<i64>,
    /// Batch sizes the server builds plans for beyond 1 (empty: batching off).
    pub preferred_batch_sizes: Vec<usize>,
    pub max_queue_delay: Duration,
    /// Inference worker threads (Triton's CPU instance count).
    pub instances: usize,
}

pub fn config(svc: &Service, m: &Model) -> ConfigInfo {
    ConfigInfo {
        name: m.name.clone(),
        variant: m.variant.clone().unwrap_or_default(),
        max_batch_size: MAX_IMAGES_PER_REQUEST,
        input_dims: tensor_dims(svc, m),
        output_dims: vec![num_classes(svc) as i64],
        preferred_batch_sizes: svc.config.batch_sizes.clone(),
        max_queue_delay: if svc.config.batch_sizes.is_empty() {
            Duration::ZERO
        } else {
            svc.config.max_batch_wait
        },
        instances: svc.config.workers,
    }
}
