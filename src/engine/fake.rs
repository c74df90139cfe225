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

/// A fault the fake engine can be told to produce (worker-fault tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeFault {
    Panic,
    Error,
}

pub struct FakeEngine {
    pub variants: Vec<FakeVariant>,
    pub classes: usize,
    /// Every call made: (variant, batch size).
    pub calls: Mutex<Vec<(usize, usize)>>,
    /// The next `n` calls fail this way.
    faults: Mutex<Option<(FakeFault, usize)>>,
    /// Calls (by index in `calls`) that take `factor` times as long: a slow
    /// spell of the machine.
    slow: Mutex<Option<(std::ops::Range<usize>, u32)>>,
}

impl FakeEngine {
    pub fn new(variants: Vec<FakeVariant>) -> FakeEngine {
        FakeEngine {
            variants,
            classes: 10,
            calls: Mutex::new(vec![]),
            faults: Mutex::new(None),
            slow: Mutex::new(None),
        }
    }

    /// Make the calls numbered `calls` (0 = the first call ever made) take
    /// `factor` times their cost.
    pub fn slow_spell(&self, calls: std::ops::Range<usize>, factor: u32) {
        *self.slow.lock().unwrap() = Some((calls, factor));
    }

    /// Make the next `calls` calls panic or fail (`usize::MAX`: all of them).
    pub fn inject(&self, fault: FakeFault, calls: usize) {
        *self.faults.lock().unwrap() = (calls > 0).then_some((fault, calls));
    }

    /// Stop injecting faults.
    pub fn heal(&self) {
        *self.faults.lock().unwrap() = None;
    }

    pub fn calls(&self) -> Vec<(usize, usize)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Engine for FakeEngine {
    fn num_variants(&self) -> usize {
        self.variants.len()
    }

    fn batch_sizes(&self, v: usize) -> Vec<usize> {
        self.variants[v].sizes.clone()
    }

    fn num_classes(&self) -> usize {
        self.classes
    }

    fn infer(&self, v: usize, batch: usize, input: Vec<f32>) -> Result<Vec<f32>> {
        let fv = &self.variants[v];
        if !fv.sizes.contains(&batch) || input.is_empty() || !input.len().is_multiple_of(batch) {
            bail!("fake engine: bad batch {batch} for {} floats", input.len());
        }
        let index = {
            let mut calls = self.calls.lock().unwrap();
            calls.push((v, batch));
            calls.len() - 1
        };
        let factor = match &*self.slow.lock().unwrap() {
            Some((r, f)) if r.contains(&index) => *f,
            _ => 1,
        };
        let fault = {
            let mut f = self.faults.lock().unwrap();
            let now = f.map(|(k, _)| k);
            *f = f.and_then(|(k, n)| (n > 1).then(|| (k, n.saturating_sub(1))));
            now
        };
        match fault {
            Some(FakeFault::Panic) => panic!("fake engine: injected panic"),
            Some(FakeFault::Error) => bail!("fake engine: injected error"),
            None => {}
        }
        std::thread::sleep((fv.fixed + fv.per_image * batch as u32) * factor);
        let mut out = vec![0.0; batch * self.classes];
        for row in out.chunks_mut(self.classes) {
            row[fv.class % self.classes] = 10.0;
        }
        Ok(out)
    }
}
