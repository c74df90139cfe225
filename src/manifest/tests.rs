use super::*;

fn full_path() -> String {
    bundled_models_dir()
        .join("efficientnet_lite0_fp32.onnx")
        .display()
        .to_string()
}

pub(crate) fn second_model() -> PathBuf {
    bundled_models_dir()
        .join("second")
        .join("efficientnet_lite1_nhwc_int8w.onnx")
}

/// A manifest in a fresh temporary folder.
fn write(name: &str, text: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("slimserve-manifest-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("variants.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn error_of(name: &str, text: &str) -> String {
    format!("{:#}", Manifest::load(&write(name, text)).unwrap_err())
}

#[test]
fn bundled_manifest_is_consistent() {
    let m = Manifest::load(&bundled_models_dir()).unwrap();
    assert_eq!(m.labels.len(), 1000);
    assert_eq!(m.variants[0].name, "full");
    for v in &m.variants {
        let meta = std::fs::metadata(m.model_path(v)).unwrap();
        assert_eq!(meta.len(), v.file_bytes, "{}", v.name);
        let (t1, t5) = (v.top1.unwrap(), v.top5.unwrap());
        assert!(t1 > 0.5 && t1 <= t5, "{}: implausible accuracy", v.name);
        assert_eq!(v.preprocess.crop, 224);
    }
}

#[test]
fn name_and_file_are_enough_and_the_rest_is_computed_as_the_pipeline_does() {
    let bundled = Manifest::load(&bundled_models_dir()).unwrap();
    let given = &bundled.variants[0];
    let m = Manifest::load(&write(
        "minimal",
        &format!(
            "[preprocess]\nmean = [127.0, 127.0, 127.0]\nstd = [128.0, 128.0, 128.0]\n\
             [[variant]]\nname = \"full\"\nfile = \"{}\"\n",
            full_path()
        ),
    ))
    .unwrap();
    let v = &m.variants[0];
    // The pipeline's figures (models/common.py) and ours agree exactly.
    assert_eq!(
        (v.params, v.macs, v.file_bytes, &v.sha256),
        (given.params, given.macs, given.file_bytes, &given.sha256)
    );
    assert_eq!((v.input.as_str(), v.output.as_str()), ("input", "logits"));
    assert_eq!(v.input_shape, vec![-1, 3, 224, 224]);
    assert_eq!(v.preprocess, given.preprocess);
    assert_eq!(v.top1, None, "accuracy is never invented");
    assert!(m.labels.is_empty() && m.labels_file.is_none());
    assert_eq!(m.labels_for(3).unwrap(), vec!["0", "1", "2"]);
}

#[test]
fn a_manifest_may_mix_input_sizes_and_layouts() {
    let m = Manifest::load(&write(
        "mixed",
        &format!(
            "labels = \"{}\"\n\
             [preprocess]\nmean = [127.0, 127.0, 127.0]\nstd = [128.0, 128.0, 128.0]\n\
             [[variant]]\nname = \"full\"\nfile = \"{}\"\ntop1 = 0.89\n\
             [[variant]]\nname = \"lite1\"\nfile = \"{}\"\n\
             [variant.preprocess]\nresize_shorter = 272\n",
            bundled_models_dir().join("labels.txt").display(),
            full_path(),
            second_model().display()
        ),
    ))
    .unwrap();
    let (a, b) = (&m.variants[0], &m.variants[1]);
    assert_eq!(
        (a.preprocess.crop, a.preprocess.layout),
        (224, Layout::NCHW)
    );
    assert_eq!(a.preprocess.resize_shorter, 256);
    assert_eq!(
        (b.preprocess.crop, b.preprocess.layout),
        (240, Layout::NHWC)
    );
    assert_eq!(b.preprocess.resize_shorter, 272, "per-variant override");
    assert_eq!(b.preprocess.mean, [127.0; 3], "inherited from [preprocess]");
    assert_eq!(b.input_shape, vec![-1, 240, 240, 3]);
    assert_eq!((b.input.as_str(), b.output.as_str()), ("images", "logits"));
    assert_eq!(m.labels.len(), 1000);
}

#[test]
fn for_onnx_reads_everything_from_the_file_with_documented_defaults() {
    let m = Manifest::for_onnx(&second_model(), None, None, &PreprocessPatch::default()).unwrap();
    let v = &m.variants[0];
    assert_eq!(v.name, "efficientnet_lite1_nhwc_int8w");
    assert_eq!(v.input_shape, vec![-1, 240, 240, 3]);
    let p = &v.preprocess;
    assert_eq!((p.crop, p.resize_shorter), (240, 274));
    assert_eq!((p.mean, p.std), (DEFAULT_MEAN, DEFAULT_STD));
    assert_eq!((p.layout, p.color), (Layout::NHWC, Color::RGB));
    assert!(v.params > 4_000_000 && v.macs > 500_000_000, "{v:?}");
}

#[test]
fn manifest_init_writes_a_manifest_that_loads_back_the_same() {
    let patch = PreprocessPatch {
        mean: Some([127.0; 3]),
        std: Some([128.0; 3]),
        ..Default::default()
    };
    let labels = bundled_models_dir().join("labels.txt");
    let m = Manifest::for_onnx(&second_model(), Some(&labels), Some("lite1"), &patch).unwrap();
    let text = m.to_toml("the test").unwrap();
    assert!(text.contains("# top1 = "), "{text}");
    // Written beside the model, as `manifest init` does.
    let file =
        second_model().with_file_name(format!("variants.test-init-{}.toml", std::process::id()));
    std::fs::write(&file, &text).unwrap();
    let back = Manifest::load(&file);
    std::fs::remove_file(&file).unwrap();
    let back = back.unwrap();
    let (a, b) = (&m.variants[0], &back.variants[0]);
    assert_eq!(a.preprocess, b.preprocess);
    assert_eq!((a.macs, a.params, &a.sha256), (b.macs, b.params, &b.sha256));
    assert_eq!(back.labels.len(), 1000);
}

#[test]
fn every_malformed_manifest_names_the_field_or_the_file() {
    let full = full_path();
    let v = |extra: &str| format!("[[variant]]\nname = \"full\"\nfile = \"{full}\"\n{extra}");
    let cases: Vec<(&str, String, &str)> = vec![
        ("syntax", "[[variant]\nname = 1".into(), "variants.toml"),
        ("empty", "labels = \"x\"\n".into(), "lists no [[variant]]"),
        ("typo", v("tpo1 = 0.8\n"), "tpo1"),
        ("type", v("top1 = \"high\"\n"), "top1"),
        ("nofile", "[[variant]]\nname = \"a\"\n".into(), "file"),
        (
            "missing",
            "[[variant]]\nname = \"a\"\nfile = \"nope.onnx\"\n".into(),
            "nope.onnx",
        ),
        ("sha", v("sha256 = \"00\"\n"), "sha256"),
        ("bytes", v("file_bytes = 12\n"), "file_bytes"),
        ("params", v("params = 1\n"), "params"),
        ("input", v("input = \"pixels\"\n"), "input = \"pixels\""),
        ("output", v("output = \"probs\"\n"), "output = \"probs\""),
        (
            "shape",
            v("input_shape = [-1, 3, 192, 192]\n"),
            "input_shape",
        ),
        ("acc", v("top1 = 89\n"), "top1"),
        ("acc2", v("top1 = 0.9\ntop5 = 0.8\n"), "top5"),
        (
            "crop",
            v("[variant.preprocess]\ncrop = 256\n"),
            "preprocess.crop",
        ),
        (
            "resize",
            v("[variant.preprocess]\nresize_shorter = 100\n"),
            "preprocess.resize_shorter",
        ),
        (
            "std",
            v("[variant.preprocess]\nstd = [1.0, 0.0, 1.0]\n"),
            "preprocess.std",
        ),
        (
            "layout",
            v("[variant.preprocess]\nlayout = \"NHWC\"\n"),
            "preprocess.layout",
        ),
        (
            "layout2",
            v("[variant.preprocess]\nlayout = \"CHW\"\n"),
            "layout",
        ),
        (
            "color",
            v("[variant.preprocess]\ncolor = \"HSV\"\n"),
            "color",
        ),
        ("ptypo", v("[variant.preprocess]\nresize = 256\n"), "resize"),
        (
            "name",
            format!("[[variant]]\nname = \"full model\"\nfile = \"{full}\"\n"),
            "variant name 'full model'",
        ),
        (
            "reserved",
            format!("[[variant]]\nname = \"full_image\"\nfile = \"{full}\"\n"),
            "full_image",
        ),
        ("twice", format!("{}{}", v(""), v("")), "appears twice"),
        (
            "labels",
            format!("labels = \"nolabels.txt\"\n{}", v("")),
            "nolabels.txt",
        ),
    ];
    for (name, text, needle) in cases {
        let err = error_of(name, &text);
        assert!(err.contains(needle), "{name}: '{needle}' not in: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
}

#[test]
fn labels_must_match_the_model_outputs() {
    let file = write("fewlabels", "");
    let labels = file.with_file_name("three.txt");
    std::fs::write(&labels, "cat\ndog\nbird\n\n").unwrap();
    std::fs::write(
        &file,
        format!(
            "labels = \"three.txt\"\n[[variant]]\nname = \"full\"\nfile = \"{}\"\n",
            full_path()
        ),
    )
    .unwrap();
    let err = format!("{:#}", Manifest::load(&file).unwrap_err());
    assert!(
        err.contains("1000 scores") && err.contains("three.txt") && err.contains("3 labels"),
        "{err}"
    );
}

#[test]
fn model_files_that_are_not_image_classifiers_are_clear_errors() {
    let dir = write("badmodels", "").parent().unwrap().to_path_buf();
    // Truncated ONNX file.
    let bytes = std::fs::read(full_path()).unwrap();
    std::fs::write(dir.join("truncated.onnx"), &bytes[..bytes.len() / 3]).unwrap();
    let err = format!(
        "{:#}",
        Manifest::for_onnx(
            &dir.join("truncated.onnx"),
            None,
            None,
            &PreprocessPatch::default()
        )
        .unwrap_err()
    );
    assert!(
        err.contains("truncated.onnx") && err.contains("not an ONNX model"),
        "{err}"
    );
    // An ONNX file with a non-image input: a model with the graph's
    // input renamed and reshaped would need the onnx crate; instead check
    // the shape logic directly.
    let what = "variant 'x'";
    let d = |v: &[i64]| v.iter().map(|x| Dim::Fixed(*x)).collect::<Vec<_>>();
    let p = PreprocessPatch::default();
    for (shape, needle) in [
        (d(&[1, 1000]), "expected 4 dimensions"),
        (d(&[1, 1, 28, 28]), "cannot tell the layout"),
        (d(&[1, 3, 224, 192]), "only square inputs"),
        (d(&[8, 3, 224, 224]), "fixed batch of 8"),
    ] {
        let err = format!(
            "{:#}",
            resolve_preprocess(Some(&shape), &p, what).unwrap_err()
        );
        assert!(err.contains(needle), "{shape:?}: {err}");
    }
    let sym = vec![
        Dim::Symbolic("N".into()),
        Dim::Fixed(3),
        Dim::Symbolic("H".into()),
        Dim::Symbolic("W".into()),
    ];
    let err = format!(
        "{:#}",
        resolve_preprocess(Some(&sym), &p, what).unwrap_err()
    );
    assert!(err.contains("--crop"), "{err}");
    let with_crop = PreprocessPatch {
        crop: Some(160),
        ..Default::default()
    };
    let (pp, shape) = resolve_preprocess(Some(&sym), &with_crop, what).unwrap();
    assert_eq!((pp.resize_shorter, shape), (183, vec![-1, 3, 160, 160]));
}

#[test]
fn a_resolution_rung_shares_the_file_and_counts_its_macs_at_its_side() {
    let m = Manifest::load(&write(
        "rung",
        &format!(
            "[preprocess]\nmean = [127.0, 127.0, 127.0]\nstd = [128.0, 128.0, 128.0]\n\
             [[variant]]\nname = \"full\"\nfile = \"{0}\"\n\
             [[variant]]\nname = \"full-160\"\nfile = \"{0}\"\nresize = 160\n\
             [[variant]]\nname = \"big\"\nfile = \"{0}\"\nresize = 160\noff_front = \"a test\"\n",
            full_path()
        ),
    ))
    .unwrap();
    let (full, rung) = (&m.variants[0], &m.variants[1]);
    assert_eq!(rung.resize, Some(160));
    assert_eq!(
        (rung.file_bytes, &rung.sha256),
        (full.file_bytes, &full.sha256)
    );
    assert_eq!(rung.input_shape, full.input_shape, "it takes the same crop");
    // every conv runs on (160/224)² of the pixels; the classifier does not shrink
    let ratio = rung.macs as f64 / full.macs as f64;
    assert!((0.50..0.53).contains(&ratio), "MACs ratio {ratio}");
    assert_eq!(m.variants[2].off_front.as_deref(), Some("a test"));
    assert_eq!(full.off_front, None);
    for (name, extra, wanted) in [
        ("rung-zero", "resize = 0", "resize = 0"),
        ("rung-huge", "resize = 5000", "expected 1..=4096"),
        ("rung-why", "off_front = \" \"", "off_front is empty"),
    ] {
        let e = error_of(
            name,
            &format!(
                "[[variant]]\nname = \"r\"\nfile = \"{}\"\n{extra}\n",
                full_path()
            ),
        );
        assert!(e.contains(wanted), "{name}: {e}");
    }
}

#[test]
fn given_macs_are_checked_by_the_engine_against_the_graph_it_types() {
    use crate::engine::tract::{KernelChoice, TractEngine};
    let m = Manifest::load(&write(
        "macs",
        &format!(
            "[[variant]]\nname = \"r\"\nfile = \"{}\"\nresize = 96\nmacs = 1\n",
            full_path()
        ),
    ))
    .unwrap();
    assert_eq!(m.variants[0].macs, 1, "taken as given, not typed twice");
    for choice in [KernelChoice::Fast, KernelChoice::Stock] {
        let err = format!(
            "{:#}",
            TractEngine::load(&m, &[], &[1], choice)
                .err()
                .expect("wrong macs must fail the load")
        );
        assert!(
            err.contains("macs = 1 in the manifest") && err.contains("'r'"),
            "{err}"
        );
    }
}
