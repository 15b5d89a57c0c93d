//! Criterion benchmarks of balancer-core: the cost of one work plus its done, per policy and pool size.
//!
//! `core/dispatch_done/{policy}/{backends}`: steady state with 2 × backends requests in
//! flight; each iteration dispatches one request and reports the done of the oldest one.
//! `core/dispatch_done_explained/{policy}/{backends}`: the same with a decision record kept
//! for every request, to measure what explaining costs. consistent-hash requests each carry a
//! key (a counter, hashed with `hash_key` in the measured loop: the hash is included).

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use balancer_core::{
    Decision, DecisionRecord, PolicyKind, RequestInfo, Scheduler, SchedulerConfig, Timestamp,
    TryReport, hash_key,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const POOL_SIZES: [usize; 4] = [8, 64, 1024, 16384];

/// How a bench dispatches: plainly, or with a decision record (the explain feature).
#[derive(Clone, Copy)]
enum Recording {
    Off,
    On,
}

fn dispatch_done(c: &mut Criterion) {
    bench_group(c, "core/dispatch_done", Recording::Off, &POOL_SIZES);
    // The cost of keeping a decision record for every request, beside the plain numbers.
    bench_group(c, "core/dispatch_done_explained", Recording::On, &[8, 1024]);
}

fn bench_group(c: &mut Criterion, name: &str, recording: Recording, sizes: &[usize]) {
    let mut group = c.benchmark_group(name);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for policy in PolicyKind::ALL {
        for &backends in sizes {
            group.bench_with_input(
                BenchmarkId::new(policy.name(), backends),
                &backends,
                |b, &backends| {
                    let mut rng = ChaCha8Rng::seed_from_u64(7);
                    let mut scheduler = Scheduler::new(SchedulerConfig::new(policy));
                    for i in 0..backends {
                        // Mixed weights, so weighted paths (smooth round robin, weighted random) are measured.
                        let weight = if policy == PolicyKind::LeastPending {
                            1
                        } else {
                            1 + (i % 3) as u32
                        };
                        scheduler.add_backend(Timestamp::ZERO, weight).unwrap();
                    }
                    let mut now = Timestamp::ZERO;
                    let mut in_flight = VecDeque::with_capacity(2 * backends + 1);
                    let next_key = std::cell::Cell::new(0u64);
                    let work = |scheduler: &mut Scheduler, now: Timestamp, rng: &mut ChaCha8Rng| {
                        let info = if policy == PolicyKind::ConsistentHash {
                            let key = next_key.get();
                            next_key.set(key + 1);
                            RequestInfo {
                                hash_key: Some(hash_key(&key.to_le_bytes())),
                                ..RequestInfo::default()
                            }
                        } else {
                            RequestInfo::default()
                        };
                        let decision = match recording {
                            Recording::Off => scheduler.handle_work(now, rng, info, None),
                            Recording::On => {
                                let mut record = DecisionRecord::empty(now, scheduler.policy());
                                let decision =
                                    scheduler.handle_work(now, rng, info, Some(&mut record));
                                black_box(record);
                                decision
                            }
                        };
                        match decision {
                            Decision::Dispatch { request, .. } => request,
                            Decision::Reject { reason } => panic!("bench pool rejected: {reason}"),
                        }
                    };
                    for _ in 0..2 * backends {
                        in_flight.push_back(work(&mut scheduler, now, &mut rng));
                    }
                    b.iter(|| {
                        now = now + Duration::from_nanos(1_000);
                        in_flight.push_back(work(&mut scheduler, now, &mut rng));
                        let oldest = in_flight.pop_front().unwrap();
                        scheduler
                            .handle_done(now, oldest, TryReport::response(200), &mut rng)
                            .unwrap()
                    });
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, dispatch_done);
criterion_main!(benches);
