//! The fast path (the project's own convolution kernels) against tract's
//! stock plan: every variant, every batch size, every instruction set this
//! CPU has, on the committed photos. Same logits within a stated tolerance,
//! same top-1. (The onnxruntime reference test in models.rs runs both paths
//! too.)

use slimserve::engine::simd::qgemm::QIsa;
use slimserve::engine::simd::Isa;
use slimserve::engine::top_k;
use slimserve::engine::tract::{build_plan, run_plan, variant_proto, Kernels};
use slimserve::manifest::{bundled_models_dir, Manifest, VariantSpec};
use slimserve::preprocess::{preprocess, DecodeLimits};
use tract_onnx::prelude::IntoRunnable;

/// max |a - b| over max |b|.
fn relative_diff(got: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(got.len(), expected.len());
    let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
    got.iter()
        .zip(expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// The committed photos, preprocessed, plus a mirrored copy of the first
/// (so a batch of 4 holds four different images).
fn images(spec: &VariantSpec) -> Vec<Vec<f32>> {
    let dir = bundled_models_dir().join("testdata");
    let mut out: Vec<Vec<f32>> = ["chelsea.png", "coffee.png", "rocket.jpg"]
        .iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(f)).unwrap();
            preprocess(&bytes, &spec.preprocess, DecodeLimits::default()).unwrap()
        })
        .collect();
    let side = 224;
    let mut mirrored = out[0].clone();
    for row in mirrored.chunks_exact_mut(side) {
        row.reverse();
    }
    out.push(mirrored);
    out
}

#[test]
fn the_fast_path_matches_the_stock_plan_on_every_variant_batch_and_isa() {
    let manifest = Manifest::load(&bundled_models_dir()).unwrap();
    let best = Isa::detect();
    for spec in &manifest.variants {
        let imgs = images(spec);
        let dims = [1, 2, 3].map(|i| spec.input_shape[i] as usize);
        let proto = variant_proto(&manifest.model_path(spec), spec).unwrap();
        // Float activations agree to rounding; the int8 QDQ variants'
        // activation rounding can flip a tie, which then propagates (up to
        // 3.2e-2 measured, int8-160 at batch 4).
        let tol = if spec.name.contains("int8") && !spec.name.contains("w") {
            5e-2
        } else {
            1e-4
        };
        let stock = build_plan(&proto, spec, 1, Kernels::Stock).unwrap();
        let reference: Vec<Vec<f32>> = imgs
            .iter()
            .map(|x| run_plan(&stock, dims, 1, x.clone()).unwrap())
            .collect();
        for batch in [1, 2, 4] {
            // Every instruction set on the first variant, the best on all.
            let isas = if spec.name == manifest.variants[0].name {
                Isa::available()
            } else {
                vec![best]
            };
            let mut kernels: Vec<Kernels> = isas.into_iter().map(Kernels::Fast).collect();
            // The integer kernels: on a QDQ model they replace the float
            // convolutions; every integer instruction set at batch 1.
            for q in QIsa::available() {
                if batch == 1 || Some(q) == QIsa::for_float(best) {
                    kernels.push(Kernels::Int8(best, q));
                }
            }
            for k in kernels {
                let fast = build_plan(&proto, spec, batch, k).unwrap();
                let input: Vec<f32> = imgs[..batch].concat();
                let got = run_plan(&fast, dims, batch, input).unwrap();
                let per = got.len() / batch;
                for (i, want) in reference[..batch].iter().enumerate() {
                    let row = &got[i * per..(i + 1) * per];
                    let rel = relative_diff(row, want);
                    println!(
                        "{:<8} batch {batch} {:<8} image {i}: relative {rel:.2e}",
                        spec.name,
                        k.name()
                    );
                    assert!(
                        rel <= tol,
                        "{} batch {batch} {k:?} image {i}: {rel:.2e} > {tol:.0e}",
                        spec.name
                    );
                    // Same top-1, unless the stock plan's own top two are
                    // a tie within the tolerance (a QDQ rung on a cat).
                    let (ours, theirs) = (top_k(row, 1)[0].0, top_k(want, 1)[0].0);
                    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
                    assert!(
                        ours == theirs || want[theirs] - want[ours] <= tol * scale,
                        "{} batch {batch} {k:?} image {i}: top-1 {ours} vs {theirs}",
                        spec.name
                    );
                }
            }
        }
    }
}

#[test]
fn the_fast_path_swaps_every_convolution_and_fuses_the_epilogues() {
    use slimserve::engine::fast::{summarize, Packs};
    use slimserve::engine::tract::optimized_model;
    let manifest = Manifest::load(&bundled_models_dir()).unwrap();
    let spec = manifest.variants.iter().find(|v| v.name == "full").unwrap();
    let proto = variant_proto(&manifest.model_path(spec), spec).unwrap();
    let packs = Packs::default();
    let model = optimized_model(&proto, spec, 1, Kernels::Fast(Isa::detect()), &packs).unwrap();
    let s = summarize(&model);
    // EfficientNet-Lite0: stem, 16 depthwise, 32 pointwise (15 expand, 16
    // project, head); ReLU6 after stem, every expand, every depthwise and the
    // head; a residual add in 9 blocks.
    assert_eq!((s.dense, s.depthwise, s.pointwise), (1, 16, 32), "{s:?}");
    assert_eq!((s.fused_clamps, s.fused_residuals), (33, 9), "{s:?}");
    let names: Vec<String> = model
        .nodes
        .iter()
        .map(|n| n.op.name().to_string())
        .collect();
    for stock in [
        "Conv",
        "DepthWiseConv",
        "Max",
        "Min",
        "Add",
        "OptBinChain(Max+Min)",
        "OptMatMul",
        "EinSum",
    ] {
        assert!(
            !names.iter().any(|n| n == stock),
            "a {stock} is left: {names:?}"
        );
    }
    let moves = names.iter().filter(|n| *n == "MoveAxis").count();
    assert_eq!(moves, 1, "only the input moves channel-last: {names:?}");
}

#[test]
fn the_plans_of_one_variant_share_one_copy_of_the_packed_weights() {
    use slimserve::engine::fast::{summarize, Packs};
    use slimserve::engine::tract::optimized_model;
    let manifest = Manifest::load(&bundled_models_dir()).unwrap();
    let spec = manifest
        .variants
        .iter()
        .find(|v| v.name == "pruned")
        .unwrap();
    let proto = variant_proto(&manifest.model_path(spec), spec).unwrap();
    let kernels = Kernels::Fast(Isa::detect());
    let packs = Packs::default();
    let one = optimized_model(&proto, spec, 1, kernels, &packs).unwrap();
    let s = summarize(&one);
    let ops = s.dense + s.depthwise + s.pointwise + s.matmul;
    assert_eq!(packs.reused(), 0);
    assert_eq!(packs.len(), ops);
    assert_eq!(packs.bytes(), s.packed_bytes);
    let four = optimized_model(&proto, spec, 4, kernels, &packs).unwrap();
    // The batch-4 plan runs its early layers image by image (one copy of
    // each op per image, `fast::split`); the batch-1 plan has nothing to
    // split.
    let names = |m: &tract_onnx::prelude::TypedModel| -> Vec<String> {
        m.nodes.iter().map(|n| n.name.clone()).collect()
    };
    assert!(!names(&one).iter().any(|n| n.starts_with("split.")));
    assert!(names(&four).iter().any(|n| n == "split.concat"));
    assert!(names(&four).iter().any(|n| n == "/stem/Conv.image3"));
    // pruned runs at 192 x 192: its 96 x 96 and 48 x 48 layers run per image,
    // up to and including the stride-2 depthwise from 48 x 48 to 24 x 24,
    // whose quarter-size outputs are what the concatenation joins; every op
    // on the whole batch holds 24 x 24 activations or smaller.
    for node in &four.nodes {
        if node.name.contains(".image") || four.inputs.iter().any(|i| i.node == node.id) {
            continue;
        }
        for o in &node.outputs {
            if let Some(shape) = o.fact.shape.as_concrete() {
                if shape.len() == 4 && shape[0] == 4 {
                    assert!(shape[1] * shape[2] <= 24 * 24, "{} {:?}", node.name, shape);
                }
            }
        }
    }
    let concat = four.node_by_name("split.concat").unwrap();
    let joined = concat.outputs[0].fact.shape.as_concrete().unwrap().to_vec();
    assert_eq!(&joined[..3], &[4, 24, 24], "{joined:?}");
    let last = four.node(concat.inputs[0].node);
    assert!(last.name.contains("/dw/"), "{}", last.name);
    // Every op of the batch-4 plan found its pack made for batch 1 ...
    assert_eq!(packs.reused(), ops);
    assert_eq!(packs.len(), ops);
    assert_eq!(packs.bytes(), s.packed_bytes);
    assert_eq!(summarize(&four).packed_bytes, s.packed_bytes);
    // ... and the batch-4 plan still answers like four batch-1 runs.
    let input = vec![0.25f32; 3 * 224 * 224];
    let p1 = one.into_runnable().unwrap();
    let p4 = four.into_runnable().unwrap();
    let dims = [3, 224, 224];
    let single = run_plan(&p1, dims, 1, input.clone()).unwrap();
    let batch = run_plan(&p4, dims, 4, input.repeat(4)).unwrap();
    for (i, chunk) in batch.chunks(single.len()).enumerate() {
        for (a, b) in chunk.iter().zip(&single) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "image {i}: {a} vs {b}"
            );
        }
    }
}

/// A QDQ model on the integer kernels (the portable ones, which every CPU
/// runs): every convolution but the float stem is an integer op, tract's
/// float convolutions and its quantize / dequantize passes are gone.
#[test]
fn the_int8_kernels_take_every_quantized_convolution_of_the_qdq_model() {
    use slimserve::engine::fast::{summarize, Packs};
    use slimserve::engine::tract::optimized_model;
    let manifest = Manifest::load(&bundled_models_dir()).unwrap();
    let spec = manifest.variants.iter().find(|v| v.name == "int8").unwrap();
    let proto = variant_proto(&manifest.model_path(spec), spec).unwrap();
    let packs = Packs::default();
    let kernels = Kernels::Int8(Isa::detect(), QIsa::Portable);
    let model = optimized_model(&proto, spec, 1, kernels, &packs).unwrap();
    let s = summarize(&model);
    // The stem and the classifier stay float (the file keeps them so).
    assert_eq!((s.qdepthwise, s.qpointwise), (16, 32), "{s:?}");
    assert_eq!(
        (s.dense, s.depthwise, s.pointwise, s.matmul),
        (1, 0, 0, 1),
        "{s:?}"
    );
    let names: Vec<String> = model
        .nodes
        .iter()
        .map(|n| n.op.name().to_string())
        .collect();
    for stock in [
        "Conv",
        "DepthWiseConv",
        "OptMatMul",
        "QuantizeLinearI8",
        "QuantizeLinearU8",
        "DequantizeLinearF32",
    ] {
        assert!(
            !names.iter().any(|n| n == stock),
            "a {stock} is left: {names:?}"
        );
    }
    // A float model is left as the fast path makes it.
    let full = manifest.variants.iter().find(|v| v.name == "full").unwrap();
    let proto = variant_proto(&manifest.model_path(full), full).unwrap();
    let model = optimized_model(&proto, full, 1, kernels, &packs).unwrap();
    let s = summarize(&model);
    assert_eq!(
        (s.qdepthwise, s.qpointwise, s.pointwise),
        (0, 0, 32),
        "{s:?}"
    );
}
