//! Start the real server on an ephemeral port with the bundled models.
#![allow(dead_code)] // each test binary uses its own part of it

use slimserve::config::{ModelArgs, ServeArgs};
use slimserve::engine::tract::KernelChoice;
use slimserve::manifest::bundled_models_dir;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;

pub struct Server {
    pub addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

pub fn args(variants: &[&str]) -> ServeArgs {
    ServeArgs {
        model: ModelArgs {
            kernels: KernelChoice::Fast,
            ..ModelArgs::bundled(variants)
        },
        batch_sizes: vec![1],
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        workers: Some(2),
        intra_op_threads: 1,
        queue_capacity: 64,
        max_batch_wait_ms: 5,
        no_batching: false,
        sla_slack: 0.05,
        route_headroom: 0.0,
        route_utilization: 0.0,
        default_sla_ms: 20_000,
        max_sla_ms: 60_000,
        max_body_bytes: 4 << 20,
        max_pixels: 40_000_000,
        max_top_k: 100,
        preprocess_slots: Some(2),
        warmup_runs: 2,
        shutdown_timeout_secs: 10,
        conn: Default::default(),
    }
}

pub async fn start(args: ServeArgs) -> Server {
    let listener = tokio::net::TcpListener::bind(args.http_addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let grpc = tokio::net::TcpListener::bind(args.grpc_addr).await.unwrap();
    let grpc_addr = grpc.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(slimserve::server::serve(args, listener, grpc, async {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = client
            .get(format!("http://{addr}/health/ready"))
            .send()
            .await
        {
            if r.status() == 200 {
                return Server {
                    addr,
                    grpc_addr,
                    stop: Some(tx),
                    task,
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server did not become ready");
}

pub fn photo(name: &str) -> Vec<u8> {
    std::fs::read(bundled_models_dir().join("testdata").join(name)).unwrap()
}
