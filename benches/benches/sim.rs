//! Criterion benchmarks of the simulator: simulated requests per second, per policy.
//!
//! `sim/throughput/{policy}/{backends}`: one whole run of 100 000 requests (Poisson at ρ = 0.9,
//! exp:1ms FIFO backends, no faults, no invariant checks), measured in elements = requests,
//! so criterion reports simulated requests per second. The goal is ≥ 5 M/s for
//! `sim/throughput/least-pending/100` on one core.
//!
//! `sim/replay/{policy}/100`: one replay of a synthetic 100 000-record trace (Poisson at
//! 90 000/s over 100 addresses, exp service of mean 1 ms), elements = records; includes the
//! set-up (sorting arrivals and per-address samples), which a replay pays once per run.

use std::time::Duration;

use balancer_core::PolicyKind;
use balancer_core::trace::{TraceOutcome, TraceRecord};
use balancer_sim::replay::{ReplayConfig, replay};
use balancer_sim::{BackendSpec, ServiceDist, SimConfig, run};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const REQUESTS: u64 = 100_000;

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("sim/throughput");
    group.throughput(Throughput::Elements(REQUESTS));
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(20);
    for policy in PolicyKind::ALL {
        let backends = 100;
        let spec = BackendSpec::new(ServiceDist::Exponential { mean_ns: 1e6 }, 1);
        let mut config = SimConfig::new(policy, backends, spec);
        config.load = 0.9;
        config.requests = REQUESTS;
        config.seed = 1;
        group.bench_with_input(
            BenchmarkId::new(policy.name(), backends),
            &config,
            |b, config| b.iter(|| run(config).expect("a fault-free run cannot fail").completed),
        );
    }
    group.finish();
}

/// A recording of `records` requests at ρ ≈ 0.9 over `backends` single-server exp:1ms backends.
fn synthetic_trace(records: usize, backends: usize) -> Vec<TraceRecord> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let gap_ns = 1e6 / (0.9 * backends as f64);
    let mut now_ns = 0f64;
    (0..records)
        .map(|i| {
            now_ns += -(1.0 - rng.random::<f64>()).ln() * gap_ns;
            TraceRecord {
                arrival_ns: now_ns as u64,
                pool: "web".into(),
                route: "/".into(),
                method: "GET".into(),
                request_bytes: 0,
                response_bytes: 0,
                backend: Some(format!(
                    "10.0.{}.{}:80",
                    i % backends / 256,
                    i % backends % 256
                )),
                service_ns: (-(1.0 - rng.random::<f64>()).ln() * 1e6).max(1.0) as u64,
                status: 200,
                outcome: TraceOutcome::Ok,
            }
        })
        .collect()
}

fn replay_throughput(c: &mut Criterion) {
    let backends = 100;
    let records = synthetic_trace(REQUESTS as usize, backends);
    let mut group = c.benchmark_group("sim/replay");
    group.throughput(Throughput::Elements(REQUESTS));
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(20);
    for policy in [PolicyKind::LeastPending, PolicyKind::P2c] {
        let config = ReplayConfig::new(policy);
        group.bench_with_input(
            BenchmarkId::new(policy.name(), backends),
            &config,
            |b, config| {
                b.iter(|| {
                    replay(&records, config)
                        .expect("a synthetic trace replays")
                        .completed
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, throughput, replay_throughput);
criterion_main!(benches);
