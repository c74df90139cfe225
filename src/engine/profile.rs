//! Per-op time of one plan: where a variant's milliseconds go, for
//! `slimserve bench --profile`. Runs the optimized model node by node
//! through tract's own evaluation, timing each node.

use super::fast::Packs;
use super::tract::{optimized_model, Kernels};
use crate::manifest::VariantSpec;
use anyhow::Result;
use std::time::Instant;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{SimplePlan, SimpleState};

/// One node's median time over the profiled runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeTime {
    pub node: String,
    pub op: String,
    /// Output shape, for reading which layer it is.
    pub shape: String,
    pub ms: f64,
}

/// Median per-node times of `runs` runs (after one untimed run) of the
/// batch-`batch` plan of `spec` with `kernels`, in evaluation order.
pub fn profile(
    proto: &tract_onnx::pb::ModelProto,
    spec: &VariantSpec,
    batch: usize,
    kernels: Kernels,
    runs: usize,
) -> Result<Vec<NodeTime>> {
    let model = optimized_model(proto, spec, batch, kernels, &Packs::default())?;
    let plan = SimplePlan::new(model)?;
    let mut state = SimpleState::new(&plan)?;
    let per_image: usize = spec.input_shape[1..].iter().map(|d| *d as usize).product();
    let mut shape = vec![batch];
    shape.extend(spec.input_shape[1..].iter().map(|d| *d as usize));
    let input = Tensor::from_shape(&shape, &vec![0.1f32; per_image * batch])?;
    let nodes = plan.model().nodes.len();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); nodes];
    for run in 0..=runs.max(1) {
        state.run_plan_with_eval(
            tvec![input.clone().into()],
            |ctx, op_state, node, inputs| {
                let t0 = Instant::now();
                let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                if run > 0 {
                    samples[node.id].push(t0.elapsed().as_secs_f64() * 1e3);
                }
                out
            },
        )?;
    }
    let model = plan.model();
    let mut out = Vec::new();
    for id in model.eval_order()? {
        let mut t = std::mem::take(&mut samples[id]);
        if t.is_empty() {
            continue;
        }
        t.sort_by(f64::total_cmp);
        let node = model.node(id);
        out.push(NodeTime {
            node: node.name.clone(),
            op: node.op.name().to_string(),
            shape: node
                .outputs
                .first()
                .map(|o| format!("{:?}", o.fact.shape))
                .unwrap_or_default(),
            ms: t[t.len() / 2],
        });
    }
    Ok(out)
}
