//! Fuzzing what arrives before the handlers: HTTP/1 request heads and
//! headers (through the connection layer and hyper, over in-memory pipes),
//! and gRPC messages (structured and from raw protobuf bytes) into the
//! Open Inference Protocol service. Invariant: no panic; every HTTP answer
//! from the router is 200 or a JSON 4xx/503/504, hyper's own answers to
//! heads it cannot parse are 4xx; every gRPC answer is OK or a status from
//! the error table other than INTERNAL/UNKNOWN.

mod fuzz_common;

use fuzz_common::*;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use prost::Message;
use slimserve::grpc::pb;
use slimserve::grpc::pb::grpc_inference_service_server::GrpcInferenceService;
use slimserve::http::conn::{Limits, Pool, Protocol};
use slimserve::metrics::Metrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn head_template() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        6 => Just("POST"),
        3 => Just("GET"),
        1 => prop::sample::select(vec!["PUT", "HEAD", "OPTIONS", "PRI", "G\0T"]),
    ];
    let path = prop::sample::select(vec![
        "/classify",
        "/classify?top_k=3",
        "/classify?top_k=99999999999999999999",
        "/v2/models/full_image/infer",
        "/v2/models/slimserve/infer",
        "/health/ready",
        "/metrics",
        "*",
        "/%ff%00",
        "http://x/classify",
    ]);
    let version = prop_oneof![
        8 => Just("HTTP/1.1"),
        1 => Just("HTTP/1.0"),
        1 => prop::sample::select(vec!["HTTP/2.0", "HTTP/9.9", ""]),
    ];
    let header = prop_oneof![
        Just("Content-Type: image/png".to_string()),
        Just("Content-Type: multipart/form-data; boundary=x".to_string()),
        (0u64..100_000).prop_map(|n| format!("Content-Length: {n}")),
        Just("Content-Length: 18446744073709551616".to_string()),
        Just("Content-Length: 5, 6".to_string()),
        Just("Transfer-Encoding: chunked".to_string()),
        Just("Transfer-Encoding: gzip, chunked".to_string()),
        (1u32..5000).prop_map(|n| format!("X-SLA-Ms: {n}")),
        "X-SLA-Ms: [ -~]{0,10}",
        "X-Variant: [ -~]{0,10}",
        "X-Min-Accuracy: [ -~]{0,6}",
        Just("Expect: 100-continue".to_string()),
        Just("Connection: close".to_string()),
        Just("Inference-Header-Content-Length: 7".to_string()),
        "[A-Za-z-]{1,12}: [ -~]{0,40}",
    ];
    (
        method,
        path,
        version,
        prop::collection::vec(header, 0..8),
        prop::collection::vec(any::<u8>(), 0..512),
        any::<bool>(),
        prop::option::weighted(0.03, Just(format!("X-Long: {}", "a".repeat(70_000)))),
    )
        .prop_map(|(m, p, v, mut hs, body, chunked_body, long)| {
            hs.extend(long);
            let mut out = format!("{m} {p} {v}\r\nHost: x\r\n").into_bytes();
            for h in hs {
                out.extend_from_slice(h.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            if chunked_body {
                out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                out.extend_from_slice(&body);
                out.extend_from_slice(b"\r\n0\r\n\r\n");
            } else {
                out.extend_from_slice(&body);
            }
            out
        })
}

/// Every response in `raw` (pipelined requests give several): status,
/// content type, body; stops at the first it cannot frame.
fn responses(raw: &[u8]) -> Vec<(u16, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hs);
        let Ok(httparse::Status::Complete(n)) = r.parse(rest) else {
            break;
        };
        let status = r.code.unwrap_or(0);
        if (100..200).contains(&status) {
            // An interim answer (100 Continue): no body, the real one follows.
            rest = &rest[n..];
            continue;
        }
        let get = |name: &str| {
            r.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_string())
        };
        let ctype = get("content-type").unwrap_or_default();
        let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) else {
            out.push((status, ctype, rest[n..].to_vec()));
            break;
        };
        let end = (n + len).min(rest.len());
        out.push((status, ctype, rest[n..end].to_vec()));
        rest = &rest[end..];
    }
    out
}

#[test]
fn request_heads_and_headers() {
    let h = harness();
    let limits = Limits::new(&h.args.conn, h.args.default_sla_ms, 1 << 20);
    let pool = Pool::new(limits, Arc::new(Metrics::new()));
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let tally = Tally::new("request_heads");
    let hyper_answers = AtomicU64::new(0);
    let strategy = (head_template(), prop::collection::vec(mutation(), 0..4));
    TestRunner::new(config(400))
        .run(&strategy, |(head, muts)| {
            tally.one();
            let bytes = mutate(head, &muts);
            let head_request = bytes.starts_with(b"HEAD ");
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let (app, pool, stop) = (h.app.clone(), pool.clone(), stop.clone());
            let raw = h.rt.block_on(async move {
                let serving = tokio::spawn(slimserve::http::conn::serve_io(
                    server,
                    Protocol::Http,
                    app,
                    pool,
                    stop,
                ));
                // Write, then end our side: the server sees EOF after the bytes.
                let (mut rd, mut wr) = tokio::io::split(&mut client);
                let write = async {
                    let _ = wr.write_all(&bytes).await;
                    let _ = wr.shutdown().await;
                };
                let mut raw = Vec::new();
                let read = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut raw));
                let (_, r) = tokio::join!(write, read);
                prop_assert!(r.is_ok(), "the connection did not close within 5 s");
                drop(client);
                let served = tokio::time::timeout(Duration::from_secs(5), serving).await;
                prop_assert!(
                    matches!(served, Ok(Ok(true))),
                    "connection task: {served:?}"
                );
                Ok::<_, TestCaseError>(raw)
            })?;
            if head_request {
                // Answers to HEAD carry no body: only the status can be checked.
                if let Some((status, _, _)) = responses(&raw).first() {
                    prop_assert!(
                        *status == 200
                            || (400..500).contains(status)
                            || *status == 503
                            || *status == 504,
                        "HEAD: {status}"
                    );
                }
                return Ok(());
            }
            for (status, ctype, body) in responses(&raw) {
                if ctype.is_empty() && body.is_empty() && (400..500).contains(&status) {
                    // hyper's own answer to a head it cannot parse (no handler ran).
                    hyper_answers.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if ctype.starts_with("text/plain") && body.starts_with(b"# HELP") {
                    continue; // GET /metrics
                }
                check_answer(status, &ctype, &body)?;
            }
            Ok(())
        })
        .unwrap();
    println!(
        "fuzz request_heads: {} answers written by hyper itself (bodiless 4xx to unparsable heads, including bytes after a complete request read as the next head)",
        hyper_answers.load(Ordering::Relaxed)
    );
}

fn param() -> impl Strategy<Value = pb::InferParameter> {
    use pb::infer_parameter::ParameterChoice as P;
    prop::option::of(prop_oneof![
        any::<bool>().prop_map(P::BoolParam),
        any::<i64>().prop_map(P::Int64Param),
        prop_oneof![(1i64..3000), Just(0), Just(-1)].prop_map(P::Int64Param),
        "[ -~]{0,8}".prop_map(P::StringParam),
        any::<f64>().prop_map(P::DoubleParam),
        any::<u64>().prop_map(P::Uint64Param),
    ])
    .prop_map(|parameter_choice| pb::InferParameter { parameter_choice })
}

fn params() -> impl Strategy<Value = std::collections::HashMap<String, pb::InferParameter>> {
    prop::collection::hash_map(
        prop::sample::select(vec![
            "sla_ms",
            "timeout",
            "classification",
            "priority",
            "binary_data",
            "x",
        ])
        .prop_map(str::to_string),
        param(),
        0..3,
    )
}

fn infer_request(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = pb::ModelInferRequest> {
    let contents = (
        prop::collection::vec(-2.0f32..2.0, 0..32),
        prop::collection::vec(0..seeds.len(), 0..3),
        prop::collection::vec(mutation(), 0..3),
        any::<bool>(),
        prop::collection::vec(any::<i32>(), 0..3),
    )
        .prop_map(
            move |(fp32, imgs, muts, full, ints)| pb::InferTensorContents {
                fp32_contents: if full {
                    vec![0.25; 3 * 224 * 224]
                } else {
                    fp32
                },
                bytes_contents: imgs
                    .iter()
                    .map(|i| mutate(seeds[*i].clone(), &muts))
                    .collect(),
                int_contents: ints,
                ..Default::default()
            },
        );
    let input = (
        prop::sample::select(vec!["input", "image", ""]),
        prop::sample::select(vec!["FP32", "BYTES", "INT32", ""]),
        prop_oneof![
            Just(vec![1i64, 3, 224, 224]),
            Just(vec![1, 1]),
            Just(vec![2, 1]),
            prop::collection::vec(prop_oneof![-2i64..5, Just(i64::MAX), Just(224)], 0..5)
        ],
        params(),
        prop::option::of(contents),
    )
        .prop_map(|(name, dt, shape, parameters, contents)| {
            pb::model_infer_request::InferInputTensor {
                name: name.into(),
                datatype: dt.into(),
                shape,
                parameters,
                contents,
            }
        });
    (
        prop::sample::select(vec!["full", "full_image", "slimserve", "nope", ""]),
        prop::sample::select(vec!["", "1", "2", "x"]),
        params(),
        prop::collection::vec(input, 0..3),
        prop::collection::vec(
            (prop::sample::select(vec!["logits", "x"]), params()).prop_map(|(n, p)| {
                pb::model_infer_request::InferRequestedOutputTensor {
                    name: n.into(),
                    parameters: p,
                }
            }),
            0..2,
        ),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..2),
    )
        .prop_map(
            |(model, version, parameters, inputs, outputs, raw)| pb::ModelInferRequest {
                model_name: model.into(),
                model_version: version.into(),
                id: String::new(),
                parameters,
                inputs,
                outputs,
                raw_input_contents: raw,
            },
        )
}

fn check_status(
    r: Result<tonic::Response<pb::ModelInferResponse>, tonic::Status>,
) -> Result<(), TestCaseError> {
    use tonic::Code;
    if let Err(s) = r {
        prop_assert!(
            matches!(
                s.code(),
                Code::InvalidArgument
                    | Code::NotFound
                    | Code::FailedPrecondition
                    | Code::ResourceExhausted
                    | Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Unimplemented
            ),
            "gRPC status {:?}: {}",
            s.code(),
            s.message()
        );
    }
    Ok(())
}

fn metadata(
    req: &mut tonic::Request<pb::ModelInferRequest>,
    sla: Option<String>,
    timeout: Option<String>,
) {
    for (k, v) in [("x-sla-ms", sla), ("grpc-timeout", timeout)] {
        if let Some(v) = v.and_then(|v| v.parse().ok()) {
            req.metadata_mut().insert(k, v);
        }
    }
}

#[test]
fn grpc_inference_messages() {
    let h = harness();
    let service = slimserve::grpc::Inference::new(h.state.clone());
    let seeds: Vec<Vec<u8>> = seeds().into_iter().map(|s| s.1).collect();
    let tally = Tally::new("grpc_messages");
    let timeout = prop::option::of(prop_oneof![
        (1u32..5000).prop_map(|n| format!("{n}m")),
        "[0-9]{0,10}[HMSmunx]?"
    ]);
    let strategy = (infer_request(seeds), sla_value(), timeout);
    TestRunner::new(config(400))
        .run(&strategy, |(msg, sla, t)| {
            tally.one();
            let mut req = tonic::Request::new(msg);
            metadata(&mut req, sla, t);
            check_status(h.rt.block_on(service.model_infer(req)))
        })
        .unwrap();
}

#[test]
fn grpc_messages_from_raw_bytes() {
    let h = harness();
    let service = slimserve::grpc::Inference::new(h.state.clone());
    let valid = pb::ModelInferRequest {
        model_name: "full_image".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape: vec![1, 1],
            parameters: Default::default(),
            contents: Some(pb::InferTensorContents {
                bytes_contents: vec![seeds()[0].1.clone()],
                ..Default::default()
            }),
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let tally = Tally::new("grpc_raw_bytes");
    let decoded = AtomicU64::new(0);
    let strategy = prop_oneof![
        prop::collection::vec(mutation(), 1..6).prop_map(move |m| mutate(valid.clone(), &m)),
        prop::collection::vec(any::<u8>(), 0..512),
    ];
    TestRunner::new(config(400))
        .run(&strategy, |bytes| {
            tally.one();
            // What tonic's codec does with a frame: decode, or INVALID_ARGUMENT-like failure.
            if let Ok(msg) = pb::ModelInferRequest::decode(bytes.as_slice()) {
                decoded.fetch_add(1, Ordering::Relaxed);
                check_status(h.rt.block_on(service.model_infer(tonic::Request::new(msg))))?;
            }
            Ok(())
        })
        .unwrap();
    println!(
        "fuzz grpc_raw_bytes: {} of the cases decoded to a message",
        decoded.load(Ordering::Relaxed)
    );
}
