//! Command line and environment configuration (every flag has an `env`).

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "slimserve",
    version,
    about = "Serve an image classifier in several variants, routed per request by latency budget"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load every variant, warm it, and serve HTTP and gRPC.
    Serve(ServeArgs),
    /// Measure each variant in-process: latency and throughput per batch size and worker count, load time, memory.
    Bench(BenchArgs),
    /// Top-1/top-5 of each variant over a folder of `<synset>_*.JPEG` images.
    Eval(EvalArgs),
    /// Probe a running server's readiness (for container health checks); exit 0 when ready.
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Folder holding variants.toml, labels and the ONNX files.
    #[arg(long, env = "SLIMSERVE_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// Variants to load, comma separated (default: all in the manifest).
    #[arg(long, env = "SLIMSERVE_VARIANTS", value_delimiter = ',')]
    pub variants: Vec<String>,
}

pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch sizes to build plans for, comma separated; 1 is always built.
    /// Larger batches are only formed where the measured profile shows they pay off.
    #[arg(
        long,
        env = "SLIMSERVE_BATCH_SIZES",
        value_delimiter = ',',
        default_value = "1"
    )]
    pub batch_sizes: Vec<usize>,
    /// Address of the HTTP server.
    #[arg(long, env = "SLIMSERVE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Address of the gRPC server (Open Inference Protocol and grpc.health.v1).
    #[arg(long, env = "SLIMSERVE_GRPC_ADDR", default_value = "0.0.0.0:8081")]
    pub grpc_addr: SocketAddr,
    /// Inference worker threads, each running one batch at a time (default: one per core).
    #[arg(long, env = "SLIMSERVE_WORKERS")]
    pub workers: Option<usize>,
    /// Requests queued at most (over all variants) before answering 503.
    #[arg(long, env = "SLIMSERVE_QUEUE_CAPACITY", default_value_t = 128)]
    pub queue_capacity: usize,
    /// Longest a request waits for its batch to fill, in milliseconds.
    #[arg(long, env = "SLIMSERVE_MAX_BATCH_WAIT_MS", default_value_t = 5)]
    pub max_batch_wait_ms: u64,
    /// Disable batching altogether (batches of one on parallel workers).
    #[arg(long, env = "SLIMSERVE_NO_BATCHING")]
    pub no_batching: bool,
    /// Fraction of each latency budget kept in reserve when routing (time to
    /// send the answer, prediction error).
    #[arg(long, env = "SLIMSERVE_SLA_SLACK", default_value_t = 0.1)]
    pub sla_slack: f64,
    /// Latency budget of requests without an X-SLA-Ms header, in milliseconds.
    #[arg(long, env = "SLIMSERVE_DEFAULT_SLA_MS", default_value_t = 1000)]
    pub default_sla_ms: u64,
    /// Largest accepted X-SLA-Ms, in milliseconds.
    #[arg(long, env = "SLIMSERVE_MAX_SLA_MS", default_value_t = 60_000)]
    pub max_sla_ms: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SLIMSERVE_MAX_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Largest accepted image, in pixels (checked from the header, before decoding).
    #[arg(long, env = "SLIMSERVE_MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,
    /// Largest accepted top_k.
    #[arg(long, env = "SLIMSERVE_MAX_TOP_K", default_value_t = 100)]
    pub max_top_k: usize,
    /// Images decoded at once (default: one per core).
    #[arg(long, env = "SLIMSERVE_PREPROCESS_SLOTS")]
    pub preprocess_slots: Option<usize>,
    /// Warm-up runs per plan (they also seed the latency model).
    #[arg(long, env = "SLIMSERVE_WARMUP_RUNS", default_value_t = 6)]
    pub warmup_runs: usize,
    /// Seconds to finish in-flight requests after SIGTERM/SIGINT.
    #[arg(long, env = "SLIMSERVE_SHUTDOWN_TIMEOUT_SECS", default_value_t = 20)]
    pub shutdown_timeout_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch sizes to measure, comma separated.
    #[arg(
        long,
        env = "SLIMSERVE_BENCH_BATCH_SIZES",
        value_delimiter = ',',
        default_value = "1,2,4,8"
    )]
    pub batch_sizes: Vec<usize>,
    /// Worker counts to measure throughput with, comma separated (default: 1 and one per core).
    #[arg(long, env = "SLIMSERVE_BENCH_WORKERS", value_delimiter = ',')]
    pub workers: Vec<usize>,
    /// Seconds of measurement per (variant, batch size, workers) cell.
    #[arg(long, env = "SLIMSERVE_BENCH_SECONDS", default_value_t = 3.0)]
    pub seconds: f64,
    /// Where to write the JSON results.
    #[arg(long, env = "SLIMSERVE_BENCH_JSON", default_value = "bench.json")]
    pub json: PathBuf,
    /// Images whose preprocessing (decode, resize, normalise) to time, one
    /// thread (default: the models folder's testdata/).
    #[arg(long, env = "SLIMSERVE_BENCH_IMAGES")]
    pub images: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder of `<synset>_*.JPEG` images.
    #[arg(long, env = "SLIMSERVE_EVAL_IMAGES")]
    pub images: PathBuf,
    /// Synsets file (line N = class N); default: `synsets.txt` beside the images' folder.
    #[arg(long, env = "SLIMSERVE_EVAL_SYNSETS")]
    pub synsets: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// Address of the server to probe.
    #[arg(
        long,
        env = "SLIMSERVE_HEALTHCHECK_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub addr: SocketAddr,
    /// Seconds before giving up.
    #[arg(long, env = "SLIMSERVE_HEALTHCHECK_TIMEOUT_SECS", default_value_t = 3)]
    pub timeout_secs: u64,
}
