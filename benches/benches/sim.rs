//! Criterion benchmarks of the simulator: simulated requests per second, per policy.
//!
//! `sim/throughput/{policy}/{backends}`: one whole run of 100 000 requests (Poisson at ρ = 0.9,
//! exp:1ms FIFO backends, no faults, no invariant checks), measured in elements = requests,
//! so criterion reports simulated requests per second. The goal is ≥ 5 M/s for
//! `sim/throughput/least-pending/100` on one core.

use std::time::Duration;

use balancer_core::PolicyKind;
use balancer_sim::{BackendSpec, ServiceDist, SimConfig, run};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

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

criterion_group!(benches, throughput);
criterion_main!(benches);
