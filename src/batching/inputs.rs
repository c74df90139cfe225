//! A request's preprocessed tensors. Variants may differ in preprocessing
//! (input size, layout, normalisation): the request path preprocesses once
//! per distinct preprocessing among the variants it may be routed to, and
//! the worker takes the tensor of the variant the router chose.

/// One tensor for every variant, or one per distinct preprocessing.
#[derive(Debug, Clone)]
pub struct Inputs {
    tensors: Vec<Vec<f32>>,
    /// `slot[v]`: index in `tensors` of variant `v`'s input; `None` in the
    /// vector: the request cannot be routed to `v`. Empty: `tensors[0]` is
    /// every variant's.
    slot: Vec<Option<usize>>,
}

impl Inputs {
    /// The same tensor whatever the variant (one preprocessing for all, or
    /// a tensor given for a pinned variant).
    pub fn same(tensor: Vec<f32>) -> Inputs {
        Inputs {
            tensors: vec![tensor],
            slot: Vec::new(),
        }
    }

    /// `tensors[slot[v]]` is variant `v`'s input.
    pub fn per_variant(tensors: Vec<Vec<f32>>, slot: Vec<Option<usize>>) -> Inputs {
        Inputs { tensors, slot }
    }

    /// Variant `v`'s input, if this request was preprocessed for it.
    pub fn for_variant(&self, v: usize) -> Option<&[f32]> {
        if self.slot.is_empty() {
            return self.tensors.first().map(Vec::as_slice);
        }
        let i = (*self.slot.get(v)?)?;
        self.tensors.get(i).map(Vec::as_slice)
    }

    /// Distinct tensors held (the preprocessing work done).
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
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

    #[test]
    fn each_variant_gets_its_own_tensor() {
        let one = Inputs::same(vec![1.0, 2.0]);
        assert_eq!(one.for_variant(0), Some(&[1.0, 2.0][..]));
        assert_eq!(one.for_variant(7), Some(&[1.0, 2.0][..]));
        let two = Inputs::per_variant(
            vec![vec![1.0], vec![2.0, 3.0]],
            vec![Some(1), None, Some(0)],
        );
        assert_eq!(two.for_variant(0), Some(&[2.0, 3.0][..]));
        assert_eq!(two.for_variant(1), None);
        assert_eq!(two.for_variant(2), Some(&[1.0][..]));
        assert_eq!(two.for_variant(3), None);
        assert_eq!(two.len(), 2);
    }
}
