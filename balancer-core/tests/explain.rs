//! Decision records: the same decisions as without them, and sentences that say why.

use std::time::Duration;

use balancer_core::{
    AfterTry, Decision, DecisionRecord, FailureKind, Outcome, OutlierConfig, PolicyKind,
    RequestInfo, RetryConfig, Scheduler, SchedulerConfig, SkipReason, Timestamp, TryReport,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Work with a decision record: the one path, asked to explain.
fn work_explained<R: rand::Rng>(
    s: &mut Scheduler,
    now: Timestamp,
    rng: &mut R,
) -> (Decision, DecisionRecord) {
    let mut record = DecisionRecord::empty(now, s.policy());
    let decision = s.handle_work(now, rng, RequestInfo::default(), Some(&mut record));
    (decision, record)
}

fn pool(policy: PolicyKind, weights: &[u32]) -> Scheduler {
    let mut s = Scheduler::new(SchedulerConfig::new(policy));
    for &w in weights {
        s.add_backend(Timestamp::ZERO, w).unwrap();
    }
    s
}

proptest! {
    /// Explaining never changes a decision: same seed, same decisions, with or without records.
    #[test]
    fn explained_decisions_equal_plain_ones(
        policy in prop::sample::select(PolicyKind::ALL.to_vec()),
        seed in any::<u64>(),
        weights in prop::collection::vec(1u32..4, 0..12),
        finish_every in 1usize..5,
    ) {
        let mut plain = pool(policy, &weights);
        let mut explained = pool(policy, &weights);
        let (mut rng_a, mut rng_b) = (ChaCha8Rng::seed_from_u64(seed), ChaCha8Rng::seed_from_u64(seed));
        let mut outstanding = vec![];
        for i in 0..200u64 {
            let now = Timestamp::from_nanos(i * 1_000);
            let a = plain.handle_work(now, &mut rng_a, RequestInfo::default(), None);
            let (b, record) = work_explained(&mut explained, now, &mut rng_b);
            prop_assert_eq!(a, b);
            prop_assert_eq!(record.decision, b);
            if let Decision::Dispatch { request, backend } = b {
                prop_assert_eq!(record.chosen.map(|c| c.backend), Some(backend));
                outstanding.push(request);
            }
            if i as usize % finish_every == 0 && !outstanding.is_empty() {
                let r = outstanding.remove(0);
                let done_a = plain.handle_done(now, r, Outcome::Success, &mut rng_a).map(|c| c.backend);
                let done_b = explained.handle_done(now, r, Outcome::Success, &mut rng_b).map(|c| c.backend);
                prop_assert_eq!(done_a, done_b);
            }
        }
    }
}

#[test]
fn least_pending_record_names_ties_and_next_in_line() {
    let mut s = pool(PolicyKind::LeastPending, &[1, 1, 1, 1]);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (_, record) = work_explained(&mut s, Timestamp::ZERO, &mut rng);
    assert_eq!(record.ties, 4);
    assert_eq!(record.eligible, 4);
    let text = record.to_string();
    assert_eq!(
        text,
        "least-pending chose b0 (0 pending, weight 1), the fewest of 4 eligible; \
         4 tied at 0 pending, the one waiting longest wins; next in line b1 (0 pending, weight 1)"
    );
}

#[test]
fn p2c_record_compares_the_two_draws() {
    let mut s = pool(PolicyKind::P2c, &[1, 1]);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let _ = s.handle_work(Timestamp::ZERO, &mut rng, RequestInfo::default(), None);
    let (_, record) = work_explained(&mut s, Timestamp::ZERO, &mut rng);
    let (chosen, rival) = (record.chosen.unwrap(), record.rival.unwrap());
    assert_eq!((chosen.pending, rival.pending), (0, 1));
    let text = record.to_string();
    assert!(text.starts_with("p2c drew "), "{text}");
    assert!(
        text.contains(&format!("{} has fewer pending per weight", chosen.backend)),
        "{text}"
    );
}

#[test]
fn peak_ewma_record_shows_costs() {
    let mut s = pool(PolicyKind::PeakEwma, &[1, 1]);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (_, record) = work_explained(&mut s, Timestamp::ZERO, &mut rng);
    let text = record.to_string();
    assert!(text.contains("at cost 1.000 ms (ewma 1.000 ms)"), "{text}");
    assert!(text.ends_with("the lower cost wins"), "{text}");
}

#[test]
fn a_decayed_estimate_says_it_is_old_not_fast() {
    let s_config = SchedulerConfig::new(PolicyKind::PeakEwma);
    let decay = Duration::from_nanos(s_config.ewma_decay_ns);
    let mut s = pool(PolicyKind::PeakEwma, &[1, 1]);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // Three decay times with no response: the seeded estimate is down to e^-3 of itself.
    let later = Timestamp::ZERO + decay * 3;
    let (_, record) = work_explained(&mut s, later, &mut rng);
    let chosen = record.chosen.expect("a backend was chosen");
    assert_eq!(chosen.ewma_sample_age(), decay * 3);
    let text = record.to_string();
    let words = format!(
        "decayed: no response in the last {:.1} s",
        (decay * 3).as_secs_f64()
    );
    assert_eq!(text.matches(&words).count(), 2, "{text}");

    // Fresh at the start: no such words.
    let mut fresh = pool(PolicyKind::PeakEwma, &[1, 1]);
    let (_, record) = work_explained(&mut fresh, Timestamp::ZERO, &mut rng);
    assert!(!record.to_string().contains("decayed"), "{record}");
}

#[test]
fn record_names_skipped_backends_and_rejections() {
    let mut config = SchedulerConfig::new(PolicyKind::RoundRobin);
    config.outlier = Some(OutlierConfig {
        consecutive_failures: 1,
        base_ejection: Duration::from_secs(3),
        ..OutlierConfig::default()
    });
    let mut s = Scheduler::new(config);
    let ids: Vec<_> = (0..4)
        .map(|_| s.add_backend(Timestamp::ZERO, 1).unwrap())
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    s.set_up(ids[1], false).unwrap();
    s.drain(ids[2]).unwrap();
    // Eject b0 with one failure.
    let Decision::Dispatch { request, backend } =
        s.handle_work(Timestamp::ZERO, &mut rng, RequestInfo::default(), None)
    else {
        panic!("b0 and b3 are eligible");
    };
    assert_eq!(backend, ids[0]);
    let done = s
        .handle_done(
            Timestamp::ZERO,
            request,
            Outcome::Failure(FailureKind::Reset),
            &mut rng,
        )
        .unwrap();
    assert!(done.ejected_until.is_some());
    let (_, record) = work_explained(&mut s, Timestamp::from_nanos(200_000_000), &mut rng);
    let reasons: Vec<_> = record.skipped().map(|s| (s.backend, s.reason)).collect();
    assert_eq!(
        reasons,
        vec![
            (
                ids[0],
                SkipReason::Ejected {
                    until: Timestamp::from_nanos(3_000_000_000)
                }
            ),
            (ids[1], SkipReason::Down),
            (ids[2], SkipReason::Draining),
        ]
    );
    let text = record.to_string();
    assert!(
        text.ends_with("skipped: b0 ejected for 2.8 s more, b1 down, b2 draining"),
        "{text}"
    );
    s.drain(ids[3]).unwrap();
    let (decision, record) = work_explained(&mut s, Timestamp::from_nanos(1), &mut rng);
    assert!(matches!(decision, Decision::Reject { .. }));
    assert!(
        record
            .to_string()
            .starts_with("rejected: no eligible backend (0 of 4 backends eligible)"),
        "{record}"
    );
}

#[test]
fn retry_record_marks_backends_already_tried() {
    let mut config = SchedulerConfig::new(PolicyKind::LeastPending);
    config.retry = Some(RetryConfig::default());
    let mut s = Scheduler::new(config);
    let ids: Vec<_> = (0..3)
        .map(|_| s.add_backend(Timestamp::ZERO, 1).unwrap())
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (Decision::Dispatch { request, backend }, _) =
        work_explained(&mut s, Timestamp::ZERO, &mut rng)
    else {
        panic!("three backends are up");
    };
    assert_eq!(backend, ids[0]);
    let done = s
        .handle_done(
            Timestamp::ZERO,
            request,
            TryReport::failed(FailureKind::Connect),
            &mut rng,
        )
        .unwrap();
    let AfterTry::Retry { backoff } = done.next else {
        panic!("a connect failure of a GET is retried: {done:?}");
    };
    let at = Timestamp::ZERO + backoff;
    let mut record = DecisionRecord::empty(at, s.policy());
    let decision = s
        .handle_retry_work(at, &mut rng, request, Some(&mut record))
        .unwrap();
    assert!(matches!(decision, Decision::Dispatch { backend, .. } if backend != ids[0]));
    assert!(record.retry);
    assert_eq!(
        record.skipped().next().map(|s| s.reason),
        Some(SkipReason::AlreadyTried)
    );
    s.check_invariants().unwrap();
}
