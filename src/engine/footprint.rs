//! What a plan needs in memory for one run, from its shapes: the largest
//! sum of activation bytes alive at once in tract's evaluation order (a
//! value is alive from the op that makes it until its last reader has run;
//! constants are weights and are not counted).

use tract_onnx::prelude::*;

/// Peak bytes of live activations over one run of `model`.
pub fn peak_activation_bytes(model: &TypedModel) -> TractResult<usize> {
    let order = model.eval_order()?;
    let bytes = |o: OutletId| -> TractResult<usize> {
        let f = model.outlet_fact(o)?;
        if f.konst.is_some() {
            return Ok(0);
        }
        let n = f
            .shape
            .as_concrete()
            .map(|s| s.iter().product::<usize>())
            .unwrap_or(0);
        Ok(n * f.datum_type.size_of())
    };
    // Readers still to run, per outlet.
    let mut readers = std::collections::HashMap::<OutletId, usize>::new();
    for &n in &order {
        for i in &model.node(n).inputs {
            *readers.entry(*i).or_default() += 1;
        }
    }
    for o in &model.outputs {
        *readers.entry(*o).or_default() += 1;
    }
    let mut live = 0usize;
    let mut peak = 0usize;
    for &n in &order {
        let node = model.node(n);
        for slot in 0..node.outputs.len() {
            let o = OutletId::new(n, slot);
            if readers.get(&o).copied().unwrap_or(0) > 0 {
                live += bytes(o)?;
            }
        }
        peak = peak.max(live);
        for i in &node.inputs {
            if let Some(r) = readers.get_mut(i) {
                *r -= 1;
                if *r == 0 {
                    live = live.saturating_sub(bytes(*i)?);
                }
            }
        }
    }
    Ok(peak)
}
