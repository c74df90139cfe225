//! slimserve load generator: open-loop arrivals, latency from the scheduled
//! send time, HDR histograms, goodput under latency budgets, sweeps over
//! rates × scenarios × budgets, and the server's own `/metrics` beside.

pub mod cpu;
pub mod gen;
pub mod report;
pub mod results;
pub mod server;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use gen::{Load, Scenario, StepSpec, Target};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use results::{RunResults, Step};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Arrival {
    /// Open loop, exponential gaps (default).
    Poisson,
    /// Open loop, evenly spaced.
    Constant,
    /// Closed loop: --concurrency workers, each waits for its answer (capacity, not latency).
    Closed,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Open-loop load generator comparing slimserve variants under latency SLAs"
)]
pub struct Args {
    /// Server base URL.
    #[arg(long, env = "LOADTEST_TARGET", default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Folder of .png/.jpg images, cycled in name order (default: the committed photos in models/testdata).
    #[arg(long, env = "LOADTEST_IMAGES")]
    pub images: Option<PathBuf>,
    /// Scenarios: `pinned:<variant>` or `routed`, repeatable or comma separated
    /// (default: every variant of /v1/variants pinned, plus routed).
    #[arg(long = "scenario", env = "LOADTEST_SCENARIOS", value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Latency budgets (X-SLA-Ms), comma separated; each scenario runs at each.
    #[arg(
        long,
        env = "LOADTEST_SLA_MS",
        value_delimiter = ',',
        default_value = "100,300"
    )]
    pub sla_ms: Vec<f64>,
    /// Offered rates (req/s) to sweep, comma separated (open loop).
    #[arg(
        long,
        env = "LOADTEST_RATES",
        value_delimiter = ',',
        default_value = "10,20,30,40"
    )]
    pub rates: Vec<f64>,
    /// Instead of --rates, search for the highest rate whose SLA attainment stays >= 99 %.
    #[arg(long, env = "LOADTEST_SEARCH")]
    pub search: bool,
    /// First rate of the search (doubled until it fails, then bisected).
    #[arg(long, env = "LOADTEST_SEARCH_START", default_value_t = 10.0)]
    pub search_start: f64,
    /// Steps at most per search.
    #[arg(long, env = "LOADTEST_SEARCH_STEPS", default_value_t = 6)]
    pub search_steps: usize,
    /// Stop the search once the bracket is narrower than this fraction of the passing rate.
    #[arg(long, env = "LOADTEST_SEARCH_PRECISION", default_value_t = 0.1)]
    pub search_precision: f64,
    /// Arrival process.
    #[arg(long, env = "LOADTEST_ARRIVAL", value_enum, default_value_t = Arrival::Poisson)]
    pub arrival: Arrival,
    /// Closed loop: concurrencies to sweep, comma separated.
    #[arg(
        long,
        env = "LOADTEST_CONCURRENCY",
        value_delimiter = ',',
        default_value = "1,2,4,8"
    )]
    pub concurrency: Vec<usize>,
    /// Measured part of each step.
    #[arg(long, env = "LOADTEST_DURATION", value_parser = humantime::parse_duration, default_value = "15s")]
    pub duration: Duration,
    /// Load before each step's measurement (same rate; not recorded).
    #[arg(long, env = "LOADTEST_WARMUP", value_parser = humantime::parse_duration, default_value = "3s")]
    pub warmup: Duration,
    /// Idle time between steps (lets the server's queue drain).
    #[arg(long, env = "LOADTEST_COOLDOWN", value_parser = humantime::parse_duration, default_value = "1s")]
    pub cooldown: Duration,
    /// Per-request timeout (counted as `timeouts`).
    #[arg(long, env = "LOADTEST_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Open loop: requests outstanding at most; arrivals beyond are counted as failures, never delayed.
    #[arg(long, env = "LOADTEST_MAX_IN_FLIGHT", default_value_t = 2000)]
    pub max_in_flight: u64,
    /// top_k query parameter.
    #[arg(long, env = "LOADTEST_TOP_K", default_value_t = 5)]
    pub top_k: usize,
    /// Seed of the Poisson arrivals (each step adds its index).
    #[arg(long, env = "LOADTEST_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Output folder: results.json, steps.csv, summary.md, report.html, *.svg.
    #[arg(long, env = "LOADTEST_OUT", default_value = "loadtest/out")]
    pub out: PathBuf,
    /// How long to wait for /health/ready before starting.
    #[arg(long, env = "LOADTEST_READY_TIMEOUT", value_parser = humantime::parse_duration, default_value = "120s")]
    pub ready_timeout: Duration,
    /// Don't call /health/ready, /v1/variants or /metrics (for servers that aren't slimserve).
    #[arg(long, env = "LOADTEST_NO_SERVER_API")]
    pub no_server_api: bool,
    /// Worker threads of the generator's runtime.
    #[arg(long, env = "LOADTEST_THREADS", default_value_t = 2)]
    pub threads: usize,
    /// Name of the server under test, put before every scenario (`<label> pinned:full`), so
    /// that runs against different servers can be drawn side by side (see --merge).
    #[arg(long, env = "LOADTEST_LABEL")]
    pub label: Option<String>,
    /// Run nothing: merge these results.json files (runs with different --label) into one
    /// report in --out, with a table of the servers side by side. Repeatable or comma separated.
    #[arg(long = "merge", env = "LOADTEST_MERGE", value_delimiter = ',')]
    pub merge: Vec<PathBuf>,
}

/// `--merge`: the runs in these files as one.
pub fn merge(files: &[PathBuf]) -> Result<RunResults> {
    let mut runs = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        runs.push(
            serde_json::from_str::<RunResults>(&text)
                .with_context(|| format!("parsing {}", f.display()))?,
        );
    }
    // the first run's command tells how each was made; the merge's own names only files
    let mut command = runs.first().map(|r| r.command.clone()).unwrap_or_default();
    if runs.len() > 1 {
        command.push(format!("(and {} more runs, merged)", runs.len() - 1));
    }
    RunResults::merge(runs, command).map_err(anyhow::Error::msg)
}

fn default_images() -> PathBuf {
    let local = PathBuf::from("models/testdata");
    if local.is_dir() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/testdata")
}

struct Runner {
    args: Args,
    target: Arc<Target>,
    api: reqwest::Client,
    bar_style: ProgressStyle,
    steps: Vec<Step>,
}

impl Runner {
    async fn step(&mut self, scenario: &Scenario, sla_ms: f64, load: Load) -> Step {
        let a = &self.args;
        let spec = StepSpec {
            scenario: scenario.clone(),
            sla_ms,
            load,
            warmup: a.warmup,
            duration: a.duration,
            seed: a.seed + self.steps.len() as u64,
        };
        let total = a.warmup + a.duration + Duration::from_millis(20);
        let pb = ProgressBar::with_draw_target(
            Some(total.as_millis() as u64),
            ProgressDrawTarget::stderr(),
        )
        .with_style(self.bar_style.clone())
        .with_prefix(format!("step {}", self.steps.len() + 1));
        // the server's counters at the start of the measurement window
        let before = (!a.no_server_api).then(|| {
            let (api, base, wait) = (
                self.api.clone(),
                a.target.clone(),
                a.warmup + Duration::from_millis(20),
            );
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                (Instant::now(), server::scrape(&api, &base).await)
            })
        });
        let mut step = gen::run_step(self.target.clone(), &spec, &pb).await;
        if let Some(before) = before {
            if let (Ok((t0, Some(b))), Some(after)) =
                (before.await, server::scrape(&self.api, &a.target).await)
            {
                step.server = Some(server::view(&b, &after, t0.elapsed().as_secs_f64()));
            }
        }
        step.index = self.steps.len() + 1;
        if let Some(l) = &a.label {
            step.scenario = format!("{l} {}", step.scenario);
            step.server_label = Some(l.clone());
        }
        pb.finish_and_clear();
        let line = format!(
            "step {:>3} {:<16} sla {:>5} ms  offered {:>6.1}/s  achieved {:>6.1}/s  goodput {:>6.1}/s  within SLA {:>5.1}%  p50 {:>7.1}  p99 {:>7.1} ms  503 {} 504 {} timeouts {}  gen CPU {:.3}",
            step.index,
            step.scenario,
            sla_ms,
            step.offered_rps,
            step.achieved_rps,
            step.goodput_rps,
            step.sla_attainment_pct,
            step.latency_ms.p50,
            step.latency_ms.p99,
            step.status_503,
            step.status_504,
            step.timeouts,
            step.generator_cpu.cores
        );
        eprintln!("{line}");
        self.steps.push(step.clone());
        tokio::time::sleep(a.cooldown).await;
        step
    }

    fn open(&self, rate: f64) -> Load {
        match self.args.arrival {
            Arrival::Constant => Load::Constant(rate),
            _ => Load::Poisson(rate),
        }
    }

    /// Double from --search-start until a step misses the SLA, then bisect.
    async fn search(&mut self, scenario: &Scenario, sla_ms: f64) {
        let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
        let mut rate = self.args.search_start;
        for _ in 0..self.args.search_steps {
            let s = self.step(scenario, sla_ms, self.open(rate)).await;
            if s.within_sla {
                lo = Some(rate);
            } else {
                hi = Some(rate);
            }
            rate = match (lo, hi) {
                (Some(l), None) => l * 2.0,
                (None, Some(h)) => h / 2.0,
                (Some(l), Some(h)) => {
                    if h - l <= self.args.search_precision * l {
                        break;
                    }
                    (l + h) / 2.0
                }
                (None, None) => unreachable!(),
            };
            rate = (rate * 10.0).round() / 10.0;
            if rate < 0.1 {
                break;
            }
        }
    }
}

pub async fn run(args: Args) -> Result<RunResults> {
    let images = gen::load_images(&args.images.clone().unwrap_or_else(default_images))?;
    let base = args.target.trim_end_matches('/').to_string();
    let api = reqwest::Client::builder().build()?;
    let mut variants = Vec::new();
    if !args.no_server_api {
        server::wait_ready(&api, &base, args.ready_timeout).await?;
        match server::variants(&api, &base).await {
            Ok(v) => variants = v,
            Err(e) => eprintln!("warning: {e:#}"),
        }
    }
    let scenarios: Vec<Scenario> = if args.scenarios.is_empty() {
        if variants.is_empty() {
            bail!("no --scenario given and /v1/variants listed none");
        }
        variants
            .iter()
            .map(|v| Scenario::Pinned(v.name.clone()))
            .chain([Scenario::Routed])
            .collect()
    } else {
        args.scenarios
            .iter()
            .map(|s| Scenario::parse(s))
            .collect::<Result<_>>()?
    };
    if args.sla_ms.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        bail!("--sla-ms values must be positive");
    }
    let target = Arc::new(Target::new(
        &base,
        images,
        args.top_k,
        args.timeout,
        args.max_in_flight,
    )?);
    let bar_style = ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed:>4} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut runner = Runner {
        args: args.clone(),
        target,
        api,
        bar_style,
        steps: Vec::new(),
    };
    eprintln!(
        "{} scenario(s) × {} budget(s); {} {} s warm-up + {} s per step",
        scenarios.len(),
        args.sla_ms.len(),
        match (args.arrival, args.search) {
            (Arrival::Closed, _) => format!("closed loop, concurrency {:?};", args.concurrency),
            (_, true) => "searching the max rate within SLA;".into(),
            (_, false) => format!("rates {:?} req/s;", args.rates),
        },
        args.warmup.as_secs_f64(),
        args.duration.as_secs_f64()
    );
    for scenario in &scenarios {
        for &sla in &args.sla_ms {
            if args.arrival == Arrival::Closed {
                for &c in &args.concurrency {
                    runner.step(scenario, sla, Load::Closed(c)).await;
                }
            } else if args.search {
                runner.search(scenario, sla).await;
            } else {
                for &r in &args.rates {
                    runner.step(scenario, sla, runner.open(r)).await;
                }
            }
        }
    }
    // memory figures after the load (resident memory grows with use)
    if !args.no_server_api {
        if let Ok(v) = server::variants(&runner.api, &base).await {
            variants = v;
        }
    }
    let mut steps = runner.steps;
    for s in &mut steps {
        s.weigh_accuracy(&variants);
    }
    let mut res = RunResults {
        tool: format!("slimserve-loadtest {}", env!("CARGO_PKG_VERSION")),
        started_unix,
        target: base,
        command: std::env::args().collect(),
        host_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        variants,
        steps,
        summary: Vec::new(),
        generator_cpu_max_cores: 0.0,
        generator_cpu_max_at_rps: 0.0,
    };
    res.summarize();
    Ok(res)
}
