//! The generator: open-loop (Poisson or constant arrivals, latency measured
//! from each request's *scheduled* send time) and closed-loop (N workers,
//! each sending its next request when the previous one is answered).

use crate::cpu::CpuClock;
use crate::results::{Percentiles, Step};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What a step asks the server to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scenario {
    /// `X-Variant: <name>`: every request served by that variant.
    Pinned(String),
    /// No `X-Variant`: the server routes each request by its budget.
    Routed,
}

impl Scenario {
    pub fn parse(s: &str) -> Result<Scenario> {
        let s = s.trim();
        if s == "routed" {
            return Ok(Scenario::Routed);
        }
        match s.strip_prefix("pinned:") {
            Some(v) if !v.is_empty() => Ok(Scenario::Pinned(v.to_string())),
            _ => bail!("scenario '{s}': expected 'pinned:<variant>' or 'routed'"),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Scenario::Pinned(v) => format!("pinned:{v}"),
            Scenario::Routed => "routed".into(),
        }
    }

    pub fn variant(&self) -> Option<&str> {
        match self {
            Scenario::Pinned(v) => Some(v),
            Scenario::Routed => None,
        }
    }
}

/// How requests arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Open loop, exponential inter-arrival gaps at this mean rate (req/s).
    Poisson(f64),
    /// Open loop, evenly spaced arrivals at this rate (req/s).
    Constant(f64),
    /// Closed loop with this many concurrent workers.
    Closed(usize),
}

impl Load {
    pub fn arrival(&self) -> &'static str {
        match self {
            Load::Poisson(_) => "poisson",
            Load::Constant(_) => "constant",
            Load::Closed(_) => "closed",
        }
    }
}

pub struct Image {
    pub name: String,
    pub bytes: bytes::Bytes,
    pub content_type: &'static str,
}

/// Every `.png`/`.jpg`/`.jpeg` in `dir`, sorted by name (cycled in that order).
pub fn load_images(dir: &Path) -> Result<Vec<Image>> {
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("reading image folder {}", dir.display()))?
    {
        let path = entry?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let content_type = match ext.as_str() {
            "png" => "image/png",
            "jpg" | "jpeg" => "image/jpeg",
            _ => continue,
        };
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        out.push(Image {
            name,
            bytes: bytes.into(),
            content_type,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    if out.is_empty() {
        bail!("no .png/.jpg/.jpeg images in {}", dir.display());
    }
    Ok(out)
}

/// The server and what every request carries.
pub struct Target {
    pub client: reqwest::Client,
    pub base: String,
    pub images: Vec<Image>,
    pub top_k: usize,
    pub timeout: Duration,
    /// Open loop: requests outstanding at most; arrivals beyond are counted as
    /// `dropped_client` (and as failures), never delayed.
    pub max_in_flight: u64,
}

impl Target {
    pub fn new(
        base: &str,
        images: Vec<Image>,
        top_k: usize,
        timeout: Duration,
        max_in_flight: u64,
    ) -> Result<Target> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(usize::MAX)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .timeout(timeout)
            .build()?;
        Ok(Target {
            client,
            base: base.trim_end_matches('/').to_string(),
            images,
            top_k,
            timeout,
            max_in_flight,
        })
    }
}

#[derive(Debug)]
enum Outcome {
    Status { code: u16, variant: Option<String> },
    Timeout,
    Transport,
}

async fn send_one(t: &Target, url: &str, scenario: &Scenario, sla: &str, n: u64) -> Outcome {
    let img = &t.images[(n % t.images.len() as u64) as usize];
    let mut rb = t
        .client
        .post(url)
        .header("content-type", img.content_type)
        .header("x-sla-ms", sla)
        .body(img.bytes.clone());
    if let Some(v) = scenario.variant() {
        rb = rb.header("x-variant", v);
    }
    match rb.send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let variant = resp
                .headers()
                .get("x-variant")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match resp.bytes().await {
                Ok(_) => Outcome::Status { code, variant },
                Err(e) if e.is_timeout() => Outcome::Timeout,
                Err(_) => Outcome::Transport,
            }
        }
        Err(e) if e.is_timeout() => Outcome::Timeout,
        Err(_) => Outcome::Transport,
    }
}

fn new_hist() -> Histogram<u64> {
    // microseconds, 1 µs .. 1 h, 3 significant digits
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// What one step recorded (requests scheduled inside the measurement window).
pub struct Recorder {
    ok_lat: Histogram<u64>,
    all_lat: Histogram<u64>,
    lag: Histogram<u64>,
    sent: u64,
    dropped: u64,
    ok: u64,
    ok_in_sla: u64,
    timeouts: u64,
    transport: u64,
    status: BTreeMap<u16, u64>,
    mix: BTreeMap<String, u64>,
    mix_in_sla: BTreeMap<String, u64>,
    /// HTTP 200 answers (and those within the SLA) *completed* inside the
    /// window, whenever they were scheduled: throughput and goodput
    done_ok: u64,
    done_good: u64,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            ok_lat: new_hist(),
            all_lat: new_hist(),
            lag: new_hist(),
            sent: 0,
            dropped: 0,
            ok: 0,
            ok_in_sla: 0,
            timeouts: 0,
            transport: 0,
            status: BTreeMap::new(),
            mix: BTreeMap::new(),
            mix_in_sla: BTreeMap::new(),
            done_ok: 0,
            done_good: 0,
        }
    }

    fn record(&mut self, out: Outcome, latency: Duration, lag: Duration, sla: Duration) {
        let us = latency.as_micros().max(1) as u64;
        self.all_lat.saturating_record(us);
        self.lag.saturating_record(lag.as_micros().max(1) as u64);
        match out {
            Outcome::Status { code, variant } => {
                *self.status.entry(code).or_default() += 1;
                if code == 200 {
                    self.ok += 1;
                    self.ok_lat.saturating_record(us);
                    let variant = variant.unwrap_or_else(|| "?".into());
                    if latency <= sla {
                        self.ok_in_sla += 1;
                        *self.mix_in_sla.entry(variant.clone()).or_default() += 1;
                    }
                    *self.mix.entry(variant).or_default() += 1;
                }
            }
            Outcome::Timeout => self.timeouts += 1,
            Outcome::Transport => self.transport += 1,
        }
    }

    fn completed_in_window(&mut self, out: &Outcome, latency: Duration, sla: Duration) {
        if matches!(out, Outcome::Status { code: 200, .. }) {
            self.done_ok += 1;
            if latency <= sla {
                self.done_good += 1;
            }
        }
    }

    /// (requests answered so far, p99 of successful answers in ms)
    fn live(&self) -> (u64, f64) {
        (
            self.all_lat.len(),
            self.ok_lat.value_at_quantile(0.99) as f64 / 1e3,
        )
    }
}

fn pct(h: &Histogram<u64>) -> Percentiles {
    let ms = |v: u64| v as f64 / 1e3;
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        mean: h.mean() / 1e3,
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

pub struct StepSpec {
    pub scenario: Scenario,
    pub sla_ms: f64,
    pub load: Load,
    pub warmup: Duration,
    pub duration: Duration,
    pub seed: u64,
}

/// Run one step; `server` is left empty for the caller.
pub async fn run_step(t: Arc<Target>, spec: &StepSpec, pb: &ProgressBar) -> Step {
    let cpu0 = CpuClock::now();
    let url = Arc::new(format!("{}/classify?top_k={}", t.base, t.top_k));
    let sla_hdr: Arc<str> = Arc::from(format!("{}", spec.sla_ms));
    let sla = Duration::from_secs_f64(spec.sla_ms / 1e3);
    let rec = Arc::new(Mutex::new(Recorder::new()));
    let inflight = Arc::new(AtomicU64::new(0));
    let max_inflight = Arc::new(AtomicU64::new(0));
    let scenario = Arc::new(spec.scenario.clone());

    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;

    // progress: current achieved rate and p99 of this step
    let label = format!(
        "{} sla={}ms {}",
        spec.scenario.label(),
        spec.sla_ms,
        load_label(spec.load)
    );
    let ticker = {
        let rec = rec.clone();
        let pb = pb.clone();
        let label = label.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(250));
            loop {
                iv.tick().await;
                let now = Instant::now();
                pb.set_position(now.saturating_duration_since(start).as_millis() as u64);
                let (n, p99) = rec.lock().unwrap().live();
                let secs = now.saturating_duration_since(measure_from).as_secs_f64();
                if secs > 0.0 {
                    pb.set_message(format!(
                        "{label}  achieved {:.1}/s  p99 {p99:.0} ms",
                        n as f64 / secs
                    ));
                } else {
                    pb.set_message(format!("{label}  warming up"));
                }
            }
        })
    };

    let mut set = JoinSet::new();
    match spec.load {
        Load::Poisson(rate) | Load::Constant(rate) => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
            let exp = Exp::new(rate.max(1e-9)).expect("positive rate");
            let mut at = start;
            let mut n: u64 = 0;
            loop {
                let gap = match spec.load {
                    Load::Poisson(_) => exp.sample(&mut rng),
                    _ => 1.0 / rate,
                };
                if n > 0 {
                    at += Duration::from_secs_f64(gap);
                }
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at).await;
                let in_window = at >= measure_from;
                while set.try_join_next().is_some() {}
                if inflight.load(Ordering::Relaxed) >= t.max_in_flight {
                    if in_window {
                        let mut r = rec.lock().unwrap();
                        r.dropped += 1;
                        r.all_lat.saturating_record(t.timeout.as_micros() as u64);
                    }
                    n += 1;
                    continue;
                }
                let now_in = inflight.fetch_add(1, Ordering::Relaxed) + 1;
                max_inflight.fetch_max(now_in, Ordering::Relaxed);
                let (t, url, scenario, sla_hdr, rec, inflight) = (
                    t.clone(),
                    url.clone(),
                    scenario.clone(),
                    sla_hdr.clone(),
                    rec.clone(),
                    inflight.clone(),
                );
                let scheduled = at;
                set.spawn(async move {
                    let sent_at = Instant::now();
                    if in_window {
                        rec.lock().unwrap().sent += 1;
                    }
                    let out = send_one(&t, &url, &scenario, &sla_hdr, n).await;
                    // latency from the *scheduled* time: a generator that
                    // fell behind cannot hide the server's backlog
                    let done = Instant::now();
                    let latency = done - scheduled;
                    inflight.fetch_sub(1, Ordering::Relaxed);
                    let mut r = rec.lock().unwrap();
                    if done >= measure_from && done < end {
                        r.completed_in_window(&out, latency, sla);
                    }
                    if in_window {
                        r.record(out, latency, sent_at - scheduled, sla);
                    }
                });
                n += 1;
            }
        }
        Load::Closed(c) => {
            max_inflight.store(c as u64, Ordering::Relaxed);
            for w in 0..c {
                let (t, url, scenario, sla_hdr, rec) = (
                    t.clone(),
                    url.clone(),
                    scenario.clone(),
                    sla_hdr.clone(),
                    rec.clone(),
                );
                set.spawn(async move {
                    tokio::time::sleep_until(start).await;
                    let mut n = w as u64;
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        let out = send_one(&t, &url, &scenario, &sla_hdr, n).await;
                        let done = Instant::now();
                        let latency = done - t0;
                        let mut r = rec.lock().unwrap();
                        if done >= measure_from && done < end {
                            r.completed_in_window(&out, latency, sla);
                        }
                        if t0 >= measure_from {
                            r.sent += 1;
                            r.record(out, latency, Duration::ZERO, sla);
                        }
                        n += c as u64;
                    }
                });
            }
        }
    }
    // every request scheduled in the window is waited for (each ends by its timeout)
    while set.join_next().await.is_some() {}
    ticker.abort();
    let cpu = cpu0.elapsed();

    let r = rec.lock().unwrap();
    let secs = spec.duration.as_secs_f64();
    let scheduled = r.sent + r.dropped;
    let st = |c: u16| r.status.get(&c).copied().unwrap_or(0);
    let other = r
        .status
        .iter()
        .filter(|(c, _)| ![200, 429, 503, 504].contains(*c))
        .map(|(_, n)| n)
        .sum();
    let offered = match spec.load {
        Load::Poisson(x) | Load::Constant(x) => x,
        Load::Closed(_) => r.sent as f64 / secs,
    };
    let attainment = if scheduled > 0 {
        100.0 * r.ok_in_sla as f64 / scheduled as f64
    } else {
        0.0
    };
    Step {
        index: 0,
        scenario: spec.scenario.label(),
        pinned_variant: spec.scenario.variant().map(str::to_owned),
        sla_ms: spec.sla_ms,
        arrival: spec.load.arrival().into(),
        offered_rps: offered,
        concurrency: match spec.load {
            Load::Closed(c) => Some(c),
            _ => None,
        },
        warmup_s: spec.warmup.as_secs_f64(),
        duration_s: secs,
        scheduled,
        sent: r.sent,
        dropped_client: r.dropped,
        completed: r.status.values().sum(),
        ok: r.ok,
        ok_within_sla: r.ok_in_sla,
        status_429: st(429),
        status_503: st(503),
        status_504: st(504),
        status_other: other,
        timeouts: r.timeouts,
        transport_errors: r.transport,
        statuses: r.status.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        achieved_rps: r.sent as f64 / secs,
        throughput_rps: r.done_ok as f64 / secs,
        goodput_rps: r.done_good as f64 / secs,
        sla_attainment_pct: attainment,
        within_sla: scheduled > 0 && attainment >= 99.0,
        latency_ms: pct(&r.ok_lat),
        latency_all_ms: pct(&r.all_lat),
        send_lag_ms: pct(&r.lag),
        max_in_flight: max_inflight.load(Ordering::Relaxed),
        variant_mix: r.mix.clone(),
        variant_mix_within_sla: r.mix_in_sla.clone(),
        accuracy_goodput: None,
        mean_top1_served: None,
        generator_cpu: cpu,
        server: None,
        server_label: None,
    }
}

pub fn load_label(l: Load) -> String {
    match l {
        Load::Poisson(r) => format!("poisson {r} req/s"),
        Load::Constant(r) => format!("constant {r} req/s"),
        Load::Closed(c) => format!("closed c={c}"),
    }
}
