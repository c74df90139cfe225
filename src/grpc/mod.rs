//! gRPC transport (tonic): the Open Inference Protocol's
//! `inference.GRPCInferenceService` and the standard `grpc.health.v1`
//! service, on their own port, over the same `Service` (engine, batcher,
//! metrics) as HTTP. The `.proto` files are in `proto/`, compiled by
//! `build.rs` without a system `protoc`.

mod inference;

pub use inference::{grpc_timeout, Inference};

use crate::error::ServeError;
use crate::http::conn::{self, Pool, Protocol};
use crate::http::AppState;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::GrpcInferenceServiceServer;

/// The gRPC status of an error, from the one error table.
pub fn status(e: &ServeError) -> tonic::Status {
    tonic::Status::new(tonic::Code::from_i32(e.grpc_code() as i32), e.to_string())
}

/// Health of the overall server ("") and of the inference service, as the
/// gRPC health protocol reports them to Kubernetes' gRPC probes.
#[derive(Clone)]
pub struct Health(HealthReporter);

impl Health {
    pub async fn set(&self, serving: bool) {
        let s = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.0.set_service_status("", s).await;
        self.0
            .set_service_status(
                <GrpcInferenceServiceServer<Inference> as tonic::server::NamedService>::NAME,
                s,
            )
            .await;
    }
}

/// Serve gRPC on `listener` through the connection layer (`http::conn`:
/// the shared connection limit, header/idle timeouts, body deadline, and the
/// HTTP/2 limits: concurrent streams per connection, keep-alive pings with a
/// timeout, header-list size) until `stop` turns true; in-flight calls
/// finish first. Messages are limited to `--max-body-bytes` both ways.
/// Returns the health handle so the caller can flip it to serving once the
/// models are ready, and back when draining.
pub async fn start(
    listener: TcpListener,
    state: AppState,
    pool: Arc<Pool>,
    stop: watch::Receiver<bool>,
) -> (Health, tokio::task::JoinHandle<()>) {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health(reporter);
    health.set(false).await;
    let limit = state.max_body_bytes;
    let inference = GrpcInferenceServiceServer::new(Inference::new(state))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let routes = tonic::service::Routes::new(health_service).add_service(inference);
    let server = conn::serve(listener, Protocol::Grpc, routes, pool, stop);
    (health, tokio::spawn(server))
}
