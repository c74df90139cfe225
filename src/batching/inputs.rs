//! A request's preprocessed tensors. Variants may differ in preprocessing
//! (input size, layout, normalisation): the request path preprocesses once
//! per distinct preprocessing among the variants it may be routed to, and
//! the worker takes the tensor of the variant the router chose.
//!
//! A decoded image waits in the queue as its resized crop in bytes, a
//! quarter of its floats (224 x 224: 147 kB instead of 588 kB); the worker
//! normalises it into the batch it assembles.

use crate::manifest::Preprocess;
use crate::preprocess::normalize_into;

/// One preprocessed input.
#[derive(Debug, Clone)]
pub enum Tensor {
    /// Floats as the model takes them (Open Inference Protocol tensors).
    Floats(Vec<f32>),
    /// A resized crop (HWC RGB bytes), normalised by `prep` on the worker.
    Crop { bytes: Vec<u8>, prep: Preprocess },
}

impl Tensor {
    /// Floats it becomes.
    pub fn len(&self) -> usize {
        match self {
            Tensor::Floats(f) => f.len(),
            Tensor::Crop { bytes, .. } => bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes it holds while queued.
    pub fn held_bytes(&self) -> usize {
        match self {
            Tensor::Floats(f) => f.len() * 4,
            Tensor::Crop { bytes, .. } => bytes.len(),
        }
    }

    /// Append its floats, in the model's layout, to `out`.
    pub fn append_to(&self, out: &mut Vec<f32>) {
        match self {
            Tensor::Floats(f) => out.extend_from_slice(f),
            Tensor::Crop { bytes, prep } => normalize_into(bytes, prep, out),
        }
    }
}

impl From<Vec<f32>> for Tensor {
    fn from(t: Vec<f32>) -> Tensor {
        Tensor::Floats(t)
    }
}

/// One tensor for every variant, or one per distinct preprocessing.
#[derive(Debug, Clone)]
pub struct Inputs {
    tensors: Vec<Tensor>,
    /// `slot[v]`: index in `tensors` of variant `v`'s input; `None` in the
    /// vector: the request cannot be routed to `v`. Empty: `tensors[0]` is
    /// every variant's.
    slot: Vec<Option<usize>>,
}

impl Inputs {
    /// The same tensor whatever the variant (one preprocessing for all, or
    /// a tensor given for a pinned variant).
    pub fn same(tensor: impl Into<Tensor>) -> Inputs {
        Inputs {
            tensors: vec![tensor.into()],
            slot: Vec::new(),
        }
    }

    /// `tensors[slot[v]]` is variant `v`'s input.
    pub fn per_variant(tensors: Vec<Tensor>, slot: Vec<Option<usize>>) -> Inputs {
        Inputs { tensors, slot }
    }

    /// Variant `v`'s input, if this request was preprocessed for it.
    pub fn for_variant(&self, v: usize) -> Option<&Tensor> {
        if self.slot.is_empty() {
            return self.tensors.first();
        }
        let i = (*self.slot.get(v)?)?;
        self.tensors.get(i)
    }

    /// Distinct tensors held (the preprocessing work done).
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Bytes held while queued.
    pub fn held_bytes(&self) -> usize {
        self.tensors.iter().map(Tensor::held_bytes).sum()
    }
}

impl From<Vec<f32>> for Inputs {
    fn from(t: Vec<f32>) -> Inputs {
        Inputs::same(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{bundled_models_dir, Manifest};

    fn floats(t: Option<&Tensor>) -> Option<Vec<f32>> {
        t.map(|t| {
            let mut v = Vec::new();
            t.append_to(&mut v);
            v
        })
    }

    #[test]
    fn each_variant_gets_its_own_tensor() {
        let one = Inputs::same(vec![1.0, 2.0]);
        assert_eq!(floats(one.for_variant(0)), Some(vec![1.0, 2.0]));
        assert_eq!(floats(one.for_variant(7)), Some(vec![1.0, 2.0]));
        let two = Inputs::per_variant(
            vec![vec![1.0].into(), vec![2.0, 3.0].into()],
            vec![Some(1), None, Some(0)],
        );
        assert_eq!(floats(two.for_variant(0)), Some(vec![2.0, 3.0]));
        assert!(two.for_variant(1).is_none());
        assert_eq!(floats(two.for_variant(2)), Some(vec![1.0]));
        assert!(two.for_variant(3).is_none());
        assert_eq!(two.len(), 2);
    }

    #[test]
    fn a_queued_crop_holds_bytes_and_becomes_the_normalised_tensor() {
        let prep = Manifest::load(&bundled_models_dir()).unwrap().variants[0]
            .preprocess
            .clone();
        let bytes: Vec<u8> = (0..2 * 2 * 3).map(|i| (i * 20) as u8).collect();
        let mut expected = Vec::new();
        normalize_into(&bytes, &prep, &mut expected);
        let t = Tensor::Crop {
            bytes: bytes.clone(),
            prep,
        };
        assert_eq!(t.len(), 12);
        assert_eq!(t.held_bytes(), 12);
        let mut out = vec![9.0];
        t.append_to(&mut out);
        assert_eq!(out[0], 9.0);
        assert_eq!(&out[1..], &expected[..]);
        assert_eq!(Inputs::same(t).held_bytes(), 12);
        assert_eq!(Inputs::same(vec![0.0f32; 12]).held_bytes(), 48);
    }
}
