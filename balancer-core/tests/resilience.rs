//! Outlier ejection, active health checks, retries with a budget and per-backend caps.

use std::time::Duration;

use balancer_core::{
    AfterTry, BackendId, Completion, Decision, FailureKind, HealthCheckConfig, HealthTransition,
    MethodClass, NoRetryReason, Outcome, OutlierConfig, PolicyKind, RejectReason, RequestId,
    RequestInfo, RetryConfig, Scheduler, SchedulerConfig, SlowStartConfig, StatusSet, Timestamp,
    TryReport,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(3)
}

fn pool(config: SchedulerConfig, backends: usize) -> (Scheduler, Vec<BackendId>) {
    let mut s = Scheduler::new(config);
    let ids = (0..backends)
        .map(|_| s.add_backend(Timestamp::ZERO, 1).unwrap())
        .collect();
    (s, ids)
}

fn dispatch(s: &mut Scheduler, now: Timestamp, rng: &mut ChaCha8Rng) -> (RequestId, BackendId) {
    match s.handle_work(now, rng, RequestInfo::default(), None) {
        Decision::Dispatch { request, backend } => (request, backend),
        Decision::Reject { reason } => panic!("rejected: {reason}"),
    }
}

fn at_ms(ms: u64) -> Timestamp {
    Timestamp::from_nanos(ms * 1_000_000)
}

fn outlier_config() -> SchedulerConfig {
    let mut config = SchedulerConfig::new(PolicyKind::LeastPending);
    config.outlier = Some(OutlierConfig {
        consecutive_failures: 3,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(25),
        max_ejected_percent: 50,
    });
    config
}

/// Sends requests until `target` has failed `n` times in a row (others succeed).
fn fail_on(
    s: &mut Scheduler,
    target: BackendId,
    n: u32,
    now: Timestamp,
    rng: &mut ChaCha8Rng,
) -> Option<Timestamp> {
    let mut failures = 0;
    let mut ejected = None;
    while failures < n {
        let (r, b) = dispatch(s, now, rng);
        let outcome = if b == target {
            failures += 1;
            Outcome::Failure(FailureKind::ServerError)
        } else {
            Outcome::Success
        };
        let done = s.handle_done(now, r, outcome, rng).unwrap();
        if done.ejected_until.is_some() {
            ejected = done.ejected_until;
        }
    }
    ejected
}

#[test]
fn a_black_hole_is_ejected_after_consecutive_failures_and_returns_later() {
    let (mut s, ids) = pool(outlier_config(), 4);
    let mut rng = rng();
    let until =
        fail_on(&mut s, ids[0], 3, at_ms(0), &mut rng).expect("ejected at the third failure");
    assert_eq!(until, at_ms(10_000));
    let snapshot = s.backend(ids[0], at_ms(1)).unwrap();
    assert_eq!(
        (snapshot.eligible, snapshot.ejected_until),
        (false, Some(until))
    );
    // While ejected, it gets nothing.
    for _ in 0..50 {
        let (r, b) = dispatch(&mut s, at_ms(5_000), &mut rng);
        assert_ne!(b, ids[0]);
        s.handle_done(at_ms(5_000), r, Outcome::Success, &mut rng)
            .unwrap();
    }
    // The ejection ends by itself when time passes it.
    assert_eq!(s.next_timeout(), Some(until));
    s.handle_timeout(at_ms(10_000));
    assert!(s.backend(ids[0], at_ms(10_000)).unwrap().eligible);
    s.check_invariants().unwrap();
}

#[test]
fn repeated_ejections_last_longer_up_to_the_cap_and_are_forgiven_with_time() {
    let (mut s, ids) = pool(outlier_config(), 4);
    let mut rng = rng();
    let first = fail_on(&mut s, ids[0], 3, at_ms(0), &mut rng).unwrap();
    assert_eq!(first, at_ms(10_000));
    let second = fail_on(&mut s, ids[0], 3, at_ms(10_000), &mut rng).unwrap();
    assert_eq!(second, at_ms(30_000), "second ejection lasts 2 x 10 s");
    let third = fail_on(&mut s, ids[0], 3, at_ms(30_000), &mut rng).unwrap();
    assert_eq!(third, at_ms(55_000), "third capped at 25 s");
    // A long healthy spell (100 s back in rotation) forgives all of them.
    let fourth = fail_on(&mut s, ids[0], 3, at_ms(155_000), &mut rng).unwrap();
    assert_eq!(fourth, at_ms(165_000));
    s.check_invariants().unwrap();
}

#[test]
fn ejection_respects_the_max_ejected_fraction() {
    let (mut s, ids) = pool(outlier_config(), 4);
    let mut rng = rng();
    // 50% of 4: two may be ejected, the third failing backend stays in.
    assert!(fail_on(&mut s, ids[0], 3, at_ms(0), &mut rng).is_some());
    assert!(fail_on(&mut s, ids[1], 3, at_ms(0), &mut rng).is_some());
    assert!(fail_on(&mut s, ids[2], 3, at_ms(0), &mut rng).is_none());
    assert!(s.backend(ids[2], at_ms(0)).unwrap().eligible);
    s.check_invariants().unwrap();
}

#[test]
fn success_resets_the_failure_streak_and_cancel_is_neutral() {
    let (mut s, _) = pool(outlier_config(), 1);
    let mut rng = rng();
    let mut report = |outcome| {
        let (r, _) = dispatch(&mut s, at_ms(0), &mut rng);
        s.handle_done(at_ms(0), r, outcome, &mut rng)
            .unwrap()
            .ejected_until
    };
    let fail = Outcome::Failure(FailureKind::Connect);
    for outcome in [fail, fail, Outcome::Success, fail, fail, Outcome::Cancelled] {
        assert_eq!(report(outcome), None);
    }
    assert!(
        report(fail).is_some(),
        "third failure in a row (the cancel does not break it)"
    );
}

#[test]
fn active_health_checks_use_rise_and_fall() {
    let mut config = SchedulerConfig::new(PolicyKind::RoundRobin);
    config.health_check = HealthCheckConfig { rise: 2, fall: 3 };
    let (mut s, ids) = pool(config, 2);
    let b = ids[0];
    assert_eq!(s.handle_health_check(at_ms(0), b, false), Ok(None));
    assert_eq!(s.handle_health_check(at_ms(0), b, false), Ok(None));
    assert_eq!(
        s.handle_health_check(at_ms(0), b, true),
        Ok(None),
        "a pass breaks the streak"
    );
    assert_eq!(s.handle_health_check(at_ms(0), b, false), Ok(None));
    assert_eq!(s.handle_health_check(at_ms(0), b, false), Ok(None));
    assert_eq!(
        s.handle_health_check(at_ms(0), b, false),
        Ok(Some(HealthTransition::WentDown))
    );
    assert!(!s.backend(b, at_ms(0)).unwrap().eligible);
    let mut rng = rng();
    for _ in 0..10 {
        let (r, chosen) = dispatch(&mut s, at_ms(0), &mut rng);
        assert_eq!(chosen, ids[1]);
        s.handle_done(at_ms(0), r, Outcome::Success, &mut rng)
            .unwrap();
    }
    assert_eq!(s.handle_health_check(at_ms(0), b, true), Ok(None));
    assert_eq!(
        s.handle_health_check(at_ms(0), b, true),
        Ok(Some(HealthTransition::WentUp))
    );
    assert!(s.backend(b, at_ms(0)).unwrap().eligible);
    s.check_invariants().unwrap();
}

#[test]
fn per_backend_cap_rejects_as_overloaded_and_reopens_on_done() {
    let mut config = SchedulerConfig::new(PolicyKind::LeastPending);
    config.max_pending_per_backend = Some(2);
    let (mut s, _) = pool(config, 2);
    let mut rng = rng();
    let requests: Vec<_> = (0..4)
        .map(|_| dispatch(&mut s, at_ms(0), &mut rng).0)
        .collect();
    assert_eq!(
        s.handle_work(at_ms(0), &mut rng, RequestInfo::default(), None),
        Decision::Reject {
            reason: RejectReason::Overloaded
        }
    );
    s.check_invariants().unwrap();
    s.handle_done(at_ms(1), requests[0], Outcome::Success, &mut rng)
        .unwrap();
    let _ = dispatch(&mut s, at_ms(1), &mut rng);
    s.check_invariants().unwrap();
}

fn retry_config() -> SchedulerConfig {
    let mut config = SchedulerConfig::new(PolicyKind::P2c);
    config.retry = Some(RetryConfig::default());
    config
}

fn get() -> RequestInfo {
    RequestInfo::default()
}

/// A new request's first try, ended at once as `report` says.
fn first_try(
    s: &mut Scheduler,
    now: Timestamp,
    info: RequestInfo,
    report: TryReport,
    rng: &mut ChaCha8Rng,
) -> Completion {
    let Decision::Dispatch { request, .. } = s.handle_work(now, rng, info, None) else {
        panic!("the pool has eligible backends");
    };
    s.handle_done(now, request, report, rng).unwrap()
}

/// Retries `after` (done at `done_at`) once its backoff is over and ends that try at once as
/// `report` says; `None` if the retry was rejected.
fn retry_at(
    s: &mut Scheduler,
    after: &Completion,
    done_at: Timestamp,
    report: TryReport,
    rng: &mut ChaCha8Rng,
) -> Option<(Completion, Timestamp)> {
    let AfterTry::Retry { backoff } = after.next else {
        panic!("not told to retry: {after:?}");
    };
    let at = done_at + backoff;
    match s.handle_retry_work(at, rng, after.request, None).unwrap() {
        Decision::Dispatch { request, backend } => {
            assert_ne!(
                backend, after.backend,
                "a retry went back to where it failed"
            );
            Some((s.handle_done(at, request, report, rng).unwrap(), at))
        }
        Decision::Reject { .. } => None,
    }
}

/// A chain of tries of one request, each ended at once as `report` says: the first, then
/// retries while the core says so and the `limit` allows. Returns every completion.
fn tries(
    s: &mut Scheduler,
    now: Timestamp,
    report: TryReport,
    limit: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Completion> {
    let mut done = vec![first_try(s, now, get(), report, rng)];
    let mut at = now;
    while done.len() < limit && matches!(done.last().unwrap().next, AfterTry::Retry { .. }) {
        match retry_at(s, done.last().unwrap(), at, report, rng) {
            Some((next, next_at)) => {
                done.push(next);
                at = next_at;
            }
            None => break,
        }
    }
    done
}

fn finished(reason: NoRetryReason) -> AfterTry {
    AfterTry::Finished {
        no_retry: Some(reason),
    }
}

#[test]
fn retries_only_what_is_safe() {
    let (mut s, _) = pool(retry_config(), 3);
    let mut rng = rng();
    let now = at_ms(0);
    let connect = TryReport::failed(FailureKind::Connect);
    let done = first_try(&mut s, now, get(), connect, &mut rng);
    assert!(matches!(done.next, AfterTry::Retry { .. }), "{done:?}");
    s.handle_abandon(done.request).unwrap();
    let post = RequestInfo {
        method: MethodClass::of("POST"),
        ..get()
    };
    let done = first_try(&mut s, now, post, connect, &mut rng);
    assert_eq!(done.next, finished(NoRetryReason::NotIdempotent));
    // A 500 is a failure, but no status is retried unless `retry_on_status` lists it.
    let done = first_try(&mut s, now, get(), TryReport::response(500), &mut rng);
    assert_eq!(done.outcome, Outcome::Failure(FailureKind::ServerError));
    assert_eq!(done.next, finished(NoRetryReason::NotRetryable));
    let started = TryReport::failed(FailureKind::Reset).with_response_started(true);
    let done = first_try(&mut s, now, get(), started, &mut rng);
    assert_eq!(done.next, finished(NoRetryReason::NotRetryable));
    let streamed = connect.with_body_replayable(false);
    let done = first_try(&mut s, now, get(), streamed, &mut rng);
    assert_eq!(done.next, finished(NoRetryReason::NotRetryable));
    let ok = first_try(&mut s, now, get(), TryReport::response(200), &mut rng);
    assert_eq!(ok.next, AfterTry::Finished { no_retry: None });
    // Three tries in all (max_retries = 2), each on a backend of its own.
    let chain = tries(&mut s, now, connect, 10, &mut rng);
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[2].next, finished(NoRetryReason::AttemptsExhausted));
    let backends = [chain[0].backend, chain[1].backend, chain[2].backend];
    assert!(backends[0] != backends[1] && backends[1] != backends[2] && backends[0] != backends[2]);
    s.check_invariants().unwrap();
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn retry_on_status_and_the_deadline_are_the_cores_rules() {
    let mut config = retry_config();
    config.retry.as_mut().unwrap().retry_on_status = StatusSet::from_codes(&[503]).unwrap();
    let (mut s, _) = pool(config, 3);
    let mut rng = rng();
    let now = at_ms(0);
    assert!(s.retries_status(503) && !s.retries_status(500));
    assert!(s.may_retry(MethodClass::Idempotent) && !s.may_retry(MethodClass::NonIdempotent));
    let unavailable = first_try(&mut s, now, get(), TryReport::response(503), &mut rng);
    assert!(matches!(unavailable.next, AfterTry::Retry { .. }));
    assert_eq!(
        unavailable.outcome,
        Outcome::Failure(FailureKind::ServerError)
    );
    let (ok, _) = retry_at(
        &mut s,
        &unavailable,
        now,
        TryReport::response(200),
        &mut rng,
    )
    .unwrap();
    assert_eq!(ok.next, AfterTry::Finished { no_retry: None });
    let done = first_try(&mut s, now, get(), TryReport::response(500), &mut rng);
    assert_eq!(done.next, finished(NoRetryReason::NotRetryable));
    let late = RequestInfo {
        deadline: Some(now),
        ..get()
    };
    let done = first_try(
        &mut s,
        now,
        late,
        TryReport::failed(FailureKind::Timeout),
        &mut rng,
    );
    assert_eq!(done.next, finished(NoRetryReason::DeadlineExceeded));
    // A retry asked for before its backoff is over is refused and changes nothing.
    let mut config = retry_config();
    config.retry.as_mut().unwrap().backoff_base = Duration::from_millis(50);
    let (mut s, _) = pool(config, 3);
    let failed = loop {
        let done = first_try(
            &mut s,
            now,
            get(),
            TryReport::failed(FailureKind::Reset),
            &mut rng,
        );
        match done.next {
            AfterTry::Retry { backoff } if backoff > Duration::ZERO => break done,
            AfterTry::Retry { .. } => s.handle_abandon(done.request).unwrap(),
            AfterTry::Finished { .. } => panic!("a reset GET is retried: {done:?}"),
        }
    };
    assert!(matches!(
        s.handle_retry_work(now, &mut rng, failed.request, None),
        Err(balancer_core::CoreError::RetryTooEarly { .. })
    ));
    s.check_invariants().unwrap();
    s.handle_abandon(failed.request).unwrap();
    assert!(s.handle_abandon(failed.request).is_err());
    s.check_invariants().unwrap();
}

#[test]
fn retry_backoff_is_jittered_within_the_exponential_ceiling() {
    let (mut s, _) = pool(retry_config(), 3);
    let mut rng = rng();
    let timeout = TryReport::failed(FailureKind::Timeout);
    for _ in 0..20 {
        let chain = tries(&mut s, at_ms(0), timeout, 2, &mut rng);
        let (first, second) = (chain[0], chain[1]);
        for (done, ceiling) in [(first, 2), (second, 4)] {
            let AfterTry::Retry { backoff } = done.next else {
                panic!("a timeout on an idempotent request is retried");
            };
            let ceiling = Duration::from_millis(ceiling);
            assert!(backoff <= ceiling, "{backoff:?} > {ceiling:?}");
        }
        if let AfterTry::Retry { .. } = second.next {
            s.handle_abandon(second.request).unwrap();
        }
    }
    s.check_invariants().unwrap();
}

#[test]
fn the_retry_budget_bounds_amplification_under_total_outage() {
    // Every request fails. Each gets up to 2 retries if the budget allows. Over 60 s at
    // 1,000 requests per second, 20% of the window's requests (2,000) is far above the floor
    // (10/s × 10 s = 100), so the budget is the ratio alone: tries / requests ≤ 1.2.
    let (mut s, _) = pool(retry_config(), 4);
    let mut rng = rng();
    let (mut requests, mut attempts) = (0u64, 0u64);
    let connect = TryReport::failed(FailureKind::Connect);
    for i in 0..60_000u64 {
        let now = at_ms(i);
        requests += 1;
        let chain = tries(&mut s, now, connect, usize::MAX, &mut rng);
        attempts += chain.len() as u64;
    }
    let amplification = attempts as f64 / requests as f64;
    eprintln!(
        "total outage: {requests} requests, {attempts} tries, amplification {amplification:.4}"
    );
    assert!(amplification <= 1.22, "amplification {amplification:.3}");
    assert!(
        amplification >= 1.15,
        "the budget should be used, got {amplification:.3}"
    );
    s.check_invariants().unwrap();
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn retry_work_never_returns_to_excluded_backends() {
    for policy in PolicyKind::ALL {
        let mut config = SchedulerConfig::new(policy);
        config.retry = Some(RetryConfig {
            max_retries: 3,
            budget_min_per_s: 1_000,
            ..RetryConfig::default()
        });
        let (mut s, ids) = pool(config, 3);
        let mut rng = rng();
        let reset = TryReport::failed(FailureKind::Reset);
        for i in 0..50 {
            let now = at_ms(i);
            let chain = tries(&mut s, now, reset, 3, &mut rng);
            let mut seen: Vec<_> = chain.iter().map(|c| c.backend).collect();
            seen.sort();
            assert_eq!(
                seen, ids,
                "{policy}: three tries on three different backends"
            );
            // Every backend failed this request: the fourth try has nowhere to go.
            let AfterTry::Retry { backoff } = chain[2].next else {
                panic!("{policy}: max_retries = 3 allows a fourth try");
            };
            assert_eq!(
                s.handle_retry_work(
                    now + Duration::from_secs(1) + backoff,
                    &mut rng,
                    chain[2].request,
                    None
                ),
                Ok(Decision::Reject {
                    reason: RejectReason::NoBackend
                }),
                "{policy}"
            );
            // Let the failures not eject anything: outlier detection is off.
            s.check_invariants().unwrap();
        }
        assert_eq!(s.in_flight(), 0);
    }
}

#[test]
fn slow_start_ramps_a_returning_backend_up() {
    let mut config = SchedulerConfig::new(PolicyKind::RoundRobin);
    config.health_check = HealthCheckConfig { rise: 1, fall: 1 };
    config.slow_start = Some(SlowStartConfig {
        window: Duration::from_secs(10),
        min_weight_percent: 10,
    });
    let (mut s, ids) = pool(config, 4);
    let mut rng = rng();
    // It has served traffic; b0 fails a check and comes back at t = 0.
    let (r, _) = dispatch(&mut s, at_ms(0), &mut rng);
    s.handle_done(at_ms(0), r, Outcome::Success, &mut rng)
        .unwrap();
    assert_eq!(
        s.handle_health_check(at_ms(0), ids[0], false),
        Ok(Some(HealthTransition::WentDown))
    );
    assert_eq!(
        s.handle_health_check(at_ms(0), ids[0], true),
        Ok(Some(HealthTransition::WentUp))
    );
    let shares: Vec<f64> = (0..12u64)
        .map(|second| {
            let mut to_b0 = 0;
            for i in 0..4_000u64 {
                let now = at_ms(second * 1_000 + i / 4);
                let (r, b) = dispatch(&mut s, now, &mut rng);
                to_b0 += usize::from(b == ids[0]);
                s.handle_done(now, r, Outcome::Success, &mut rng).unwrap();
            }
            to_b0 as f64 / 4_000.0
        })
        .collect();
    eprintln!("share of the returning backend per second: {shares:.3?}");
    // Full share is 25%. The first second sits near the 10% floor; the ramp then rises
    // (allowing 2 points of sampling noise per step) until full share after 10 s.
    assert!(shares[0] < 0.06, "{shares:?}");
    for pair in shares.windows(2) {
        assert!(pair[1] + 0.02 >= pair[0], "not monotone: {shares:?}");
    }
    assert!((shares[11] - 0.25).abs() < 0.01, "{shares:?}");
    assert!(
        s.backend(ids[0], at_ms(12_000))
            .unwrap()
            .warming_since
            .is_none()
    );
    s.check_invariants().unwrap();
}

#[test]
fn a_pool_set_up_from_scratch_does_not_warm() {
    let mut config = SchedulerConfig::new(PolicyKind::RoundRobin);
    config.slow_start = Some(SlowStartConfig::default());
    let (s, _) = pool(config, 3);
    assert!(s.backends(at_ms(0)).all(|b| b.warming_since.is_none()));
}

#[test]
fn panic_mode_spreads_over_all_backends_when_too_few_are_healthy() {
    let mut config = SchedulerConfig::new(PolicyKind::LeastPending);
    config.panic_threshold_percent = Some(50);
    let (mut s, ids) = pool(config, 4);
    let mut rng = rng();
    s.set_up(ids[1], false).unwrap();
    s.set_up(ids[2], false).unwrap();
    // 2 of 4 healthy: 50% is not below the threshold, only the healthy two serve.
    let mut served = [0usize; 4];
    for _ in 0..400 {
        let (r, b) = dispatch(&mut s, at_ms(0), &mut rng);
        served[b.index()] += 1;
        s.handle_done(at_ms(0), r, Outcome::Success, &mut rng)
            .unwrap();
    }
    assert_eq!((served[1], served[2]), (0, 0), "{served:?}");
    // 1 of 4 healthy: panic, every backend gets a share.
    s.set_up(ids[3], false).unwrap();
    let mut served = [0usize; 4];
    for _ in 0..400 {
        let mut record = balancer_core::DecisionRecord::empty(at_ms(0), s.policy());
        let decision = s.handle_work(
            at_ms(0),
            &mut rng,
            RequestInfo::default(),
            Some(&mut record),
        );
        let Decision::Dispatch { request, backend } = decision else {
            panic!("panic mode dispatches");
        };
        assert!(record.panic);
        assert!(
            record
                .to_string()
                .starts_with("panic mode (1 of 4 backends healthy)"),
            "{record}"
        );
        served[backend.index()] += 1;
        s.handle_done(at_ms(0), request, Outcome::Success, &mut rng)
            .unwrap();
    }
    assert!(served.iter().all(|&n| n > 50), "{served:?}");
    s.check_invariants().unwrap();
}

#[test]
fn reconfigure_keeps_backends_load_and_in_flight_requests() {
    let (mut s, ids) = pool(outlier_config(), 3);
    let mut rng = rng();
    let (r0, _) = dispatch(&mut s, at_ms(0), &mut rng);
    let _ = dispatch(&mut s, at_ms(0), &mut rng);
    assert!(fail_on(&mut s, ids[2], 3, at_ms(0), &mut rng).is_some());
    let before: Vec<_> = s
        .backends(at_ms(1))
        .map(|b| (b.id, b.pending, b.dispatched))
        .collect();
    // A reload: another policy, a cap, no outlier detection.
    let mut config = SchedulerConfig::new(PolicyKind::P2c);
    config.max_pending_per_backend = Some(1);
    s.reconfigure(at_ms(1), config);
    let after: Vec<_> = s
        .backends(at_ms(1))
        .map(|b| (b.id, b.pending, b.dispatched))
        .collect();
    assert_eq!(before, after);
    assert_eq!(s.policy(), PolicyKind::P2c);
    // Outlier detection off: the ejection ended at once. The two busy backends are full.
    let b2 = s.backend(ids[2], at_ms(1)).unwrap();
    assert_eq!((b2.ejected_until, b2.eligible), (None, true));
    let (_, chosen) = dispatch(&mut s, at_ms(1), &mut rng);
    assert_eq!(chosen, ids[2]);
    // Requests dispatched before the reload finish normally.
    assert_eq!(
        s.handle_done(at_ms(2), r0, Outcome::Success, &mut rng)
            .unwrap()
            .backend,
        ids[0]
    );
    s.check_invariants().unwrap();
}

#[test]
fn a_quiet_pool_may_still_retry_under_the_floor() {
    // One request a second: 20% of the window's requests is 2, but the floor of 10 retries a
    // second (100 per 10 s window) lets every failed request use both of its retries.
    let (mut s, _) = pool(retry_config(), 3);
    let mut rng = rng();
    let connect = TryReport::failed(FailureKind::Connect);
    for second in 0..30 {
        let now = at_ms(second * 1_000);
        let chain = tries(&mut s, now, connect, usize::MAX, &mut rng);
        assert_eq!(chain.len(), 3, "both retries are allowed: {chain:?}");
        assert_eq!(chain[2].next, finished(NoRetryReason::AttemptsExhausted));
    }
}
