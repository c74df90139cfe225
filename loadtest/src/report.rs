//! Outputs: results.json, steps.csv, summary.md, one SVG per plot, and a
//! self-contained report.html (SVGs inline, no scripts, no web fonts).

use crate::results::{RunResults, Step};
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

pub fn write_all(dir: &Path, r: &RunResults) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(r)?)?;
    write_csv(&dir.join("steps.csv"), &r.steps)?;
    let plots = plots(r)?;
    for (name, _, svg) in &plots {
        std::fs::write(dir.join(name), svg)?;
    }
    std::fs::write(dir.join("summary.md"), markdown(r))?;
    std::fs::write(dir.join("report.html"), html(r, &plots))?;
    let mut files: Vec<String> = ["results.json", "steps.csv", "summary.md", "report.html"]
        .map(String::from)
        .to_vec();
    files.extend(plots.into_iter().map(|p| p.0));
    Ok(files)
}

fn write_csv(path: &Path, steps: &[Step]) -> Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record([
        "index",
        "scenario",
        "sla_ms",
        "arrival",
        "offered_rps",
        "concurrency",
        "duration_s",
        "scheduled",
        "sent",
        "dropped_client",
        "ok",
        "ok_within_sla",
        "status_429",
        "status_503",
        "status_504",
        "status_other",
        "timeouts",
        "transport_errors",
        "achieved_rps",
        "throughput_rps",
        "goodput_rps",
        "accuracy_goodput",
        "mean_top1_served",
        "sla_attainment_pct",
        "within_sla",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
        "all_p99_ms",
        "send_lag_p99_ms",
        "max_in_flight",
        "variant_mix",
        "gen_cpu_cores",
        "server_queue_ms_mean",
        "server_batch_mean",
        "server_shed",
        "server_rss_mb",
        "server_cpu_cores",
    ])?;
    for s in steps {
        let sv = s.server.as_ref();
        let join = |m: Option<&std::collections::BTreeMap<String, f64>>, p: usize| {
            m.map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v:.p$}"))
                    .collect::<Vec<_>>()
                    .join(";")
            })
            .unwrap_or_default()
        };
        w.write_record([
            s.index.to_string(),
            s.scenario.clone(),
            s.sla_ms.to_string(),
            s.arrival.clone(),
            format!("{:.2}", s.offered_rps),
            s.concurrency.map(|c| c.to_string()).unwrap_or_default(),
            s.duration_s.to_string(),
            s.scheduled.to_string(),
            s.sent.to_string(),
            s.dropped_client.to_string(),
            s.ok.to_string(),
            s.ok_within_sla.to_string(),
            s.status_429.to_string(),
            s.status_503.to_string(),
            s.status_504.to_string(),
            s.status_other.to_string(),
            s.timeouts.to_string(),
            s.transport_errors.to_string(),
            format!("{:.2}", s.achieved_rps),
            format!("{:.2}", s.throughput_rps),
            format!("{:.2}", s.goodput_rps),
            s.accuracy_goodput
                .map(|g| format!("{g:.2}"))
                .unwrap_or_default(),
            s.mean_top1_served
                .map(|a| format!("{a:.4}"))
                .unwrap_or_default(),
            format!("{:.2}", s.sla_attainment_pct),
            s.within_sla.to_string(),
            format!("{:.2}", s.latency_ms.p50),
            format!("{:.2}", s.latency_ms.p90),
            format!("{:.2}", s.latency_ms.p99),
            format!("{:.2}", s.latency_ms.p999),
            format!("{:.2}", s.latency_ms.max),
            format!("{:.2}", s.latency_all_ms.p99),
            format!("{:.3}", s.send_lag_ms.p99),
            s.max_in_flight.to_string(),
            s.variant_mix
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";"),
            format!("{:.3}", s.generator_cpu.cores),
            join(sv.map(|v| &v.queue_ms_mean), 2),
            join(sv.map(|v| &v.batch_size_mean), 2),
            join(sv.map(|v| &v.shed), 0),
            sv.and_then(|v| v.resident_bytes)
                .map(|b| format!("{:.1}", b / 1e6))
                .unwrap_or_default(),
            sv.and_then(|v| v.cpu_cores)
                .map(|c| format!("{c:.2}"))
                .unwrap_or_default(),
        ])?;
    }
    w.flush()?;
    Ok(())
}

fn slas(r: &RunResults) -> Vec<f64> {
    let mut v: Vec<f64> = Vec::new();
    for s in &r.steps {
        if !v.contains(&s.sla_ms) {
            v.push(s.sla_ms);
        }
    }
    v.sort_by(f64::total_cmp);
    v
}

fn scenarios(r: &RunResults) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for s in &r.steps {
        if !v.contains(&s.scenario) {
            v.push(s.scenario.clone());
        }
    }
    v
}

/// Steps of one scenario and budget, by offered rate.
fn series<'a>(r: &'a RunResults, scenario: &str, sla: f64) -> Vec<&'a Step> {
    let mut v: Vec<&Step> = r
        .steps
        .iter()
        .filter(|s| s.scenario == scenario && s.sla_ms == sla)
        .collect();
    v.sort_by(|a, b| a.offered_rps.total_cmp(&b.offered_rps));
    v
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

struct Line {
    name: String,
    color: RGBColor,
    width: u32,
    filled: bool,
    points: Vec<(f64, f64)>,
}

fn fmt_sla(sla: f64) -> String {
    format!("{sla}").replace('.', "_")
}

fn chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
    log_y: bool,
    y_max: Option<f64>,
    hline: Option<(f64, &str)>,
) -> Result<String> {
    let e = |e: &dyn std::fmt::Debug| anyhow!("plot '{title}': {e:?}");
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (760, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let pts = lines.iter().flat_map(|l| l.points.iter());
        let x_max = pts.clone().map(|p| p.0).fold(1.0, f64::max) * 1.05;
        let mut y_hi = pts.clone().map(|p| p.1).fold(1.0, f64::max);
        if let Some((h, _)) = hline {
            y_hi = y_hi.max(h);
        }
        let y_hi = y_max.unwrap_or(y_hi * if log_y { 1.6 } else { 1.08 });
        let mut b = ChartBuilder::on(&root);
        b.caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(64);
        macro_rules! draw {
            ($chart:expr) => {{
                let mut c = $chart;
                c.configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(y_desc)
                    .max_light_lines(1)
                    .light_line_style(RGBColor(238, 238, 238))
                    .bold_line_style(RGBColor(215, 215, 215))
                    .draw()
                    .map_err(|x| e(&x))?;
                if let Some((h, label)) = hline {
                    c.draw_series(LineSeries::new(
                        vec![(0.0, h), (x_max, h)],
                        BLACK.stroke_width(1),
                    ))
                    .map_err(|x| e(&x))?
                    .label(label.to_string())
                    .legend(|(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(1))
                    });
                }
                for l in lines {
                    if l.points.is_empty() {
                        continue;
                    }
                    let (col, w) = (l.color, l.width);
                    c.draw_series(LineSeries::new(l.points.clone(), col.stroke_width(w)))
                        .map_err(|x| e(&x))?
                        .label(l.name.clone())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(w))
                        });
                    let style = if l.filled {
                        col.filled()
                    } else {
                        col.stroke_width(1)
                    };
                    c.draw_series(l.points.iter().map(|p| Circle::new(*p, 3, style)))
                        .map_err(|x| e(&x))?;
                }
                c.configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.85))
                    .border_style(RGBColor(180, 180, 180))
                    .label_font(("sans-serif", 12))
                    .draw()
                    .map_err(|x| e(&x))?;
            }};
        }
        if log_y {
            let y_lo = lines
                .iter()
                .flat_map(|l| l.points.iter())
                .map(|p| p.1)
                .fold(f64::INFINITY, f64::min)
                .max(0.1)
                * 0.7;
            draw!(b
                .build_cartesian_2d(0f64..x_max, (y_lo.min(y_hi / 2.0)..y_hi).log_scale())
                .map_err(|x| e(&x))?);
        } else {
            draw!(b
                .build_cartesian_2d(0f64..x_max, 0f64..y_hi)
                .map_err(|x| e(&x))?);
        }
        root.present().map_err(|x| e(&x))?;
    }
    Ok(buf)
}

/// (file name, caption, svg)
pub fn plots(r: &RunResults) -> Result<Vec<(String, String, String)>> {
    let scen = scenarios(r);
    let closed = r.steps.iter().all(|s| s.arrival == "closed");
    let x_desc = if closed {
        "throughput (req/s), closed loop"
    } else {
        "offered rate (req/s)"
    };
    let mut out = Vec::new();
    for sla in slas(r) {
        let tag = fmt_sla(sla);
        let mut lat = Vec::new();
        let mut good = Vec::new();
        let mut att = Vec::new();
        for (i, sc) in scen.iter().enumerate() {
            let st = series(r, sc, sla);
            if st.is_empty() {
                continue;
            }
            let pts = |f: &dyn Fn(&Step) -> f64| {
                st.iter().map(|s| (s.offered_rps, f(s))).collect::<Vec<_>>()
            };
            lat.push(Line {
                name: format!("{sc} p99"),
                color: color(i),
                width: 2,
                filled: true,
                points: pts(&|s| s.latency_all_ms.p99.max(0.1)),
            });
            lat.push(Line {
                name: format!("{sc} p50"),
                color: color(i),
                width: 1,
                filled: false,
                points: pts(&|s| s.latency_all_ms.p50.max(0.1)),
            });
            good.push(Line {
                name: sc.clone(),
                color: color(i),
                width: 2,
                filled: true,
                points: pts(&|s| s.goodput_rps),
            });
            att.push(Line {
                name: sc.clone(),
                color: color(i),
                width: 2,
                filled: true,
                points: pts(&|s| s.sla_attainment_pct),
            });
        }
        let sla_label = format!("SLA {sla} ms");
        out.push((
            format!("latency_sla{tag}ms.svg"),
            format!("Latency (p50, p99 of every request, from its scheduled send time) vs offered rate, budget {sla} ms"),
            chart(&format!("Latency vs offered rate — budget {sla} ms"), x_desc, "latency (ms, log)", &lat, true, None, Some((sla, &sla_label)))?,
        ));
        let x_max = r
            .steps
            .iter()
            .filter(|s| s.sla_ms == sla)
            .map(|s| s.offered_rps)
            .fold(1.0, f64::max);
        good.insert(
            0,
            Line {
                name: "ideal (= offered)".into(),
                color: RGBColor(170, 170, 170),
                width: 1,
                filled: false,
                points: vec![(0.0, 0.0), (x_max, x_max)],
            },
        );
        out.push((
            format!("goodput_sla{tag}ms.svg"),
            format!("Goodput (HTTP 200 within {sla} ms, per second) vs offered rate"),
            chart(
                &format!("Goodput vs offered rate — budget {sla} ms"),
                x_desc,
                "goodput (req/s)",
                &good,
                false,
                None,
                None,
            )?,
        ));
        out.push((
            format!("attainment_sla{tag}ms.svg"),
            format!("SLA attainment (% of requests answered 200 within {sla} ms) vs offered rate"),
            chart(
                &format!("SLA attainment — budget {sla} ms"),
                x_desc,
                "within SLA (%)",
                &att,
                false,
                Some(105.0),
                Some((99.0, "99 %")),
            )?,
        ));
        // variant mix chosen by routing
        // (by the steps, not the name: a --label may stand before "pinned:")
        let routed: Vec<&String> = scen
            .iter()
            .filter(|sc| {
                r.steps
                    .iter()
                    .any(|s| &s.scenario == *sc && s.pinned_variant.is_none())
            })
            .collect();
        for sc in routed {
            let st = series(r, sc, sla);
            let names: BTreeSet<String> = st
                .iter()
                .flat_map(|s| s.variant_mix.keys().cloned())
                .collect();
            if st.is_empty() || names.is_empty() {
                continue;
            }
            let lines: Vec<Line> = names
                .iter()
                .enumerate()
                .map(|(i, v)| Line {
                    name: v.clone(),
                    color: color(i + 3),
                    width: 2,
                    filled: true,
                    points: st
                        .iter()
                        .map(|s| {
                            let tot: u64 = s.variant_mix.values().sum();
                            (
                                s.offered_rps,
                                100.0 * *s.variant_mix.get(v).unwrap_or(&0) as f64
                                    / tot.max(1) as f64,
                            )
                        })
                        .collect(),
                })
                .collect();
            out.push((
                format!("mix_{}_sla{tag}ms.svg", sc.replace([':', ' '], "_")),
                format!(
                    "Variant mix chosen by routing ({sc}), share of 200 answers, budget {sla} ms"
                ),
                chart(
                    &format!("Variant mix ({sc}) — budget {sla} ms"),
                    x_desc,
                    "share of answers (%)",
                    &lines,
                    false,
                    Some(105.0),
                    None,
                )?,
            ));
        }
    }
    Ok(out)
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".into())
}

/// The variants table: accuracy, size, memory, max rate within each budget.
fn variants_rows(r: &RunResults) -> (Vec<String>, Vec<Vec<String>>) {
    let slas = slas(r);
    let mut head: Vec<String> = [
        "scenario",
        "top-1",
        "top-5",
        "file MB",
        "params M",
        "GMACs",
        "resident MB",
    ]
    .map(String::from)
    .to_vec();
    for s in &slas {
        head.push(format!("max req/s within {s} ms (p99 @ that rate)"));
    }
    for s in &slas {
        head.push(format!("best goodput @ {s} ms"));
    }
    let mut rows = Vec::new();
    for sc in scenarios(r) {
        // variant facts come from the server's API: none for a labelled server without one
        let v = r
            .steps
            .iter()
            .find(|s| s.scenario == sc)
            .filter(|s| s.server_label.is_none() || s.server.is_some())
            .and_then(|s| s.pinned_variant.as_deref())
            .and_then(|n| r.variants.iter().find(|v| v.name == n));
        let mut row = vec![
            sc.clone(),
            opt(v.and_then(|v| v.top1), |x| format!("{:.1}%", x * 100.0)),
            opt(v.and_then(|v| v.top5), |x| format!("{:.1}%", x * 100.0)),
            opt(v.and_then(|v| v.file_bytes), |x| format!("{:.1}", x / 1e6)),
            opt(v.and_then(|v| v.params), |x| format!("{:.2}", x / 1e6)),
            opt(v.and_then(|v| v.macs), |x| format!("{:.3}", x / 1e9)),
            opt(v.and_then(|v| v.resident_bytes).filter(|b| *b > 0.0), |x| {
                format!("{:.1}", x / 1e6)
            }),
        ];
        for s in &slas {
            let sum = r
                .summary
                .iter()
                .find(|x| x.scenario == sc && x.sla_ms == *s);
            row.push(match sum {
                Some(x) => match (x.max_rate_within_sla, x.p99_at_max_ms) {
                    (Some(m), Some(p)) => format!("{m} ({p:.0} ms)"),
                    _ => format!("< {}", x.rates_tested.first().copied().unwrap_or(0.0)),
                },
                None => "–".into(),
            });
        }
        for s in &slas {
            let sum = r
                .summary
                .iter()
                .find(|x| x.scenario == sc && x.sla_ms == *s);
            row.push(opt(sum.map(|x| x.best_goodput_rps), |g| format!("{g:.1}")));
        }
        rows.push(row);
    }
    (head, rows)
}

fn step_rows(r: &RunResults) -> (Vec<String>, Vec<Vec<String>>) {
    let head = [
        "#",
        "scenario",
        "SLA ms",
        "offered",
        "achieved",
        "throughput",
        "goodput",
        "acc. goodput",
        "top-1 served",
        "within SLA",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "503",
        "504",
        "other err",
        "timeouts",
        "srv queue ms",
        "srv batch",
        "srv shed",
        "srv mix",
        "srv RSS MB",
        "srv CPU",
        "gen CPU",
    ]
    .map(String::from)
    .to_vec();
    let rows = r
        .steps
        .iter()
        .map(|s| {
            let sv = s.server.as_ref();
            let m = |f: &dyn Fn(&crate::results::ServerView) -> String| {
                sv.map(f).unwrap_or_else(|| "–".into())
            };
            let kv = |m: &std::collections::BTreeMap<String, f64>, p: usize| {
                if m.is_empty() {
                    "0".to_string()
                } else {
                    m.iter()
                        .map(|(k, v)| format!("{k}: {v:.p$}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            vec![
                s.index.to_string(),
                s.scenario.clone(),
                s.sla_ms.to_string(),
                format!("{:.1}", s.offered_rps),
                format!("{:.1}", s.achieved_rps),
                format!("{:.1}", s.throughput_rps),
                format!("{:.1}", s.goodput_rps),
                opt(s.accuracy_goodput, |g| format!("{g:.1}")),
                opt(s.mean_top1_served, |a| format!("{:.1}%", a * 100.0)),
                format!("{:.1}%", s.sla_attainment_pct),
                format!("{:.1}", s.latency_ms.p50),
                format!("{:.1}", s.latency_ms.p90),
                format!("{:.1}", s.latency_ms.p99),
                format!("{:.1}", s.latency_ms.p999),
                format!("{:.1}", s.latency_ms.max),
                s.status_503.to_string(),
                s.status_504.to_string(),
                (s.status_429 + s.status_other + s.transport_errors + s.dropped_client).to_string(),
                s.timeouts.to_string(),
                m(&|v| kv(&v.queue_ms_mean, 1)),
                m(&|v| kv(&v.batch_size_mean, 2)),
                m(&|v| kv(&v.shed, 0)),
                m(&|v| kv(&v.variant_mix_pct, 0)),
                m(&|v| opt(v.resident_bytes, |b| format!("{:.0}", b / 1e6))),
                m(&|v| opt(v.cpu_cores, |c| format!("{c:.2}"))),
                format!("{:.3}", s.generator_cpu.cores),
            ]
        })
        .collect();
    (head, rows)
}

/// A table: head and rows.
pub type Table = (Vec<String>, Vec<Vec<String>>);

/// The `--label`s of the steps, in the order they first appear.
fn server_labels(r: &RunResults) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for l in r.steps.iter().filter_map(|s| s.server_label.as_ref()) {
        if !v.contains(l) {
            v.push(l.clone());
        }
    }
    v
}

/// A step's scenario without its server's label.
fn base_scenario(s: &Step) -> &str {
    s.server_label
        .as_deref()
        .and_then(|l| s.scenario.strip_prefix(l))
        .map_or(s.scenario.as_str(), str::trim_start)
}

/// ≥ 99 % of the scheduled requests answered 200, and their p99 within the budget.
fn serves_within_budget(s: &Step) -> bool {
    s.scheduled > 0 && s.ok as f64 >= 0.99 * s.scheduled as f64 && s.latency_ms.p99 <= s.sla_ms
}

/// Servers side by side (runs merged with different `--label`s): for each, the highest rate
/// it served within the budget, and every offered rate with latency, goodput and status mix;
/// ratios are the first server's figure ÷ this one's. None for fewer than two servers.
#[allow(clippy::type_complexity)]
pub fn side_by_side(r: &RunResults) -> Option<[(Vec<String>, Vec<Vec<String>>); 2]> {
    let labels = server_labels(r);
    if labels.len() < 2 {
        return None;
    }
    let reference = &labels[0];
    let of = |label: &str, base: &str, sla: f64| -> Vec<&Step> {
        let mut v: Vec<&Step> = r
            .steps
            .iter()
            .filter(|s| {
                s.server_label.as_deref() == Some(label)
                    && base_scenario(s) == base
                    && s.sla_ms == sla
            })
            .collect();
        v.sort_by(|a, b| a.offered_rps.total_cmp(&b.offered_rps));
        v
    };
    let mut bases: Vec<&str> = Vec::new();
    for s in r.steps.iter().filter(|s| s.server_label.is_some()) {
        if !bases.contains(&base_scenario(s)) {
            bases.push(base_scenario(s));
        }
    }
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    };
    let pct = |n: u64, s: &Step| format!("{:.1}%", 100.0 * n as f64 / s.scheduled.max(1) as f64);
    let best = |st: &[&Step]| {
        st.iter()
            .filter(|s| serves_within_budget(s))
            .max_by(|a, b| a.offered_rps.total_cmp(&b.offered_rps))
            .map(|s| (s.offered_rps, s.latency_ms.p99))
    };
    let head_a: Vec<String> = [
        "server".to_string(),
        "scenario".into(),
        "SLA ms".into(),
        "highest rate with p99 ≤ SLA and ≥ 99 % answered 200 (p99 there)".into(),
        format!("{reference} ÷ this"),
        "best goodput req/s".into(),
        "rates tested".into(),
    ]
    .to_vec();
    let head_b: Vec<String> = [
        "offered req/s".to_string(),
        "server".into(),
        "scenario".into(),
        "SLA ms".into(),
        "achieved".into(),
        "p50 ms".into(),
        "p99 ms".into(),
        "answered 200".into(),
        "goodput req/s".into(),
        "503".into(),
        "504".into(),
        "timeouts + other".into(),
        format!("p50: {reference} ÷ this"),
        format!("p99: {reference} ÷ this"),
        format!("goodput: {reference} ÷ this"),
    ]
    .to_vec();
    let (mut rows_a, mut rows_b) = (Vec::new(), Vec::new());
    for sla in slas(r) {
        for base in &bases {
            let ref_steps = of(reference, base, sla);
            let ref_best = best(&ref_steps);
            let mut rates: Vec<f64> = Vec::new();
            for l in &labels {
                let st = of(l, base, sla);
                if st.is_empty() {
                    continue;
                }
                let b = best(&st);
                rows_a.push(vec![
                    l.clone(),
                    base.to_string(),
                    sla.to_string(),
                    b.map_or_else(
                        || format!("< {}", st[0].offered_rps),
                        |(m, p)| format!("{m} ({p:.0} ms)"),
                    ),
                    if l == reference {
                        "–".into()
                    } else {
                        ratio(ref_best.map(|x| x.0), b.map(|x| x.0))
                    },
                    format!(
                        "{:.1}",
                        st.iter().map(|s| s.goodput_rps).fold(0.0, f64::max)
                    ),
                    st.iter()
                        .map(|s| s.offered_rps.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                ]);
                for s in st {
                    if !rates.contains(&s.offered_rps) {
                        rates.push(s.offered_rps);
                    }
                }
            }
            rates.sort_by(f64::total_cmp);
            for rate in rates {
                let at = |l: &str| of(l, base, sla).into_iter().find(|s| s.offered_rps == rate);
                let rs = at(reference);
                for l in &labels {
                    let Some(s) = at(l) else { continue };
                    // latency ratios only where both servers answered something
                    let vs = |f: &dyn Fn(&Step) -> f64, latency: bool| match rs {
                        Some(rs) if l != reference && (!latency || (rs.ok > 0 && s.ok > 0)) => {
                            ratio(Some(f(rs)), Some(f(s)))
                        }
                        _ => "–".to_string(),
                    };
                    rows_b.push(vec![
                        format!("{rate}"),
                        l.clone(),
                        base.to_string(),
                        sla.to_string(),
                        format!("{:.1}", s.achieved_rps),
                        format!("{:.1}", s.latency_ms.p50),
                        format!("{:.1}", s.latency_ms.p99),
                        pct(s.ok, s),
                        format!("{:.1}", s.goodput_rps),
                        pct(s.status_503, s),
                        pct(s.status_504, s),
                        pct(
                            s.timeouts
                                + s.transport_errors
                                + s.dropped_client
                                + s.status_429
                                + s.status_other,
                            s,
                        ),
                        vs(&|s| s.latency_ms.p50, true),
                        vs(&|s| s.latency_ms.p99, true),
                        vs(&|s| s.goodput_rps, false),
                    ]);
                }
            }
        }
    }
    Some([(head_a, rows_a), (head_b, rows_b)])
}

const SIDE_BY_SIDE_NOTE: &str = "Each server ran the same open-loop sweep (same images, rates, durations, budget) one after the other on the same machine. Latencies are of HTTP 200 answers, from each request's scheduled send time; status shares are of the requests scheduled in the window; ratios are the first server's figure ÷ this row's.";

fn md_table(head: &[String], rows: &[Vec<String>]) -> String {
    let mut s = format!(
        "| {} |\n|{}\n",
        head.join(" | "),
        " --- |".repeat(head.len())
    );
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

pub fn markdown(r: &RunResults) -> String {
    let (h, rows) = variants_rows(r);
    let mut s = String::from("### Variants under latency budgets\n\n");
    s += &md_table(&h, &rows);
    let _ = write!(
        s,
        "\nmax req/s within budget = highest offered rate tested whose SLA attainment (HTTP 200 within the budget, measured from the scheduled send time) was ≥ 99 %.\n\nGenerator CPU: at most {:.3} cores (at {:.1} req/s offered).\n\n",
        r.generator_cpu_max_cores, r.generator_cpu_max_at_rps
    );
    if let Some([(ha, ra), (hb, rb)]) = side_by_side(r) {
        let _ = write!(s, "### Servers side by side\n\n{SIDE_BY_SIDE_NOTE}\n\n");
        s += &md_table(&ha, &ra);
        s += "\n";
        s += &md_table(&hb, &rb);
        s += "\n";
    }
    s += "### Every step\n\n";
    let (h, rows) = step_rows(r);
    s += &md_table(&h, &rows);
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html_table(head: &[String], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><thead><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s += "</tr></thead><tbody>";
    for r in rows {
        s += "<tr>";
        for c in r {
            let _ = write!(s, "<td>{}</td>", esc(c));
        }
        s += "</tr>";
    }
    s + "</tbody></table>"
}

pub fn html(r: &RunResults, plots: &[(String, String, String)]) -> String {
    let mut s = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>slimserve load test</title><style>\
         body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}\
         table{border-collapse:collapse;font-size:13px;margin:8px 0 20px}\
         th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}\
         td:nth-child(2),td:first-child{text-align:left}\
         .plots{display:flex;flex-wrap:wrap;gap:12px}.plot{border:1px solid #ddd;padding:4px}\
         .plot p{font-size:12px;margin:2px 6px;max-width:740px}code{background:#f5f5f5;padding:1px 3px}\
         </style></head><body><h1>slimserve load test</h1>",
    );
    let _ = write!(
        s,
        "<p>Target <code>{}</code>, {} steps, host with {} CPUs. Command: <code>{}</code></p>\
         <p>Latency is measured from each request's <b>scheduled</b> send time (open loop), so a slow server cannot slow the generator \
         and hide its own queueing. Goodput = HTTP 200 answers within the budget per second; SLA attainment = those / all requests scheduled. \
         Generator CPU: at most <b>{:.3} cores</b> (at {:.1} req/s offered).</p>",
        esc(&r.target),
        r.steps.len(),
        r.host_cpus,
        esc(&r.command.join(" ")),
        r.generator_cpu_max_cores,
        r.generator_cpu_max_at_rps
    );
    let (h, rows) = variants_rows(r);
    s += "<h2>Variants</h2><p>Accuracy, size and resident memory from the server's <code>/v1/variants</code>; max rate = highest offered rate tested with ≥ 99 % of requests answered 200 within the budget.</p>";
    s += &html_table(&h, &rows);
    if let Some([(ha, ra), (hb, rb)]) = side_by_side(r) {
        let _ = write!(
            s,
            "<h2>Servers side by side</h2><p>{}</p>",
            esc(SIDE_BY_SIDE_NOTE)
        );
        s += &html_table(&ha, &ra);
        s += &html_table(&hb, &rb);
    }
    s += "<h2>Plots</h2><div class=\"plots\">";
    for (_, caption, svg) in plots {
        let svg = svg.find("<svg").map_or(svg.as_str(), |i| &svg[i..]);
        let _ = write!(s, "<div class=\"plot\">{svg}<p>{}</p></div>", esc(caption));
    }
    s += "</div>";
    let (h, rows) = step_rows(r);
    s += "<h2>Every step</h2><p>Client latencies (ms) of HTTP 200 answers; <i>srv</i> columns are deltas of the server's <code>/metrics</code> over the step (queue time mean by variant, mean batch size, shed count, routing mix %, resident memory, CPU cores).</p>";
    s += &html_table(&h, &rows);
    s + "</body></html>\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Cpu, Percentiles};

    fn step(label: &str, rate: f64, ok: u64, p50: f64, p99: f64, goodput: f64) -> Step {
        let lat = Percentiles {
            count: ok,
            mean: p50,
            p50,
            p90: p99,
            p99,
            p999: p99,
            max: p99,
        };
        Step {
            index: 1,
            scenario: format!("{label} pinned:full"),
            pinned_variant: Some("full".into()),
            sla_ms: 150.0,
            arrival: "poisson".into(),
            offered_rps: rate,
            concurrency: None,
            warmup_s: 1.0,
            duration_s: 10.0,
            scheduled: 100,
            sent: 100,
            dropped_client: 0,
            completed: 100,
            ok,
            ok_within_sla: ok,
            status_429: 0,
            status_503: 100 - ok,
            status_504: 0,
            status_other: 0,
            timeouts: 0,
            transport_errors: 0,
            statuses: Default::default(),
            achieved_rps: rate,
            throughput_rps: goodput,
            goodput_rps: goodput,
            sla_attainment_pct: ok as f64,
            within_sla: ok >= 99,
            latency_ms: lat.clone(),
            latency_all_ms: lat.clone(),
            send_lag_ms: lat,
            max_in_flight: 10,
            variant_mix: Default::default(),
            variant_mix_within_sla: Default::default(),
            accuracy_goodput: None,
            mean_top1_served: None,
            generator_cpu: Cpu::default(),
            server: None,
            server_label: Some(label.into()),
        }
    }

    fn run(steps: Vec<Step>) -> RunResults {
        RunResults {
            tool: "t".into(),
            started_unix: 0,
            target: "x".into(),
            command: vec![],
            host_cpus: 2,
            variants: vec![],
            steps,
            summary: vec![],
            generator_cpu_max_cores: 0.0,
            generator_cpu_max_at_rps: 0.0,
        }
    }

    #[test]
    fn accuracy_goodput_weighs_answers_within_the_sla_by_their_variant() {
        let mut s = step("a", 20.0, 100, 10.0, 20.0, 10.0);
        s.variant_mix_within_sla = [("full".to_string(), 60u64), ("small".to_string(), 40)]
            .into_iter()
            .collect();
        let v = |name: &str, top1: Option<f64>| crate::results::VariantInfo {
            name: name.into(),
            top1,
            ..Default::default()
        };
        s.weigh_accuracy(&[v("full", Some(0.9)), v("small", Some(0.6))]);
        // (60 × 0.9 + 40 × 0.6) / 10 s
        assert!((s.accuracy_goodput.unwrap() - 7.8).abs() < 1e-9);
        assert!((s.mean_top1_served.unwrap() - 0.78).abs() < 1e-9);
        s.weigh_accuracy(&[v("full", Some(0.9)), v("small", None)]);
        assert_eq!(
            s.accuracy_goodput, None,
            "an unknown accuracy is not guessed"
        );
    }

    #[test]
    fn servers_side_by_side() {
        let a = run(vec![
            step("a", 30.0, 100, 20.0, 40.0, 30.0),
            step("a", 60.0, 99, 30.0, 120.0, 59.0),
        ]);
        let b = run(vec![
            step("b", 30.0, 100, 40.0, 80.0, 30.0),
            step("b", 60.0, 50, 900.0, 2000.0, 10.0),
        ]);
        let m = RunResults::merge(vec![a.clone(), b], vec![]).unwrap();
        assert_eq!(
            m.steps.iter().map(|s| s.index).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let [(_, best), (_, per_rate)] = side_by_side(&m).unwrap();
        // a serves 60 req/s within the budget, b only 30: a ÷ b = 2
        assert_eq!(
            best[0][..5],
            ["a", "pinned:full", "150", "60 (120 ms)", "–"]
        );
        assert_eq!(best[1][3..5], ["30 (80 ms)", "2.00"]);
        // at 30 req/s, p50 a ÷ b = 0.5; at 60 b answered half: 50 % 503
        let b30 = per_rate
            .iter()
            .find(|r| r[0] == "30" && r[1] == "b")
            .unwrap();
        assert_eq!(b30[12], "0.50");
        let b60 = per_rate
            .iter()
            .find(|r| r[0] == "60" && r[1] == "b")
            .unwrap();
        assert_eq!((b60[7].as_str(), b60[9].as_str()), ("50.0%", "50.0%"));
        assert!(markdown(&m).contains("### Servers side by side"));
        // one server alone has no such section; the same label twice is refused
        assert!(side_by_side(&a).is_none());
        assert!(RunResults::merge(vec![a.clone(), a], vec![]).is_err());
    }
}
