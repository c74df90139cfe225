//! `GET /openapi.json`: the OpenAPI 3.1 description of the HTTP endpoints.
//!
//! Generated from the code: the routes of `http::api_router` are registered
//! with their `#[utoipa::path]` annotations (path, method, parameters and
//! bodies side by side with the handler), the schemas derive from the Rust
//! types the handlers serialize, and the error kinds come from the error
//! table (`ServeError::examples`). The Open Inference Protocol routes
//! (`kserve::http::router`) are described here, with their bodies' schemas
//! derived from `kserve::types`. `tests/openapi.rs` checks that every route
//! the router answers is in the document, and validates it with an
//! independent validator.

use crate::error::ServeError;
use crate::kserve::types::{
    InferRequest, InferResponse, ModelMetadata, RequestInput, RequestOutput, ResponseOutput,
    ServerMetadata, TensorMetadata,
};
use axum::Json;
use serde::Serialize;
use std::sync::OnceLock;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, ResponseBuilder, Schema};
use utoipa::{OpenApi, PartialSchema, ToSchema};

/// Every error answer: `{"error": "...", "kind": "..."}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    #[schema(
        example = "latency budget of 5 ms cannot be met: the best predicted latency is 14.2 ms (variant 'pruned')"
    )]
    pub error: String,
    /// What went wrong, for a program.
    #[schema(schema_with = error_kind)]
    pub kind: String,
}

/// The error kinds with their HTTP status and gRPC code, from the error table.
fn error_kind() -> Schema {
    let ex = ServeError::examples();
    let rows: Vec<String> = ex
        .iter()
        .map(|e| {
            format!(
                "- `{}`: HTTP {}, gRPC code {}",
                e.kind(),
                e.http_status(),
                e.grpc_code() as i32
            )
        })
        .collect();
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(ex.iter().map(ServeError::kind)))
        .description(Some(format!(
            "One of the error table's kinds (`src/error.rs`):\n{}",
            rows.join("\n")
        )))
        .into()
}

/// An encoded image (JPEG, PNG, WebP, GIF, BMP or TIFF) as the raw body.
pub struct ImageBody;

impl PartialSchema for ImageBody {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("image/*")
            .description(Some(
                "The encoded image: JPEG, PNG, WebP, GIF, BMP or TIFF (recognised from its bytes)",
            ))
            .into()
    }
}

impl ToSchema for ImageBody {}

/// `multipart/form-data` with the image in field `image`.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only
pub struct ClassifyForm {
    /// The encoded image.
    #[schema(value_type = String, content_media_type = "image/*")]
    image: Vec<u8>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "slimserve",
        description = "Serves an image classifier in several variants (fp32, pruned, int8, or your own ONNX model) and routes each request to the most accurate variant predicted to meet its latency budget (`X-SLA-Ms`). Errors are `ErrorBody` JSON everywhere. The Open Inference Protocol (KServe v2) is served under `/v2` (and over gRPC on another port)."
    ),
    components(schemas(
        ErrorBody,
        InferRequest,
        RequestInput,
        RequestOutput,
        InferResponse,
        ResponseOutput,
        ModelMetadata,
        TensorMetadata,
        ServerMetadata
    )),
    tags(
        (name = "slimserve", description = "Classification and the variants"),
        (name = "health", description = "Probes and metrics"),
        (name = "page", description = "The try-it page"),
        (name = "kserve-v2", description = "Open Inference Protocol (KServe v2) over HTTP: https://github.com/kserve/open-inference-protocol")
    )
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "health",
    summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(document())
}

/// The whole document: the annotated routes and the inference protocol's.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, mut api) = super::api_router().split_for_parts();
        add_kserve(&mut api);
        api
    })
}

fn schema_ref(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

fn json_response(description: &str, schema: RefOr<Schema>) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(schema)).build(),
        )
        .build()
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    json_response(description, schema_ref("ErrorBody"))
}

fn any_object() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Object).into()
}

/// One inference-protocol operation.
fn kserve_op(path: &str, summary: &str, ok: utoipa::openapi::Response) -> Operation {
    let mut op = OperationBuilder::new()
        .tag("kserve-v2")
        .summary(Some(summary))
        .operation_id(Some(operation_id(path)))
        .response("200", ok);
    for name in ["model", "version"] {
        if path.contains(&format!("{{{name}}}")) {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .description(Some(if name == "model" {
                        "`slimserve` (routed by budget, BYTES image input), a variant name (FP32 preprocessed tensor input) or `<variant>_image` (BYTES image input, pinned)"
                    } else {
                        "`1`, the only version"
                    }))
                    .schema(Some(String::schema())),
            );
        }
    }
    if path.contains('{') {
        op = op.response("404", error_response("`unknown_model`"));
    }
    op = op.response(
        "503",
        error_response("`not_ready` (loading), `shutting_down`"),
    );
    op.build()
}

/// `get /v2/models/{model}/infer` → `v2_models_model_infer`.
fn operation_id(path: &str) -> String {
    path.trim_start_matches('/')
        .replace(['{', '}'], "")
        .replace('/', "_")
}

fn add_kserve(api: &mut utoipa::openapi::OpenApi) {
    let empty = |d: &str| ResponseBuilder::new().description(d).build();
    let get: Vec<(&str, &str, utoipa::openapi::Response)> = vec![
        (
            "/v2",
            "Server metadata: name, version, protocol extensions",
            json_response("Server metadata", ServerMetadata::schema()),
        ),
        ("/v2/health/live", "Server liveness", empty("Live")),
        (
            "/v2/health/ready",
            "Server readiness (503 while loading or draining)",
            empty("Ready"),
        ),
        (
            "/v2/models/stats",
            "Per-model inference statistics (Triton's statistics extension)",
            json_response("`{\"model_stats\": [...]}`", any_object()),
        ),
    ];
    let per_model: Vec<(&str, &str, utoipa::openapi::Response)> = vec![
        (
            "",
            "Model metadata: inputs and outputs",
            json_response("Model metadata", ModelMetadata::schema()),
        ),
        ("/ready", "Model readiness", empty("Ready")),
        (
            "/config",
            "Model configuration (Triton's model_configuration extension)",
            json_response("Triton model configuration", any_object()),
        ),
        (
            "/stats",
            "The model's inference statistics",
            json_response("`{\"model_stats\": [...]}`", any_object()),
        ),
    ];
    let mut add = |path: String, method: HttpMethod, op: Operation| {
        api.paths.add_path_operation(path, vec![method], op);
    };
    for (path, summary, ok) in get {
        add(path.into(), HttpMethod::Get, kserve_op(path, summary, ok));
    }
    for base in [
        "/v2/models/{model}",
        "/v2/models/{model}/versions/{version}",
    ] {
        for (tail, summary, ok) in &per_model {
            let path = format!("{base}{tail}");
            let op = kserve_op(&path, summary, ok.clone());
            add(path, HttpMethod::Get, op);
        }
        let path = format!("{base}/infer");
        let mut op = kserve_op(
            &path,
            "Inference: JSON tensors, or the binary tensor data extension",
            json_response(
                "Outputs (with the binary extension: JSON header then raw output data, `Inference-Header-Content-Length` gives the header's length)",
                InferResponse::schema(),
            ),
        );
        op.request_body = Some(RefOr::T(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .description(Some("JSON inference request, or with the binary tensor data extension (`application/octet-stream`): the JSON inference request, its length in the `Inference-Header-Content-Length` header, followed by the raw input data"))
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(InferRequest::schema())).build(),
                )
                .content(
                    "application/octet-stream",
                    ContentBuilder::new().build(),
                )
                .build(),
        ));
        for (name, description) in [
            ("X-SLA-Ms", "Latency budget in milliseconds (also parameter `sla_ms`, Triton's `timeout` in µs)"),
            ("Inference-Header-Content-Length", "Binary extension: length of the JSON header at the start of the body"),
        ] {
            op.parameters.get_or_insert_with(Vec::new).push(RefOr::T(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(description))
                    .schema(Some(String::schema()))
                    .build(),
            ));
        }
        op.responses.responses.insert(
            "400".into(),
            RefOr::T(error_response(
                "Bad input: `bad_parameter`, `bad_header`, `bad_image`, `unknown_variant`, ...",
            )),
        );
        op.responses.responses.insert(
            "504".into(),
            RefOr::T(error_response("`deadline_expired`, `answer_late`")),
        );
        add(path, HttpMethod::Post, op);
    }
}
