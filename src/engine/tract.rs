//! The only place that talks to tract.
//!
//! One optimized plan per (variant, batch size): a plan with a symbolic batch
//! dimension runs depthwise convolutions several times slower. Convolutions
//! are rewritten to NHWC (tract's `conv_nhwc` transform), and batch plans skip
//! the codegen pass that merges same-role axes, which adds two transposes per
//! 1×1 convolution at batch > 1.

use super::Engine;
use crate::manifest::{Manifest, VariantSpec};
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::optim::Optimizer;

/// Debug name of the codegen pass left out of batch plans (pinned by a test).
pub const MERGE_AXES_PASS: &str = "MergeConsecutiveSameRoleAxes";

type Plan = Arc<TypedRunnableModel>;

struct Variant {
    /// (batch size, plan), ascending.
    plans: Vec<(usize, Plan)>,
    sizes: Vec<usize>,
}

/// What loading one variant cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub name: String,
    pub load_time: Duration,
    /// Growth of the process's resident memory while loading it.
    pub resident_bytes: u64,
}

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

fn build_plan(
    proto: &tract_onnx::pb::ModelProto,
    spec: &VariantSpec,
    batch: usize,
) -> Result<Plan> {
    let shape = [
        batch,
        spec.input_shape[1] as usize,
        spec.input_shape[2] as usize,
        spec.input_shape[3] as usize,
    ];
    // The exported graph annotates intermediate shapes with the symbolic
    // batch "N": ignore them so a fixed batch can be imposed on the input.
    let mut model = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true)
        .model_for_proto_model(proto)?
        .with_input_fact(0, f32::fact(shape).into())?
        .into_typed()?
        .into_decluttered()?;
    let nhwc = tract_onnx::tract_core::transform::get_transform("conv_nhwc")?
        .context("tract has no conv_nhwc transform")?;
    nhwc.transform(&mut model)?;
    model.declutter()?;
    codegen_for_batch(batch).optimize(&mut model)?;
    model.into_runnable()
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &std::path::Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl TractEngine {
    /// Load the named variants (all when `only` is empty) with one plan per
    /// batch size. Checks each file's sha256 against the manifest.
    pub fn load(
        manifest: &Manifest,
        only: &[String],
        batch_sizes: &[usize],
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
        for spec in manifest
            .variants
            .iter()
            .filter(|v| only.is_empty() || only.contains(&v.name))
        {
            let path = manifest.model_path(spec);
            let digest = sha256_file(&path)?;
            if digest != spec.sha256 {
                bail!(
                    "{}: sha256 {digest} does not match the manifest's {}",
                    path.display(),
                    spec.sha256
                );
            }
            let rss_before = crate::memory::trimmed_resident_bytes();
            let t0 = Instant::now();
            let mut proto = tract_onnx::onnx()
                .proto_model_for_path(&path)
                .with_context(|| format!("parsing {}", path.display()))?;
            super::dequant::fold_constant_dequantize(&mut proto)
                .with_context(|| format!("dequantizing the weights of {}", path.display()))?;
            let mut plans = Vec::new();
            for &b in &sizes {
                let plan = build_plan(&proto, spec, b)
                    .with_context(|| format!("building the batch-{b} plan of '{}'", spec.name))?;
                plans.push((b, plan));
            }
            drop(proto);
            let load_time = t0.elapsed();
            let rss_after = crate::memory::trimmed_resident_bytes();
            reports.push(LoadReport {
                name: spec.name.clone(),
                load_time,
                resident_bytes: rss_after.saturating_sub(rss_before),
            });
            variants.push(Variant {
                plans,
                sizes: sizes.clone(),
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
        let probe = engine.infer(0, 1, vec![0.0; 3 * 224 * 224])?;
        engine.classes = probe.len();
        Ok((engine, specs))
    }
}

impl Engine for TractEngine {
    fn num_variants(&self) -> usize {
        self.variants.len()
    }

    fn batch_sizes(&self, v: usize) -> &[usize] {
        &self.variants[v].sizes
    }

    fn num_classes(&self) -> usize {
        self.classes
    }

    fn infer(&self, v: usize, batch: usize, input: Vec<f32>) -> Result<Vec<f32>> {
        let variant = self.variants.get(v).context("no such variant")?;
        let plan = variant
            .plans
            .iter()
            .find(|(b, _)| *b == batch)
            .map(|(_, p)| p)
            .with_context(|| format!("no plan for batch size {batch}"))?;
        let per_image = input.len() / batch.max(1);
        let side = ((per_image / 3) as f64).sqrt() as usize;
        let x = tract_ndarray::Array4::from_shape_vec((batch, 3, side, side), input)?.into_tensor();
        let mut out = plan.run(tvec![x.into()])?;
        f32_values(&out.remove(0).into_tensor())
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
