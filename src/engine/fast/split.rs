//! Batch plans run their early layers one image at a time.
//!
//! The first layers of an image classifier hold large activations and small
//! weights: at batch 4 the 112 x 112 and 56 x 56 activations of four images
//! (19 MB for one of full's expand outputs) leave the core's cache between
//! two ops, and those layers ran ~0.8 ms per image slower than at batch 1.
//! The late layers are the other way round (7 x 7 activations, large
//! weights) and gain from the batch. [`split_early_layers`] copies the part
//! of the graph up to a "cut" after the large activations once per image
//! (each copy on a one-image slice of the input, sharing the packed weights
//! of the original ops) and concatenates the copies' outputs at the cut; the
//! rest of the graph runs on the whole batch. tract evaluates one copy after
//! the other (its plan order follows the concatenation's inputs), so each
//! image's early activations stay in cache.

use std::collections::{HashMap, HashSet};
use tract_core::internal::*;
use tract_core::ops::array::{Slice, TypedConcat};
use tract_core::ops::konst::Const;

/// An activation is large when it covers at least this fraction of the
/// positions (rows x columns) of the model's largest one: for full, whose
/// largest is the 224 x 224 input moved channel-last, 56 x 56 and up.
const MIN_POSITION_SHARE: usize = 16;

/// Positions (all dims but the batch and the last, channel-last) of a rank-4
/// batch activation, or `None`.
fn positions(fact: &TypedFact, n: usize) -> Option<usize> {
    let shape = fact.shape.as_concrete()?;
    (shape.len() == 4 && shape[0] == n).then(|| shape[1] * shape[2])
}

/// Where to cut: a node of `order` whose single output is then the only
/// activation alive (every other one computed so far is consumed), so that
/// everything after it depends on the input only through that output. The
/// first such node once no later op reads or writes an activation of at
/// least `min` positions (for full the stride-2 depthwise from 56 x 56 to
/// 28 x 28, whose output is a quarter of its input: the concatenation then
/// copies the small one); failing that, the last such node whose output has
/// `min` positions.
fn find_cut(model: &TypedModel, order: &[usize], n: usize) -> TractResult<Option<usize>> {
    let is_const = |o: &OutletId| {
        model.node(o.node).op_is::<Const>()
            || model.outlet_fact(*o).is_ok_and(|f| f.konst.is_some())
    };
    let mut last_use: HashMap<OutletId, usize> = HashMap::new();
    for (i, &id) in order.iter().enumerate() {
        for input in &model.node(id).inputs {
            last_use.insert(*input, i);
        }
    }
    for o in &model.outputs {
        last_use.insert(*o, usize::MAX);
    }
    let largest = order
        .iter()
        .flat_map(|&id| model.node(id).outputs.iter().map(|o| &o.fact))
        .filter_map(|f| positions(f, n))
        .max()
        .unwrap_or(0);
    let min = (largest / MIN_POSITION_SHARE).max(1);
    let large = |o: &OutletId| {
        model
            .outlet_fact(*o)
            .is_ok_and(|f| positions(f, n).is_some_and(|p| p >= min))
    };
    let last_large = order.iter().rposition(|&id| {
        let node = model.node(id);
        node.inputs.iter().any(large)
            || (0..node.outputs.len()).any(|slot| large(&OutletId::new(id, slot)))
    });
    let mut live: HashSet<OutletId> = HashSet::new();
    let mut last_large_cut = None;
    let mut after_large = None;
    for (i, &id) in order.iter().enumerate() {
        let node = model.node(id);
        live.retain(|o| last_use.get(o).is_some_and(|&l| l > i));
        for slot in 0..node.outputs.len() {
            let o = OutletId::new(id, slot);
            if !is_const(&o) && last_use.get(&o).is_some_and(|&l| l > i) {
                live.insert(o);
            }
        }
        let only = OutletId::new(id, 0);
        if live.len() == 1
            && live.contains(&only)
            && !model.inputs.contains(&only)
            && last_use.get(&only) != Some(&usize::MAX)
            && positions(model.outlet_fact(only)?, n).is_some()
        {
            if large(&only) {
                last_large_cut = Some(i);
            }
            if after_large.is_none() && last_large.is_some_and(|l| i >= l) {
                after_large = Some(i);
            }
        }
    }
    Ok(after_large.or(last_large_cut))
}

/// Run the part of a batch-`n` model up to its cut (`find_cut`) one image
/// at a time (see the module). Returns whether the model was changed: not for
/// batch 1, nor when the graph has no such cut, nor when an op of that part
/// does not type on a one-image slice.
pub fn split_early_layers(model: &mut TypedModel) -> TractResult<bool> {
    let Some((patch, cut)) = plan(model)? else {
        return Ok(false);
    };
    patch.apply(model)?;
    model.compact()?;
    debug_assert!(model.node_by_name(cut).is_err(), "the batch prefix is gone");
    Ok(true)
}

/// The patch of `split_early_layers`, with the name of the cut node.
fn plan(model: &TypedModel) -> TractResult<Option<(TypedModelPatch, String)>> {
    rule_if!(model.inputs.len() == 1);
    let input = model.inputs[0];
    let fact = model.outlet_fact(input)?.clone();
    rule_if_some!(shape = fact.shape.as_concrete());
    rule_if!(!shape.is_empty() && shape[0] > 1);
    let n = shape[0];
    let order = model.eval_order()?;
    rule_if_some!(cut = find_cut(model, &order, n)?);
    let prefix = &order[..=cut];
    let cut_outlet = OutletId::new(order[cut], 0);
    let mut patch = TypedModelPatch::default();
    let whole = patch.tap_model(model, input)?;
    let mut ends = Vec::with_capacity(n);
    for image in 0..n {
        let slice = patch.wire_node(
            format!("split.image{image}"),
            Slice::new(0, image, image + 1),
            &[whole],
        )?[0];
        let mut map: HashMap<OutletId, OutletId> = HashMap::from([(input, slice)]);
        for &id in prefix {
            let node = model.node(id);
            if id == input.node || node.op_is::<Const>() {
                continue;
            }
            let mut inputs = Vec::with_capacity(node.inputs.len());
            for i in &node.inputs {
                inputs.push(match map.get(i) {
                    Some(o) => *o,
                    None => patch.tap_model(model, *i)?,
                });
            }
            rule_if_let!(
                Ok(outs) = patch.wire_node(
                    format!("{}.image{image}", node.name),
                    node.op.clone(),
                    &inputs,
                )
            );
            for (slot, o) in outs.into_iter().enumerate() {
                map.insert(OutletId::new(id, slot), o);
            }
        }
        rule_if_some!(end = map.get(&cut_outlet).copied());
        let want: TVec<usize> = model
            .outlet_fact(cut_outlet)?
            .shape
            .as_concrete()
            .map(|s| std::iter::once(1).chain(s[1..].iter().copied()).collect())
            .unwrap_or_default();
        rule_if!(patch.outlet_fact(end)?.shape.as_concrete() == Some(&*want));
        ends.push(end);
    }
    let joined = patch.wire_node("split.concat", TypedConcat { axis: 0 }, &ends)?[0];
    patch.shunt_outside(model, cut_outlet, joined)?;
    Ok(Some((patch, model.node(cut_outlet.node).name.clone())))
}
