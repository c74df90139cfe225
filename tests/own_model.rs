//! Serving your own ONNX classifier: a second, different real model
//! (EfficientNet-Lite1, 240 x 240, NHWC input, other tensor names;
//! models/second/) served by `--onnx` alone, checked against onnxruntime's
//! logits on the committed photos; a manifest mixing it with the bundled
//! 224 x 224 NCHW model; `manifest init`; clear errors for bad files.

mod common;

use common::{photo, start};
use serde_json::Value;
use slimserve::config::{ModelArgs, PreprocessArgs, ServeArgs};
use slimserve::engine::tract::{KernelChoice, TractEngine};
use slimserve::engine::{top_k, Engine};
use slimserve::manifest::{bundled_models_dir, Manifest, PreprocessPatch};
use slimserve::preprocess::{preprocess, DecodeLimits};
use std::path::PathBuf;
use std::process::Command;

fn second() -> PathBuf {
    bundled_models_dir().join("second")
}

fn model() -> PathBuf {
    second().join("efficientnet_lite1_nhwc_int8w.onnx")
}

fn labels() -> PathBuf {
    bundled_models_dir().join("labels.txt")
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read(second().join("reference.json")).unwrap()).unwrap()
}

/// What a person would accept as the photo's class (ImageNet has no
/// "rocket"; the Falcon 9 photo is "missile", "projectile" or "space shuttle").
fn acceptable(file: &str) -> &'static [&'static str] {
    match file {
        "chelsea.png" => &["tabby", "tiger_cat", "Egyptian_cat"],
        "coffee.png" => &["espresso"],
        "rocket.jpg" => &["missile", "projectile", "space_shuttle"],
        _ => panic!("no expectation for {file}"),
    }
}

/// `serve --onnx models/second/... --labels models/labels.txt --mean 127 --std 128`.
fn onnx_args() -> ServeArgs {
    let mut a = common::args(&[]);
    a.model = ModelArgs {
        onnx: Some(model()),
        labels: Some(labels()),
        preprocess: PreprocessArgs {
            mean: vec![127.0],
            std: vec![128.0],
            ..Default::default()
        },
        ..ModelArgs::bundled(&[])
    };
    a
}

fn reference_logits(r: &Value, file: &str) -> Vec<f32> {
    r["images"][file]["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn the_second_model_matches_onnxruntime_through_the_servers_path() {
    let r = reference();
    // The reference's preprocessing: this model's own evaluation resize
    // (272, --resize-shorter), not the default crop / 0.875 = 274.
    let mut args = onnx_args();
    args.model.preprocess.resize_shorter = Some(272);
    let manifest = args.model.manifest().unwrap();
    assert_eq!(r["preprocess"]["resize_shorter"], 272);
    let spec = &manifest.variants[0];
    assert_eq!(
        r["sha256"].as_str(),
        Some(spec.sha256.as_str()),
        "reference made from another file"
    );
    // Both kernel sets: this model's NHWC input puts its transpose in front
    // of the project's channel-last convolutions.
    for kernels in [KernelChoice::Stock, KernelChoice::Fast] {
        let (engine, _) = TractEngine::load(&manifest, &[], &[1], kernels).unwrap();
        for file in ["chelsea.png", "coffee.png", "rocket.jpg"] {
            let x = preprocess(&photo(file), &spec.preprocess, DecodeLimits::default()).unwrap();
            assert_eq!(x.len(), 240 * 240 * 3);
            let got = engine.infer(0, 1, x).unwrap();
            let expected = reference_logits(&r, file);
            let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
            let rel = got
                .iter()
                .zip(&expected)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
                / scale;
            println!("lite1 {kernels:?} {file}: relative logit difference {rel:.2e}");
            // Same bounds as the bundled variants (tests/models.rs): our resize
            // is within one level of Pillow's, JPEG decoders differ more.
            let tol = if file.ends_with(".jpg") { 5e-2 } else { 2e-2 };
            assert!(rel <= tol, "{file}: {rel:.2e} > {tol:.0e}");
            let top = top_k(&got, 1)[0].0;
            assert_eq!(
                top as u64,
                r["images"][file]["top5"][0].as_u64().unwrap(),
                "{file}: top-1"
            );
            assert!(
                acceptable(file).contains(&manifest.labels[top].as_str()),
                "{file}: {}",
                manifest.labels[top]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_by_onnx_alone_it_classifies_the_committed_photos() {
    let server = start(onnx_args()).await;
    let client = reqwest::Client::new();
    let r = reference();
    let vs: Value = client
        .get(server.url("/v1/variants"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let v = &vs["variants"][0];
    assert_eq!(vs["variants"].as_array().unwrap().len(), 1);
    assert_eq!(v["name"], "efficientnet_lite1_nhwc_int8w");
    assert_eq!(
        (v["input"].as_str(), v["output"].as_str()),
        (Some("images"), Some("logits"))
    );
    assert_eq!(v["input_shape"], serde_json::json!([-1, 240, 240, 3]));
    assert_eq!(v["preprocess"]["layout"], "NHWC");
    assert_eq!(v["preprocess"]["crop"], 240);
    assert_eq!(v["preprocess"]["resize_shorter"], 274);
    assert!(v["top1"].is_null(), "accuracy is unknown: {v}");
    assert_eq!(v["sha256"], r["sha256"]);
    assert_eq!(v["file_bytes"], r["file_bytes"]);
    assert!(v["macs"].as_u64().unwrap() > 500_000_000 && v["params"].as_u64().unwrap() > 4_000_000);
    for file in ["chelsea.png", "coffee.png", "rocket.jpg"] {
        let resp = client
            .post(server.url("/classify?top_k=3"))
            .header("X-SLA-Ms", "20000")
            .body(photo(file))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{file}");
        let c: Value = resp.json().await.unwrap();
        let top = c["predictions"][0]["label"].as_str().unwrap();
        let want = r["images"][file]["top5_labels"][0].as_str().unwrap();
        println!("--onnx {file}: {top} ({})", c["predictions"][0]["score"]);
        assert_eq!(top, want, "{file}: top-1 against onnxruntime");
        assert!(acceptable(file).contains(&top), "{file}: {top}");
        assert_eq!(
            c["route"], "accuracy_unknown",
            "the only variant: routing says so"
        );
        assert_eq!(c["variant"], "efficientnet_lite1_nhwc_int8w");
    }
    // A minimum accuracy cannot be checked against an unknown one.
    let resp = client
        .post(server.url("/classify"))
        .header("X-Min-Accuracy", "0.5")
        .body(photo("coffee.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["kind"], "no_variant_accurate_enough");
    // The inference protocol describes the NHWC input.
    let meta: Value = client
        .get(server.url("/v2/models/efficientnet_lite1_nhwc_int8w"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        meta["inputs"][0]["shape"],
        serde_json::json!([-1, 240, 240, 3]),
        "{meta}"
    );
    let _ = server.stop.unwrap().send(());
}

/// A manifest with the bundled 224 x 224 NCHW model (known accuracy) and
/// the 240 x 240 NHWC one (unknown): each request is preprocessed for the
/// variants it may go to.
fn mixed_manifest() -> PathBuf {
    let file = second().join(format!("variants.mixed-test-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        format!(
            "labels = \"../labels.txt\"\n\
             [preprocess]\nmean = [127.0, 127.0, 127.0]\nstd = [128.0, 128.0, 128.0]\n\
             [[variant]]\nname = \"full\"\nfile = \"../efficientnet_lite0_fp32.onnx\"\ntop1 = 0.89\ntop5 = 0.96\n\
             [[variant]]\nname = \"lite1\"\nfile = \"{}\"\n\
             [variant.preprocess]\nresize_shorter = 272\n",
            model().file_name().unwrap().to_string_lossy()
        ),
    )
    .unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_mixing_input_sizes_serves_both() {
    let file = mixed_manifest();
    let mut args = common::args(&[]);
    args.model.models = file.clone();
    let server = start(args).await;
    std::fs::remove_file(&file).unwrap();
    let client = reqwest::Client::new();
    let ask = |pin: Option<&'static str>, img: &'static str| {
        let mut req = client
            .post(server.url("/classify"))
            .header("X-SLA-Ms", "20000")
            .body(photo(img));
        if let Some(p) = pin {
            req = req.header("X-Variant", p);
        }
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    for img in ["chelsea.png", "coffee.png"] {
        let routed = ask(None, img).await;
        assert_eq!(
            routed["variant"], "full",
            "unknown accuracy is not routed to: {routed}"
        );
        assert_eq!(routed["route"], "most_accurate");
        let pinned = ask(Some("lite1"), img).await;
        assert_eq!(
            (pinned["variant"].as_str(), pinned["route"].as_str()),
            (Some("lite1"), Some("pinned"))
        );
        for c in [&routed, &pinned] {
            let top = c["predictions"][0]["label"].as_str().unwrap();
            assert!(acceptable(img).contains(&top), "{img}: {c}");
        }
    }
    let vs: Value = client
        .get(server.url("/v1/variants"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let crops: Vec<u64> = vs["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["preprocess"]["crop"].as_u64().unwrap())
        .collect();
    assert_eq!(crops, vec![224, 240]);
    let _ = server.stop.unwrap().send(());
}

fn slimserve(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_slimserve"))
        .args(args)
        .env("RUST_LOG", "error")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

#[test]
fn manifest_init_writes_what_the_server_infers() {
    let out = slimserve(&[
        "manifest",
        "init",
        model().to_str().unwrap(),
        "--labels",
        labels().to_str().unwrap(),
        "--mean",
        "127",
        "--std",
        "128",
        "--out",
        "-",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: toml::Value = toml::from_str(&text).unwrap();
    let v = &parsed["variant"][0];
    assert_eq!(v["name"].as_str(), Some("efficientnet_lite1_nhwc_int8w"));
    assert_eq!(v["input"].as_str(), Some("images"));
    assert_eq!(parsed["preprocess"]["layout"].as_str(), Some("NHWC"));
    assert_eq!(parsed["preprocess"]["crop"].as_integer(), Some(240));
    assert!(v.get("top1").is_none() && text.contains("# top1"), "{text}");
    let direct = Manifest::for_onnx(
        &model(),
        Some(&labels()),
        None,
        &PreprocessPatch {
            mean: Some([127.0; 3]),
            std: Some([128.0; 3]),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(v["macs"].as_integer(), Some(direct.variants[0].macs as i64));
    assert_eq!(
        v["sha256"].as_str(),
        Some(direct.variants[0].sha256.as_str())
    );
}

#[test]
fn bad_models_and_flags_fail_clearly_without_a_panic() {
    let dir = std::env::temp_dir().join(format!("slimserve-own-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.onnx");
    std::fs::write(&junk, b"not a model at all").unwrap();
    let wrong_labels = dir.join("labels.txt");
    std::fs::write(&wrong_labels, "cat\ndog\n").unwrap();
    let addr = ["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"];
    let m = model();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["serve", "--onnx", junk.to_str().unwrap()],
            "junk.onnx is not an ONNX model",
        ),
        (
            vec!["serve", "--onnx", "/nonexistent/model.onnx"],
            "/nonexistent/model.onnx",
        ),
        (
            vec![
                "serve",
                "--onnx",
                m.to_str().unwrap(),
                "--labels",
                wrong_labels.to_str().unwrap(),
            ],
            "has 2 labels",
        ),
        (
            vec!["serve", "--onnx", m.to_str().unwrap(), "--crop", "224"],
            "preprocess.crop = 224",
        ),
        (
            vec!["serve", "--onnx", m.to_str().unwrap(), "--layout", "NCHW"],
            "preprocess.layout",
        ),
        (
            vec!["serve", "--onnx", m.to_str().unwrap(), "--mean", "1,2"],
            "--mean",
        ),
        (
            vec!["serve", "--onnx", m.to_str().unwrap(), "--std", "0"],
            "preprocess.std",
        ),
        (vec!["serve", "--crop", "224"], "apply to --onnx"),
        (
            vec!["manifest", "init", junk.to_str().unwrap(), "--out", "-"],
            "junk.onnx",
        ),
    ];
    for (mut args, needle) in cases {
        if args[0] == "serve" {
            args.extend(addr);
        }
        let out = slimserve(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: '{needle}' not in: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("stack backtrace"),
            "{args:?}: {err}"
        );
    }
}
