//! The real server on an ephemeral port, the real models and committed photos.

mod common;

use common::{args, photo, start};
use reqwest::{Client, StatusCode};
use serde_json::Value;
use std::time::Duration;

async fn classify(
    c: &Client,
    url: &str,
    body: Vec<u8>,
    ctype: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut req = c.post(url).body(body).header("content-type", ctype);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let json =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, json)
}

fn top1(v: &Value) -> &str {
    v["predictions"][0]["label"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifies_photos_with_every_variant_and_survives_bad_input() {
    let server = start(args(&[])).await;
    let c = Client::new();
    let url = server.url("/classify");
    let variants: Value = c
        .get(server.url("/v1/variants"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<String> = variants["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!names.is_empty());

    // Real photos, every variant pinned: the right class and full timings.
    for name in &names {
        let (s, v) = classify(
            &c,
            &format!("{url}?top_k=3"),
            photo("chelsea.png"),
            "image/png",
            &[("x-variant", name)],
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["variant"], name.as_str());
        assert!(
            ["tabby", "tiger_cat", "Egyptian_cat"].contains(&top1(&v)),
            "{name}: {v}"
        );
        assert_eq!(v["predictions"].as_array().unwrap().len(), 3);
        let t = &v["timings"];
        for k in ["queue_ms", "preprocess_ms", "inference_ms", "total_ms"] {
            assert!(t[k].as_f64().unwrap() >= 0.0, "{k}");
        }
        assert!(t["total_ms"].as_f64() >= t["inference_ms"].as_f64());
        let (s, v) = classify(
            &c,
            &url,
            photo("coffee.png"),
            "image/png",
            &[("x-variant", name)],
        )
        .await;
        assert_eq!((s, top1(&v)), (StatusCode::OK, "espresso"), "{name}: {v}");
    }
    // A JPEG, unpinned, and the same image as a multipart upload.
    let (s, v) = classify(&c, &url, photo("rocket.jpg"), "image/jpeg", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(v["route"], "most_accurate");
    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(photo("chelsea.png")).file_name("c.png"),
    );
    let r = c.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-batch-size"], "1");
    assert!(r.headers().contains_key("x-variant"));

    // Bad input: a clear 4xx JSON error each.
    let png = photo("chelsea.png");
    let bomb = slimserve::testutil::png_bomb(60_000, 60_000);
    // (what, body, content type, headers, status, error kind)
    type Case<'a> = (
        &'a str,
        Vec<u8>,
        &'a str,
        Vec<(&'a str, &'a str)>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("empty body", vec![], "image/png", vec![], 400, "empty_body"),
        (
            "truncated png",
            png[..png.len() / 3].to_vec(),
            "image/png",
            vec![],
            400,
            "bad_image",
        ),
        (
            "text",
            b"definitely not an image".to_vec(),
            "application/octet-stream",
            vec![],
            415,
            "unknown_image_format",
        ),
        (
            "decompression bomb",
            bomb,
            "image/png",
            vec![],
            413,
            "image_too_large",
        ),
        (
            "json content type",
            png.clone(),
            "application/json",
            vec![],
            415,
            "unsupported_media_type",
        ),
        (
            "unknown variant",
            png.clone(),
            "image/png",
            vec![("x-variant", "huge")],
            400,
            "unknown_variant",
        ),
        (
            "malformed sla",
            png.clone(),
            "image/png",
            vec![("x-sla-ms", "soon")],
            400,
            "bad_header",
        ),
        (
            "negative sla",
            png.clone(),
            "image/png",
            vec![("x-sla-ms", "-3")],
            400,
            "bad_header",
        ),
        (
            "bad min accuracy",
            png.clone(),
            "image/png",
            vec![("x-min-accuracy", "2")],
            400,
            "bad_header",
        ),
        (
            "unreachable accuracy",
            png.clone(),
            "image/png",
            vec![("x-min-accuracy", "0.999")],
            400,
            "no_variant_accurate_enough",
        ),
        (
            "too large",
            vec![0u8; 5 << 20],
            "image/png",
            vec![],
            413,
            "body_too_large",
        ),
        (
            "bad multipart",
            b"--x\r\nnot a part".to_vec(),
            "multipart/form-data; boundary=x",
            vec![],
            400,
            "bad_multipart",
        ),
        (
            "impossible budget",
            png.clone(),
            "image/png",
            vec![("x-sla-ms", "1")],
            503,
            "budget_unmeetable",
        ),
    ];
    for (what, body, ctype, headers, status, kind) in cases {
        let (s, v) = classify(&c, &url, body, ctype, &headers).await;
        assert_eq!(
            (s.as_u16(), v["kind"].as_str().unwrap()),
            (status, kind),
            "{what}: {v}"
        );
        assert!(v["error"].as_str().unwrap().len() > 10, "{what}: {v}");
    }
    let (s, v) = classify(&c, &format!("{url}?top_k=0"), png.clone(), "image/png", &[]).await;
    assert_eq!(
        (s.as_u16(), v["kind"].as_str().unwrap()),
        (400, "bad_parameter")
    );
    let (s, _) = classify(
        &c,
        &format!("{url}?top_k=abc"),
        png.clone(),
        "image/png",
        &[],
    )
    .await;
    assert_eq!(s, 400);
    let r = c.get(server.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // Still serving after all that.
    let (s, v) = classify(&c, &url, png, "image/png", &[("x-sla-ms", "5000")]).await;
    assert_eq!(s, 200, "{v}");

    // Metrics saw it all.
    let m = c
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "slimserve_requests_total",
        "slimserve_request_duration_seconds_bucket",
        "slimserve_queue_duration_seconds_bucket",
        "slimserve_preprocess_duration_seconds_bucket",
        "slimserve_inference_duration_seconds_bucket",
        "slimserve_batch_size_bucket",
        "slimserve_queue_depth",
        "slimserve_variant_resident_bytes",
        "slimserve_variant_file_bytes",
        "slimserve_routing_decisions_total",
        "slimserve_sla_total",
        "slimserve_predicted_execution_seconds",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    assert!(m.contains("status=\"415\""));
    assert!(m.contains("slimserve_ready 1"));

    let _ = server.stop.unwrap().send(());
    server.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_then_refuses() {
    let mut a = args(&[]);
    a.workers = Some(1);
    let server = start(a).await;
    let c = Client::new();
    let url = server.url("/classify");
    // Several requests in flight on one worker, then the shutdown signal.
    let inflight: Vec<_> = (0..4)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                classify(&c, &url, photo("coffee.png"), "image/png", &[])
                    .await
                    .0
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = server.stop.unwrap().send(());
    for r in inflight {
        assert_eq!(r.await.unwrap(), 200);
    }
    tokio::time::timeout(Duration::from_secs(15), server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        c.get(format!("http://{}/health/live", server.addr))
            .send()
            .await
            .is_err(),
        "still accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_comes_before_readiness() {
    let a = args(&[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(slimserve::server::serve(a, listener, grpc, async {
        let _ = rx.await;
    }));
    let c = Client::new();
    // Models are still loading: live, not ready, classify says so.
    let mut live = None;
    for _ in 0..100 {
        if let Ok(r) = c.get(format!("http://{addr}/health/live")).send().await {
            live = Some(r.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(live, Some(StatusCode::OK));
    let ready = c
        .get(format!("http://{addr}/health/ready"))
        .send()
        .await
        .unwrap();
    let cl = c
        .post(format!("http://{addr}/classify"))
        .body(photo("chelsea.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "ready before the models were warmed");
    assert_eq!(cl.status(), 503);
    assert!(cl.headers().contains_key("retry-after"));
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

/// Errors answered before the body is read (too large, wrong content type, bad header) reach a
/// client that is still uploading, every time, instead of a reset connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_errors_reach_a_client_still_uploading() {
    let server = start(args(&["pruned"])).await;
    let c = Client::new();
    let url = server.url("/classify");
    for i in 0..10 {
        let (s, v) = classify(&c, &url, vec![0u8; 6 << 20], "image/png", &[]).await;
        assert_eq!(
            (s.as_u16(), &v["kind"]),
            (413, &Value::from("body_too_large")),
            "round {i}"
        );
        let (s, v) = classify(&c, &url, vec![0u8; 3 << 20], "application/json", &[]).await;
        assert_eq!(
            (s.as_u16(), &v["kind"]),
            (415, &Value::from("unsupported_media_type")),
            "round {i}"
        );
        let (s, v) = classify(
            &c,
            &url,
            vec![0u8; 3 << 20],
            "image/png",
            &[("x-sla-ms", "soon")],
        )
        .await;
        assert_eq!(
            (s.as_u16(), &v["kind"]),
            (400, &Value::from("bad_header")),
            "round {i}"
        );
    }
    let (s, v) = classify(&c, &url, photo("chelsea.png"), "image/png", &[]).await;
    assert_eq!(s, 200, "{v}");
}
