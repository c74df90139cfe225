//! Command line and environment configuration (every flag has an `env`).

use crate::engine::tract::KernelChoice;
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
    /// Write the manifest the server would infer for an ONNX model (`manifest init model.onnx`).
    #[command(subcommand)]
    Manifest(ManifestCommand),
}

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Read an ONNX image classifier and write its variants.toml (names, shapes, counts, digest, preprocessing) for you to edit.
    Init(ManifestInitArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ManifestInitArgs {
    /// The ONNX image classifier.
    pub model: PathBuf,
    /// Class labels, one per line (written into the manifest relative to it).
    #[arg(long, env = "SLIMSERVE_LABELS")]
    pub labels: Option<PathBuf>,
    /// Variant name (default: the file name without `.onnx`).
    #[arg(long, env = "SLIMSERVE_ONNX_NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    /// Where to write the manifest (default: variants.toml beside the model; `-` for stdout).
    #[arg(long, short, env = "SLIMSERVE_MANIFEST_OUT")]
    pub out: Option<PathBuf>,
    /// Overwrite an existing manifest.
    #[arg(long, env = "SLIMSERVE_MANIFEST_FORCE")]
    pub force: bool,
}

/// Preprocessing of a model served with `--onnx` (or written by `manifest
/// init`). Unset values: crop and layout from the model's input shape,
/// shorter side crop / 0.875, torchvision's ImageNet mean/std, RGB.
#[derive(Debug, Clone, Default, Args)]
pub struct PreprocessArgs {
    /// Resize the image's shorter side to this many pixels before the centre crop (default: crop / 0.875, e.g. 256 for 224).
    #[arg(long, env = "SLIMSERVE_RESIZE_SHORTER")]
    pub resize_shorter: Option<u32>,
    /// Side of the square centre crop, the model's input size (default: read from the model's input shape).
    #[arg(long, env = "SLIMSERVE_CROP")]
    pub crop: Option<u32>,
    /// Per-channel mean subtracted, in 0..255 units, one value or three in the model's channel order (default: 123.675,116.28,103.53).
    #[arg(
        long,
        env = "SLIMSERVE_MEAN",
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    pub mean: Vec<f32>,
    /// Per-channel divisor, in 0..255 units, one value or three (default: 58.395,57.12,57.375).
    #[arg(long, env = "SLIMSERVE_STD", value_delimiter = ',')]
    pub std: Vec<f32>,
    /// Input tensor layout, NCHW or NHWC (default: read from the model's input shape).
    #[arg(long, env = "SLIMSERVE_LAYOUT")]
    pub layout: Option<crate::manifest::Layout>,
    /// Channel order of the input tensor, RGB or BGR (default: RGB).
    #[arg(long, env = "SLIMSERVE_COLOR")]
    pub color: Option<crate::manifest::Color>,
}

impl PreprocessArgs {
    fn channels(flag: &str, v: &[f32]) -> anyhow::Result<Option<[f32; 3]>> {
        match v {
            [] => Ok(None),
            [x] => Ok(Some([*x; 3])),
            [a, b, c] => Ok(Some([*a, *b, *c])),
            _ => anyhow::bail!(
                "--{flag}: give one value or three (comma separated), not {}",
                v.len()
            ),
        }
    }

    pub fn patch(&self) -> anyhow::Result<crate::manifest::PreprocessPatch> {
        Ok(crate::manifest::PreprocessPatch {
            resize_shorter: self.resize_shorter,
            crop: self.crop,
            mean: Self::channels("mean", &self.mean)?,
            std: Self::channels("std", &self.std)?,
            layout: self.layout,
            color: self.color,
        })
    }

    pub fn is_set(&self) -> bool {
        self.resize_shorter.is_some()
            || self.crop.is_some()
            || !self.mean.is_empty()
            || !self.std.is_empty()
            || self.layout.is_some()
            || self.color.is_some()
    }
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Folder holding variants.toml, labels and the ONNX files.
    #[arg(long, env = "SLIMSERVE_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// Variants to load, comma separated (default: all in the manifest).
    #[arg(long, env = "SLIMSERVE_VARIANTS", value_delimiter = ',')]
    pub variants: Vec<String>,
    /// Convolution kernels: the project's channel-last ones (`fast`, on the
    /// best instruction set the CPU has), tract's (`stock`), or per variant
    /// and batch size whichever ran faster at load (`auto`: builds and times
    /// both, ~1 s more load time per variant).
    #[arg(long, env = "SLIMSERVE_KERNELS", value_enum, default_value = "fast")]
    pub kernels: KernelChoice,
    /// Serve one ONNX image classifier with no manifest (instead of --models): input/output names, shape, layout, counts and digest are read from the file; accuracy is unknown.
    #[arg(long, env = "SLIMSERVE_ONNX")]
    pub onnx: Option<PathBuf>,
    /// With --onnx: class labels, one per line (default: answers name classes by index).
    #[arg(long, env = "SLIMSERVE_LABELS", requires = "onnx")]
    pub labels: Option<PathBuf>,
    /// With --onnx: the variant's name (default: the file name without `.onnx`).
    #[arg(long, env = "SLIMSERVE_ONNX_NAME", requires = "onnx")]
    pub name: Option<String>,
    /// With --onnx: how images become the model's input.
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

impl ModelArgs {
    /// The manifest file, or the single ONNX model with its options.
    pub fn source(&self) -> anyhow::Result<crate::manifest::Source> {
        use crate::manifest::Source;
        match &self.onnx {
            Some(model) => Ok(Source::Onnx {
                model: model.clone(),
                labels: self.labels.clone(),
                name: self.name.clone(),
                preprocess: self.preprocess.patch()?,
            }),
            None if self.preprocess.is_set() => anyhow::bail!(
                "the preprocessing flags (--crop, --mean, ...) apply to --onnx; with a manifest, edit its [preprocess] table"
            ),
            None => Ok(Source::Manifest(self.models.clone())),
        }
    }

    /// Load the manifest (or infer it for --onnx).
    pub fn manifest(&self) -> anyhow::Result<crate::manifest::Manifest> {
        crate::manifest::Manifest::from_source(&self.source()?)
    }

    /// The bundled manifest, all variants (tests and defaults).
    pub fn bundled(variants: &[&str]) -> ModelArgs {
        ModelArgs {
            models: crate::manifest::bundled_models_dir(),
            variants: variants.iter().map(|s| s.to_string()).collect(),
            onnx: None,
            labels: None,
            name: None,
            preprocess: PreprocessArgs::default(),
            kernels: KernelChoice::Fast,
        }
    }
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
    /// Threads one inference may use while the other workers are idle: its
    /// large ops split their rows over the idle cores. Back to back, one
    /// request at a time, full then runs in 7.3 instead of 9.8 ms on 2 cores;
    /// but under open-loop load the split costs CPU (full at 100 req/s, three
    /// runs each: 13.1 ms per request with 1, 13.8-14.5 with 2) and so
    /// capacity, and it did not lower the median at 30 req/s: hence 1 (never
    /// split) by default.
    #[arg(long, env = "SLIMSERVE_INTRA_OP_THREADS", default_value_t = 1)]
    pub intra_op_threads: usize,
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
    /// Graded downgrading: the k-th most accurate of n eligible variants is
    /// only chosen while the predicted queue wait is at most k/n of this
    /// fraction of the budget (the fastest whenever it meets the deadline);
    /// keeps more requests within budget under overload, at a lower mean
    /// accuracy (README, "Routing"). 0 (default): off, the most accurate
    /// variant that meets the deadline.
    #[arg(long, env = "SLIMSERVE_ROUTE_HEADROOM", default_value_t = 0.0)]
    pub route_headroom: f64,
    /// Load-aware routing: from the measured arrival rate and each rung's
    /// measured cost, requests are routed to the rungs whose throughput
    /// keeps the inference workers busy at most this fraction of the time
    /// (each still takes the most accurate of them that meets its deadline),
    /// so the queue stays short under overload instead of filling up to the
    /// deadline. 0: off, greedy (the most accurate rung that meets each
    /// deadline given the queue; README, "Routing").
    #[arg(long, env = "SLIMSERVE_ROUTE_UTILIZATION", default_value_t = 0.9)]
    pub route_utilization: f64,
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
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Connection limits and timeouts of both listeners (README: "Connection
/// limits and timeouts").
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Open connections at most, over both listeners (also capped by the
    /// open-file limit). At the limit a new connection evicts the oldest one
    /// without a request in progress, or is closed at once.
    #[arg(long, env = "SLIMSERVE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Milliseconds a new connection has to send a complete request head
    /// (HTTP/1), or to start HTTP/2; on keep-alive connections, counted from
    /// the first byte of the next head.
    #[arg(long, env = "SLIMSERVE_HEADER_TIMEOUT_MS", default_value_t = 5_000)]
    pub header_timeout_ms: u64,
    /// Longest a request body may take to arrive, in milliseconds; a body is
    /// also cut at the request's own deadline (its latency budget).
    #[arg(long, env = "SLIMSERVE_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,
    /// Milliseconds a connection without a request in progress stays open
    /// (HTTP/1 keep-alive, HTTP/2 and gRPC without open streams).
    #[arg(long, env = "SLIMSERVE_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,
    /// HTTP/2 (gRPC and h2c on the HTTP port): concurrent streams per connection.
    #[arg(
        long,
        env = "SLIMSERVE_H2_MAX_CONCURRENT_STREAMS",
        default_value_t = 64
    )]
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: seconds between keep-alive pings sent to an idle-looking peer (0: none).
    #[arg(
        long,
        env = "SLIMSERVE_H2_KEEPALIVE_INTERVAL_SECS",
        default_value_t = 30
    )]
    pub h2_keepalive_interval_secs: u64,
    /// HTTP/2: seconds to wait for a ping's answer before closing the connection.
    #[arg(
        long,
        env = "SLIMSERVE_H2_KEEPALIVE_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub h2_keepalive_timeout_secs: u64,
    /// HTTP/2: largest header block accepted, in bytes.
    #[arg(long, env = "SLIMSERVE_H2_MAX_HEADER_LIST_BYTES", default_value_t = 16 << 10)]
    pub h2_max_header_list_bytes: u32,
}

impl Default for ConnArgs {
    fn default() -> Self {
        ConnArgs {
            max_connections: 10_000,
            header_timeout_ms: 5_000,
            body_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            h2_max_concurrent_streams: 64,
            h2_keepalive_interval_secs: 30,
            h2_keepalive_timeout_secs: 10,
            h2_max_header_list_bytes: 16 << 10,
        }
    }
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
    /// Threads one inference may use while the other workers are idle
    /// (as `serve --intra-op-threads`; default 1: every figure is one
    /// thread per inference).
    #[arg(long, env = "SLIMSERVE_BENCH_INTRA_OP_THREADS", default_value_t = 1)]
    pub intra_op_threads: usize,
    /// Seconds of measurement per (variant, batch size, workers) cell.
    #[arg(long, env = "SLIMSERVE_BENCH_SECONDS", default_value_t = 3.0)]
    pub seconds: f64,
    /// Also time every op of one plan (`--profile-batch`), stock and fast kernels
    /// (median of this many runs; 0: no profile).
    #[arg(long, env = "SLIMSERVE_BENCH_PROFILE_RUNS", default_value_t = 0)]
    pub profile_runs: usize,
    /// Batch size of the profiled plan.
    #[arg(long, env = "SLIMSERVE_BENCH_PROFILE_BATCH", default_value_t = 1)]
    pub profile_batch: usize,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_defaults_match_the_flags() {
        let cli = Cli::try_parse_from(["slimserve", "serve"]).unwrap();
        let Command::Serve(a) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(
            format!("{:?}", a.conn),
            format!("{:?}", ConnArgs::default())
        );
    }
}
