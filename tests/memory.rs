//! Memory held per variant, read from the process (resident set, after
//! giving freed pages back), not estimated. Each load is measured in a
//! process of its own (this test binary, run again as a child): a load in a
//! process that has already loaded and freed a model reuses that heap, and
//! its growth read anywhere from a quarter to one and a half times the
//! weights (one run in four failed this way). The binary runs on the
//! server's allocator (jemalloc, one arena): with glibc's per-thread arenas
//! a plan built on another thread now and then read 5 MB it does not hold.

// The server's allocator and settings (src/main.rs), so the figures are
// the server's.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = slimserve::memory::JEMALLOC_CONF;

use serde_json::{json, Value};
use slimserve::engine::tract::{KernelChoice, TractEngine};
use slimserve::manifest::{bundled_models_dir, Manifest};
use std::process::Command;

/// A variant's resident growth at load, with plans for batch 1, 2 and 4,
/// may be at most this multiple of its weights in f32 (4 bytes per
/// parameter), plus `SLACK_BYTES` for the plans' own structures and
/// allocator granularity.
const MAX_GROWTH_PER_WEIGHT_BYTE: f64 = 1.5;
const SLACK_BYTES: f64 = 8.0 * 1048576.0;

/// Each plan beyond batch 1 may grow resident memory by at most this
/// multiple of the weights in f32. Every weight is packed once per variant
/// and shared by its plans (the convolutions and the classifier); an extra
/// plan adds its graph and small constants (measured 0.1-0.2 MB; when
/// tract's own classifier MatMul packed per plan it was 1.6-10 MB).
const MAX_EXTRA_PLAN_PER_WEIGHT_BYTE: f64 = 0.1;

/// With batch 2 and 4 plans a variant may grow by at most this multiple of
/// its batch-1 growth (read within the same load: the batch-1 plan's).
const MAX_GROWTH_WITH_BATCH_PLANS: f64 = 1.3;

/// Set in the child: which variants to load (comma-separated), a colon, the
/// batch sizes.
const CHILD_ENV: &str = "SLIMSERVE_MEMORY_TEST_LOAD";
const MARK: &str = "MEMORY_REPORT ";

/// The child's part: one load, its reports printed as JSON.
fn child(spec: &str) {
    let (variants, sizes) = spec.split_once(':').unwrap();
    let variants: Vec<String> = variants.split(',').map(str::to_string).collect();
    let sizes: Vec<usize> = sizes.split(',').map(|b| b.parse().unwrap()).collect();
    let manifest = Manifest::load(&bundled_models_dir()).unwrap();
    let (engine, specs) =
        TractEngine::load(&manifest, &variants, &sizes, KernelChoice::Fast).unwrap();
    let reports: Vec<Value> = engine
        .reports
        .iter()
        .zip(&specs)
        .map(|(r, s)| {
            json!({
                "name": r.name,
                "weights": s.params as f64 * 4.0,
                "resident": r.resident_bytes,
                "packed": r.packed_bytes,
                "packed_shared": r.packed_shared_bytes,
                "plans": r.plans.iter().map(|p| json!([p.batch, p.resident_bytes])).collect::<Vec<_>>(),
            })
        })
        .collect();
    println!("{MARK}{}", Value::Array(reports));
}

/// Load `variants` with plans for `sizes` in a fresh process.
fn load(variants: &[&str], sizes: &[usize]) -> Vec<Value> {
    let spec = format!(
        "{}:{}",
        variants.join(","),
        sizes
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let out = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, &spec)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child {spec}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find_map(|l| l.split_once(MARK).map(|(_, r)| r))
        .unwrap_or_else(|| panic!("child {spec} printed no report: {text}"));
    serde_json::from_str::<Value>(line)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn mb(b: f64) -> f64 {
    b / 1048576.0
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap()
}

fn plans(v: &Value) -> Vec<(u64, f64)> {
    v["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

const TEST_NAME: &str =
    "resident_growth_per_variant_stays_within_a_multiple_of_its_weights_and_batch_plans_share_them";

#[test]
fn resident_growth_per_variant_stays_within_a_multiple_of_its_weights_and_batch_plans_share_them() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child(&spec);
    }
    for variant in ["full", "pruned"] {
        let one = load(&[variant], &[1]).remove(0);
        let batches = load(&[variant], &[1, 2, 4]).remove(0);
        let weights = f(&batches, "weights");
        let ps = plans(&batches);
        eprintln!(
            "{variant}: f32 weights {:.1} MB, packed {:.1} MB; growth batch 1 only {:.1} MB, with batch 2 and 4 plans {:.1} MB (plans {:?} MB)",
            mb(weights),
            mb(f(&batches, "packed")),
            mb(f(&one, "resident")),
            mb(f(&batches, "resident")),
            ps.iter().map(|&(b, r)| (b, (mb(r) * 10.0).round() / 10.0)).collect::<Vec<_>>()
        );
        assert_eq!(one["packed"], batches["packed"], "one copy of the packs");
        // full's packs are f32 (about its weights); pruned's weights are
        // int8 in its file and stay int8 in the pointwise packs (about a
        // quarter, with the depthwise taps in f32).
        let (lo, hi) = if variant == "pruned" {
            (0.2, 0.4)
        } else {
            (0.9, 1.1)
        };
        let packed = f(&batches, "packed") / weights;
        assert!(
            (lo..=hi).contains(&packed),
            "{variant}: packed weights {:.1} MB, {packed:.2} x its f32 weights (expected {lo}-{hi})",
            mb(f(&batches, "packed"))
        );
        let limit = MAX_GROWTH_PER_WEIGHT_BYTE * weights + SLACK_BYTES;
        assert!(
            f(&batches, "resident") <= limit,
            "{variant}: resident growth {:.1} MB > {MAX_GROWTH_PER_WEIGHT_BYTE} x {:.1} MB of weights + {:.0} MB",
            mb(f(&batches, "resident")),
            mb(weights),
            mb(SLACK_BYTES)
        );
        // Each extra plan adds what it does not share: read around building
        // it. Were the packs copied per plan, that would be ~the weights.
        for &(b, r) in &ps[1..] {
            assert!(
                r <= MAX_EXTRA_PLAN_PER_WEIGHT_BYTE * weights,
                "{variant}: the batch-{b} plan grew resident memory by {:.1} MB (> {MAX_EXTRA_PLAN_PER_WEIGHT_BYTE} x {:.1} MB of weights)",
                mb(r),
                mb(weights)
            );
        }
        let first = ps[0].1;
        let extra: f64 = ps[1..].iter().map(|p| p.1).sum();
        assert!(
            first + extra <= MAX_GROWTH_WITH_BATCH_PLANS * first,
            "{variant}: plans for batch 1, 2 and 4 grew {:.1} MB, > {MAX_GROWTH_WITH_BATCH_PLANS} x the batch-1 plan's {:.1} MB",
            mb(first + extra),
            mb(first)
        );
    }
    // The resolution rungs of one file run on its packs: loaded together
    // with full, full-160 holds no packed copy of its own.
    let both = load(&["full", "full-160"], &[1]);
    let (full, rung) = (&both[0], &both[1]);
    assert_eq!(
        (full["name"].as_str(), rung["name"].as_str()),
        (Some("full"), Some("full-160"))
    );
    eprintln!(
        "full: growth {:.1} MB, packed {:.1} MB; full-160 after it: growth {:.1} MB, packed {:.1} MB of which shared {:.1} MB",
        mb(f(full, "resident")),
        mb(f(full, "packed")),
        mb(f(rung, "resident")),
        mb(f(rung, "packed")),
        mb(f(rung, "packed_shared"))
    );
    assert_eq!(f(full, "packed_shared"), 0.0, "full packs first");
    assert!(
        f(rung, "packed_shared") >= 0.95 * f(rung, "packed"),
        "full-160 shares {:.1} of its {:.1} MB of packs",
        mb(f(rung, "packed_shared")),
        mb(f(rung, "packed"))
    );
    assert!(
        f(rung, "resident") <= 0.25 * f(full, "resident"),
        "full-160 grew {:.1} MB after full's {:.1} MB: it holds a copy of the weights",
        mb(f(rung, "resident")),
        mb(f(full, "resident"))
    );
}
