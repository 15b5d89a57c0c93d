//! Property tests: random sequences of operations, misuse included, keep every invariant.
//!
//! Each property runs 1,000 cases by default (`PROPTEST_CASES` overrides). A failure prints
//! the minimal sequence of operations that breaks it, which replays as a plain unit test.

use std::collections::HashMap;

use std::time::Duration;

use balancer_core::{
    AfterTry, BackendId, BackendState, CoreError, Decision, FailureKind, HealthCheckConfig,
    Outcome, OutlierConfig, PolicyKind, RejectReason, RequestId, RequestInfo, RetryConfig,
    Scheduler, SchedulerConfig, SlowStartConfig, StatusSet, Timestamp, TryReport,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug)]
enum Op {
    Add {
        weight: u32,
    },
    Remove {
        pick: usize,
    },
    Drain {
        pick: usize,
    },
    Undrain {
        pick: usize,
    },
    SetUp {
        pick: usize,
        up: bool,
    },
    SetWeight {
        pick: usize,
        weight: u32,
    },
    Work,
    Done {
        pick: usize,
        outcome: u8,
    },
    /// A done for a request that already finished (misuse).
    DoneAgain {
        pick: usize,
    },
    /// A done for an id that another scheduler handed out (misuse).
    DoneForeign {
        works: u8,
    },
    Advance {
        nanos: u32,
    },
    HealthCheck {
        pick: usize,
        passed: bool,
    },
    /// The retry of a request waiting after a failed try (possibly before its backoff ended).
    RetryWork {
        pick: usize,
    },
    /// A request waiting for its retry is given up.
    Abandon {
        pick: usize,
    },
    /// A desired set of keyed backends: (key 0..6, weight; 0 is invalid).
    Reconcile(Vec<(u8, u32)>),
    /// A config reload that keeps the pool's state.
    Reconfigure(Box<SchedulerConfig>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u32..=6).prop_map(|w| Op::Add { weight: w }),
        1 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Drain { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Undrain { pick }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, up)| Op::SetUp { pick, up }),
        1 => (any::<usize>(), 0u32..=6).prop_map(|(pick, weight)| Op::SetWeight { pick, weight }),
        8 => Just(Op::Work),
        6 => (any::<usize>(), 0u8..6).prop_map(|(pick, outcome)| Op::Done { pick, outcome }),
        1 => any::<usize>().prop_map(|pick| Op::DoneAgain { pick }),
        1 => any::<u8>().prop_map(|works| Op::DoneForeign { works }),
                1 => (0u32..5_000_000).prop_map(|nanos| Op::Advance { nanos }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, passed)| Op::HealthCheck { pick, passed }),
        3 => any::<usize>().prop_map(|pick| Op::RetryWork { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Abandon { pick }),
        1 => prop::collection::vec((0u8..6, 0u32..4), 0..6).prop_map(Op::Reconcile),
        1 => scheduler_config().prop_map(|config| Op::Reconfigure(Box::new(config))),
    ]
}

fn policy() -> impl Strategy<Value = PolicyKind> {
    prop::sample::select(PolicyKind::ALL.to_vec())
}

/// Any policy, with or without per-backend caps, outlier ejection and health thresholds.
fn scheduler_config() -> impl Strategy<Value = SchedulerConfig> {
    (
        policy(),
        prop::option::of(1u32..4),
        prop::option::of((1u32..4, 1u64..3_000_000, 0u8..=100)),
        (1u32..4, 1u32..4),
        prop::option::of((1u64..5_000_000, 0u8..=100)),
        prop::option::of(0u8..=100),
        prop::option::of((0u32..4, any::<bool>(), any::<bool>())),
    )
        .prop_map(
            |(policy, cap, outlier, (rise, fall), slow_start, panic, retry)| {
                let mut config = SchedulerConfig::new(policy);
                config.max_pending_per_backend = cap;
                config.outlier = outlier.map(|(failures, base_ns, percent)| OutlierConfig {
                    consecutive_failures: failures,
                    base_ejection: Duration::from_nanos(base_ns),
                    max_ejection: Duration::from_nanos(base_ns * 3),
                    max_ejected_percent: percent,
                });
                config.health_check = HealthCheckConfig { rise, fall };
                config.slow_start =
                    slow_start.map(|(window_ns, min_weight_percent)| SlowStartConfig {
                        window: Duration::from_nanos(window_ns),
                        min_weight_percent,
                    });
                config.panic_threshold_percent = panic;
                config.retry = retry.map(|(max_retries, on_503, non_idempotent)| RetryConfig {
                    max_retries,
                    retry_on_status: if on_503 {
                        StatusSet::from_codes(&[503]).unwrap()
                    } else {
                        StatusSet::EMPTY
                    },
                    retry_non_idempotent: non_idempotent,
                    backoff_base: Duration::from_nanos(1_000_000),
                    backoff_max: Duration::from_nanos(4_000_000),
                    ..RetryConfig::default()
                });
                config
            },
        )
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000),
        ..ProptestConfig::default()
    }
}

/// A plain model of what the scheduler should hold, to compare against after every step.
#[derive(Default)]
struct Model {
    backends: Vec<BackendId>,
    /// Tries in flight: the try, its backend, and the backends that failed its request.
    in_flight: Vec<(RequestId, BackendId, Vec<BackendId>)>,
    /// Requests told to retry: the failed try, the backends that failed it, when the backoff ends.
    waiting: Vec<(RequestId, Vec<BackendId>, Timestamp)>,
    /// Backends managed by `reconcile`, by key.
    keyed: HashMap<u8, BackendId>,
    finished: Vec<RequestId>,
    removed: Vec<BackendId>,
    pending: HashMap<BackendId, u32>,
}

fn pick<T: Copy>(items: &[T], index: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[index % items.len()])
}

fn run(mut config: SchedulerConfig, seed: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut s = Scheduler::new(config);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut m = Model::default();
    let mut now = Timestamp::ZERO;
    for op in ops {
        match op {
            Op::Add { weight } => match s.add_backend(now, weight) {
                Ok(id) => {
                    prop_assert!(weight >= 1);
                    prop_assert!(
                        !m.backends.contains(&id) && !m.removed.contains(&id),
                        "id reused"
                    );
                    m.backends.push(id);
                }
                Err(e) => prop_assert_eq!(e, CoreError::InvalidWeight(weight)),
            },
            Op::Remove { pick: p } => {
                if let Some(id) = pick(&m.backends, p) {
                    let removal = s.remove_backend(id).unwrap();
                    prop_assert_eq!(removal.orphaned, m.pending.remove(&id).unwrap_or(0));
                    m.backends.retain(|&b| b != id);
                    m.keyed.retain(|_, b| *b != id);
                    m.removed.push(id);
                } else if let Some(id) = pick(&m.removed, p) {
                    prop_assert_eq!(s.remove_backend(id), Err(CoreError::UnknownBackend(id)));
                }
            }
            Op::Drain { pick: p } => {
                if let Some(id) = pick(&m.backends, p) {
                    s.drain(id).unwrap();
                }
            }
            Op::Undrain { pick: p } => {
                if let Some(id) = pick(&m.backends, p) {
                    s.undrain(id).unwrap();
                }
            }
            Op::SetUp { pick: p, up } => {
                if let Some(id) = pick(&m.backends, p) {
                    s.set_up(id, up).unwrap();
                }
            }
            Op::SetWeight { pick: p, weight } => {
                if let Some(id) = pick(&m.backends, p) {
                    let result = s.set_weight(id, weight);
                    prop_assert_eq!(result.is_ok(), weight >= 1);
                }
            }
            Op::Work | Op::RetryWork { .. } => {
                s.handle_timeout(now);
                let mut retry_of = None;
                if let Op::RetryWork { pick: p } = op {
                    if m.waiting.is_empty() {
                        continue;
                    }
                    let index = p % m.waiting.len();
                    let retry_at = m.waiting[index].2;
                    if now < retry_at {
                        let after = m.waiting[index].0;
                        prop_assert_eq!(
                            s.handle_retry_work(now, &mut rng, after, None),
                            Err(CoreError::RetryTooEarly {
                                request: after,
                                retry_at
                            })
                        );
                        continue;
                    }
                    retry_of = Some(m.waiting.remove(index));
                }
                let avoid: Vec<BackendId> =
                    retry_of.as_ref().map(|w| w.1.clone()).unwrap_or_default();
                let before: Vec<_> = s.backends(now).collect();
                let eligible: Vec<_> = before
                    .iter()
                    .filter(|b| b.eligible && !avoid.contains(&b.id))
                    .collect();
                // Panic mode: too few can take work, so every backend that is not draining,
                // not full and not already tried may be chosen, healthy or not.
                let open: Vec<_> = before
                    .iter()
                    .filter(|b| b.state != BackendState::Draining && !avoid.contains(&b.id))
                    .filter(|b| {
                        config
                            .max_pending_per_backend
                            .is_none_or(|cap| b.pending < cap.max(1))
                    })
                    .collect();
                let not_draining = before
                    .iter()
                    .filter(|b| b.state != BackendState::Draining)
                    .count();
                let panic = config.panic_threshold_percent.is_some_and(|pct| {
                    not_draining > 0 && eligible.len() * 100 < usize::from(pct) * not_draining
                });
                let decision = match &retry_of {
                    None => s.handle_work(now, &mut rng, RequestInfo::default(), None),
                    Some((after, _, _)) => {
                        s.handle_retry_work(now, &mut rng, *after, None).unwrap()
                    }
                };
                match decision {
                    Decision::Dispatch { request, backend } => {
                        let allowed = if panic { &open } else { &eligible };
                        let chosen = allowed.iter().find(|b| b.id == backend);
                        prop_assert!(
                            chosen.is_some(),
                            "dispatched to an ineligible backend {} (panic: {})",
                            backend,
                            panic
                        );
                        // Slow start may pass over a warming backend, so the minimum is
                        // only guaranteed when none is warming.
                        let warming = eligible.iter().any(|b| b.warming_since.is_some());
                        if config.policy == PolicyKind::LeastPending && !panic && !warming {
                            let min = eligible.iter().map(|b| b.pending).min().unwrap();
                            prop_assert_eq!(
                                chosen.unwrap().pending,
                                min,
                                "least-pending missed the minimum"
                            );
                        }
                        m.in_flight.push((request, backend, avoid.clone()));
                        *m.pending.entry(backend).or_default() += 1;
                    }
                    Decision::Reject { reason } => {
                        prop_assert!(eligible.is_empty());
                        prop_assert!(
                            !panic || open.is_empty(),
                            "panic mode rejected with open backends"
                        );
                        if reason == RejectReason::NoBackend
                            && let Some(cap) = config.max_pending_per_backend
                        {
                            prop_assert!(
                                before.iter().all(|b| b.pending < cap),
                                "a full backend must make it Overloaded"
                            );
                        }
                    }
                }
            }
            Op::Done { pick: p, outcome } => {
                if !m.in_flight.is_empty() {
                    let (request, backend, mut tried) = m.in_flight.remove(p % m.in_flight.len());
                    let (report, expected) = match outcome {
                        0 => (TryReport::response(200), Outcome::Success),
                        1 => (
                            TryReport::failed(FailureKind::Reset),
                            Outcome::Failure(FailureKind::Reset),
                        ),
                        2 => (
                            TryReport::response(500),
                            Outcome::Failure(FailureKind::ServerError),
                        ),
                        3 => (
                            TryReport::response(503),
                            Outcome::Failure(FailureKind::ServerError),
                        ),
                        4 => (
                            TryReport::failed(FailureKind::Connect),
                            Outcome::Failure(FailureKind::Connect),
                        ),
                        _ => (TryReport::cancelled(), Outcome::Cancelled),
                    };
                    let result = s.handle_done(now, request, report, &mut rng);
                    if m.removed.contains(&backend) {
                        prop_assert_eq!(
                            result,
                            Err(CoreError::BackendRemoved { request, backend })
                        );
                    } else {
                        let done = result.unwrap();
                        prop_assert_eq!(done.backend, backend);
                        prop_assert_eq!(done.outcome, expected);
                        let pending = m.pending.get_mut(&backend).unwrap();
                        *pending -= 1;
                        if done.removed {
                            prop_assert_eq!(
                                *pending,
                                0,
                                "a leaving backend removed with requests in flight"
                            );
                            m.pending.remove(&backend);
                            m.backends.retain(|&b| b != backend);
                            m.keyed.retain(|_, b| *b != backend);
                            m.removed.push(backend);
                        }
                        match done.next {
                            AfterTry::Retry { backoff } => {
                                let retry = config.retry.expect("a retry needs retries on");
                                prop_assert!(
                                    matches!(expected, Outcome::Failure(_)),
                                    "only a failed try is retried"
                                );
                                prop_assert!((tried.len() as u32) < retry.max_retries);
                                tried.push(backend);
                                m.waiting.push((request, tried, now + backoff));
                            }
                            AfterTry::Finished { no_retry } => {
                                prop_assert_eq!(
                                    no_retry.is_none(),
                                    !matches!(expected, Outcome::Failure(_))
                                );
                            }
                        }
                    }
                    m.finished.push(request);
                }
            }
            Op::Abandon { pick: p } => {
                if !m.waiting.is_empty() {
                    let (after, _, _) = m.waiting.remove(p % m.waiting.len());
                    s.handle_abandon(after).unwrap();
                    prop_assert_eq!(
                        s.handle_abandon(after),
                        Err(CoreError::UnknownRequest(after))
                    );
                }
            }
            Op::Reconcile(ref desired) => {
                let keys: Vec<String> = desired.iter().map(|(k, _)| format!("k{k}")).collect();
                let listed: Vec<(&str, u32)> = keys
                    .iter()
                    .zip(desired)
                    .map(|(k, (_, w))| (k.as_str(), *w))
                    .collect();
                let result = s.reconcile(now, &listed);
                if desired.iter().any(|(_, w)| *w == 0) {
                    prop_assert_eq!(result, Err(CoreError::InvalidWeight(0)));
                    continue;
                }
                let done = result.unwrap();
                for (key, id) in &done.added {
                    let k: u8 = key[1..].parse().unwrap();
                    prop_assert!(!m.keyed.contains_key(&k), "an existing key was added again");
                    m.keyed.insert(k, *id);
                    m.backends.push(*id);
                }
                let wanted: Vec<u8> = desired.iter().map(|(k, _)| *k).collect();
                for (k, id) in m.keyed.clone() {
                    let key = format!("k{k}");
                    let snapshot = s.backend(id, now);
                    if snapshot.is_some() {
                        prop_assert_eq!(s.key_of(id), Some(key.as_str()));
                    }
                    if wanted.contains(&k) {
                        prop_assert!(
                            snapshot.is_some_and(|b| !b.leaving),
                            "a wanted backend is leaving"
                        );
                    } else if done.removed.contains(&id) {
                        prop_assert_eq!(m.pending.get(&id).copied().unwrap_or(0), 0);
                        m.keyed.remove(&k);
                        m.backends.retain(|&b| b != id);
                        m.pending.remove(&id);
                        m.removed.push(id);
                    } else {
                        let snapshot = snapshot.unwrap();
                        prop_assert!(snapshot.leaving && snapshot.pending > 0);
                        prop_assert_eq!(snapshot.state, BackendState::Draining);
                    }
                }
            }
            Op::DoneAgain { pick: p } => {
                if let Some(request) = pick(&m.finished, p) {
                    prop_assert_eq!(
                        s.handle_done(now, request, Outcome::Success, &mut rng),
                        Err(CoreError::UnknownRequest(request))
                    );
                }
            }
            Op::DoneForeign { works } => {
                let mut other = Scheduler::new(SchedulerConfig::new(PolicyKind::RoundRobin));
                other.add_backend(now, 1).unwrap();
                let mut request = None;
                for _ in 0..=works {
                    if let Decision::Dispatch { request: r, .. } =
                        other.handle_work(now, &mut rng, RequestInfo::default(), None)
                    {
                        request = Some(r);
                    }
                }
                let request = request.unwrap();
                let live = m.in_flight.iter().any(|(r, _, _)| *r == request)
                    || m.waiting.iter().any(|(r, _, _)| *r == request);
                if !live {
                    prop_assert_eq!(
                        s.handle_done(now, request, Outcome::Success, &mut rng),
                        Err(CoreError::UnknownRequest(request))
                    );
                }
            }
            Op::Advance { nanos } => now = now + Duration::from_nanos(nanos.into()),
            Op::Reconfigure(new) => {
                s.reconfigure(now, *new);
                config = *new;
                config.max_pending_per_backend = config.max_pending_per_backend.map(|c| c.max(1));
            }
            Op::HealthCheck { pick: p, passed } => {
                if let Some(id) = pick(&m.backends, p) {
                    s.handle_health_check(now, id, passed).unwrap();
                }
            }
        }
        if let Err(violation) = s.check_invariants() {
            return Err(TestCaseError::fail(violation.to_string()));
        }
        prop_assert_eq!(s.in_flight() as usize, m.in_flight.len());
        for snapshot in s.backends(now) {
            prop_assert_eq!(
                snapshot.pending,
                m.pending.get(&snapshot.id).copied().unwrap_or(0)
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Any sequence of operations, misuse included, keeps every invariant; least-pending
    /// always picks a backend whose pending count is minimal among eligible ones.
    #[test]
    fn invariants_hold_after_every_operation(
                config in scheduler_config(),
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        run(config, seed, ops)?;
    }

    /// The same seed and operations give the same decisions.
    #[test]
    fn decisions_are_deterministic(
        policy in policy(),
        seed in any::<u64>(),
        backends in 1usize..20,
        works in 1usize..200,
    ) {
        let decisions = || {
            let mut s = Scheduler::new(SchedulerConfig::new(policy));
            for i in 0..backends {
                s.add_backend(Timestamp::ZERO, 1 + (i as u32 % 3)).unwrap();
            }
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..works)
                .map(|i| {
                    let decision = s.handle_work(Timestamp::from_nanos(i as u64), &mut rng, RequestInfo::default(), None);
                    if let Decision::Dispatch { request, .. } = decision
                        && i % 3 == 0
                    {
                        let done = s.handle_done(Timestamp::from_nanos(i as u64 + 7), request, Outcome::Success, &mut rng);
                        assert!(done.is_ok(), "{done:?}");
                    }
                    decision
                })
                .collect::<Vec<_>>()
        };
        prop_assert_eq!(decisions(), decisions());
    }
}
