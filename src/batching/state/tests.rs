use super::*;
use std::cell::Cell;
use std::rc::Rc;

#[derive(Debug, Default, Clone)]
struct Job {
    id: u32,
    gone: Rc<Cell<bool>>,
}

impl Payload for Job {
    fn is_cancelled(&self) -> bool {
        self.gone.get()
    }
}

fn job(id: u32) -> Job {
    Job {
        id,
        ..Default::default()
    }
}

const MS: fn(u64) -> Duration = Duration::from_millis;

/// Three variants, most accurate slowest: 40, 25 and 15 ms at batch 1.
/// `batch_cost` is the cost of a batch of 4 relative to 4 × batch 1.
fn state(workers: usize, batch_cost: f64) -> State<Job> {
    let names = [("full", 0.75, 40), ("pruned", 0.72, 25), ("int8", 0.70, 15)];
    let mut profile = LatencyModel::new(&[vec![1, 4], vec![1, 4], vec![1, 4]]);
    for (v, (_, _, ms)) in names.iter().enumerate() {
        for _ in 0..5 {
            profile.observe(v, 1, MS(*ms));
            profile.observe(v, 4, MS(*ms).mul_f64(4.0 * batch_cost));
        }
    }
    let variants = names
        .iter()
        .map(|(n, t, _)| VariantMeta {
            name: n.to_string(),
            top1: Some(*t),
            off_front: false,
        })
        .collect();
    State::new(variants, profile, Policy::default(), workers)
}

fn submit(
    s: &mut State<Job>,
    id: u32,
    budget_ms: u64,
    now: Instant,
) -> Result<Admitted, ServeError> {
    s.submit(
        &RouteRequest::default(),
        now,
        now + MS(budget_ms),
        job(id),
        now,
    )
    .map_err(|(e, _)| e)
}

fn run(next: Next<Job>) -> Batch<Job> {
    match next {
        Next::Run(b) => b,
        other => panic!("expected a batch, got {other:?}"),
    }
}

#[test]
fn idle_server_serves_the_most_accurate_variant() {
    let mut s = state(2, 1.6);
    let t = Instant::now();
    let a = submit(&mut s, 1, 100, t).unwrap();
    assert_eq!((a.variant, a.reason), (0, RouteReason::MostAccurate));
    let b = run(s.next(0, t));
    assert_eq!((b.variant, b.items.len(), b.items[0].payload.id), (0, 1, 1));
}

#[test]
fn backlog_downgrades_then_rejects_with_the_best_prediction() {
    let mut s = state(1, 1.6);
    let t = Instant::now();
    let served: Vec<usize> = (0..6)
        .filter_map(|i| submit(&mut s, i, 100, t).ok().map(|a| a.variant))
        .collect();
    // 40 + 40 ms fit in 100 ms; then the backlog forces cheaper variants.
    assert_eq!(served[..2], [0, 0]);
    assert!(served[2..].iter().all(|v| *v > 0), "{served:?}");
    assert!(
        served.len() < 6,
        "a one-worker server cannot take six 100 ms requests: {served:?}"
    );
    match submit(&mut s, 99, 100, t) {
        Err(ServeError::BudgetUnmeetable {
            best_ms, variant, ..
        }) => {
            assert!(best_ms > 100.0);
            assert_eq!(variant, "int8");
        }
        other => panic!("expected a rejection, got {:?}", other.map(|a| a.variant)),
    }
}

#[test]
fn more_workers_absorb_more_backlog() {
    let t = Instant::now();
    let accepted = |workers| {
        let mut s = state(workers, 1.6);
        (0..20)
            .filter(|i| submit(&mut s, *i, 100, t).is_ok())
            .count()
    };
    assert!(accepted(2) > accepted(1));
}

#[test]
fn pinned_variant_is_kept_or_rejected_never_swapped() {
    let mut s = state(1, 1.6);
    let t = Instant::now();
    let pin = RouteRequest {
        pinned: Some(0),
        min_top1: None,
    };
    let a = s
        .submit(&pin, t, t + MS(100), job(1), t)
        .map_err(|e| e.0)
        .unwrap();
    assert_eq!((a.variant, a.reason), (0, RouteReason::Pinned));
    s.submit(&pin, t, t + MS(100), job(2), t)
        .map_err(|e| e.0)
        .unwrap();
    let third = s.submit(&pin, t, t + MS(100), job(3), t);
    assert!(matches!(
        third,
        Err((ServeError::BudgetUnmeetable { .. }, _))
    ));
}

#[test]
fn min_accuracy_excludes_variants() {
    let mut s = state(1, 1.6);
    let t = Instant::now();
    let strict = RouteRequest {
        pinned: None,
        min_top1: Some(0.74),
    };
    for i in 0..2 {
        assert_eq!(
            s.submit(&strict, t, t + MS(100), job(i), t)
                .map_err(|e| e.0)
                .unwrap()
                .variant,
            0
        );
    }
    // The backlog would downgrade, but nothing else is accurate enough.
    assert!(s.submit(&strict, t, t + MS(100), job(3), t).is_err());
    let impossible = RouteRequest {
        pinned: None,
        min_top1: Some(0.99),
    };
    let e = s
        .submit(&impossible, t, t + MS(100), job(4), t)
        .unwrap_err()
        .0;
    assert!(matches!(e, ServeError::NoVariantAccurateEnough { .. }));
}

#[test]
fn expired_and_cancelled_requests_are_shed_before_inference() {
    let mut s = state(1, 1.6);
    let t = Instant::now();
    submit(&mut s, 1, 100, t).unwrap();
    submit(&mut s, 2, 500, t).unwrap();
    let gone = job(3);
    s.submit(&RouteRequest::default(), t, t + MS(500), gone.clone(), t)
        .map_err(|e| e.0)
        .unwrap();
    gone.gone.set(true);
    // 70 ms later request 1 cannot finish a 40 ms run before its deadline.
    let shed = s.shed(t + MS(70));
    let mut got: Vec<(u32, ShedReason)> = shed.iter().map(|(_, q, r)| (q.payload.id, *r)).collect();
    got.sort_by_key(|g| g.0);
    assert_eq!(
        got,
        vec![(1, ShedReason::Expired), (3, ShedReason::Cancelled)]
    );
    assert_eq!(s.queued(), 1);
    assert_eq!(run(s.next(0, t + MS(70))).items[0].payload.id, 2);
}

#[test]
fn batches_form_when_batching_pays_off() {
    let mut s = state(1, 0.4); // a batch of 4 costs 1.6 images
    let t = Instant::now();
    submit(&mut s, 0, 1000, t).unwrap();
    // One request and a larger batch pays: wait for it, up to max wait.
    match s.next(0, t) {
        Next::WaitUntil(u) => assert_eq!(u, t + s.policy.max_batch_wait),
        other => panic!("expected to wait, got {other:?}"),
    }
    for i in 1..4 {
        submit(&mut s, i, 1000, t + MS(1)).unwrap();
    }
    let b = run(s.next(0, t + MS(1)));
    assert_eq!(b.items.len(), 4);
    // Alone past the max wait, a request runs by itself.
    submit(&mut s, 9, 1000, t).unwrap();
    assert_eq!(run(s.next(0, t + MS(11))).items.len(), 1);
}

#[test]
fn no_waiting_for_a_batch_while_another_worker_is_idle() {
    let mut s = state(2, 0.4); // batching pays
    let t = Instant::now();
    submit(&mut s, 0, 1000, t).unwrap();
    // Worker 1 is idle too: the lone request runs at once.
    assert_eq!(run(s.next(0, t)).items.len(), 1);
    // Worker 0 busy now: worker 1 waits for a batch to fill ...
    submit(&mut s, 1, 1000, t).unwrap();
    match s.next(1, t) {
        Next::WaitUntil(u) => assert_eq!(u, t + s.policy.max_batch_wait),
        other => panic!("expected to wait, got {other:?}"),
    }
    // ... and takes the backlog as one batch.
    for i in 2..5 {
        submit(&mut s, i, 1000, t + MS(1)).unwrap();
    }
    assert_eq!(run(s.next(1, t + MS(1))).items.len(), 4);
}

#[test]
fn no_batches_and_no_waiting_when_batching_does_not_pay() {
    let mut s = state(2, 1.6); // tract on this CPU: batch 4 costs 6.4 images
    let t = Instant::now();
    for i in 0..4 {
        submit(&mut s, i, 1000, t).unwrap();
    }
    assert_eq!(run(s.next(0, t)).items.len(), 1);
    assert_eq!(run(s.next(1, t)).items.len(), 1);
    let mut s = state(1, 0.4);
    s.policy.batching = false;
    submit(&mut s, 0, 1000, t).unwrap();
    assert_eq!(run(s.next(0, t)).items.len(), 1);
}

#[test]
fn a_tight_deadline_does_not_wait_for_a_batch() {
    let mut s = state(1, 0.4); // batch of 4 on full: 64 ms
    let t = Instant::now();
    submit(&mut s, 0, 60, t).unwrap();
    assert_eq!(run(s.next(0, t)).items.len(), 1);
}

#[test]
fn earliest_deadline_first_across_variants_so_nothing_starves() {
    let mut s = state(1, 1.6);
    let t = Instant::now();
    let int8 = RouteRequest {
        pinned: Some(2),
        min_top1: None,
    };
    let full = RouteRequest {
        pinned: Some(0),
        min_top1: None,
    };
    s.submit(&int8, t, t + MS(900), job(1), t)
        .map_err(|e| e.0)
        .unwrap();
    for i in 2..6 {
        s.submit(&full, t, t + MS(300 + i as u64), job(i), t)
            .map_err(|e| e.0)
            .unwrap();
    }
    let order: Vec<u32> = (0..5)
        .map(|k| {
            let now = t + MS(k);
            let b = run(s.next(0, now));
            s.finish(0, b.variant, 1, MS(1));
            b.items[0].payload.id
        })
        .collect();
    assert_eq!(order, vec![2, 3, 4, 5, 1]);
}

#[test]
fn queue_is_bounded() {
    let mut s = state(1, 1.6);
    s.policy.queue_capacity = 3;
    let t = Instant::now();
    for i in 0..3 {
        submit(&mut s, i, 10_000, t).unwrap();
    }
    assert!(matches!(
        submit(&mut s, 4, 10_000, t),
        Err(ServeError::QueueFull { capacity: 3 })
    ));
}

#[test]
fn finish_updates_the_profile() {
    let mut s = state(1, 1.6);
    let before = s.profile.mean(0, 1);
    for _ in 0..30 {
        s.finish(0, 0, 1, MS(80));
    }
    assert!(s.profile.mean(0, 1) > before + MS(30));
}

#[test]
fn slack_keeps_part_of_the_budget_in_reserve() {
    let t = Instant::now();
    let mut s = state(1, 1.6);
    // full predicts ~42.6 ms: fits a 45 ms budget only without slack.
    assert_eq!(submit(&mut s, 1, 45, t).unwrap().variant, 0);
    let mut s = state(1, 1.6);
    s.policy.slack = 0.1;
    assert_ne!(submit(&mut s, 1, 45, t).unwrap().variant, 0);
}

#[test]
fn late_starts_teach_the_router_a_margin() {
    let t = Instant::now();
    let mut s = state(1, 1.6);
    // full predicts ~42.6 ms: a 60 ms budget fits on an idle server.
    assert_eq!(submit(&mut s, 1, 60, t).unwrap().variant, 0);
    run(s.next(0, t));
    s.finish(0, 0, 1, MS(40));
    // Starts keep coming 20 ms later than predicted (work the backlog model
    // cannot see, such as images still being decoded).
    let mut now = t;
    for i in 0..100 {
        now += MS(100);
        submit(&mut s, 10 + i, 1000, now).unwrap();
        run(s.next(0, now + MS(20)));
        s.finish(0, 0, 1, MS(40));
    }
    let m = s.profile.wait_error.margin();
    assert!(m >= MS(18) && m <= MS(25), "{m:?}");
    // The same 60 ms request now goes to a faster variant.
    now += MS(100);
    assert_ne!(submit(&mut s, 999, 60, now).unwrap().variant, 0);
}

#[test]
fn punctual_starts_leave_no_margin() {
    let t = Instant::now();
    let mut s = state(2, 1.6);
    let mut now = t;
    for i in 0..50 {
        now += MS(100);
        submit(&mut s, i, 100, now).unwrap();
        run(s.next(0, now));
        s.finish(0, 0, 1, MS(40));
    }
    assert_eq!(s.profile.wait_error.margin(), Duration::ZERO);
    assert_eq!(submit(&mut s, 99, 60, now).unwrap().variant, 0);
}

#[test]
fn an_idle_server_does_not_refuse_for_ever_after_a_slow_spell() {
    let t = Instant::now();
    let mut profile = LatencyModel::new(&[vec![1]]);
    profile.seed(0, 1, &[MS(40); 4]);
    let mut s = State::new(
        vec![VariantMeta {
            name: "full".into(),
            top1: Some(0.75),
            off_front: false,
        }],
        profile,
        Policy::default(),
        1,
    );
    // A slow spell (another process took the cores): executions of 400 ms.
    for _ in 0..40 {
        s.finish(0, 0, 1, MS(400));
    }
    assert!(s.profile.predict(0, 1) > MS(150));
    // Idle now, but 150 ms requests are refused: nothing runs, so nothing
    // would re-measure the variant. Each refusal relaxes the prediction
    // toward the warm-up until one is admitted.
    let mut now = t;
    let mut refused = 0;
    while submit(&mut s, refused, 150, now).is_err() {
        refused += 1;
        now += MS(10);
        assert!(
            refused < 100,
            "still refusing: {:?}",
            s.profile.predict(0, 1)
        );
    }
    assert!(refused > 0);
    // It runs at its real (warm-up) speed, and the next one is admitted.
    run(s.next(0, now));
    s.finish(0, 0, 1, MS(40));
    assert!(submit(&mut s, 1000, 150, now + MS(50)).is_ok());
}

#[test]
fn a_busy_server_keeps_its_predictions_when_it_refuses() {
    let t = Instant::now();
    let mut profile = LatencyModel::new(&[vec![1]]);
    profile.seed(0, 1, &[MS(40); 4]);
    let mut s = State::new(
        vec![VariantMeta {
            name: "full".into(),
            top1: Some(0.75),
            off_front: false,
        }],
        profile,
        Policy::default(),
        1,
    );
    for _ in 0..20 {
        s.finish(0, 0, 1, MS(100));
    }
    // The worker is busy: refusals come from the backlog, not from an
    // idle server, and teach the model nothing.
    submit(&mut s, 1, 1000, t).unwrap();
    run(s.next(0, t));
    let before = s.profile.predict(0, 1);
    for i in 10..20 {
        assert!(submit(&mut s, i, 120, t).is_err());
    }
    assert_eq!(s.profile.predict(0, 1), before);
}

#[test]
fn graded_downgrading_steps_down_before_the_deadline_forces_it() {
    let t = Instant::now();
    let mut s = state(1, 1.6);
    s.policy.headroom = 0.5;
    let a = submit(&mut s, 1, 100, t).unwrap();
    assert_eq!((a.variant, a.reason), (0, RouteReason::MostAccurate));
    // 40 ms of backlog: full would still meet 100 ms, but the wait is past
    // the first two thirds-of-50-ms thresholds, so the fastest is taken
    let b = submit(&mut s, 2, 100, t).unwrap();
    assert_eq!((b.variant, b.reason), (2, RouteReason::Downgraded));
    // a burst: graded downgrading admits at least as many as the plain rule
    let accepted = |headroom: f64| {
        let mut s = state(2, 1.6);
        s.policy.headroom = headroom;
        (0..20)
            .filter(|i| submit(&mut s, *i, 100, t).is_ok())
            .count()
    };
    assert!(
        accepted(0.5) >= accepted(0.0),
        "{} < {}",
        accepted(0.5),
        accepted(0.0)
    );
}

/// Open loop on a simulated clock: a request every `gap_ms` (`n` of them,
/// budget `budget_ms`), each batch taking its variant's cost times a
/// factor drawn uniformly in `1 ± jitter` (a fixed sequence). Returns the
/// answers within budget and their mean top-1.
fn simulate(s: &mut State<Job>, gap_ms: u64, n: u64, budget_ms: u64, jitter: f64) -> (u64, f64) {
    let (cost, top1) = ([40u64, 25, 15], [0.75, 0.72, 0.70]);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut draw = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        1.0 + jitter * (2.0 * ((seed >> 11) as f64 / (1u64 << 53) as f64) - 1.0)
    };
    let t0 = Instant::now();
    let mut running: Vec<Option<(Instant, Instant, Batch<Job>)>> =
        (0..s.workers()).map(|_| None).collect();
    let (mut met, mut acc) = (0u64, 0.0);
    for ms in 0..n * gap_ms + 2 * budget_ms {
        let now = t0 + MS(ms);
        for (w, slot) in running.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|(_, until, _)| *until <= now) {
                let (started, _, b) = slot.take().unwrap();
                s.finish(w, b.variant, b.items.len(), now - started);
                for it in &b.items {
                    if now <= it.deadline {
                        met += 1;
                        acc += top1[b.variant];
                    }
                }
            }
        }
        if ms % gap_ms == 0 && ms / gap_ms < n {
            let _ = s.submit(
                &RouteRequest::default(),
                now,
                now + MS(budget_ms),
                job(ms as u32),
                now,
            );
        }
        s.shed(now);
        for (w, slot) in running.iter_mut().enumerate() {
            if slot.is_none() {
                if let Next::Run(b) = s.next(w, now) {
                    assert_eq!(b.items.len(), 1, "batches do not pay here");
                    let took = MS(cost[b.variant]).mul_f64(draw()).max(MS(1));
                    *slot = Some((now, now + took, b));
                }
            }
        }
    }
    (met, acc / met.max(1) as f64)
}

#[test]
fn load_aware_routing_matches_the_rungs_to_the_arrival_rate() {
    // 50 requests/s on one worker: full (40 ms) alone could serve 25/s,
    // int8 (15 ms) 66/s. At 90 % utilization the mix is 30 % pruned and
    // 70 % int8 (0.3 × 25 + 0.7 × 15 = 18 ms per request).
    let t = Instant::now();
    let mut probe = state(1, 1.6);
    probe.policy.utilization = 0.9;
    for i in 0..200 {
        let now = t + MS(20 * i);
        let _ = probe.submit(
            &RouteRequest::default(),
            now,
            now + MS(150),
            job(i as u32),
            now,
        );
    }
    let rate = probe.arrival_rate(t + MS(20 * 199));
    assert!((45.0..=55.0).contains(&rate), "measured {rate}/s for 50/s");
    let n = 500;
    let (greedy, greedy_acc) = simulate(&mut state(1, 1.6), 20, n, 150, 0.5);
    let mut aware = state(1, 1.6);
    aware.policy.utilization = 0.9;
    let (met, acc) = simulate(&mut aware, 20, n, 150, 0.5);
    eprintln!("greedy: {greedy}/{n} within budget at top-1 {greedy_acc:.3}; load-aware: {met}/{n} at {acc:.3}");
    assert!(met as f64 >= 0.95 * n as f64, "load-aware: {met} of {n}");
    assert!(met > greedy, "load-aware {met} vs greedy {greedy}");
    assert!(
        acc > 0.705,
        "the share above int8 is used: mean top-1 {acc}"
    );
    // Light load: nothing changes, the most accurate for everyone.
    let mut light = state(1, 1.6);
    light.policy.utilization = 0.9;
    let (met, acc) = simulate(&mut light, 100, 50, 150, 0.5);
    assert_eq!((met, acc), (50, 0.75));
    // Pinned requests are neither limited nor counted.
    let mut s = state(1, 1.6);
    s.policy.utilization = 0.9;
    let pinned = RouteRequest {
        pinned: Some(0),
        ..Default::default()
    };
    for i in 0..20 {
        let now = t + MS(i);
        let _ = s.submit(&pinned, now, now + MS(10_000), job(i as u32), now);
    }
    assert_eq!(s.arrival_rate(t + MS(20)), 0.0);
}
