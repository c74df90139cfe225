//! The batcher: the scheduling core (`state`) driven by dedicated inference
//! worker threads (`worker`), and the async handle the transports use.

pub mod inputs;
pub mod profile;
pub mod state;
mod worker;

pub use inputs::{Inputs, Tensor};
pub use worker::{Batcher, BatcherConfig, Job, Outcome};
