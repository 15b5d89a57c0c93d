//! Criterion benchmarks of balancer-core: the cost of one work plus its done, per policy and pool size.
//!
//! `core/dispatch_done/{policy}/{backends}`: steady state with 2 × backends requests in
//! flight; each iteration dispatches one request and reports the done of the oldest one.

use std::collections::VecDeque;
use std::time::Duration;

use balancer_core::{Decision, Outcome, PolicyKind, Scheduler, SchedulerConfig, Timestamp};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const POOL_SIZES: [usize; 4] = [8, 64, 1024, 16384];

fn dispatch_done(c: &mut Criterion) {
    let mut group = c.benchmark_group("core/dispatch_done");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for policy in PolicyKind::ALL {
        for backends in POOL_SIZES {
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
                    let work = |scheduler: &mut Scheduler, now: Timestamp, rng: &mut ChaCha8Rng| {
                        match scheduler.handle_work(now, rng) {
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
                            .handle_done(now, oldest, Outcome::Success)
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
