//! slimserve: serve an image classifier in several variants and route each
//! request to the most accurate variant that meets its latency budget.

pub mod batching;
pub mod bench;
pub mod config;
pub mod engine;
pub mod error;
pub mod eval;
pub mod grpc;
pub mod http;
pub mod kserve;
pub mod manifest;
pub mod memory;
pub mod metrics;
pub mod preprocess;
pub mod recent;
pub mod routing;
pub mod server;
pub mod service;
#[doc(hidden)]
pub mod testutil;
