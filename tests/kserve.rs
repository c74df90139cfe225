//! The Open Inference Protocol (KServe v2) endpoints against the real server
//! and the real models.

mod common;

use common::{args, photo, start};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use slimserve::manifest::{bundled_models_dir, Manifest};
use slimserve::preprocess::{preprocess, DecodeLimits};

fn argmax(xs: &[f32]) -> usize {
    xs.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

fn chelsea_tensor() -> Vec<f32> {
    let m = Manifest::load(&bundled_models_dir()).unwrap();
    let limits = DecodeLimits::default();
    preprocess(&photo("chelsea.png"), &m.variants[0].preprocess, limits).unwrap()
}

fn bytes_element(b: &[u8]) -> Vec<u8> {
    let mut out = (b.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(b);
    out
}

/// A binary-extension request: JSON header then raw bytes.
async fn post_binary(c: &Client, url: &str, header: Value, raw: &[u8]) -> reqwest::Response {
    let head = serde_json::to_vec(&header).unwrap();
    let mut body = head.clone();
    body.extend_from_slice(raw);
    c.post(url)
        .header("inference-header-content-length", head.len().to_string())
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Split a binary response into its JSON header and raw part.
async fn read_binary(r: reqwest::Response) -> (Value, Vec<u8>) {
    assert_eq!(r.status(), 200);
    let len: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = r.bytes().await.unwrap();
    (
        serde_json::from_slice(&body[..len]).unwrap(),
        body[len..].to_vec(),
    )
}

async fn json_of(r: reqwest::Response) -> (StatusCode, Value) {
    let s = r.status();
    let t = r.text().await.unwrap();
    (
        s,
        serde_json::from_str(&t).unwrap_or_else(|_| panic!("not JSON ({s}): {t}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_v2_metadata_infer_and_bad_tensors() {
    let server = start(args(&[])).await;
    let c = Client::new();

    // Server metadata and health.
    let (s, meta) = json_of(c.get(server.url("/v2")).send().await.unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(meta["name"], "slimserve");
    let ext: Vec<&str> = meta["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for e in [
        "classification",
        "binary_tensor_data",
        "model_configuration",
    ] {
        assert!(ext.contains(&e), "{meta}");
    }
    for p in ["/v2/health/live", "/v2/health/ready"] {
        assert_eq!(c.get(server.url(p)).send().await.unwrap().status(), 200);
    }

    // The reference answer from /classify.
    let png = photo("chelsea.png");
    let (s, v) = json_of(
        c.post(server.url("/classify"))
            .header("content-type", "image/png")
            .body(png.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    let routed_variant = v["variant"].as_str().unwrap().to_string();
    let (_, variants) = json_of(c.get(server.url("/v1/variants")).send().await.unwrap()).await;
    let names: Vec<String> = variants["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    let name = &names[0];

    // Model metadata, readiness and configuration.
    let (s, m) = json_of(
        c.get(server.url(&format!("/v2/models/{name}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["name"], name.as_str());
    assert_eq!(m["versions"], json!(["1"]));
    assert_eq!(m["inputs"][0]["name"], "input");
    assert_eq!(m["inputs"][0]["datatype"], "FP32");
    assert_eq!(m["inputs"][0]["shape"], json!([-1, 3, 224, 224]));
    assert_eq!(m["outputs"][0]["name"], "logits");
    assert_eq!(m["outputs"][0]["shape"], json!([-1, 1000]));
    let (s, m) = json_of(
        c.get(server.url(&format!("/v2/models/{name}_image/versions/1")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["inputs"][0]["datatype"], "BYTES");
    let (s, cfg) = json_of(
        c.get(server.url(&format!("/v2/models/{name}/config")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert!(cfg["max_batch_size"].as_u64().unwrap() >= 1);
    assert_eq!(cfg["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(cfg["input"][0]["dims"], json!([3, 224, 224]));
    assert!(cfg["dynamic_batching"]["max_queue_delay_microseconds"].is_u64());
    let (s, cfg) = json_of(
        c.get(server.url("/v2/models/slimserve/config"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(cfg["input"][0]["data_type"], "TYPE_STRING");
    for p in [
        format!("/v2/models/{name}/ready"),
        "/v2/models/slimserve/versions/1/ready".to_string(),
    ] {
        assert_eq!(c.get(server.url(&p)).send().await.unwrap().status(), 200);
    }

    // Each variant pinned: FP32 tensor as JSON data, two images in one
    // request; argmax equals /classify's top-1 for that variant.
    let x = chelsea_tensor();
    assert_eq!(x.len(), 3 * 224 * 224);
    for name in &names {
        let (s, v) = json_of(
            c.post(server.url("/classify"))
                .header("content-type", "image/png")
                .header("x-variant", name.as_str())
                .body(png.clone())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, 200);
        let want = v["predictions"][0]["index"].as_u64().unwrap() as usize;
        let two: Vec<f32> = x.iter().chain(x.iter()).copied().collect();
        let req = json!({
            "id": "abc",
            "inputs": [{"name": "input", "shape": [2, 3, 224, 224], "datatype": "FP32", "data": two}],
        });
        let (s, r) = json_of(
            c.post(server.url(&format!("/v2/models/{name}/infer")))
                .json(&req)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, 200, "{name}: {r}");
        assert_eq!(r["model_name"], name.as_str());
        assert_eq!(r["id"], "abc");
        let out = &r["outputs"][0];
        assert_eq!(out["name"], "logits");
        assert_eq!(out["datatype"], "FP32");
        assert_eq!(out["shape"], json!([2, 1000]));
        let logits: Vec<f32> = out["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(logits.len(), 2000);
        assert_eq!(argmax(&logits[..1000]), want, "{name}");
        assert_eq!(argmax(&logits[1000..]), want, "{name}");

        // The same tensor, nested JSON array, binary output.
        let nested: Vec<Vec<f32>> = x.chunks(224).map(|c| c.to_vec()).collect();
        let req = json!({
            "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": nested}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": true}}],
        });
        let r = c
            .post(server.url(&format!("/v2/models/{name}/versions/1/infer")))
            .json(&req)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-type"], "application/octet-stream");
        let (head, raw) = read_binary(r).await;
        assert_eq!(
            head["outputs"][0]["parameters"]["binary_data_size"],
            json!(4000)
        );
        let logits: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(argmax(&logits), want);

        // The encoded image through the binary extension on `V_image`.
        let raw = bytes_element(&png);
        let header = json!({
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": raw.len()}}],
            "outputs": [{"name": "logits", "parameters": {"classification": 3}}],
        });
        let r = post_binary(
            &c,
            &server.url(&format!("/v2/models/{name}_image/infer")),
            header,
            &raw,
        )
        .await;
        let (s, r) = json_of(r).await;
        assert_eq!(s, 200, "{r}");
        let out = &r["outputs"][0];
        assert_eq!(out["datatype"], "BYTES");
        assert_eq!(out["shape"], json!([1, 3]));
        let first = out["data"][0].as_str().unwrap();
        let parts: Vec<&str> = first.splitn(3, ':').collect();
        assert_eq!(parts.len(), 3, "{first}");
        assert!(parts[0].parse::<f32>().unwrap() > 0.0);
        assert_eq!(parts[1].parse::<usize>().unwrap(), want, "{first}");
        assert_eq!(parts[2], v["predictions"][0]["label"].as_str().unwrap());
    }

    // The routed model, binary in and binary out (request-level flag), SLA
    // from parameters.
    let raw = bytes_element(&png);
    let header = json!({
        "parameters": {"binary_data_output": true, "sla_ms": 20000, "priority": 1},
        "inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": raw.len()}}],
    });
    let r = post_binary(&c, &server.url("/v2/models/slimserve/infer"), header, &raw).await;
    let (head, raw_out) = read_binary(r).await;
    assert_eq!(head["model_name"], "slimserve");
    assert_eq!(head["parameters"]["variant"], routed_variant.as_str());
    assert_eq!(raw_out.len(), 4000);
    let logits: Vec<f32> = raw_out
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(
        argmax(&logits),
        v["predictions"][0]["index"].as_u64().unwrap() as usize
    );

    // Classification output as binary BYTES.
    let header = json!({
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": raw.len()}}],
        "outputs": [{"name": "logits", "parameters": {"classification": 2, "binary_data": true}}],
    });
    let (head, out) =
        read_binary(post_binary(&c, &server.url("/v2/models/slimserve/infer"), header, &raw).await)
            .await;
    assert_eq!(head["outputs"][0]["datatype"], "BYTES");
    assert_eq!(head["outputs"][0]["shape"], json!([1, 2]));
    let len = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
    let s = std::str::from_utf8(&out[4..4 + len]).unwrap();
    assert_eq!(s.split(':').count(), 3, "{s}");

    // Malformed requests: a clean 4xx JSON error with "error" each.
    let infer = server.url(&format!("/v2/models/{name}/infer"));
    let cases: Vec<(&str, Value, Vec<u8>, u16)> = vec![
        (
            "wrong shape",
            json!({"inputs": [{"name": "input", "shape": [1, 3, 100, 100], "datatype": "FP32", "data": [0.0]}]}),
            vec![],
            400,
        ),
        (
            "too few elements",
            json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [0.0, 1.0]}]}),
            vec![],
            400,
        ),
        (
            "wrong datatype",
            json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "INT64", "data": [0]}]}),
            vec![],
            400,
        ),
        (
            "unknown input",
            json!({"inputs": [{"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [0]}]}),
            vec![],
            400,
        ),
        (
            "short binary buffer",
            json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                               "parameters": {"binary_data_size": 602112}}]}),
            vec![0u8; 1000],
            400,
        ),
        (
            "binary size not matching the shape",
            json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                               "parameters": {"binary_data_size": 1000}}]}),
            vec![0u8; 1000],
            400,
        ),
        (
            "negative batch",
            json!({"inputs": [{"name": "input", "shape": [-1, 3, 224, 224], "datatype": "FP32", "data": []}]}),
            vec![],
            400,
        ),
        (
            "unknown output",
            json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": x.clone()}],
                   "outputs": [{"name": "probs"}]}),
            vec![],
            400,
        ),
        (
            "bad sla",
            json!({"parameters": {"sla_ms": -3},
                   "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": x.clone()}]}),
            vec![],
            400,
        ),
    ];
    for (what, header, raw, status) in cases {
        let r = post_binary(&c, &infer, header, &raw).await;
        let (s, v) = json_of(r).await;
        assert_eq!(s.as_u16(), status, "{what}: {v}");
        assert!(v["error"].is_string(), "{what}: {v}");
    }
    // Not JSON at all; a header length beyond the body; truncated BYTES.
    let r = c.post(&infer).body("nope").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(&infer)
        .header("inference-header-content-length", "99999")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let header = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                    "parameters": {"binary_data_size": 8}}]});
    let mut bad = 100u32.to_le_bytes().to_vec();
    bad.extend_from_slice(b"abcd");
    let r = post_binary(&c, &server.url("/v2/models/slimserve/infer"), header, &bad).await;
    assert_eq!(r.status(), 400);
    // Not an image.
    let r = c
        .post(server.url("/v2/models/slimserve/infer"))
        .json(&json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    // Unknown models and versions: 404.
    for p in [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/nope/config",
        "/v2/models/slimserve/versions/2",
    ] {
        assert_eq!(
            c.get(server.url(p)).send().await.unwrap().status(),
            404,
            "{p}"
        );
    }
    let (s, v) = json_of(
        c.post(server.url("/v2/models/nope/infer"))
            .json(&json!({"inputs": []}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    assert!(v["error"].as_str().unwrap().contains("nope"));

    // Still serving.
    let req = json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": x}]});
    let r = c.post(&infer).json(&req).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // A clean shutdown.
    let _ = server.stop.unwrap().send(());
    server.task.await.unwrap().unwrap();
}
