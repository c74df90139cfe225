//! The only place that talks to tract.
//!
//! One optimized plan per (variant, batch size): a plan with a symbolic batch
//! dimension runs depthwise convolutions several times slower. Convolutions
//! are rewritten to NHWC (tract's `conv_nhwc` transform), and batch plans skip
//! the codegen pass that merges same-role axes, which adds two transposes per
//! 1×1 convolution at batch > 1.

use super::fast;
use super::simd::qgemm::QIsa;
use super::simd::Isa;
use super::Engine;
use crate::manifest::{Manifest, VariantSpec};
use anyhow::{bail, Context, Result};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::optim::Optimizer;

/// Debug name of the codegen pass left out of batch plans (pinned by a test).
pub const MERGE_AXES_PASS: &str = "MergeConsecutiveSameRoleAxes";

/// A runnable tract plan for one batch size.
pub type Plan = Arc<TypedRunnableModel>;

struct Variant {
    /// (batch size, plan), ascending; plans that do not pay are dropped
    /// after warm-up (`release_plans`).
    plans: Mutex<Vec<(usize, Plan)>>,
    /// One image's input dims, in the model's layout (`[3, h, w]` or `[h, w, 3]`).
    dims: [usize; 3],
}

/// Which kernels the plans run: tract's, ours, or whichever ran faster when
/// the variant was loaded (measured per batch size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelChoice {
    Auto,
    Fast,
    Stock,
}

/// How one plan was chosen.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanReport {
    pub batch: usize,
    pub kernels: String,
    /// Median of the timed runs at load (`auto` only), milliseconds.
    pub stock_ms: Option<f64>,
    pub fast_ms: Option<f64>,
    /// Growth of resident memory while this plan was built (with `auto`,
    /// the discarded candidate's share is freed before the reading).
    pub resident_bytes: u64,
    /// Peak bytes of activations alive at once in one run (from the
    /// plan's shapes, `footprint::peak_activation_bytes`).
    pub activation_bytes: usize,
}

/// What loading one variant cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub name: String,
    pub load_time: Duration,
    /// Growth of the process's resident memory while loading it.
    pub resident_bytes: u64,
    /// Growth of resident memory while the ONNX file was parsed and its
    /// weights dequantized: the weights as loaded (freed once the plans
    /// are built).
    pub loaded_weights_bytes: u64,
    /// Bytes of the fast kernels' packed weights its plans use: one copy
    /// shared by every plan of the variant, and by every variant with the
    /// same weights (the resolution rungs of one file).
    pub packed_bytes: usize,
    /// Of `packed_bytes`, those packed earlier by another variant: shared,
    /// not held again.
    pub packed_shared_bytes: usize,
    pub plans: Vec<PlanReport>,
    /// The fast ops of the batch-1 fast plan (whether or not it was kept).
    pub fast: Option<fast::Summary>,
}

/// Timed runs of each candidate plan at load, alternating.
const CHOICE_RUNS: usize = 3;

pub struct TractEngine {
    variants: Vec<Variant>,
    classes: usize,
    pub reports: Vec<LoadReport>,
}

/// The codegen optimizer used for a plan of batch size `batch`.
pub fn codegen_for_batch(batch: usize) -> Optimizer {
    let mut opt = Optimizer::codegen();
    if batch > 1 {
        opt.passes.retain(|p| format!("{p:?}") != MERGE_AXES_PASS);
    }
    opt
}

/// Which convolution kernels a plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// tract's own ops (with its `conv_nhwc` rewrite).
    Stock,
    /// The project's channel-last ops (`super::fast`) on this instruction set.
    Fast(Isa),
    /// As `Fast`, and a QDQ model's convolutions on integer kernels
    /// (`super::fast::quant`) of this instruction set.
    Int8(Isa, QIsa),
}

impl Kernels {
    pub fn name(self) -> String {
        match self {
            Kernels::Stock => "stock".into(),
            Kernels::Fast(isa) => format!("fast-{}", isa.name()),
            Kernels::Int8(isa, q) => format!("fast-{}+int8-{}", isa.name(), q.name()),
        }
    }

    /// The best kernels this CPU runs: the fast ones on the detected
    /// instruction set (`SLIMSERVE_SIMD`), with integer kernels for QDQ
    /// models where it has them.
    pub fn best() -> Kernels {
        let isa = Isa::detect();
        match QIsa::for_float(isa) {
            Some(q) => Kernels::Int8(isa, q),
            None => Kernels::Fast(isa),
        }
    }
}

fn typed_model(
    proto: &tract_onnx::pb::ModelProto,
    spec: &VariantSpec,
    batch: usize,
) -> Result<TypedModel> {
    let shape = [
        batch,
        spec.input_shape[1] as usize,
        spec.input_shape[2] as usize,
        spec.input_shape[3] as usize,
    ];
    // The exported graph annotates intermediate shapes with the symbolic
    // batch "N": ignore them so a fixed batch can be imposed on the input.
    tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true)
        .model_for_proto_model(proto)?
        .with_input_fact(0, f32::fact(shape).into())?
        .into_typed()
}

/// The manifest's MAC count against the graph at batch 1 (the manifest
/// leaves that check to the engine, which types the graph anyway).
fn check_macs(model: &TypedModel, spec: &VariantSpec) -> Result<()> {
    let counted = super::inspect::macs_of(model)?;
    if counted != spec.macs {
        bail!(
            "variant '{}': macs = {} in the manifest, but the model file has {counted}",
            spec.name,
            spec.macs
        );
    }
    Ok(())
}

/// The optimized model of one plan, before it is made runnable.
///
/// Fast kernels take their packed weights from `packs` (packing them there
/// first): the plans of one variant share one copy.
pub fn optimized_model(
    proto: &tract_onnx::pb::ModelProto,
    spec: &VariantSpec,
    batch: usize,
    kernels: Kernels,
    packs: &fast::Packs,
) -> Result<TypedModel> {
    let mut model = typed_model(proto, spec, batch)?;
    if batch == 1 {
        check_macs(&model, spec)?;
    }
    match kernels {
        Kernels::Stock => {}
        Kernels::Fast(isa) => fast::swap_convs(&mut model, isa, None, packs)?,
        Kernels::Int8(isa, q) => fast::swap_convs(&mut model, isa, Some(q), packs)?,
    }
    model.declutter()?;
    let nhwc = tract_onnx::tract_core::transform::get_transform("conv_nhwc")?
        .context("tract has no conv_nhwc transform")?;
    nhwc.transform(&mut model)?;
    model.declutter()?;
    if kernels != Kernels::Stock {
        fast::fuse_epilogues(&mut model)?;
        fast::resize::swap_resizes(&mut model)?;
    }
    if let Kernels::Int8(_, q) = kernels {
        fast::quant::swap_qdq(&mut model, q)?;
    }
    if kernels != Kernels::Stock {
        fast::split::split_early_layers(&mut model)?;
    }
    codegen_for_batch(batch).optimize(&mut model)?;
    Ok(model)
}

/// The runnable plan of one batch size with the given kernels (its fast
/// ops' weights packed for it alone).
pub fn build_plan(
    proto: &tract_onnx::pb::ModelProto,
    spec: &VariantSpec,
    batch: usize,
    kernels: Kernels,
) -> Result<Plan> {
    optimized_model(proto, spec, batch, kernels, &fast::Packs::default())?.into_runnable()
}

/// The graph a variant runs: its file, weights dequantized, behind the
/// `Resize` to its own side when it has one (`super::rescale`).
pub fn variant_proto(
    path: &std::path::Path,
    spec: &VariantSpec,
) -> Result<tract_onnx::pb::ModelProto> {
    let mut proto = load_proto(path)?;
    if let Some(to) = spec.resize {
        super::rescale::prepend_resize(
            &mut proto,
            &spec.input,
            spec.preprocess.layout == crate::manifest::Layout::NCHW,
            spec.preprocess.crop,
            to,
        )
        .with_context(|| format!("variant '{}': resizing its input to {to}", spec.name))?;
    }
    Ok(proto)
}

/// Parse an ONNX file and fold its constant `DequantizeLinear` weights.
pub fn load_proto(path: &std::path::Path) -> Result<tract_onnx::pb::ModelProto> {
    let mut proto = tract_onnx::onnx()
        .proto_model_for_path(path)
        .with_context(|| format!("parsing {}", path.display()))?;
    super::dequant::fold_constant_dequantize(&mut proto)
        .with_context(|| format!("dequantizing the weights of {}", path.display()))?;
    Ok(proto)
}

impl TractEngine {
    /// Load the named variants (all when `only` is empty) with one plan per
    /// batch size, running the kernels `choice` says. The manifest has
    /// checked each file (sha256, names, shapes) when it was loaded.
    pub fn load(
        manifest: &Manifest,
        only: &[String],
        batch_sizes: &[usize],
        choice: KernelChoice,
    ) -> Result<(TractEngine, Vec<VariantSpec>)> {
        let mut sizes: Vec<usize> = batch_sizes.iter().copied().filter(|b| *b > 0).collect();
        sizes.push(1);
        sizes.sort_unstable();
        sizes.dedup();
        for name in only {
            if !manifest.variants.iter().any(|v| &v.name == name) {
                bail!(
                    "unknown variant '{name}'; the manifest has {:?}",
                    manifest.variant_names()
                );
            }
        }
        let mut variants = Vec::new();
        let mut specs = Vec::new();
        let mut reports = Vec::new();
        // One set of packs for the engine: a pack is keyed by its weights,
        // so variants with the same weights (rungs of one file) share it.
        let packs = fast::Packs::default();
        for spec in manifest
            .variants
            .iter()
            .filter(|v| only.is_empty() || only.contains(&v.name))
        {
            let path = manifest.model_path(spec);
            if spec.input_shape[0] == 1 && sizes.iter().any(|b| *b > 1) {
                bail!(
                    "variant '{}' ({}) has a fixed batch dimension of 1: serve it with --batch-sizes 1",
                    spec.name,
                    path.display()
                );
            }
            let dims = [
                spec.input_shape[1] as usize,
                spec.input_shape[2] as usize,
                spec.input_shape[3] as usize,
            ];
            let rss_before = crate::memory::trimmed_resident_bytes();
            let t0 = Instant::now();
            let proto = variant_proto(&path, spec)?;
            let rss_loaded = crate::memory::trimmed_resident_bytes();
            let packed_before = packs.bytes();
            let mut plans = Vec::new();
            let mut plan_reports = Vec::new();
            let mut summary = None;
            for &b in &sizes {
                let rss_plan = crate::memory::trimmed_resident_bytes();
                let ctx = || format!("building the batch-{b} plan of '{}'", spec.name);
                let fast_kernels = Kernels::best();
                let fast_plan = |summary: &mut Option<fast::Summary>| -> Result<Plan> {
                    let model =
                        optimized_model(&proto, spec, b, fast_kernels, &packs).with_context(ctx)?;
                    if b == 1 {
                        *summary = Some(fast::summarize(&model));
                    }
                    model.into_runnable()
                };
                let (plan, report) = match choice {
                    KernelChoice::Stock => (
                        build_plan(&proto, spec, b, Kernels::Stock).with_context(ctx)?,
                        PlanReport::chosen(b, Kernels::Stock),
                    ),
                    KernelChoice::Fast => (
                        fast_plan(&mut summary)?,
                        PlanReport::chosen(b, fast_kernels),
                    ),
                    KernelChoice::Auto => {
                        let stock =
                            build_plan(&proto, spec, b, Kernels::Stock).with_context(ctx)?;
                        let fast = fast_plan(&mut summary)?;
                        let [stock_ms, fast_ms] = time_alternating(dims, b, [&stock, &fast])?;
                        let (plan, kernels) = if fast_ms <= stock_ms {
                            (fast, fast_kernels)
                        } else {
                            (stock, Kernels::Stock)
                        };
                        let report = PlanReport {
                            stock_ms: Some(stock_ms),
                            fast_ms: Some(fast_ms),
                            ..PlanReport::chosen(b, kernels)
                        };
                        (plan, report)
                    }
                };
                let report = PlanReport {
                    resident_bytes: crate::memory::trimmed_resident_bytes()
                        .saturating_sub(rss_plan),
                    activation_bytes: super::footprint::peak_activation_bytes(plan.model())?,
                    ..report
                };
                plans.push((b, plan));
                plan_reports.push(report);
            }
            drop(proto);
            let load_time = t0.elapsed();
            let rss_after = crate::memory::trimmed_resident_bytes();
            reports.push(LoadReport {
                name: spec.name.clone(),
                load_time,
                resident_bytes: rss_after.saturating_sub(rss_before),
                loaded_weights_bytes: rss_loaded.saturating_sub(rss_before),
                packed_bytes: summary.as_ref().map_or(0, |s| s.packed_bytes),
                packed_shared_bytes: summary
                    .as_ref()
                    .map_or(0, |s| s.packed_bytes)
                    .saturating_sub(packs.bytes() - packed_before),
                plans: plan_reports,
                fast: summary,
            });
            variants.push(Variant {
                plans: Mutex::new(plans),
                dims,
            });
            specs.push(spec.clone());
        }
        if variants.is_empty() {
            bail!("no variant selected");
        }
        let mut engine = TractEngine {
            variants,
            classes: 0,
            reports,
        };
        // One probe per variant: every variant must answer with the same
        // number of scores (they share the labels).
        for (v, spec) in specs.iter().enumerate() {
            let probe = engine
                .infer(v, 1, vec![0.0; engine.input_len(v)])
                .with_context(|| format!("running variant '{}' once", spec.name))?;
            if v == 0 {
                engine.classes = probe.len();
            } else if probe.len() != engine.classes {
                bail!(
                    "variant '{}' gives {} scores per image but '{}' gives {}: the variants of one manifest must classify into the same labels",
                    spec.name,
                    probe.len(),
                    specs[0].name,
                    engine.classes
                );
            }
        }
        Ok((engine, specs))
    }
}

impl Engine for TractEngine {
    fn num_variants(&self) -> usize {
        self.variants.len()
    }

    fn batch_sizes(&self, v: usize) -> Vec<usize> {
        self.variants[v]
            .plans
            .lock()
            .expect("plans lock")
            .iter()
            .map(|(b, _)| *b)
            .collect()
    }

    fn release_plans(&self, v: usize, keep: &[usize]) -> usize {
        let Some(variant) = self.variants.get(v) else {
            return 0;
        };
        let mut plans = variant.plans.lock().expect("plans lock");
        let before = plans.len();
        plans.retain(|(b, _)| *b == 1 || keep.contains(b));
        before - plans.len()
    }

    fn num_classes(&self) -> usize {
        self.classes
    }

    fn input_len(&self, v: usize) -> usize {
        self.variants.get(v).map_or(0, |x| x.dims.iter().product())
    }

    fn infer(&self, v: usize, batch: usize, input: Vec<f32>) -> Result<Vec<f32>> {
        let variant = self.variants.get(v).context("no such variant")?;
        let plan = variant
            .plans
            .lock()
            .expect("plans lock")
            .iter()
            .find(|(b, _)| *b == batch)
            .map(|(_, p)| p.clone())
            .with_context(|| format!("no plan for batch size {batch}"))?;
        // Counted while it runs: the fast ops split over the cores the
        // other inferences leave idle (`fast::par`).
        let _running = fast::par::Running::start();
        fast::par::install(|| run_plan(&plan, variant.dims, batch, input))
    }
}

/// Run `batch` images of `dims` each (in the model's layout, back to back
/// in `input`) through a plan.
pub fn run_plan(plan: &Plan, dims: [usize; 3], batch: usize, input: Vec<f32>) -> Result<Vec<f32>> {
    let [a, b, c] = dims;
    if input.len() != batch * a * b * c {
        bail!(
            "{} input values for a batch of {batch} of [{a}, {b}, {c}]",
            input.len()
        );
    }
    let x = tract_ndarray::Array4::from_shape_vec((batch, a, b, c), input)?.into_tensor();
    let mut out = plan.run(tvec![x.into()])?;
    f32_values(&out.remove(0).into_tensor())
}

/// Median milliseconds of each plan over `CHOICE_RUNS` timed runs, taken
/// in turn after one untimed run each, on a neutral input.
fn time_alternating<const N: usize>(
    dims: [usize; 3],
    batch: usize,
    plans: [&Plan; N],
) -> Result<[f64; N]> {
    let per_image: usize = dims.iter().product();
    let input = vec![0.1f32; per_image * batch];
    let mut times = [(); N].map(|_| Vec::with_capacity(CHOICE_RUNS));
    for p in plans {
        run_plan(p, dims, batch, input.clone())?;
    }
    for _ in 0..CHOICE_RUNS {
        for (p, t) in plans.iter().zip(times.iter_mut()) {
            let start = Instant::now();
            run_plan(p, dims, batch, input.clone())?;
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times.map(|mut t| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    }))
}

impl PlanReport {
    fn chosen(batch: usize, kernels: Kernels) -> PlanReport {
        PlanReport {
            batch,
            kernels: kernels.name(),
            stock_ms: None,
            fast_ms: None,
            resident_bytes: 0,
            activation_bytes: 0,
        }
    }
}

/// A tensor's values as f32, in row-major order (no copy before the
/// collect when it already holds f32).
pub(super) fn f32_values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.cast_to::<f32>()?
        .to_plain_array_view::<f32>()?
        .iter()
        .copied()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_merge_axes_pass_is_still_in_codegen_and_dropped_for_batches() {
        // tract matches passes by Debug name only: if a tract upgrade renames
        // or removes the pass, this test says so.
        let names = |o: &Optimizer| {
            o.passes
                .iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
        };
        let full = names(&codegen_for_batch(1));
        assert_eq!(
            full.iter().filter(|n| *n == MERGE_AXES_PASS).count(),
            1,
            "{full:?}"
        );
        let batch = names(&codegen_for_batch(4));
        assert_eq!(batch.len(), full.len() - 1);
        assert!(!batch.iter().any(|n| n == MERGE_AXES_PASS));
    }
}
