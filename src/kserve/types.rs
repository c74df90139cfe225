//! JSON bodies of the Open Inference Protocol.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    pub inputs: Vec<RequestInput>,
    #[serde(default)]
    pub outputs: Vec<RequestOutput>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RequestInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub data: Option<Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RequestOutput {
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    pub outputs: Vec<ResponseOutput>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResponseOutput {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TensorMetadata {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<&'static str>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: Vec<&'static str>,
}
