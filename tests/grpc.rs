//! The gRPC transport (Open Inference Protocol and grpc.health.v1) against
//! the real server and the real models, with tonic's generated client.

mod common;

use common::{args, photo, start};
use slimserve::grpc::pb;
use slimserve::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use slimserve::grpc::pb::infer_parameter::ParameterChoice;
use slimserve::grpc::pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use slimserve::manifest::{bundled_models_dir, Manifest};
use slimserve::preprocess::{preprocess, DecodeLimits};
use std::collections::HashMap;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn argmax(xs: &[f32]) -> usize {
    xs.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

fn le_f32(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn bytes_element(b: &[u8]) -> Vec<u8> {
    let mut out = (b.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(b);
    out
}

fn int_param(i: i64) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(ParameterChoice::Int64Param(i)),
    }
}

fn tensor_request(model: &str, x: &[f32], n: i64) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        id: "r1".into(),
        parameters: HashMap::from([("sla_ms".to_string(), int_param(30_000))]),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![n, 3, 224, 224],
            ..Default::default()
        }],
        raw_input_contents: vec![x.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

fn image_request(model: &str, png: &[u8]) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        parameters: HashMap::from([("timeout".to_string(), int_param(30_000_000))]),
        inputs: vec![InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            contents: Some(pb::InferTensorContents {
                bytes_contents: vec![png.to_vec()],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn health(ch: Channel, service: &str) -> ServingStatus {
    let r = HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap();
    ServingStatus::try_from(r.into_inner().status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_inference_service_and_health() {
    let server = start(args(&[])).await;
    let ch = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = GrpcInferenceServiceClient::new(ch.clone()).max_decoding_message_size(64 << 20);

    for s in ["", "inference.GRPCInferenceService"] {
        assert_eq!(health(ch.clone(), s).await, ServingStatus::Serving, "{s}");
    }
    let unknown = HealthClient::new(ch.clone())
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let live = c.server_live(pb::ServerLiveRequest {}).await.unwrap();
    assert!(live.into_inner().live);
    let ready = c.server_ready(pb::ServerReadyRequest {}).await.unwrap();
    assert!(ready.into_inner().ready);
    let meta = c
        .server_metadata(pb::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "slimserve");
    for ext in ["classification", "model_configuration", "statistics"] {
        assert!(meta.extensions.iter().any(|e| e == ext), "{ext}");
    }

    let m = Manifest::load(&bundled_models_dir()).unwrap();
    let png = photo("chelsea.png");
    let x = preprocess(&png, &m.variants[0].preprocess, DecodeLimits::default()).unwrap();
    for spec in &m.variants {
        let v = spec.name.as_str();
        let r = c
            .model_ready(pb::ModelReadyRequest {
                name: v.into(),
                version: "1".into(),
            })
            .await
            .unwrap();
        assert!(r.into_inner().ready);
        let md = c
            .model_metadata(pb::ModelMetadataRequest {
                name: v.into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(md.versions, ["1"]);
        assert_eq!(md.inputs[0].shape, [-1, 3, 224, 224]);
        assert_eq!(md.inputs[0].datatype, "FP32");
        let cfg = c
            .model_config(pb::ModelConfigRequest {
                name: v.into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .config
            .unwrap();
        assert_eq!(cfg.name, v);
        assert!(cfg.max_batch_size >= 1);
        assert_eq!(cfg.input[0].data_type, pb::DataType::TypeFp32 as i32);
        assert_eq!(cfg.input[0].dims, [3, 224, 224]);
        assert_eq!(cfg.instance_group[0].count, 2, "the test server's workers");
        assert_eq!(cfg.parameters["variant"].string_value, v);

        // Two preprocessed tensors in raw_input_contents.
        let mut two = x.clone();
        two.extend_from_slice(&x);
        let r = c
            .model_infer(tensor_request(v, &two, 2))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.model_name.as_str(), r.id.as_str()), (v, "r1"));
        assert_eq!(r.outputs[0].name, "logits");
        assert_eq!(r.outputs[0].datatype, "FP32");
        assert_eq!(r.outputs[0].shape, [2, 1000]);
        let logits = le_f32(&r.raw_output_contents[0]);
        assert_eq!(logits.len(), 2000);
        let top = argmax(&logits[..1000]);
        assert_eq!(top, argmax(&logits[1000..]));
        // The same answer as /classify on the encoded photo.
        let reference: serde_json::Value = reqwest::Client::new()
            .post(server.url("/classify"))
            .header("x-variant", v)
            .body(png.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let want_label = reference["predictions"][0]["label"].as_str().unwrap();
        assert_eq!(top as u64, reference["predictions"][0]["index"], "{v}");
        match r.parameters["variant"].parameter_choice.as_ref() {
            Some(ParameterChoice::StringParam(s)) => assert_eq!(s, v),
            p => panic!("variant parameter {p:?}"),
        }

        // The encoded photo as BYTES, typed contents; and the classification
        // extension over raw BYTES.
        let r = c
            .model_infer(image_request(&format!("{v}_image"), &png))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(argmax(&le_f32(&r.raw_output_contents[0])), top);
        let mut req = image_request(&format!("{v}_image"), &png);
        req.inputs[0].contents = None;
        req.raw_input_contents = vec![bytes_element(&png)];
        req.outputs = vec![InferRequestedOutputTensor {
            name: "logits".into(),
            parameters: HashMap::from([("classification".to_string(), int_param(3))]),
        }];
        let r = c.model_infer(req).await.unwrap().into_inner();
        assert_eq!(r.outputs[0].datatype, "BYTES");
        assert_eq!(r.outputs[0].shape, [1, 3]);
        let raw = &r.raw_output_contents[0];
        let len = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
        let first = std::str::from_utf8(&raw[4..4 + len]).unwrap();
        let parts: Vec<&str> = first.splitn(3, ':').collect();
        assert_eq!(parts[1], top.to_string(), "{first}");
        assert_eq!(parts[2], want_label, "{v}");
    }

    // The routed model, with the budget as a gRPC deadline and a header.
    let mut req = tonic::Request::new(image_request("slimserve", &png));
    req.set_timeout(std::time::Duration::from_secs(30));
    req.metadata_mut()
        .insert("x-sla-ms", "20000".parse().unwrap());
    let r = c.model_infer(req).await.unwrap().into_inner();
    assert_eq!(argmax(&le_f32(&r.raw_output_contents[0])), 282);

    // Statistics count what went through the protocol.
    let st = c
        .model_statistics(pb::ModelStatisticsRequest {
            name: "slimserve".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let s = &st.model_stats[0];
    assert_eq!((s.inference_count, s.execution_count), (1, 1));
    let inf = s.inference_stats.as_ref().unwrap();
    assert_eq!(inf.success.as_ref().unwrap().count, 1);
    assert!(inf.compute_infer.as_ref().unwrap().ns > 0);
    let all = c
        .model_statistics(pb::ModelStatisticsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.model_stats.len(), 1 + 2 * m.variants.len());

    // Malformed requests: clean codes, the server keeps serving.
    let v = m.variants[0].name.clone();
    let code = |r: Result<tonic::Response<pb::ModelInferResponse>, tonic::Status>| {
        r.expect_err("should fail").code()
    };
    let mut wrong_shape = tensor_request(&v, &x, 1);
    wrong_shape.inputs[0].shape = vec![1, 3, 100, 100];
    assert_eq!(
        code(c.model_infer(wrong_shape).await),
        Code::InvalidArgument
    );
    let mut wrong_type = tensor_request(&v, &x, 1);
    wrong_type.inputs[0].datatype = "INT32".into();
    assert_eq!(code(c.model_infer(wrong_type).await), Code::InvalidArgument);
    let mut short = tensor_request(&v, &x, 1);
    short.raw_input_contents[0].truncate(1000);
    assert_eq!(code(c.model_infer(short).await), Code::InvalidArgument);
    let mut ragged = tensor_request(&v, &x, 1);
    ragged.raw_input_contents[0].pop();
    assert_eq!(code(c.model_infer(ragged).await), Code::InvalidArgument);
    let junk = image_request("slimserve", b"not an image");
    assert_eq!(code(c.model_infer(junk).await), Code::InvalidArgument);
    let mut bad_budget = tensor_request(&v, &x, 1);
    bad_budget.parameters.insert(
        "sla_ms".into(),
        pb::InferParameter {
            parameter_choice: Some(ParameterChoice::StringParam("soon".into())),
        },
    );
    assert_eq!(code(c.model_infer(bad_budget).await), Code::InvalidArgument);
    assert_eq!(
        code(c.model_infer(tensor_request("nope", &x, 1)).await),
        Code::NotFound
    );
    let meta = c
        .model_metadata(pb::ModelMetadataRequest {
            name: v.clone(),
            version: "7".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(meta.code(), Code::NotFound);

    let ok = c.model_infer(tensor_request(&v, &x, 1)).await.unwrap();
    assert_eq!(ok.into_inner().outputs[0].shape, [1, 1000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmeetable_budget_is_unavailable_over_grpc() {
    let server = start(args(&["full"])).await;
    let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap();
    let m = Manifest::load(&bundled_models_dir()).unwrap();
    let x = preprocess(
        &photo("chelsea.png"),
        &m.variants[0].preprocess,
        DecodeLimits::default(),
    )
    .unwrap();
    let mut req = tensor_request("full", &x, 1);
    req.parameters.insert("sla_ms".into(), int_param(1));
    let e = c.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("cannot be met"), "{}", e.message());
}
