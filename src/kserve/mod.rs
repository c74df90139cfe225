//! The Open Inference Protocol (KServe v2, as spoken by Triton's HTTP
//! clients) over the existing axum app, on top of the transport-independent
//! [`crate::service::Service`].
//!
//! Models exposed, for every loaded variant `V`:
//! - `V`: input `input`, FP32 `[-1,3,224,224]` (already preprocessed, NCHW,
//!   the same normalisation as the server's own preprocessing), output
//!   `logits`, FP32 `[-1,1000]`; runs pinned to variant `V`.
//! - `V_image`: input `image`, BYTES `[-1,1]` (each element an encoded
//!   JPEG/PNG/... image), output `logits`; decoded and preprocessed by the
//!   server, runs pinned to variant `V`.
//! - `slimserve`: like `V_image`, but routed by the SLA router (no pinned
//!   variant; the `X-Variant` and `X-Min-Accuracy` headers work as on
//!   `/classify`).
//!
//! Every model has the single version `"1"`. Supported extensions:
//! `binary_tensor_data`, `classification` (output parameter
//! `classification: k` turns `logits` into BYTES `[N,k]` of
//! `"score:index:label"`), `model_configuration`, `parameters`,
//! `statistics`. The same models are served over gRPC (`crate::grpc`).
//! The latency budget comes from the request parameter `sla_ms`, Triton's
//! `timeout` parameter (microseconds) or the `X-SLA-Ms` header (the smallest
//! wins); `priority` is accepted and ignored.

pub mod binary;
pub mod http;
pub mod infer;
pub mod model;
pub mod stats;
pub mod types;

/// Protocol extensions both transports support (`GET /v2`, ServerMetadata).
pub const EXTENSIONS: &[&str] = &[
    "classification",
    "binary_tensor_data",
    "model_configuration",
    "parameters",
    "statistics",
];

pub use http::router;
