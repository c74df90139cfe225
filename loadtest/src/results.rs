//! What a run writes: every step, the variants, and a summary per scenario.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cpu {
    pub user_s: f64,
    pub sys_s: f64,
    pub wall_s: f64,
    /// (user + sys) / wall: 1.0 = one core fully busy.
    pub cores: f64,
}

/// The server's own view of a step: deltas of its `/metrics` between the
/// start of the measurement window and the end of the step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerView {
    /// "variant status" -> answers
    pub requests: BTreeMap<String, f64>,
    /// error kind (queue_full, budget_unmeetable, deadline_expired, ...) -> count
    pub errors_by_kind: BTreeMap<String, f64>,
    /// "variant reason" -> queued requests dropped before inference
    pub shed: BTreeMap<String, f64>,
    /// "variant reason" -> routing decisions
    pub routing: BTreeMap<String, f64>,
    /// variant -> share of routing decisions, %
    pub variant_mix_pct: BTreeMap<String, f64>,
    /// "variant outcome" -> answered requests that met / missed their deadline
    pub sla: BTreeMap<String, f64>,
    pub queue_ms_mean: BTreeMap<String, f64>,
    pub queue_ms_p99: BTreeMap<String, f64>,
    pub batch_size_mean: BTreeMap<String, f64>,
    /// server-side end-to-end latency of answered requests, all variants
    pub request_ms_p50: Option<f64>,
    pub request_ms_p99: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub variant_resident_bytes: BTreeMap<String, f64>,
    /// server process CPU over the step, in cores
    pub cpu_cores: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub index: usize,
    pub scenario: String,
    pub pinned_variant: Option<String>,
    pub sla_ms: f64,
    /// poisson | constant | closed
    pub arrival: String,
    /// target arrival rate (open loop) or achieved send rate (closed loop), req/s
    pub offered_rps: f64,
    pub concurrency: Option<usize>,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// arrivals inside the measurement window (= sent + dropped_client)
    pub scheduled: u64,
    pub sent: u64,
    /// arrivals not sent because --max-in-flight requests were outstanding
    pub dropped_client: u64,
    /// requests that got an HTTP answer (any status)
    pub completed: u64,
    pub ok: u64,
    pub ok_within_sla: u64,
    pub status_429: u64,
    pub status_503: u64,
    pub status_504: u64,
    pub status_other: u64,
    pub timeouts: u64,
    pub transport_errors: u64,
    pub statuses: BTreeMap<String, u64>,
    /// requests sent per second of the window
    pub achieved_rps: f64,
    /// HTTP 200 answers completed inside the window, per second
    pub throughput_rps: f64,
    /// HTTP 200 answers within the SLA (from the scheduled send time) completed inside the window, per second
    pub goodput_rps: f64,
    /// ok_within_sla / scheduled, %
    pub sla_attainment_pct: f64,
    /// sla_attainment_pct >= 99 (the p99 of the request latency, failures counted as infinite, is within the SLA)
    pub within_sla: bool,
    /// latency of HTTP 200 answers, ms, from the scheduled send time
    pub latency_ms: Percentiles,
    /// latency of every request (errors too; timeouts at the timeout)
    pub latency_all_ms: Percentiles,
    /// actual send time minus scheduled send time (generator lag), ms
    pub send_lag_ms: Percentiles,
    pub max_in_flight: u64,
    /// x-variant of HTTP 200 answers -> count
    pub variant_mix: BTreeMap<String, u64>,
    /// x-variant of HTTP 200 answers within the SLA -> count
    #[serde(default)]
    pub variant_mix_within_sla: BTreeMap<String, u64>,
    /// Accuracy-weighted goodput: answers within the SLA, each counted as
    /// its variant's top-1 (from /v1/variants), per second of the window;
    /// `None` when a variant that answered has no known accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_goodput: Option<f64>,
    /// Mean top-1 (from /v1/variants) of the answers within the SLA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_top1_served: Option<f64>,
    pub generator_cpu: Cpu,
    pub server: Option<ServerView>,
    /// `--label` of the run: which server answered (when several are drawn side by side)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_label: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VariantInfo {
    pub name: String,
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    pub file_bytes: Option<f64>,
    pub params: Option<f64>,
    pub macs: Option<f64>,
    pub resident_bytes: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummaryRow {
    pub scenario: String,
    pub sla_ms: f64,
    /// highest offered rate tested whose SLA attainment was >= 99%
    pub max_rate_within_sla: Option<f64>,
    pub p99_at_max_ms: Option<f64>,
    pub best_goodput_rps: f64,
    pub rates_tested: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResults {
    pub tool: String,
    pub started_unix: u64,
    pub target: String,
    pub command: Vec<String>,
    pub host_cpus: usize,
    pub variants: Vec<VariantInfo>,
    pub steps: Vec<Step>,
    pub summary: Vec<SummaryRow>,
    /// highest generator CPU use over any step, in cores
    pub generator_cpu_max_cores: f64,
    /// offered rate of the step where that was measured
    pub generator_cpu_max_at_rps: f64,
}

impl Step {
    /// Fill `accuracy_goodput` and `mean_top1_served` from the variants'
    /// top-1 accuracy.
    pub fn weigh_accuracy(&mut self, variants: &[VariantInfo]) {
        let mut sum = 0.0;
        let mut n = 0u64;
        for (name, count) in &self.variant_mix_within_sla {
            let Some(top1) = variants
                .iter()
                .find(|v| &v.name == name)
                .and_then(|v| v.top1)
            else {
                self.accuracy_goodput = None;
                self.mean_top1_served = None;
                return;
            };
            sum += top1 * *count as f64;
            n += count;
        }
        self.accuracy_goodput = (self.duration_s > 0.0).then(|| sum / self.duration_s);
        self.mean_top1_served = (n > 0).then(|| sum / n as f64);
    }
}

impl RunResults {
    /// Several runs as one (e.g. one per server, each with its own `--label`, or one per
    /// rate): steps in the order given, renumbered; variant facts from whichever run listed
    /// them first. The same scenario, budget and load in two runs would be drawn as one point,
    /// so that is refused.
    pub fn merge(runs: Vec<RunResults>, command: Vec<String>) -> Result<RunResults, String> {
        let Some(first) = runs.first() else {
            return Err("nothing to merge".into());
        };
        let mut out = RunResults {
            tool: first.tool.clone(),
            started_unix: runs.iter().map(|r| r.started_unix).min().unwrap_or(0),
            target: String::new(),
            command,
            host_cpus: first.host_cpus,
            variants: Vec::new(),
            steps: Vec::new(),
            summary: Vec::new(),
            generator_cpu_max_cores: 0.0,
            generator_cpu_max_at_rps: 0.0,
        };
        let mut targets: Vec<&str> = Vec::new();
        for r in &runs {
            if !targets.contains(&r.target.as_str()) {
                targets.push(&r.target);
            }
        }
        out.target = targets.join(" + ");
        for (i, r) in runs.iter().enumerate() {
            let same = |a: &Step, b: &Step| {
                a.scenario == b.scenario
                    && a.sla_ms == b.sla_ms
                    && a.arrival == b.arrival
                    && a.offered_rps == b.offered_rps
                    && a.concurrency == b.concurrency
            };
            if let Some(dup) = out
                .steps
                .iter()
                .find(|s| r.steps.iter().any(|t| same(s, t)))
            {
                return Err(format!(
                    "run {} repeats scenario '{}' at {} req/s, budget {} ms: give each server its own --label",
                    i + 1,
                    dup.scenario,
                    dup.offered_rps,
                    dup.sla_ms
                ));
            }
            for v in &r.variants {
                if !out.variants.iter().any(|x| x.name == v.name) {
                    out.variants.push(v.clone());
                }
            }
            out.steps.extend(r.steps.iter().cloned());
        }
        for (i, s) in out.steps.iter_mut().enumerate() {
            s.index = i + 1;
        }
        out.summarize();
        Ok(out)
    }

    pub fn summarize(&mut self) {
        let mut keys: Vec<(String, f64)> = Vec::new();
        for s in &self.steps {
            if !keys.iter().any(|(k, b)| *k == s.scenario && *b == s.sla_ms) {
                keys.push((s.scenario.clone(), s.sla_ms));
            }
        }
        self.summary = keys
            .into_iter()
            .map(|(scenario, sla_ms)| {
                let steps: Vec<&Step> = self
                    .steps
                    .iter()
                    .filter(|s| s.scenario == scenario && s.sla_ms == sla_ms)
                    .collect();
                let best = steps
                    .iter()
                    .filter(|s| s.within_sla)
                    .max_by(|a, b| a.offered_rps.total_cmp(&b.offered_rps));
                let mut rates: Vec<f64> = steps.iter().map(|s| s.offered_rps).collect();
                rates.sort_by(f64::total_cmp);
                SummaryRow {
                    scenario,
                    sla_ms,
                    max_rate_within_sla: best.map(|s| s.offered_rps),
                    p99_at_max_ms: best.map(|s| s.latency_ms.p99),
                    best_goodput_rps: steps.iter().map(|s| s.goodput_rps).fold(0.0, f64::max),
                    rates_tested: rates,
                }
            })
            .collect();
        if let Some(s) = self
            .steps
            .iter()
            .max_by(|a, b| a.generator_cpu.cores.total_cmp(&b.generator_cpu.cores))
        {
            self.generator_cpu_max_cores = s.generator_cpu.cores;
            self.generator_cpu_max_at_rps = s.offered_rps;
        }
    }
}
