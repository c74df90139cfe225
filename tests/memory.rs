//! Memory held per variant, read from the process (resident set, after
//! giving freed pages back), not estimated. One test in this binary so that
//! nothing else allocates while it measures.

use slimserve::engine::tract::{KernelChoice, LoadReport, TractEngine};
use slimserve::manifest::{bundled_models_dir, Manifest};

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

fn load(manifest: &Manifest, variant: &str, sizes: &[usize]) -> (LoadReport, f64) {
    let (engine, specs) =
        TractEngine::load(manifest, &[variant.to_string()], sizes, KernelChoice::Fast).unwrap();
    (engine.reports[0].clone(), specs[0].params as f64 * 4.0)
}

fn mb(b: u64) -> f64 {
    b as f64 / 1048576.0
}

#[test]
fn resident_growth_per_variant_stays_within_a_multiple_of_its_weights_and_batch_plans_share_them() {
    let manifest = Manifest::load(&bundled_models_dir()).unwrap();
    // Once unmeasured: the first load also maps code and the allocator's
    // arenas. (A separate batch-1 load reuses the heap its predecessor
    // freed, so its growth is not comparable; the ratio below is read
    // within one load.)
    load(&manifest, "pruned", &[1]);
    for variant in ["full", "pruned"] {
        let (one, weights) = load(&manifest, variant, &[1]);
        let (batches, _) = load(&manifest, variant, &[1, 2, 4]);
        eprintln!(
            "{variant}: f32 weights {:.1} MB, packed {:.1} MB; growth batch 1 only {:.1} MB, with batch 2 and 4 plans {:.1} MB (plans {:?} MB)",
            weights / 1048576.0,
            mb(batches.packed_bytes as u64),
            mb(one.resident_bytes),
            mb(batches.resident_bytes),
            batches
                .plans
                .iter()
                .map(|p| (p.batch, (mb(p.resident_bytes) * 10.0).round() / 10.0))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            one.packed_bytes, batches.packed_bytes,
            "one copy of the packs"
        );
        assert!(
            batches.packed_bytes as f64 > 0.5 * weights,
            "{variant}: the convolutions' packed weights are not reported"
        );
        let limit = MAX_GROWTH_PER_WEIGHT_BYTE * weights + SLACK_BYTES;
        assert!(
            (batches.resident_bytes as f64) <= limit,
            "{variant}: resident growth {:.1} MB > {MAX_GROWTH_PER_WEIGHT_BYTE} x {:.1} MB of weights + {:.0} MB",
            mb(batches.resident_bytes),
            weights / 1048576.0,
            SLACK_BYTES / 1048576.0
        );
        // Each extra plan adds what it does not share: read around building
        // it. Were the packs copied per plan, that would be ~the weights.
        for p in &batches.plans[1..] {
            assert!(
                (p.resident_bytes as f64) <= MAX_EXTRA_PLAN_PER_WEIGHT_BYTE * weights,
                "{variant}: the batch-{} plan grew resident memory by {:.1} MB (> {MAX_EXTRA_PLAN_PER_WEIGHT_BYTE} x {:.1} MB of weights)",
                p.batch,
                mb(p.resident_bytes),
                weights / 1048576.0
            );
        }
        let first = batches.plans[0].resident_bytes as f64;
        let extra: u64 = batches.plans[1..].iter().map(|p| p.resident_bytes).sum();
        assert!(
            first + extra as f64 <= MAX_GROWTH_WITH_BATCH_PLANS * first,
            "{variant}: plans for batch 1, 2 and 4 grew {:.1} MB, > {MAX_GROWTH_WITH_BATCH_PLANS} x the batch-1 plan's {:.1} MB",
            mb(first as u64 + extra),
            mb(first as u64)
        );
    }
    // The resolution rungs of one file run on its packs: loaded together
    // with full, full-160 holds no packed copy of its own.
    let (engine, _) = TractEngine::load(
        &manifest,
        &["full".to_string(), "full-160".to_string()],
        &[1],
        KernelChoice::Fast,
    )
    .unwrap();
    let (full, rung) = (&engine.reports[0], &engine.reports[1]);
    assert_eq!(
        (full.name.as_str(), rung.name.as_str()),
        ("full", "full-160")
    );
    eprintln!(
        "full: growth {:.1} MB, packed {:.1} MB; full-160 after it: growth {:.1} MB, packed {:.1} MB of which shared {:.1} MB",
        mb(full.resident_bytes),
        mb(full.packed_bytes as u64),
        mb(rung.resident_bytes),
        mb(rung.packed_bytes as u64),
        mb(rung.packed_shared_bytes as u64)
    );
    assert_eq!(full.packed_shared_bytes, 0, "full packs first");
    assert!(
        rung.packed_shared_bytes as f64 >= 0.95 * rung.packed_bytes as f64,
        "full-160 shares {:.1} of its {:.1} MB of packs",
        mb(rung.packed_shared_bytes as u64),
        mb(rung.packed_bytes as u64)
    );
    assert!(
        (rung.resident_bytes as f64) <= 0.25 * full.resident_bytes as f64,
        "full-160 grew {:.1} MB after full's {:.1} MB: it holds a copy of the weights",
        mb(rung.resident_bytes),
        mb(full.resident_bytes)
    );
}
