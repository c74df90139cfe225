//! `GET /openapi.json`: valid OpenAPI 3.1 (checked by an independent
//! validator from PyPI, openapi-spec-validator, in the venv that
//! tests/openapi/venv.sh makes and CI runs), and every route the router
//! answers is in it, and every route in it is answered.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use slimserve::error::ServeError;
use slimserve::http::{app, AppState};
use slimserve::metrics::Metrics;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tower::ServiceExt;

fn router() -> axum::Router {
    app(AppState::new(Arc::new(Metrics::new()), 1 << 20))
}

async fn call(method: Method, uri: &str) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let resp = router().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, body)
}

async fn document() -> Value {
    let (status, body) = call(Method::GET, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).unwrap()
}

/// (method, path) of every operation in the document.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                out.push((method.to_string(), path.clone()));
            }
        }
    }
    out.sort();
    out
}

/// The `.route("path", get(..).post(..))` calls in the source: the routes
/// that are not registered through their OpenAPI annotation.
fn plain_routes(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            plain_routes(&path, out);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for other in [
            ".nest(",
            ".nest_service(",
            ".route_service(",
            ".fallback_service(",
        ] {
            assert!(
                !text.contains(other),
                "{}: {other} registers routes this test does not see: extend it",
                path.display()
            );
        }
        let squashed: String = text.split_whitespace().collect();
        for chunk in squashed.split(".route(\"").skip(1) {
            let (route, rest) = chunk.split_once('"').unwrap();
            let call = rest.trim_start_matches(',');
            // `get(h)`, `post(h)`, `get(h).post(h2)` up to the route's `)`.
            let mut depth = 0;
            let mut end = call.len();
            for (i, c) in call.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' if depth == 0 => {
                        end = i;
                        break;
                    }
                    ')' => depth -= 1,
                    _ => {}
                }
            }
            let methods = &call[..end];
            let mut found = false;
            for m in ["get", "post", "put", "delete", "patch"] {
                if methods.starts_with(&format!("{m}(")) || methods.contains(&format!(".{m}(")) {
                    out.push((m.to_string(), route.to_string()));
                    found = true;
                }
            }
            assert!(
                found,
                "{}: route {route}: no method in {methods}",
                path.display()
            );
        }
    }
}

fn concrete(path: &str) -> String {
    path.replace("{model}", "slimserve")
        .replace("{version}", "1")
        .replace("{file}", "app.js")
}

#[tokio::test]
async fn every_route_the_router_answers_is_documented_and_answered() {
    let doc = document().await;
    assert_eq!(doc["openapi"], "3.1.0");
    let ops = operations(&doc);
    // Routes added with a plain `.route(...)` (the inference protocol's)
    // are in the document.
    let mut plain = Vec::new();
    plain_routes(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut plain,
    );
    assert!(
        plain.len() >= 10,
        "the scan found the /v2 routes: {plain:?}"
    );
    for r in &plain {
        assert!(
            ops.contains(r),
            "{} {} is served but not in /openapi.json",
            r.0,
            r.1
        );
    }
    // Every documented operation is answered by its handler (not by the
    // 404 fallback, not 405), with the server not even ready.
    for (method, path) in &ops {
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (status, body) = call(m, &concrete(path)).await;
        let kind = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["kind"].as_str().map(str::to_owned));
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            kind.as_deref() != Some("no_such_endpoint"),
            "{method} {path}: answered by the fallback"
        );
    }
    // And what is neither is the fallback's 404.
    for path in [
        "/nope",
        "/v1/nope",
        "/v2/models/x/explode",
        "/page/../Cargo.toml",
    ] {
        let (status, body) = call(Method::GET, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["kind"], "no_such_endpoint", "{path}");
    }
    // The page's assets are all served, an unknown one is a 404.
    for a in slimserve::http::page::asset_names() {
        let (status, _) = call(Method::GET, &format!("/page/{a}")).await;
        assert_eq!(status, StatusCode::OK, "{a}");
    }
    assert_eq!(
        call(Method::GET, "/page/nope.js").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_document_describes_classify_its_headers_and_every_error_kind() {
    let doc = document().await;
    let classify = &doc["paths"]["/classify"]["post"];
    let params: Vec<&str> = classify["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for h in ["top_k", "X-SLA-Ms", "X-Variant", "X-Min-Accuracy"] {
        assert!(params.contains(&h), "{h} not in {params:?}");
    }
    let content = classify["requestBody"]["content"].as_object().unwrap();
    for ct in ["image/*", "application/octet-stream", "multipart/form-data"] {
        assert!(content.contains_key(ct), "{ct}");
    }
    for status in ["200", "400", "413", "415", "503", "504"] {
        assert!(classify["responses"].get(status).is_some(), "{status}");
    }
    assert!(classify["responses"]["200"]["headers"]
        .get("X-Route")
        .is_some());
    let kinds: Vec<&str> = doc["components"]["schemas"]["ErrorBody"]["properties"]["kind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    for e in ServeError::examples() {
        assert!(kinds.contains(&e.kind()), "{}", e.kind());
    }
    let route = &doc["components"]["schemas"]["RouteReason"]["enum"];
    assert!(
        route
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "accuracy_unknown"),
        "{route}"
    );
    for path in [
        "/v1/variants",
        "/v1/live",
        "/health/ready",
        "/v2/models/{model}/infer",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
}

fn validator() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SLIMSERVE_OPENAPI_VALIDATOR") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/openapi-venv/bin/openapi-spec-validator");
    p.exists().then_some(p)
}

#[tokio::test]
async fn the_document_passes_an_independent_validator() {
    let doc = document().await;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/openapi.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let Some(validator) = validator() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI: no OpenAPI validator: run tests/openapi/venv.sh first (.ci/run does)"
        );
        println!(
            "SKIPPED: no validator (run tests/openapi/venv.sh); wrote {}",
            out.display()
        );
        return;
    };
    let run = std::process::Command::new(&validator)
        .arg(&out)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{} {}: {text}", validator.display(), out.display());
    assert!(
        run.status.success(),
        "openapi-spec-validator rejects the document: {text}"
    );
    assert!(text.contains("OK"), "{text}");
}
