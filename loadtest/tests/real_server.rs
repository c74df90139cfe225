//! A short sweep against the real slimserve binary and the real models:
//! the JSON must hold sane, self-consistent numbers.
//!
//! The binary: `SLIMSERVE_BIN` if set; otherwise the newest of
//! `$CARGO_TARGET_DIR/{debug,release}/slimserve` and
//! `<workspace>/target/{debug,release}/slimserve`; if none exists the test
//! builds it with `cargo build -p slimserve --bin slimserve` (debug profile,
//! dependencies at opt-level 3; under `cargo test --workspace` that only
//! links what is already compiled).

mod common;
use common::{f, out_dir, run_loadtest};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn slimserve_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SLIMSERVE_BIN") {
        return PathBuf::from(p);
    }
    let mut dirs = vec![workspace().join("target")];
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.insert(0, PathBuf::from(t));
    }
    let newest = dirs
        .iter()
        .flat_map(|d| ["debug", "release"].map(|p| d.join(p).join("slimserve")))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max();
    if let Some((_, p)) = newest {
        return p;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-p", "slimserve", "--bin", "slimserve"])
        .current_dir(workspace())
        .status()
        .expect("run cargo build");
    assert!(st.success(), "cargo build -p slimserve failed");
    dirs.iter()
        .map(|d| d.join("debug/slimserve"))
        .find(|p| p.exists())
        .expect("slimserve binary after build")
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn short_sweep_against_the_real_server_is_self_consistent() {
    let bin = slimserve_bin();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("slimserve-loadtest-{port}.log")))
            .unwrap();
    let _server = Server(
        Command::new(&bin)
            .args([
                "serve",
                "--http-addr",
                &format!("127.0.0.1:{port}"),
                "--grpc-addr",
                "127.0.0.1:0",
                "--warmup-runs",
                "2",
            ])
            .arg("--models")
            .arg(workspace().join("models"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display())),
    );
    let target = format!("http://127.0.0.1:{port}");
    let out = out_dir("real");
    // default scenarios: every variant pinned, plus routed
    let r = run_loadtest(
        &[
            "--target",
            &target,
            "--arrival",
            "constant",
            "--rates",
            "4,8",
            "--sla-ms",
            "1000",
            "--duration",
            "2s",
            "--warmup",
            "1s",
            "--cooldown",
            "200ms",
            "--ready-timeout",
            "180s",
        ],
        &out,
    );
    let variants: Vec<String> = r["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!variants.is_empty());
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(
        steps.len(),
        (variants.len() + 1) * 2,
        "pinned per variant + routed, × 2 rates"
    );
    for s in steps {
        let name = format!(
            "step {} {} @ {}",
            s["index"], s["scenario"], s["offered_rps"]
        );
        let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{name}: {k}"));
        let offered = f(s, "offered_rps");
        // counts add up
        assert_eq!(n("sent") + n("dropped_client"), n("scheduled"), "{name}");
        assert_eq!(
            n("completed") + n("timeouts") + n("transport_errors"),
            n("sent"),
            "{name}"
        );
        assert!(
            n("ok_within_sla") <= n("ok") && n("ok") <= n("completed"),
            "{name}"
        );
        assert_eq!(
            n("ok") + n("status_429") + n("status_503") + n("status_504") + n("status_other"),
            n("completed"),
            "{name}"
        );
        // below capacity: the generator keeps its schedule and everything is answered
        assert!(
            (f(s, "achieved_rps") - offered).abs() <= 0.15 * offered,
            "{name}: achieved {}",
            f(s, "achieved_rps")
        );
        assert!(
            (f(s, "throughput_rps") - offered).abs() <= 0.3 * offered,
            "{name}: throughput {}",
            f(s, "throughput_rps")
        );
        assert!(
            f(s, "goodput_rps") <= f(s, "throughput_rps") + 1e-9,
            "{name}"
        );
        assert_eq!(n("ok"), n("sent"), "{name}: every request answered 200");
        assert!(
            f(s, "sla_attainment_pct") >= 90.0 && f(s, "sla_attainment_pct") <= 100.0,
            "{name}"
        );
        // percentiles ordered
        let p: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
            .iter()
            .map(|k| f(s, &format!("latency_ms.{k}")))
            .collect();
        assert!(
            p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]),
            "{name}: {p:?}"
        );
        assert!(
            f(s, "latency_ms.mean") >= p[0] * 0.5 && f(s, "latency_ms.mean") <= p[4],
            "{name}"
        );
        // the variant that answered
        let mix = s["variant_mix"].as_object().unwrap();
        assert!(mix.keys().all(|k| variants.contains(k)), "{name}: {mix:?}");
        if let Some(v) = s["pinned_variant"].as_str() {
            assert_eq!(mix.keys().collect::<Vec<_>>(), vec![v], "{name}");
        }
        // the server's view
        let sv = &s["server"];
        assert!(sv.is_object(), "{name}: no server view");
        let served: f64 = sv["requests"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.ends_with(" 200"))
            .map(|(_, v)| v.as_f64().unwrap())
            .sum();
        let ok = n("ok") as f64;
        assert!(
            served >= 0.7 * ok && served <= 1.3 * ok + 3.0,
            "{name}: server counted {served}, client {ok}"
        );
        assert!(f(sv, "resident_bytes") > 1e6, "{name}");
        assert!(
            f(s, "generator_cpu.cores") < 0.5,
            "{name}: generator CPU {}",
            f(s, "generator_cpu.cores")
        );
    }
    assert_eq!(r["summary"].as_array().unwrap().len(), variants.len() + 1);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("<svg")
            && !html.contains("<script")
            && !html.contains("http://www.w3.org/1999/xlink\" href")
    );
    let csv = std::fs::read_to_string(out.join("steps.csv")).unwrap();
    assert_eq!(csv.lines().count(), steps.len() + 1);
}
