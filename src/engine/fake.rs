//! A fake engine with controlled timing, for tests of the batcher and the
//! transports. Its cost model is `fixed + per_image × batch`, slept for real.

use super::Engine;
use anyhow::{bail, Result};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct FakeVariant {
    pub sizes: Vec<usize>,
    pub fixed: Duration,
    pub per_image: Duration,
    /// The class every image is given by this variant.
    pub class: usize,
}

pub struct FakeEngine {
    pub variants: Vec<FakeVariant>,
    pub classes: usize,
    /// Every call made: (variant, batch size).
    pub calls: Mutex<Vec<(usize, usize)>>,
}

impl FakeEngine {
    pub fn new(variants: Vec<FakeVariant>) -> FakeEngine {
        FakeEngine {
            variants,
            classes: 10,
            calls: Mutex::new(vec![]),
        }
    }

    pub fn calls(&self) -> Vec<(usize, usize)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Engine for FakeEngine {
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
        let fv = &self.variants[v];
        if !fv.sizes.contains(&batch) || input.is_empty() || !input.len().is_multiple_of(batch) {
            bail!("fake engine: bad batch {batch} for {} floats", input.len());
        }
        self.calls.lock().unwrap().push((v, batch));
        std::thread::sleep(fv.fixed + fv.per_image * batch as u32);
        let mut out = vec![0.0; batch * self.classes];
        for row in out.chunks_mut(self.classes) {
            row[fv.class % self.classes] = 10.0;
        }
        Ok(out)
    }
}
