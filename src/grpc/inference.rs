//! `inference.GRPCInferenceService`: protobuf in and out of the
//! transport-independent `kserve::{model, infer, stats}` modules.

use super::pb;
use super::status;
use crate::error::ServeError;
use crate::http::classify::options_from_headers;
use crate::http::AppState;
use crate::kserve::infer::{self, bad, InputData, OutputData, Param, Params};
use crate::kserve::model::{self, Kind, PLATFORM, VERSION};
use crate::kserve::stats::{ModelStats, Tally};
use crate::service::Service;
use axum::body::Bytes;
use pb::infer_parameter::ParameterChoice;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

pub struct Inference {
    state: AppState,
}

impl Inference {
    pub fn new(state: AppState) -> Inference {
        Inference { state }
    }

    fn service(&self) -> Result<&Arc<Service>, Status> {
        self.state.ready_service().map_err(|e| status(&e))
    }
}

impl Params for HashMap<String, pb::InferParameter> {
    fn get_param(&self, name: &str) -> Option<Param> {
        Some(match self.get(name)?.parameter_choice.as_ref()? {
            ParameterChoice::BoolParam(b) => Param::Bool(*b),
            ParameterChoice::Int64Param(i) => Param::Int(*i),
            ParameterChoice::Uint64Param(u) => match i64::try_from(*u) {
                Ok(i) => Param::Int(i),
                Err(_) => Param::Float(*u as f64),
            },
            ParameterChoice::DoubleParam(f) => Param::Float(*f),
            ParameterChoice::StringParam(s) => Param::Str(s.clone()),
        })
    }
}

fn string_param(s: impl Into<String>) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(ParameterChoice::StringParam(s.into())),
    }
}

fn int_param(i: i64) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(ParameterChoice::Int64Param(i)),
    }
}

/// The client's gRPC deadline (`grpc-timeout`: up to 8 digits and a unit).
pub fn grpc_timeout(meta: &tonic::metadata::MetadataMap) -> Result<Option<Duration>, ServeError> {
    let Some(v) = meta.get("grpc-timeout") else {
        return Ok(None);
    };
    let err = || ServeError::BadHeader {
        name: "grpc-timeout",
        reason: "not a gRPC timeout (1-8 digits and one of H M S m u n)".into(),
    };
    let s = v.to_str().map_err(|_| err())?;
    if s.len() < 2 || s.len() > 9 {
        return Err(err());
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().map_err(|_| err())?;
    let d = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(err()),
    };
    if d.is_zero() {
        return Err(err());
    }
    Ok(Some(d))
}

fn tally(t: Tally) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: t.count,
        ns: t.ns,
    })
}

fn stats_pb(name: String, s: ModelStats) -> pb::ModelStatistics {
    pb::ModelStatistics {
        name,
        version: VERSION.into(),
        last_inference: s.last_inference,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: tally(s.success),
            fail: tally(s.fail),
            queue: tally(s.queue),
            compute_input: tally(s.compute_input),
            compute_infer: tally(s.compute_infer),
            compute_output: tally(s.compute_output),
            cache_hit: tally(Tally::default()),
            cache_miss: tally(Tally::default()),
        }),
        batch_stats: s
            .batches
            .iter()
            .map(|(b, t)| pb::InferBatchStatistics {
                batch_size: *b as u64,
                compute_infer: tally(*t),
                ..Default::default()
            })
            .collect(),
    }
}

fn model_config(svc: &Service, m: &model::Model) -> pb::ModelConfig {
    use pb::model_config::SchedulingChoice;
    use pb::model_version_policy::{Latest, PolicyChoice};
    let c = model::config(svc, m);
    let input = match m.kind {
        Kind::Tensor => pb::ModelInput {
            name: "input".into(),
            data_type: pb::DataType::TypeFp32 as i32,
            format: pb::model_input::Format::Nchw as i32,
            dims: c.input_dims.clone(),
        },
        Kind::Image => pb::ModelInput {
            name: "image".into(),
            data_type: pb::DataType::TypeString as i32,
            format: pb::model_input::Format::None as i32,
            dims: c.input_dims.clone(),
        },
    };
    pb::ModelConfig {
        name: c.name.clone(),
        platform: PLATFORM.into(),
        backend: "tract".into(),
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(PolicyChoice::Latest(Latest { num_versions: 1 })),
        }),
        max_batch_size: i32::try_from(c.max_batch_size).unwrap_or(i32::MAX),
        input: vec![input],
        output: vec![pb::ModelOutput {
            name: "logits".into(),
            data_type: pb::DataType::TypeFp32 as i32,
            dims: c.output_dims.clone(),
            label_filename: String::new(),
        }],
        instance_group: vec![pb::ModelInstanceGroup {
            name: format!("{}_cpu", c.name),
            count: i32::try_from(c.instances).unwrap_or(i32::MAX),
            kind: pb::model_instance_group::Kind::Cpu as i32,
        }],
        scheduling_choice: Some(SchedulingChoice::DynamicBatching(
            pb::ModelDynamicBatching {
                preferred_batch_size: c
                    .preferred_batch_sizes
                    .iter()
                    .map(|b| i32::try_from(*b).unwrap_or(i32::MAX))
                    .collect(),
                max_queue_delay_microseconds: c.max_queue_delay.as_micros() as u64,
                preserve_ordering: false,
            },
        )),
        parameters: HashMap::from([(
            "variant".to_string(),
            pb::ModelParameter {
                string_value: c.variant,
            },
        )]),
    }
}

/// The one input's data: `raw_input_contents` or typed `contents`.
fn input_data(
    kind: Kind,
    contents: Option<pb::InferTensorContents>,
    raw: Vec<Vec<u8>>,
) -> Result<InputData, ServeError> {
    if !raw.is_empty() {
        let [raw] = <[Vec<u8>; 1]>::try_from(raw).map_err(|r| {
            bad(
                "raw_input_contents",
                format!("{} entries for 1 input", r.len()),
            )
        })?;
        if contents.is_some() {
            return Err(bad(
                "contents",
                "set either raw_input_contents or contents, not both",
            ));
        }
        let raw = Bytes::from(raw);
        return Ok(match kind {
            Kind::Tensor => InputData::RawF32(raw),
            Kind::Image => InputData::RawElements(raw),
        });
    }
    let c = contents.unwrap_or_default();
    let others = !c.bool_contents.is_empty()
        || !c.int_contents.is_empty()
        || !c.int64_contents.is_empty()
        || !c.uint_contents.is_empty()
        || !c.uint64_contents.is_empty()
        || !c.fp64_contents.is_empty();
    match kind {
        Kind::Tensor if !others && c.bytes_contents.is_empty() => {
            Ok(InputData::F32(c.fp32_contents))
        }
        Kind::Image if !others && c.fp32_contents.is_empty() => Ok(InputData::Elements(
            c.bytes_contents.into_iter().map(Bytes::from).collect(),
        )),
        Kind::Tensor => Err(bad("contents", "input 'input' takes fp32_contents")),
        Kind::Image => Err(bad("contents", "input 'image' takes bytes_contents")),
    }
}

impl Inference {
    async fn infer(
        &self,
        svc: Arc<Service>,
        req: Request<pb::ModelInferRequest>,
        arrival: Instant,
    ) -> Result<(pb::ModelInferResponse, String, bool), ServeError> {
        let mut opts = options_from_headers(&req.metadata().clone().into_headers())?;
        if let Some(d) = grpc_timeout(req.metadata())? {
            opts.budget = Some(opts.budget.map_or(d, |b| b.min(d)));
        }
        let r = req.into_inner();
        let m = model::resolve(&svc, &r.model_name, &r.model_version)?;
        opts.budget = infer::budget(&r.parameters, opts.budget)?;
        // gRPC answers always in raw_output_contents, as Triton does.
        let spec = {
            let requested: Vec<(&str, &dyn Params)> = r
                .outputs
                .iter()
                .map(|o| (o.name.as_str(), &o.parameters as &dyn Params))
                .collect();
            infer::output_spec(&svc, &requested, true)?
        };
        let mut inputs = r.inputs;
        if inputs.len() != 1 {
            return Err(bad(
                "inputs",
                format!(
                    "model '{}' takes exactly one input, '{}'",
                    m.name,
                    m.input_name()
                ),
            ));
        }
        let input = inputs.remove(0);
        let n = infer::check_input(&svc, &m, &input.name, &input.datatype, &input.shape)?;
        let data = input_data(m.kind, input.contents, r.raw_input_contents)?;
        let items = infer::items(&svc, &m, n, data)?;
        let done = infer::execute(
            svc.clone(),
            &self.state.kserve_stats,
            &m,
            opts,
            items,
            arrival,
        )
        .await?;
        let out = infer::render(&svc, spec.classes, &done.outcomes);
        let raw = match &out.data {
            OutputData::F32(v) => crate::kserve::binary::f32_to_le(v),
            OutputData::Strings(v) => crate::kserve::binary::bytes_to_le(v),
        };
        let met = done.met(arrival);
        let resp = pb::ModelInferResponse {
            model_name: m.name.clone(),
            model_version: VERSION.into(),
            id: r.id,
            parameters: HashMap::from([
                ("variant".to_string(), string_param(done.variant.clone())),
                ("route".to_string(), string_param(done.route)),
                ("batch_size".to_string(), int_param(done.batch_size as i64)),
            ]),
            outputs: vec![pb::model_infer_response::InferOutputTensor {
                name: "logits".into(),
                datatype: out.datatype.into(),
                shape: out.shape.iter().map(|d| *d as i64).collect(),
                parameters: HashMap::new(),
                contents: None,
            }],
            raw_output_contents: vec![raw],
        };
        Ok((resp, done.variant, met))
    }
}

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.state.ready_service().is_ok(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = req.into_inner();
        let ready = match self.state.ready_service() {
            Ok(svc) => {
                model::resolve(svc, &r.name, &r.version).map_err(|e| status(&e))?;
                true
            }
            Err(_) => false,
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "slimserve".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::kserve::EXTENSIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        use pb::model_metadata_response::TensorMetadata;
        let svc = self.service()?;
        let r = req.into_inner();
        let m = model::resolve(svc, &r.name, &r.version).map_err(|e| status(&e))?;
        let md = model::metadata(svc, &m);
        let tensors = |ts: Vec<crate::kserve::types::TensorMetadata>| {
            ts.into_iter()
                .map(|t| TensorMetadata {
                    name: t.name.into(),
                    datatype: t.datatype.into(),
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: md.name,
            versions: md.versions.iter().map(|v| v.to_string()).collect(),
            platform: md.platform.into(),
            inputs: tensors(md.inputs),
            outputs: tensors(md.outputs),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let arrival = Instant::now();
        let svc = self.service()?.clone();
        match self.infer(svc.clone(), req, arrival).await {
            Ok((resp, variant, met)) => {
                svc.record(Some(&variant), 200, arrival, Some(met));
                Ok(Response::new(resp))
            }
            Err(e) => {
                svc.record_error(&e, arrival);
                Err(status(&e))
            }
        }
    }

    async fn model_config(
        &self,
        req: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let svc = self.service()?;
        let r = req.into_inner();
        let m = model::resolve(svc, &r.name, &r.version).map_err(|e| status(&e))?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(model_config(svc, &m)),
        }))
    }

    async fn model_statistics(
        &self,
        req: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let svc = self.service()?;
        let r = req.into_inner();
        let names = if r.name.is_empty() {
            model::all_models(svc).into_iter().map(|m| m.name).collect()
        } else {
            vec![
                model::resolve(svc, &r.name, &r.version)
                    .map_err(|e| status(&e))?
                    .name,
            ]
        };
        let model_stats = self
            .state
            .kserve_stats
            .snapshot(&names)
            .into_iter()
            .map(|(n, s)| stats_pb(n, s))
            .collect();
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataMap;

    #[test]
    fn grpc_timeouts_parse_and_junk_is_refused() {
        let mut m = MetadataMap::new();
        assert_eq!(grpc_timeout(&m).unwrap(), None);
        for (v, d) in [
            ("150m", Duration::from_millis(150)),
            ("2S", Duration::from_secs(2)),
            ("99999u", Duration::from_micros(99_999)),
        ] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(grpc_timeout(&m).unwrap(), Some(d), "{v}");
        }
        for v in ["m", "12x", "0m", "123456789m", "-5m"] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert!(grpc_timeout(&m).is_err(), "{v}");
        }
    }

    #[test]
    fn typed_contents_must_match_the_input_kind() {
        let f = pb::InferTensorContents {
            fp32_contents: vec![1.0, 2.0],
            ..Default::default()
        };
        assert!(matches!(
            input_data(Kind::Tensor, Some(f.clone()), vec![]),
            Ok(InputData::F32(v)) if v == [1.0, 2.0]
        ));
        assert!(input_data(Kind::Image, Some(f.clone()), vec![]).is_err());
        assert!(input_data(Kind::Tensor, Some(f), vec![vec![0; 4]]).is_err());
        assert!(input_data(Kind::Tensor, None, vec![vec![0; 4], vec![0; 4]]).is_err());
        let i = pb::InferTensorContents {
            int_contents: vec![1],
            ..Default::default()
        };
        assert!(input_data(Kind::Tensor, Some(i), vec![]).is_err());
    }
}
