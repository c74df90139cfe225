//! Packed weights shared by the plans of one variant.
//!
//! Each batch size gets its own tract plan, but the weights of a convolution
//! do not depend on the batch: the plans built from one model look their
//! packed weights up here, so a variant holds one packed copy however many
//! plans it has. Keys are the instruction set, the geometry and a digest of
//! the weights and biases (SHA-256), so two convolutions share a pack only
//! when their packs would be identical.

use crate::engine::simd::qgemm::{PackedQGemm, QIsa, QOut, QParams};
use crate::engine::simd::{DwGeometry, Isa, PackedDepthwise, PackedGemm};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Shape {
    /// `k x n` matrix product (pointwise and dense convolutions).
    Gemm(usize, usize),
    Depthwise(DwGeometry),
    /// `k x n` integer product on this instruction set.
    QGemm(QIsa, usize, usize),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    isa: Isa,
    shape: Shape,
    digest: [u8; 32],
}

fn digest(w: &[f32], bias: &[f32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((w.len() as u64).to_le_bytes());
    for x in w.iter().chain(bias) {
        h.update(x.to_bits().to_le_bytes());
    }
    h.finalize().into()
}

/// The packs made so far, and how often one was reused.
#[derive(Default)]
pub struct Packs {
    gemm: Mutex<HashMap<Key, Arc<PackedGemm>>>,
    depthwise: Mutex<HashMap<Key, Arc<PackedDepthwise>>>,
    qgemm: Mutex<HashMap<Key, Arc<PackedQGemm>>>,
    reused: Mutex<usize>,
}

impl Packs {
    /// The packed `k x n` matrix (`w` row-major, `k` rows) with its bias.
    pub fn gemm(&self, isa: Isa, w: &[f32], k: usize, n: usize, bias: &[f32]) -> Arc<PackedGemm> {
        let isa = isa.for_gemm(k);
        let key = Key {
            isa,
            shape: Shape::Gemm(k, n),
            digest: digest(w, bias),
        };
        let mut map = self.gemm.lock().expect("packs lock");
        if let Some(p) = map.get(&key) {
            *self.reused.lock().expect("packs lock") += 1;
            return p.clone();
        }
        let p = Arc::new(PackedGemm::new(isa, w, k, n, bias));
        map.insert(key, p.clone());
        p
    }

    /// The packed depthwise weights of `geo` (`w` as `[c, 1, kh, kw]`).
    pub fn depthwise(
        &self,
        isa: Isa,
        geo: DwGeometry,
        w: &[f32],
        bias: &[f32],
    ) -> Result<Arc<PackedDepthwise>, String> {
        let key = Key {
            isa,
            shape: Shape::Depthwise(geo),
            digest: digest(w, bias),
        };
        let mut map = self.depthwise.lock().expect("packs lock");
        if let Some(p) = map.get(&key) {
            *self.reused.lock().expect("packs lock") += 1;
            return Ok(p.clone());
        }
        let p = Arc::new(PackedDepthwise::new(isa, geo, w, bias)?);
        map.insert(key, p.clone());
        Ok(p)
    }

    /// The packed s8 `k x n` matrix `q` (row-major) of an integer product,
    /// with its epilogue (see [`PackedQGemm::new`]).
    #[allow(clippy::too_many_arguments)]
    pub fn qgemm(
        &self,
        isa: QIsa,
        q: &[i8],
        k: usize,
        n: usize,
        sw: &[f32],
        bias: &[f32],
        input: QParams,
        output: QOut,
    ) -> Arc<PackedQGemm> {
        let mut h = Sha256::new();
        h.update((q.len() as u64).to_le_bytes());
        h.update(q.iter().map(|v| *v as u8).collect::<Vec<u8>>());
        for x in sw
            .iter()
            .chain(bias)
            .chain([&input.scale, &output.inv_scale])
        {
            h.update(x.to_bits().to_le_bytes());
        }
        h.update(input.zero.to_le_bytes());
        h.update(output.zero.to_le_bytes());
        let key = Key {
            // The float instruction set does not matter to an integer pack.
            isa: Isa::Portable,
            shape: Shape::QGemm(isa, k, n),
            digest: h.finalize().into(),
        };
        let mut map = self.qgemm.lock().expect("packs lock");
        if let Some(p) = map.get(&key) {
            *self.reused.lock().expect("packs lock") += 1;
            return p.clone();
        }
        let p = Arc::new(PackedQGemm::new(isa, q, k, n, sw, bias, input, output));
        map.insert(key, p.clone());
        p
    }

    /// Distinct packs held.
    pub fn len(&self) -> usize {
        self.gemm.lock().expect("packs lock").len()
            + self.depthwise.lock().expect("packs lock").len()
            + self.qgemm.lock().expect("packs lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Look-ups answered by a pack made earlier.
    pub fn reused(&self) -> usize {
        *self.reused.lock().expect("packs lock")
    }

    /// Bytes of the distinct packs held.
    pub fn bytes(&self) -> usize {
        let g: usize = self
            .gemm
            .lock()
            .expect("packs lock")
            .values()
            .map(|p| p.bytes())
            .sum();
        let d: usize = self
            .depthwise
            .lock()
            .expect("packs lock")
            .values()
            .map(|p| p.bytes())
            .sum();
        let q: usize = self
            .qgemm
            .lock()
            .expect("packs lock")
            .values()
            .map(|p| p.bytes())
            .sum();
        g + d + q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_share_one_pack_and_different_ones_do_not() {
        let packs = Packs::default();
        let isa = Isa::Portable;
        let w: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        let b = vec![0.1, 0.2, 0.3];
        let a = packs.gemm(isa, &w, 4, 3, &b);
        let again = packs.gemm(isa, &w.clone(), 4, 3, &b.clone());
        assert!(Arc::ptr_eq(&a, &again));
        let mut w2 = w.clone();
        w2[7] = -1.0;
        let other = packs.gemm(isa, &w2, 4, 3, &b);
        assert!(!Arc::ptr_eq(&a, &other));
        // Same values, other shape: its own pack.
        let reshaped = packs.gemm(isa, &w, 3, 4, &[0.0; 4]);
        assert!(!Arc::ptr_eq(&a, &reshaped));
        assert_eq!(packs.len(), 3);
        assert_eq!(packs.reused(), 1);
        assert_eq!(packs.bytes(), a.bytes() + other.bytes() + reshaped.bytes());
    }
}
