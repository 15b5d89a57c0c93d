//! Fault properties: what the core's defences guarantee under a black hole, a total
//! outage and a returning backend, checked over random fleets, policies, loads and settings.
//!
//! Proptest runs from a fixed seed (reproducible on every run); a failing case prints the
//! simulator's seed and a `cargo run` line that replays it (fleets and faults that flags cannot
//! say go to `$TMPDIR/balancer-sim-replay-SEED.toml`).

use std::time::Duration;

use balancer_core::{OutlierConfig, PolicyKind, RetryConfig, SlowStartConfig};
use balancer_sim::report::replay_command;
use balancer_sim::{
    BackendSpec, CoreOptions, EndKind, Fault, FaultAction, HealthProbes, RunStats, ServiceDist,
    SimConfig, run,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0xfa17_5eed),
        max_shrink_iters: 256,
        ..Config::default()
    }
}

/// The policies these keyless runs can tell apart: without keys consistent-hash is p2c,
/// decision for decision (tests/keys.rs and the core's tests cover it with keys).
fn policy() -> impl Strategy<Value = PolicyKind> {
    let keyless: Vec<PolicyKind> = PolicyKind::ALL
        .into_iter()
        .filter(|p| *p != PolicyKind::ConsistentHash)
        .collect();
    proptest::sample::select(keyless)
}

fn exp_1ms() -> BackendSpec {
    BackendSpec::new(ServiceDist::Exponential { mean_ns: 1e6 }, 1)
}

fn replay(config: &SimConfig) -> String {
    format!("seed {}; replay: {}", config.seed, replay_command(config))
}

fn run_ok(config: &SimConfig) -> Result<RunStats, TestCaseError> {
    run(config).map_err(|e| TestCaseError::fail(format!("{e}; {}", replay(config))))
}

/// No dispatch to a backend between the event after which the core's snapshot showed it
/// ejected and the end of that ejection; and the snapshot called it ineligible meanwhile.
fn check_no_dispatch_while_ejected(
    config: &SimConfig,
    stats: &RunStats,
) -> Result<(), TestCaseError> {
    for e in &stats.ejections {
        prop_assert!(
            e.ineligible,
            "snapshot shows backend {} ejected until {} ns but eligible; {}",
            e.backend,
            e.until_ns,
            replay(config)
        );
        prop_assert!(e.until_ns > e.from_ns, "{e:?}; {}", replay(config));
        let during = stats
            .dispatches
            .iter()
            .find(|d| d.backend == e.backend && d.event > e.event && d.time_ns < e.until_ns);
        prop_assert!(
            during.is_none(),
            "{during:?} went to backend {} ejected from {} ns (event {}) until {} ns; {}",
            e.backend,
            e.from_ns,
            e.event,
            e.until_ns,
            replay(config)
        );
    }
    Ok(())
}

prop_compose! {
    /// One black hole among 2–10 identical backends, from 0–50 ms to the end, ejection on.
    fn black_hole_run()(
        policy in policy(),
        n in 2usize..=10,
        load in 0.3f64..0.9,
        seed in any::<u64>(),
        hole in 0u32..10,
        start_ms in 0u64..=50,
        failures in 1u32..=5,
        base_ms in 10u64..=100,
    ) -> SimConfig {
        let mut config = SimConfig::new(policy, n, exp_1ms());
        config.load = (load * 100.0).round() / 100.0;
        config.requests = 3_000;
        config.seed = seed;
        config.record_trace = true;
        config.check_invariants = true;
        config.faults = vec![Fault {
            at_ns: start_ms * 1_000_000,
            action: FaultAction::BlackHole { backend: hole % n as u32, until_ns: None },
        }];
        config.core.outlier = Some(OutlierConfig {
            consecutive_failures: failures,
            base_ejection: Duration::from_millis(base_ms),
            max_ejection: Duration::from_millis(base_ms * 4),
            max_ejected_percent: 50,
        });
        config
    }
}

prop_compose! {
    /// Random failures (black holes, flaky and undetected crashes) with random ejection,
    /// retry and health-check settings: the ejection windows to check against.
    fn ejecting_run()(
        policy in policy(),
        n in 2usize..=8,
        load in 0.4f64..0.9,
        seed in any::<u64>(),
        faults in prop::collection::vec((0u64..60, 0u32..8, 0u8..3, prop::option::of(20u64..120)), 1..=4),
        failures in 1u32..=5,
        base_ms in 1u64..=30,
        percent in 1u8..=100,
        retries in prop::option::of(1u32..=2),
        health in any::<bool>(),
    ) -> SimConfig {
        let mut config = SimConfig::new(policy, n, exp_1ms());
        config.load = (load * 100.0).round() / 100.0;
        config.requests = 1_000;
        config.seed = seed;
        config.record_trace = true;
        config.check_invariants = true;
        let mut faults: Vec<Fault> = faults
            .into_iter()
            .map(|(at_ms, b, kind, until_ms)| {
                let backend = b % n as u32;
                let until_ns = until_ms.map(|ms| (at_ms + ms) * 1_000_000);
                Fault {
                    at_ns: at_ms * 1_000_000,
                    action: match kind {
                        0 => FaultAction::BlackHole { backend, until_ns },
                        1 => FaultAction::Flaky { backend, error_rate: 0.5, until_ns },
                        _ => FaultAction::Crash { backend, detect_after_ns: None },
                    },
                }
            })
            .collect();
        faults.sort_by_key(|f| f.at_ns);
        config.faults = faults;
        config.core = CoreOptions {
            outlier: Some(OutlierConfig {
                consecutive_failures: failures,
                base_ejection: Duration::from_millis(base_ms),
                max_ejection: Duration::from_millis(base_ms * 4),
                max_ejected_percent: percent,
            }),
            retry: retries.map(|max_retries| RetryConfig {
                max_retries,
                retry_on_status: balancer_core::StatusSet::from_codes(&[503]).unwrap(),
                ..RetryConfig::default()
            }),
            health: health.then_some(HealthProbes { interval_ns: 5_000_000, rise: 2, fall: 2 }),
            ..CoreOptions::default()
        };
        config
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// One black hole, outlier ejection on, no retries: the hole fails at most
    /// `consecutive_failures` requests per time it is in rotation.
    ///
    /// Derivation: only the hole fails (the others never do), so it is the only backend ever
    /// ejected and the pool's cap (at least one) never refuses it. Its failures are instant,
    /// so when the c-th failure in a row ejects it, nothing else is in flight on it; the core
    /// resets the streak on ejection. Each stay in rotation therefore ends after at most c
    /// failures, so failures ≤ c × (ejections + 1) — the "+ 1" is the stay the run ends in —
    /// plus (c − 1) per success the hole still reports (requests queued on it before it
    /// turned, which reset the streak): S ≤ its queue when the hole began.
    /// Each ejection lasts at least `base_ejection` b, so over the T ns the hole exists,
    /// ejections ≤ T ÷ b + 1, and the error rate ≤ (c × (T ÷ b + 2) + (c − 1) S) ÷ requests: with c ≤ 5,
    /// b ≥ 10 ms and these 3 000-request runs (0.3–5 s), at most a few percent, where
    /// without ejection it is the hole's whole share (up to all of it for least-pending).
    #[test]
    fn black_hole_failures_are_bounded_by_ejections(config in black_hole_run()) {
        let stats = run_ok(&config)?;
        let outlier = config.core.outlier.unwrap();
        let c = u64::from(outlier.consecutive_failures);
        let Some(FaultAction::BlackHole { backend: hole, .. }) = config.faults.first().map(|f| f.action) else {
            unreachable!()
        };
        let ejections = stats.ejections.iter().filter(|e| e.backend == hole).count() as u64;
        prop_assert!(
            stats.ejections.iter().all(|e| e.backend == hole),
            "a healthy backend was ejected: {:?}; {}", stats.ejections, replay(&config)
        );
        prop_assert_eq!(stats.failed, stats.backends[hole as usize].failed, "{}", replay(&config));
        // Requests queued on the hole before it turned still complete, and each success
        // resets the streak: each may add up to c − 1 failures to the stay it falls in.
        let start_ns = config.faults[0].at_ns;
        let late_successes = stats
            .trace
            .iter()
            .filter(|e| e.backend == hole && e.kind == EndKind::Completed && e.ended_ns >= start_ns)
            .count() as u64;
        prop_assert!(
            stats.failed <= c * (ejections + 1) + (c - 1) * late_successes,
            "{} failures > {} × ({} ejections + 1) + {} × {} late successes; {}",
            stats.failed, c, ejections, c - 1, late_successes, replay(&config)
        );
        let hole_ns = stats.end_ns.saturating_sub(config.faults[0].at_ns);
        let base_ns = outlier.base_ejection.as_nanos() as u64;
        prop_assert!(ejections <= hole_ns / base_ns + 1, "{ejections} ejections in {hole_ns} ns; {}", replay(&config));
        let bound = (c as f64 * (hole_ns as f64 / base_ns as f64 + 2.0)
            + ((c - 1) * late_successes) as f64)
            / config.requests as f64;
        let rate = stats.failed as f64 / config.requests as f64;
        prop_assert!(rate <= bound, "error rate {rate} > {bound}; {}", replay(&config));
        check_no_dispatch_while_ejected(&config, &stats)?;
    }

    /// Nothing is dispatched to an ejected backend until its ejection ends, by the core's
    /// own snapshots (`Scheduler::backends(now)`: `ejected_until`, `eligible`), whatever
    /// fails, with retries and health checks on or off (no panic threshold: in panic mode
    /// ejected backends may take work by design).
    #[test]
    fn no_dispatch_to_an_ejected_backend(config in ejecting_run()) {
        let stats = run_ok(&config)?;
        check_no_dispatch_while_ejected(&config, &stats)?;
    }
}

/// Retries per second the default budget always allows, times its window: the floor term.
fn floor_retries(retry: &RetryConfig) -> f64 {
    f64::from(retry.budget_min_per_s) * retry.budget_window.as_secs_f64()
}

proptest! {
    #![proptest_config(config(256))]

    /// Total outage (every backend crashed, undetected: every try fails with a retryable
    /// connect error), 2 retries per request: tries ÷ requests ≤ 1 + max(0.2, floor ÷ requests).
    ///
    /// The core allows a retry while retries in the budget window < max(ratio × requests in
    /// it, `budget_min_per_s` × window) (its floor: 10/s × 10 s = 100 retries by default).
    /// These runs (4 000 requests, 5–10 exp:1ms backends, ρ 0.5–0.9: 0.4–1.6 s of virtual
    /// time) fit inside one 10 s window, where 0.2 × 4 000 = 800 > 100, so the bound is the
    /// plain 1.2, floor or not (half the cases set it to 0). At low rates the floor dominates
    /// (10 requests a second over a 10 s window may all be retried: 3 tries per request).
    #[test]
    fn retries_do_not_multiply_a_total_outage(
        policy in policy(),
        n in 5usize..=10,
        load in 0.5f64..0.9,
        seed in any::<u64>(),
        no_floor in any::<bool>(),
    ) {
        let mut config = SimConfig::new(policy, n, exp_1ms());
        config.load = (load * 100.0).round() / 100.0;
        config.requests = 4_000;
        config.seed = seed;
        config.faults = (0..n as u32)
            .map(|backend| Fault {
                at_ns: 0,
                action: FaultAction::Crash { backend, detect_after_ns: None },
            })
            .collect();
        let retry = RetryConfig {
            max_retries: 2,
            budget_min_per_s: if no_floor { 0 } else { 10 },
            ..RetryConfig::default()
        };
        config.core.retry = Some(retry);
        let stats = run_ok(&config)?;
        prop_assert_eq!(stats.completed, 0, "{}", replay(&config));
        prop_assert!(stats.end_ns < 9_000_000_000, "the run must fit in one budget window");
        let amplification = (stats.submitted + stats.retries) as f64 / stats.submitted as f64;
        let bound = 1.0 + retry.budget_ratio.max(floor_retries(&retry) / stats.submitted as f64);
        prop_assert!(
            amplification <= bound + 1e-12,
            "tries ÷ requests = {amplification} > {bound}; {}", replay(&config)
        );
        // And the budget is what stops them: retries were made, close to the bound.
        prop_assert!(amplification > 1.15, "{amplification}; {}", replay(&config));
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// The core's idempotence rule, through the simulator: with every backend refusing
    /// connections, a share of non-idempotent requests are never retried unless the pool says
    /// `retry_non_idempotent`, and the idempotent rest are.
    #[test]
    fn non_idempotent_requests_are_retried_only_when_allowed(
        policy in policy(),
        percent in 10u8..=100,
        allow in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut config = SimConfig::new(policy, 4, exp_1ms());
        config.requests = 500;
        config.seed = seed;
        config.non_idempotent_percent = percent;
        config.faults = (0..4)
            .map(|backend| Fault {
                at_ns: 0,
                action: FaultAction::Crash { backend, detect_after_ns: None },
            })
            .collect();
        // A floor far above 500 requests' retries: only the idempotence rule limits them.
        let retry = RetryConfig {
            max_retries: 1,
            retry_non_idempotent: allow,
            budget_min_per_s: 100_000,
            ..RetryConfig::default()
        };
        config.core.retry = Some(retry);
        let stats = run_ok(&config)?;
        let retried_all = stats.retries == stats.submitted;
        if allow {
            prop_assert!(retried_all, "{} retries of {}; {}", stats.retries, stats.submitted, replay(&config));
        } else {
            prop_assert!(stats.retries < stats.submitted, "{}", replay(&config));
            if percent == 100 {
                prop_assert_eq!(stats.retries, 0, "{}", replay(&config));
            }
        }
    }
}

/// Bins a returning backend's ramp is measured over: 4 per slow-start window.
const RAMP_BINS: u64 = 4;

proptest! {
    #![proptest_config(config(256))]

    /// Slow start ramps monotonically: a backend that returns to a serving pool of 3–8 — added,
    /// or back from a crash through health checks — gets a share of dispatches, per quarter of
    /// the ramp window from the `warming_since` the core's snapshot shows, that does not
    /// decrease beyond sampling noise.
    ///
    /// Tolerance: the share in a bin is a proportion of n dispatches; two neighbours differ by
    /// noise of σ = √(p(1−p)(1/n₁ + 1/n₂)) with p their pooled share. We allow 4σ + 1/n₁ (the
    /// 1/n₁ covers the discreteness of tiny counts); one-sided 4σ is exceeded by chance with
    /// probability 3×10⁻⁵ per comparison, about 2% over the 1 024 comparisons of this test if
    /// dispatches were independent. They are not quite (queues correlate them), so this is a
    /// tolerance against noise, not a proof; the fixed seed makes the verdict stable.
    #[test]
    fn slow_start_ramps_monotonically(
        policy in policy(),
        n in 3usize..=8,
        load in 0.5f64..0.9,
        seed in any::<u64>(),
        window_ms in prop_oneof![Just(200u64), Just(300), Just(400)],
        min_percent in 0u8..=30,
        crash in any::<bool>(),
    ) {
        let mut config = SimConfig::new(policy, n, exp_1ms());
        config.load = (load * 100.0).round() / 100.0;
        config.seed = seed;
        config.record_trace = true;
        let back_ns = 100_000_000;
        let window_ns = window_ms * 1_000_000;
        let returning = if crash {
            // Crashes unnoticed but by the probes (every 5 ms, fall 2), restarts at 100 ms and
            // is brought back by them (rise 2), so its ramp starts at about 110 ms.
            config.core.health = Some(HealthProbes { interval_ns: 5_000_000, rise: 2, fall: 2 });
            config.faults = vec![
                Fault { at_ns: 50_000_000, action: FaultAction::Crash { backend: 0, detect_after_ns: None } },
                Fault { at_ns: back_ns, action: FaultAction::Recover { backend: 0 } },
            ];
            0
        } else {
            config.faults = vec![Fault { at_ns: back_ns, action: FaultAction::Add(exp_1ms()) }];
            n as u32
        };
        // Enough requests to run to the end of the window and one bin beyond.
        let rate_per_ns = config.load * config.capacity_per_ns();
        let end_ns = back_ns + 50_000_000 + window_ns + window_ns / RAMP_BINS;
        config.requests = (rate_per_ns * end_ns as f64 * 1.1).ceil() as u64;
        config.core.slow_start = Some(SlowStartConfig {
            window: Duration::from_nanos(window_ns),
            min_weight_percent: min_percent,
        });
        let stats = run_ok(&config)?;
        let ramps: Vec<u64> = stats.warmups.iter().filter(|w| w.0 == returning).map(|w| w.1).collect();
        prop_assert_eq!(ramps.len(), 1, "one ramp for backend {}: {:?}; {}", returning, stats.warmups, replay(&config));
        let since_ns = ramps[0];
        prop_assert!(since_ns >= back_ns, "ramp at {since_ns} before the return; {}", replay(&config));
        let bin_ns = window_ns / RAMP_BINS;
        let mut shares = Vec::new();
        for bin in 0..=RAMP_BINS {
            let (from, to) = (since_ns + bin * bin_ns, since_ns + (bin + 1) * bin_ns);
            let in_bin: Vec<_> = stats.dispatches.iter().filter(|d| d.time_ns >= from && d.time_ns < to).collect();
            let ours = in_bin.iter().filter(|d| d.backend == returning).count();
            prop_assert!(!in_bin.is_empty(), "no dispatches in bin {bin}; {}", replay(&config));
            shares.push((ours as f64 / in_bin.len() as f64, in_bin.len() as f64));
        }
        for pair in shares.windows(2) {
            let ((p1, n1), (p2, n2)) = (pair[0], pair[1]);
            let p = (p1 * n1 + p2 * n2) / (n1 + n2);
            let sigma = (p * (1.0 - p) * (1.0 / n1 + 1.0 / n2)).sqrt();
            prop_assert!(
                p2 >= p1 - 4.0 * sigma - 1.0 / n1,
                "share fell from {p1:.3} (n {n1}) to {p2:.3} (n {n2}), shares {shares:?}; {}",
                replay(&config)
            );
        }
        prop_assert!(shares[RAMP_BINS as usize].0 > 0.0, "no traffic after the ramp; {}", replay(&config));
    }
}

/// The figures in docs/simulator.md's "Faults" section:
/// `cargo test --release -p balancer-sim --test faults -- --ignored --nocapture`.
#[test]
#[ignore = "prints the fault figures of docs/simulator.md; a few seconds in release"]
fn fault_figures() {
    let n = 10;
    let hole = Fault {
        at_ns: 4_000_000_000,
        action: FaultAction::BlackHole {
            backend: 3,
            until_ns: Some(6_000_000_000),
        },
    };
    let short = OutlierConfig {
        consecutive_failures: 5,
        base_ejection: Duration::from_millis(200),
        max_ejection: Duration::from_secs(2),
        max_ejected_percent: 50,
    };
    println!("black hole (backend 3 of 10, 4 s to 6 s, 100 000 requests, rho 0.9, seed 1)");
    println!(
        "| policy | failed, no ejection | error rate | failed, ejection (defaults) | ejections | failed, ejection (5, 200 ms) | ejections | error rate |"
    );
    for policy in PolicyKind::ALL {
        let mut config = SimConfig::new(policy, n, exp_1ms());
        config.faults = vec![hole];
        config.record_trace = true;
        let none = run(&config).unwrap();
        config.core.outlier = Some(OutlierConfig::default());
        let defaults = run(&config).unwrap();
        config.core.outlier = Some(short);
        let fast = run(&config).unwrap();
        let rate = |s: &RunStats| 100.0 * s.failed as f64 / s.submitted as f64;
        println!(
            "| {policy} | {} | {:.2}% | {} | {} | {} | {} | {:.3}% |",
            none.failed,
            rate(&none),
            defaults.failed,
            defaults.ejections.len(),
            fast.failed,
            fast.ejections.len(),
            rate(&fast)
        );
    }

    println!("\ntotal outage: all backends crashed, undetected, 2 retries, default budget");
    println!("| backends | rho | requests | virtual s | floor | tries / request | bound |");
    for (requests, floor) in [
        (4_000u64, 10u32),
        (20_000, 10),
        (80_000, 10),
        (20_000, 0),
        (200_000, 10),
    ] {
        let mut config = SimConfig::new(PolicyKind::LeastPending, n, exp_1ms());
        config.requests = requests;
        config.faults = (0..n as u32)
            .map(|backend| Fault {
                at_ns: 0,
                action: FaultAction::Crash {
                    backend,
                    detect_after_ns: None,
                },
            })
            .collect();
        let retry = RetryConfig {
            max_retries: 2,
            budget_min_per_s: floor,
            ..RetryConfig::default()
        };
        config.core.retry = Some(retry);
        let s = run(&config).unwrap();
        println!(
            "| {n} | 0.9 | {requests} | {:.2} | {floor}/s | {:.4} | {:.4} |",
            s.end_ns as f64 / 1e9,
            (s.submitted + s.retries) as f64 / s.submitted as f64,
            1.0 + retry
                .budget_ratio
                .max(floor_retries(&retry) / s.submitted as f64)
        );
    }

    println!("\nslow start: backend 10 added at 1 s to 10 busy ones, 1 s ramp from 10%, rho 0.9");
    println!("| policy | 0-250 ms | 250-500 | 500-750 | 750-1000 | 1000-1250 | fair share |");
    for policy in PolicyKind::ALL {
        let mut config = SimConfig::new(policy, n, exp_1ms());
        config.requests = 30_000;
        config.record_trace = true;
        config.faults = vec![Fault {
            at_ns: 1_000_000_000,
            action: FaultAction::Add(exp_1ms()),
        }];
        config.core.slow_start = Some(SlowStartConfig {
            window: Duration::from_secs(1),
            min_weight_percent: 10,
        });
        let s = run(&config).unwrap();
        let mut row = format!("| {policy} |");
        for bin in 0..5u64 {
            let from = 1_000_000_000 + bin * 250_000_000;
            let to = from + 250_000_000;
            let in_bin: Vec<_> = s
                .dispatches
                .iter()
                .filter(|d| d.time_ns >= from && d.time_ns < to)
                .collect();
            let ours = in_bin.iter().filter(|d| d.backend == n as u32).count();
            row.push_str(&format!(
                " {:.1}% |",
                100.0 * ours as f64 / in_bin.len() as f64
            ));
        }
        println!("{row} 9.1% |");
    }
}
