//! Fuzzing the HTTP endpoints that take a body (the real axum app over the
//! fake engine): mutated images of every accepted format as raw bodies and
//! in multipart forms, raw bytes, Open Inference Protocol JSON and
//! binary-tensor bodies. Invariant: no panic, every answer 200 or a JSON
//! 4xx/503/504, memory bounded. Short runs here (CI); the long run is
//! `loadtest/soak/fuzz.sh`.

mod fuzz_common;

use axum::body::Body;
use axum::http::Request;
use fuzz_common::*;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};

fn ctype() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        Just("image/png".to_string()),
        Just("image/jpeg".to_string()),
        Just("application/octet-stream".to_string()),
        Just("application/x-www-form-urlencoded".to_string()),
        Just("text/plain".to_string()),
        Just("multipart/form-data".to_string()),
        Just("image/png; charset=\u{7f}".to_string()),
        "[ -~]{0,24}",
    ])
}

fn header_value(v: &str) -> Option<axum::http::HeaderValue> {
    axum::http::HeaderValue::from_str(v).ok()
}

#[test]
fn classify_mutated_images_of_every_format() {
    let h = harness();
    let seeds = seeds();
    let tally = Tally::new("classify_mutated_images");
    let variants = h.variants.clone();
    let strategy = (
        0..seeds.len(),
        prop::collection::vec(mutation(), 0..6),
        any::<bool>(),
        sla_value(),
        prop::option::of(prop_oneof![
            prop::sample::select(variants).prop_map(|s| s.to_string()),
            "[ -~]{0,10}"
        ]),
        prop::option::of("[0-9a-z=&_-]{0,12}"),
    );
    TestRunner::new(config(400))
        .run(&strategy, |(seed, muts, own_type, sla, variant, query)| {
            tally.one();
            let (t, bytes) = &seeds[seed];
            let body = mutate(bytes.clone(), &muts);
            let uri = match &query {
                Some(q) => format!("/classify?{q}"),
                None => "/classify".into(),
            };
            let mut req = Request::post(uri).body(Body::from(body)).unwrap();
            let hs = req.headers_mut();
            if own_type {
                hs.insert("content-type", header_value(t).unwrap());
            }
            for (k, v) in [("x-sla-ms", sla), ("x-variant", variant)] {
                if let Some(v) = v.as_deref().and_then(header_value) {
                    hs.insert(k, v);
                }
            }
            let status = h.rt.block_on(send(&h.app, req))?;
            if muts.is_empty() && own_type && query.is_none() {
                prop_assert!(status != 500, "a valid image failed");
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn classify_multipart_forms() {
    let h = harness();
    let seeds = seeds();
    let tally = Tally::new("classify_multipart");
    let strategy = (
        0..seeds.len(),
        prop::collection::vec(mutation(), 0..4),
        prop::sample::select(vec!["image", "file", "", "image\"; x=\"y"]),
        "[a-zA-Z0-9'()+_,-./:=?]{1,40}",
        prop::collection::vec(mutation(), 0..3),
        any::<bool>(),
    );
    TestRunner::new(config(300))
        .run(
            &strategy,
            |(seed, muts, field, boundary, form_muts, declare)| {
                tally.one();
                let (t, bytes) = &seeds[seed];
                let mut form = Vec::new();
                form.extend_from_slice(
                    format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"x\"\r\nContent-Type: {t}\r\n\r\n").as_bytes(),
                );
                form.extend_from_slice(&mutate(bytes.clone(), &muts));
                form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
                let form = mutate(form, &form_muts);
                let declared = if declare { boundary.as_str() } else { "other" };
                let req = Request::post("/classify")
                    .header("content-type", format!("multipart/form-data; boundary={declared}"))
                    .body(Body::from(form))
                    .unwrap();
                h.rt.block_on(send(&h.app, req))?;
                Ok(())
            },
        )
        .unwrap();
}

fn endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/classify".to_string()),
        Just("/v2/models/slimserve/infer".to_string()),
        Just("/v2/models/full/infer".to_string()),
        Just("/v2/models/full_image/infer".to_string()),
        Just("/v2/models/full/versions/1/infer".to_string()),
        "/v2/models/[a-z_]{0,10}/infer",
    ]
}

#[test]
fn raw_bytes_to_every_body_endpoint() {
    let h = harness();
    let tally = Tally::new("raw_bytes");
    let strategy = (
        endpoint(),
        prop::collection::vec(any::<u8>(), 0..2048),
        ctype(),
        prop::option::of(0usize..4096),
    );
    TestRunner::new(config(400))
        .run(&strategy, |(path, body, ct, header_len)| {
            tally.one();
            let mut req = Request::post(path).body(Body::from(body)).unwrap();
            if let Some(v) = ct.as_deref().and_then(header_value) {
                req.headers_mut().insert("content-type", v);
            }
            if let Some(n) = header_len {
                req.headers_mut()
                    .insert("inference-header-content-length", n.into());
            }
            h.rt.block_on(send(&h.app, req))?;
            Ok(())
        })
        .unwrap();
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        Just(json!(1e308)),
        "[ -~]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn shape() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => Just(json!([1, 3, 224, 224])),
        2 => Just(json!([1, 1])),
        1 => Just(json!([1])),
        2 => prop::collection::vec(prop_oneof![-2i64..6, Just(i64::MAX), Just(1 << 40), Just(224)], 0..5).prop_map(Value::from),
        1 => json_value(),
    ]
}

fn params() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        (1u32..3000).prop_map(|v| json!({"sla_ms": v})),
        (0u32..20).prop_map(|k| json!({"classification": k})),
        json_value(),
        Just(json!({"timeout": -5, "priority": "x"})),
        Just(json!({"binary_data_size": 1 << 30})),
    ]
}

/// A request body shaped like the protocol's, every field drawn from
/// valid, edge and junk values.
fn infer_request() -> impl Strategy<Value = Value> {
    let data = prop_oneof![
        prop::collection::vec(-2.0f32..2.0, 0..64).prop_map(|v| json!(v)),
        (0usize..4).prop_map(|n| json!(vec![0.5; 3 * 224 * 224 * n])),
        prop::collection::vec("[ -~]{0,16}", 0..3).prop_map(|v| json!(v)),
        json_value(),
    ];
    let input = (
        prop::sample::select(vec!["input", "image", "", "x"]),
        prop::sample::select(vec!["FP32", "BYTES", "INT8", "FP64", "BOOL", "fp32", ""]),
        shape(),
        data,
        params(),
    )
        .prop_map(|(n, d, s, data, p)| json!({"name": n, "datatype": d, "shape": s, "data": data, "parameters": p}));
    (
        prop::collection::vec(input, 0..3),
        prop::option::of(prop::collection::vec(
            (prop::sample::select(vec!["logits", "x", ""]), params())
                .prop_map(|(n, p)| json!({"name": n, "parameters": p})),
            0..3,
        )),
        params(),
        prop::option::of("[ -~]{0,8}"),
    )
        .prop_map(|(inputs, outputs, p, id)| {
            let mut v = json!({"inputs": inputs, "parameters": p});
            if let Some(o) = outputs {
                v["outputs"] = json!(o);
            }
            if let Some(id) = id {
                v["id"] = json!(id);
            }
            v
        })
}

#[test]
fn inference_protocol_json_bodies() {
    let h = harness();
    let tally = Tally::new("kserve_json");
    let strategy = (
        endpoint(),
        infer_request(),
        prop::collection::vec(mutation(), 0..3),
        sla_value(),
    );
    TestRunner::new(config(400))
        .run(&strategy, |(path, v, muts, sla)| {
            tally.one();
            let body = mutate(serde_json::to_vec(&v).unwrap(), &muts);
            let mut req = Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            if let Some(v) = sla.as_deref().and_then(header_value) {
                req.headers_mut().insert("x-sla-ms", v);
            }
            h.rt.block_on(send(&h.app, req))?;
            Ok(())
        })
        .unwrap();
}

#[test]
fn inference_protocol_binary_tensor_bodies() {
    let h = harness();
    let seeds = seeds();
    let tally = Tally::new("kserve_binary");
    let strategy = (
        prop::sample::select(vec!["full_image", "slimserve", "full"]),
        0..seeds.len(),
        prop::collection::vec(mutation(), 0..4),
        -8i64..8,
        prop::option::of(-4i64..4),
        prop::collection::vec(mutation(), 0..2),
        0usize..3,
    );
    TestRunner::new(config(400))
        .run(
            &strategy,
            |(model, seed, muts, header_skew, size_skew, body_muts, images)| {
                tally.one();
                let tensor = !model.ends_with("_image") && model != "slimserve";
                let raw: Vec<u8> = if tensor {
                    let n = 3 * 224 * 224 * images.max(1);
                    let mut r = Vec::with_capacity(n * 4);
                    for i in 0..n {
                        r.extend_from_slice(&((i % 255) as f32 / 128.0 - 1.0).to_le_bytes());
                    }
                    mutate(r, &muts)
                } else {
                    let img = mutate(seeds[seed].1.clone(), &muts);
                    let mut r = Vec::new();
                    for _ in 0..images.max(1) {
                        r.extend_from_slice(&(img.len() as u32).to_le_bytes());
                        r.extend_from_slice(&img);
                    }
                    r
                };
                let (name, dt, shape) = if tensor {
                    ("input", "FP32", json!([images.max(1), 3, 224, 224]))
                } else {
                    ("image", "BYTES", json!([images.max(1), 1]))
                };
                let size = (raw.len() as i64 + size_skew.unwrap_or(0)).max(0);
                let header = json!({
                    "inputs": [{"name": name, "datatype": dt, "shape": shape,
                                "parameters": {"binary_data_size": size}}],
                    "outputs": [{"name": "logits", "parameters": {"binary_data": true}}]
                });
                let header = serde_json::to_vec(&header).unwrap();
                let declared = (header.len() as i64 + header_skew).max(0);
                let mut body = header;
                body.extend_from_slice(&raw);
                let body = mutate(body, &body_muts);
                let body_len = body.len();
                let req = Request::post(format!("/v2/models/{model}/infer"))
                    .header("content-type", "application/octet-stream")
                    .header("inference-header-content-length", declared)
                    .body(Body::from(body))
                    .unwrap();
                let status = h.rt.block_on(send(&h.app, req))?;
                if muts.is_empty()
                    && body_muts.is_empty()
                    && header_skew == 0
                    && size_skew.is_none()
                {
                    // two 224 x 224 tensors (1.2 MB) are over the harness's 1 MB body limit
                    if body_len > MAX_BODY {
                        prop_assert_eq!(status, 413, "a valid request over the body limit");
                    } else {
                        prop_assert_eq!(status, 200, "a valid binary request failed");
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn the_fuzz_invariant_rejects_what_it_must() {
    use axum::http::StatusCode;
    // The check itself can fail: a 500, a non-JSON error, a 502.
    assert!(check_answer(
        500,
        "application/json",
        br#"{"error":"x","kind":"internal"}"#
    )
    .is_err());
    assert!(check_answer(400, "text/plain", b"bad").is_err());
    assert!(check_answer(502, "application/json", br#"{"error":"x","kind":"y"}"#).is_err());
    assert!(check_answer(
        StatusCode::BAD_REQUEST.as_u16(),
        "application/json",
        br#"{"error":"x","kind":"y"}"#
    )
    .is_ok());
}
