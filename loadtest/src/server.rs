//! The server side: `/v1/variants`, `/health/ready`, and `/metrics` deltas.
//!
//! The Prometheus text format is read with a small line parser: the
//! `prometheus-parse` crate drops labelled histogram `_sum`/`_count` lines,
//! which is exactly what queue time and batch size means need.

use crate::results::{ServerView, VariantInfo};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// One sample: metric name, labels (sorted), value.
pub type Sample = (String, BTreeMap<String, String>, f64);

pub fn parse_text(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(i) => {
                let Some(j) = line.rfind('}') else { continue };
                (&line[..i], parse_labels(&line[i + 1..j]), &line[j + 1..])
            }
            None => match line.split_once(char::is_whitespace) {
                Some((n, r)) => (n, BTreeMap::new(), r),
                None => continue,
            },
        };
        let Some(v) = rest.split_whitespace().next().and_then(parse_float) else {
            continue;
        };
        out.push((name.to_string(), labels, v));
    }
    out
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if key.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => val.push('\n'),
                    Some(o) => val.push(o),
                    None => break,
                },
                '"' => break,
                o => val.push(o),
            }
        }
        out.insert(key.trim().to_string(), val);
    }
    out
}

pub async fn scrape(client: &reqwest::Client, base: &str) -> Option<Vec<Sample>> {
    let resp = client
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    Some(parse_text(&resp.text().await.ok()?))
}

pub async fn wait_ready(client: &reqwest::Client, base: &str, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let r = client
            .get(format!("{base}/health/ready"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if matches!(&r, Ok(resp) if resp.status().is_success()) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{base}/health/ready did not answer 200 within {timeout:?} (last: {:?})",
                r.map(|r| r.status())
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn variants(client: &reqwest::Client, base: &str) -> Result<Vec<VariantInfo>> {
    let v: serde_json::Value = client
        .get(format!("{base}/v1/variants"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .context("GET /v1/variants")?
        .error_for_status()?
        .json()
        .await?;
    let list = v
        .get("variants")
        .and_then(|l| l.as_array())
        .context("/v1/variants: no 'variants' list")?;
    Ok(list
        .iter()
        .filter_map(|x| {
            let f = |k: &str| x.get(k).and_then(|v| v.as_f64());
            Some(VariantInfo {
                name: x.get("name")?.as_str()?.to_string(),
                top1: f("top1"),
                top5: f("top5"),
                file_bytes: f("file_bytes"),
                params: f("params"),
                macs: f("macs"),
                resident_bytes: f("resident_bytes"),
            })
        })
        .collect())
}

struct Delta<'a> {
    before: HashMap<(&'a str, &'a BTreeMap<String, String>), f64>,
    after: &'a [Sample],
}

impl<'a> Delta<'a> {
    fn new(before: &'a [Sample], after: &'a [Sample]) -> Delta<'a> {
        Delta {
            before: before
                .iter()
                .map(|(n, l, v)| ((n.as_str(), l), *v))
                .collect(),
            after,
        }
    }

    /// (labels, after - before) of every sample named `name`.
    fn of(&self, name: &str) -> Vec<(&'a BTreeMap<String, String>, f64)> {
        self.after
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(n, l, v)| {
                (
                    l,
                    v - self.before.get(&(n.as_str(), l)).copied().unwrap_or(0.0),
                )
            })
            .collect()
    }

    /// Sum of deltas grouped by the given labels joined by a space; zero groups left out.
    fn by(&self, name: &str, keys: &[&str]) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (l, d) in self.of(name) {
            let k = keys
                .iter()
                .map(|k| l.get(*k).map(String::as_str).unwrap_or(""))
                .collect::<Vec<_>>()
                .join(" ");
            *out.entry(k).or_insert(0.0) += d;
        }
        out.retain(|_, v| *v > 0.0);
        out
    }

    /// Quantile of the delta of a histogram, over the samples whose labels match `filter`.
    fn quantile(
        &self,
        name: &str,
        q: f64,
        filter: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> Option<f64> {
        let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (l, d) in self.of(&format!("{name}_bucket")) {
            if !filter(l) {
                continue;
            }
            let le = l.get("le").and_then(|s| parse_float(s))?;
            buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += d;
        }
        let mut b: Vec<(f64, f64)> = buckets.into_values().collect();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        let total = b.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let want = q * total;
        let (mut lo, mut below) = (0.0, 0.0);
        for (le, cum) in b {
            if cum >= want {
                if le.is_infinite() {
                    return Some(lo);
                }
                let frac = if cum > below {
                    (want - below) / (cum - below)
                } else {
                    1.0
                };
                return Some(lo + (le - lo) * frac);
            }
            (lo, below) = (le, cum);
        }
        Some(lo)
    }

    fn mean_by_variant(&self, name: &str, scale: f64) -> BTreeMap<String, f64> {
        let sums = self.by(&format!("{name}_sum"), &["variant"]);
        let counts = self.by(&format!("{name}_count"), &["variant"]);
        counts
            .iter()
            .filter_map(|(v, c)| Some((v.clone(), sums.get(v)? / c * scale)))
            .collect()
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        self.after.iter().find(|(n, _, _)| n == name).map(|s| s.2)
    }
}

/// What the server saw between two scrapes `wall_s` seconds apart.
pub fn view(before: &[Sample], after: &[Sample], wall_s: f64) -> ServerView {
    let d = Delta::new(before, after);
    let routing = d.by("slimserve_routing_decisions_total", &["variant", "reason"]);
    let mut by_variant: BTreeMap<String, f64> = BTreeMap::new();
    for (k, v) in &routing {
        *by_variant
            .entry(k.split(' ').next().unwrap_or("").to_string())
            .or_default() += v;
    }
    let total: f64 = by_variant.values().sum();
    let variants: Vec<String> = d
        .by("slimserve_queue_duration_seconds_count", &["variant"])
        .into_keys()
        .collect();
    let cpu = d
        .of("process_cpu_seconds_total")
        .first()
        .map(|(_, v)| *v / wall_s.max(1e-9));
    ServerView {
        requests: d.by("slimserve_requests_total", &["variant", "status"]),
        errors_by_kind: d.by("slimserve_errors_total", &["kind"]),
        shed: d.by("slimserve_shed_total", &["variant", "reason"]),
        variant_mix_pct: by_variant
            .iter()
            .map(|(k, v)| (k.clone(), 100.0 * v / total.max(1e-9)))
            .collect(),
        routing,
        sla: d.by("slimserve_sla_total", &["variant", "outcome"]),
        queue_ms_mean: d.mean_by_variant("slimserve_queue_duration_seconds", 1e3),
        queue_ms_p99: variants
            .iter()
            .filter_map(|v| {
                let q = d.quantile("slimserve_queue_duration_seconds", 0.99, |l| {
                    l.get("variant") == Some(v)
                })?;
                Some((v.clone(), q * 1e3))
            })
            .collect(),
        batch_size_mean: d.mean_by_variant("slimserve_batch_size", 1.0),
        request_ms_p50: d
            .quantile("slimserve_request_duration_seconds", 0.5, |_| true)
            .map(|s| s * 1e3),
        request_ms_p99: d
            .quantile("slimserve_request_duration_seconds", 0.99, |_| true)
            .map(|s| s * 1e3),
        resident_bytes: d.gauge("process_resident_memory_bytes"),
        variant_resident_bytes: after
            .iter()
            .filter(|(n, _, _)| n == "slimserve_variant_resident_bytes")
            .filter_map(|(_, l, v)| Some((l.get("variant")?.clone(), *v)))
            .collect(),
        cpu_cores: cpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# HELP x
slimserve_requests_total{status="200",variant="full"} 10
slimserve_queue_duration_seconds_bucket{variant="full",le="0.001"} 0
slimserve_queue_duration_seconds_bucket{variant="full",le="0.01"} 5
slimserve_queue_duration_seconds_bucket{variant="full",le="+Inf"} 10
slimserve_queue_duration_seconds_sum{variant="full"} 0.05
slimserve_queue_duration_seconds_count{variant="full"} 10
process_cpu_seconds_total 1
"#;
    const AFTER: &str = r#"slimserve_requests_total{status="200",variant="full"} 110
slimserve_requests_total{status="503",variant="full"} 4
slimserve_queue_duration_seconds_bucket{variant="full",le="0.001"} 0
slimserve_queue_duration_seconds_bucket{variant="full",le="0.01"} 105
slimserve_queue_duration_seconds_bucket{variant="full",le="+Inf"} 110
slimserve_queue_duration_seconds_sum{variant="full"} 0.55
slimserve_queue_duration_seconds_count{variant="full"} 110
slimserve_routing_decisions_total{reason="pinned",variant="full"} 100
process_cpu_seconds_total 3
process_resident_memory_bytes 1.5e8
"#;

    #[test]
    fn deltas_means_and_quantiles() {
        let v = view(&parse_text(BEFORE), &parse_text(AFTER), 2.0);
        assert_eq!(v.requests.get("full 200"), Some(&100.0));
        assert_eq!(v.requests.get("full 503"), Some(&4.0));
        assert!((v.queue_ms_mean["full"] - 5.0).abs() < 1e-9);
        let p99 = v.queue_ms_p99["full"];
        assert!(p99 > 1.0 && p99 <= 10.0, "{p99}");
        assert_eq!(v.cpu_cores, Some(1.0));
        assert_eq!(v.resident_bytes, Some(1.5e8));
        assert_eq!(v.variant_mix_pct.get("full"), Some(&100.0));
    }

    #[test]
    fn labels_with_escapes() {
        let s = parse_text(r#"m{a="x\"y",b="z"} 2"#);
        assert_eq!(s[0].1.get("a").map(String::as_str), Some("x\"y"));
        assert_eq!(s[0].1.get("b").map(String::as_str), Some("z"));
        assert_eq!(s[0].2, 2.0);
    }
}
