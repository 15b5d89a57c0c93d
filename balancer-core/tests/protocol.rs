//! The work/done protocol and each policy, seen from a driver's side.

use std::collections::HashMap;

use balancer_core::{
    BackendId, BackendState, CoreError, Decision, FailureKind, Outcome, PolicyKind, RejectReason,
    RequestId, RequestInfo, Scheduler, SchedulerConfig, Timestamp,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(42)
}

fn scheduler_with(policy: PolicyKind, weights: &[u32]) -> (Scheduler, Vec<BackendId>) {
    let mut scheduler = Scheduler::new(SchedulerConfig::new(policy));
    let ids = weights
        .iter()
        .map(|&w| scheduler.add_backend(Timestamp::ZERO, w).unwrap())
        .collect();
    (scheduler, ids)
}

fn dispatch(
    scheduler: &mut Scheduler,
    now: Timestamp,
    rng: &mut ChaCha8Rng,
) -> (RequestId, BackendId) {
    match scheduler.handle_work(now, rng, RequestInfo::default(), None) {
        Decision::Dispatch { request, backend } => (request, backend),
        Decision::Reject { reason } => panic!("expected a dispatch, got a reject: {reason}"),
    }
}

#[test]
fn least_pending_picks_the_least_busy_and_breaks_ties_fifo() {
    let (mut s, ids) = scheduler_with(PolicyKind::LeastPending, &[1, 1, 1]);
    let mut rng = rng();
    let now = Timestamp::ZERO;
    // All idle: taken in turn, in the order they became idle.
    let (r0, b0) = dispatch(&mut s, now, &mut rng);
    let (_r1, b1) = dispatch(&mut s, now, &mut rng);
    let (_r2, b2) = dispatch(&mut s, now, &mut rng);
    assert_eq!([b0, b1, b2], [ids[0], ids[1], ids[2]]);
    // b0 finishes: it alone has 0 pending, so it is next.
    s.handle_done(now, r0, Outcome::Success, &mut rng).unwrap();
    assert_eq!(dispatch(&mut s, now, &mut rng).1, ids[0]);
    // Now all have 1: the one that has had 1 the longest (b1) wins.
    assert_eq!(dispatch(&mut s, now, &mut rng).1, ids[1]);
    s.check_invariants().unwrap();
}

#[test]
fn least_pending_avoids_a_backend_with_a_long_request() {
    let (mut s, ids) = scheduler_with(PolicyKind::LeastPending, &[1, 1]);
    let mut rng = rng();
    let now = Timestamp::ZERO;
    let (_long, on) = dispatch(&mut s, now, &mut rng);
    assert_eq!(on, ids[0]);
    // Short requests on b1 come and go; b0 stays busy with its long one.
    for _ in 0..10 {
        let (r, b) = dispatch(&mut s, now, &mut rng);
        assert_eq!(b, ids[1]);
        s.handle_done(now, r, Outcome::Success, &mut rng).unwrap();
    }
}

#[test]
fn no_backend_means_reject_never_panic() {
    for policy in PolicyKind::ALL {
        let (mut s, ids) = scheduler_with(policy, &[]);
        assert!(ids.is_empty());
        assert_eq!(
            s.handle_work(Timestamp::ZERO, &mut rng(), RequestInfo::default(), None),
            Decision::Reject {
                reason: RejectReason::NoBackend
            },
            "{policy}"
        );
    }
}

#[test]
fn drained_down_and_removed_backends_get_no_new_work() {
    for policy in PolicyKind::ALL {
        let (mut s, ids) = scheduler_with(policy, &[1, 3, 1, 2]);
        s.drain(ids[0]).unwrap();
        s.set_up(ids[1], false).unwrap();
        let _ = s.remove_backend(ids[2]).unwrap();
        let mut rng = rng();
        for _ in 0..100 {
            let (_, b) = dispatch(&mut s, Timestamp::ZERO, &mut rng);
            assert_eq!(b, ids[3], "{policy}");
        }
        s.drain(ids[3]).unwrap();
        assert_eq!(
            s.handle_work(Timestamp::ZERO, &mut rng, RequestInfo::default(), None),
            Decision::Reject {
                reason: RejectReason::NoBackend
            },
            "{policy}"
        );
        s.undrain(ids[0]).unwrap();
        assert_eq!(
            dispatch(&mut s, Timestamp::ZERO, &mut rng).1,
            ids[0],
            "{policy}"
        );
        s.check_invariants().unwrap();
    }
}

#[test]
fn draining_backend_finishes_in_flight_work() {
    let (mut s, ids) = scheduler_with(PolicyKind::LeastPending, &[1, 1]);
    let mut rng = rng();
    let (r, b) = dispatch(&mut s, Timestamp::ZERO, &mut rng);
    s.drain(b).unwrap();
    let snapshot = s.backend(b, Timestamp::ZERO).unwrap();
    assert_eq!(
        (snapshot.state, snapshot.pending),
        (BackendState::Draining, 1)
    );
    let done = s
        .handle_done(Timestamp::from_nanos(5), r, Outcome::Success, &mut rng)
        .unwrap();
    assert_eq!(done.backend, ids[0]);
    assert_eq!(s.backend(b, Timestamp::ZERO).unwrap().pending, 0);
    s.check_invariants().unwrap();
}

#[test]
fn misuse_is_an_error_value_and_changes_nothing() {
    let (mut s, ids) = scheduler_with(PolicyKind::LeastPending, &[1]);
    let mut rng = rng();
    let (r, _) = dispatch(&mut s, Timestamp::ZERO, &mut rng);
    s.handle_done(Timestamp::ZERO, r, Outcome::Success, &mut rng)
        .unwrap();
    // The same done twice.
    assert_eq!(
        s.handle_done(Timestamp::ZERO, r, Outcome::Success, &mut rng),
        Err(CoreError::UnknownRequest(r))
    );
    // A done for a request of another scheduler (e.g. reported to the wrong pool).
    let (mut other, _) = scheduler_with(PolicyKind::LeastPending, &[1, 1]);
    let _ = dispatch(&mut other, Timestamp::ZERO, &mut rng);
    let (bogus, _) = dispatch(&mut other, Timestamp::ZERO, &mut rng);
    assert_eq!(
        s.handle_done(Timestamp::ZERO, bogus, Outcome::Success, &mut rng),
        Err(CoreError::UnknownRequest(bogus))
    );
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.backend(ids[0], Timestamp::ZERO).unwrap().pending, 0);
    // Bad weights and unknown backends.
    assert_eq!(
        s.add_backend(Timestamp::ZERO, 0),
        Err(CoreError::InvalidWeight(0))
    );
    assert_eq!(
        s.set_weight(ids[0], 1 << 20),
        Err(CoreError::InvalidWeight(1 << 20))
    );
    let _ = s.remove_backend(ids[0]).unwrap();
    assert_eq!(s.drain(ids[0]), Err(CoreError::UnknownBackend(ids[0])));
    assert_eq!(
        s.remove_backend(ids[0]),
        Err(CoreError::UnknownBackend(ids[0]))
    );
    s.check_invariants().unwrap();
}

#[test]
fn removing_a_backend_orphans_its_requests_and_never_reuses_its_id() {
    let (mut s, ids) = scheduler_with(PolicyKind::LeastPending, &[1]);
    let mut rng = rng();
    let (r, b) = dispatch(&mut s, Timestamp::ZERO, &mut rng);
    assert_eq!(s.remove_backend(b).unwrap().orphaned, 1);
    s.check_invariants().unwrap();
    // The slot is reused by the next backend, under a new id.
    let reborn = s.add_backend(Timestamp::ZERO, 1).unwrap();
    assert_eq!(reborn.index(), ids[0].index());
    assert_ne!(reborn, ids[0]);
    // The orphan's done is an error that names the removed backend, and finishes it.
    assert_eq!(
        s.handle_done(Timestamp::ZERO, r, Outcome::Success, &mut rng),
        Err(CoreError::BackendRemoved {
            request: r,
            backend: b
        })
    );
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.backend(reborn, Timestamp::ZERO).unwrap().pending, 0);
    s.check_invariants().unwrap();
}

#[test]
fn max_in_flight_rejects_as_overloaded() {
    let mut config = SchedulerConfig::new(PolicyKind::P2c);
    config.max_in_flight = 3;
    let mut s = Scheduler::new(config);
    s.add_backend(Timestamp::ZERO, 1).unwrap();
    let mut rng = rng();
    let mut requests: Vec<_> = (0..3)
        .map(|_| dispatch(&mut s, Timestamp::ZERO, &mut rng).0)
        .collect();
    assert_eq!(
        s.handle_work(Timestamp::ZERO, &mut rng, RequestInfo::default(), None),
        Decision::Reject {
            reason: RejectReason::Overloaded
        }
    );
    s.handle_done(
        Timestamp::ZERO,
        requests.pop().unwrap(),
        Outcome::Success,
        &mut rng,
    )
    .unwrap();
    let _ = dispatch(&mut s, Timestamp::ZERO, &mut rng);
}

#[test]
fn completion_reports_latency_and_outcome() {
    let (mut s, _) = scheduler_with(PolicyKind::PeakEwma, &[1]);
    let mut rng = rng();
    let (r, b) = dispatch(&mut s, Timestamp::from_nanos(1_000), &mut rng);
    let done = s
        .handle_done(
            Timestamp::from_nanos(4_000),
            r,
            Outcome::Failure(FailureKind::Reset),
            &mut rng,
        )
        .unwrap();
    assert_eq!(done.latency.as_nanos(), 3_000);
    assert_eq!(done.outcome, Outcome::Failure(FailureKind::Reset));
    let snapshot = s.backend(b, Timestamp::from_nanos(4_000)).unwrap();
    assert_eq!(
        (snapshot.dispatched, snapshot.succeeded, snapshot.failed),
        (1, 0, 1)
    );
}

fn served_counts(policy: PolicyKind, weights: &[u32], requests: usize) -> Vec<usize> {
    let (mut s, ids) = scheduler_with(policy, weights);
    let mut rng = rng();
    let mut counts: HashMap<BackendId, usize> = HashMap::new();
    for _ in 0..requests {
        let (r, b) = dispatch(&mut s, Timestamp::ZERO, &mut rng);
        *counts.entry(b).or_default() += 1;
        s.handle_done(Timestamp::ZERO, r, Outcome::Success, &mut rng)
            .unwrap();
    }
    ids.iter()
        .map(|id| counts.get(id).copied().unwrap_or(0))
        .collect()
}

#[test]
fn round_robin_with_equal_weights_takes_turns() {
    assert_eq!(
        served_counts(PolicyKind::RoundRobin, &[1, 1, 1], 9),
        vec![3, 3, 3]
    );
}

#[test]
fn smooth_weighted_round_robin_matches_nginx_sequence() {
    // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
    let (mut s, ids) = scheduler_with(PolicyKind::RoundRobin, &[5, 1, 1]);
    let mut rng = rng();
    let names: Vec<char> = (0..7)
        .map(|_| {
            let (r, b) = dispatch(&mut s, Timestamp::ZERO, &mut rng);
            s.handle_done(Timestamp::ZERO, r, Outcome::Success, &mut rng)
                .unwrap();
            (b'a' + ids.iter().position(|&id| id == b).unwrap() as u8) as char
        })
        .collect();
    assert_eq!(names.into_iter().collect::<String>(), "aabacaa");
}

#[test]
fn weighted_random_follows_weights() {
    let counts = served_counts(PolicyKind::Random, &[1, 3], 40_000);
    let share = counts[1] as f64 / 40_000.0;
    // Binomial sd at n=40,000, p=0.75 is 0.0022; 0.02 is about nine sd.
    assert!(
        (share - 0.75).abs() < 0.02,
        "share of the weight-3 backend: {share}"
    );
}

#[test]
fn uniform_random_spreads_evenly() {
    let counts = served_counts(PolicyKind::Random, &[1, 1, 1, 1], 40_000);
    for count in counts {
        // Expected 10,000 each, sd ≈ 87.
        assert!((9_500..10_500).contains(&count), "{count}");
    }
}

#[test]
fn p2c_prefers_the_less_loaded_of_two() {
    let (mut s, ids) = scheduler_with(PolicyKind::P2c, &[1, 1]);
    let mut rng = rng();
    // Load b0 with 5 requests by draining b1 meanwhile.
    s.drain(ids[1]).unwrap();
    for _ in 0..5 {
        let _ = dispatch(&mut s, Timestamp::ZERO, &mut rng);
    }
    s.undrain(ids[1]).unwrap();
    // With two backends p2c always compares both: b1 (0 pending) wins until it has 5.
    for _ in 0..5 {
        assert_eq!(dispatch(&mut s, Timestamp::ZERO, &mut rng).1, ids[1]);
    }
}

#[test]
fn p2c_honours_weights() {
    let counts = served_counts_concurrent(PolicyKind::P2c, &[1, 4], 8);
    // With 8 in flight held, pending per weight evens out near 1.6 per weight unit.
    assert!(counts[1] > counts[0] * 2, "{counts:?}");
}

/// Keeps `depth` requests in flight, finishing the oldest each time: a steady load.
fn served_counts_concurrent(policy: PolicyKind, weights: &[u32], depth: usize) -> Vec<usize> {
    let (mut s, ids) = scheduler_with(policy, weights);
    let mut rng = rng();
    let mut outstanding = std::collections::VecDeque::new();
    let mut counts = vec![0usize; ids.len()];
    for _ in 0..1_000 {
        let (r, b) = dispatch(&mut s, Timestamp::ZERO, &mut rng);
        counts[ids.iter().position(|&id| id == b).unwrap()] += 1;
        outstanding.push_back(r);
        if outstanding.len() >= depth {
            s.handle_done(
                Timestamp::ZERO,
                outstanding.pop_front().unwrap(),
                Outcome::Success,
                &mut rng,
            )
            .unwrap();
        }
    }
    counts
}

#[test]
fn peak_ewma_avoids_a_backend_that_turned_slow() {
    let (mut s, ids) = scheduler_with(PolicyKind::PeakEwma, &[1, 1]);
    let mut rng = rng();
    let mut now = Timestamp::ZERO;
    // Teach it: b0 answers in 50 ms, b1 in 1 ms.
    for _ in 0..20 {
        let (r, b) = dispatch(&mut s, now, &mut rng);
        let latency_ns = if b == ids[0] { 50_000_000 } else { 1_000_000 };
        s.handle_done(
            now + std::time::Duration::from_nanos(latency_ns),
            r,
            Outcome::Success,
            &mut rng,
        )
        .unwrap();
        now = now + std::time::Duration::from_micros(100);
    }
    let to_fast = (0..100)
        .filter(|_| {
            let (r, b) = dispatch(&mut s, now, &mut rng);
            s.handle_done(now, r, Outcome::Cancelled, &mut rng).unwrap();
            b == ids[1]
        })
        .count();
    assert_eq!(to_fast, 100);
}

#[test]
fn policies_parse_from_their_names() {
    for policy in PolicyKind::ALL {
        assert_eq!(policy.name().parse::<PolicyKind>(), Ok(policy));
    }
    let err = "leastconn".parse::<PolicyKind>().unwrap_err();
    assert!(err.to_string().contains("least-pending"), "{err}");
}
