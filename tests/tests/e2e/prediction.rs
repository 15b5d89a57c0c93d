//! The simulator's replay of a recorded trace predicts the live proxy's latency.
//!
//! Three demo backends with known latency (5, 10 and 20 ms, each plus a uniform 0–5 ms
//! jitter) behind a least-pending proxy recording a trace; an open-loop client sends 300
//! GETs at 150 per second (each on its own task, so a slow answer never delays the next
//! arrival) and measures each request from send to the end of the answer. The trace is
//! replayed with `balancer_sim::replay` (same policy, one simulated backend per recorded
//! address, each drawing from its own recorded service times; concurrency 64 because a demo
//! backend serves every request in parallel, as sleeping tasks) and the predicted mean and
//! p99 are compared with the measured ones.
//!
//! Tolerance, and why: the replay's latency is the recorded `service_ns` (dispatch → response
//! headers at the proxy) of whichever backend the simulated policy picks. The client's
//! measure adds what the simulator does not model: its own connect, the client→proxy hop,
//! routing and the body — about 0.3–1 ms per request in a debug build on a busy 2-core
//! machine — so the mean may differ by 15 % plus 2 ms. The p99 of 300 samples is the 3rd
//! largest: one scheduler hiccup on the shared machine moves it by milliseconds, so 25 %
//! plus 5 ms. Measured (debug, shared 2-core machine, three runs): live mean 15.4 ms against
//! 14.8 ms predicted, p99 28.9 against 27.1 ms; the round-robin replay of the same trace is
//! printed alongside for scale.

use std::time::{Duration, Instant};

use balancer_core::PolicyKind;
use balancer_core::trace::parse_trace;
use balancer_sim::replay::{ReplayConfig, replay};
use balancer_tokio::{DemoBackend, DemoBackendConfig};
use tests::{ConfigBuilder, Proxy, get, send_http1, within};

const REQUESTS: usize = 300;
const INTERVAL: Duration = Duration::from_micros(6_667); // 150 per second

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_predicts_mean_and_p99_latency_of_the_live_proxy() {
    // Measured latency against the replay's: a heavy test alongside would widen the gap.
    let _turn = tests::serial().await;
    let mut backends = Vec::new();
    for (id, latency_ms) in [(1, 5), (2, 10), (3, 20)] {
        backends.push(
            DemoBackend::start(DemoBackendConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                id,
                latency_ms,
                jitter_ms: 5,
            })
            .await
            .unwrap(),
        );
    }
    let dir = tests::TempDir::new("prediction");
    let path = dir.path().join("live.trace");
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .policy("least-pending")
            .backends(&backends)
            .trace(&path, |t| t),
    )
    .await;

    let address = proxy.addr();
    let mut tick = tokio::time::interval(INTERVAL);
    let mut requests = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        tick.tick().await;
        requests.push(tokio::spawn(async move {
            let sent = Instant::now();
            let reply = send_http1(address, get("/", "test.local")).await;
            assert_eq!(reply.status, 200);
            sent.elapsed().as_secs_f64() * 1e3
        }));
    }
    let mut measured_ms = Vec::with_capacity(REQUESTS);
    within("the open-loop load", async {
        for request in requests {
            measured_ms.push(request.await.unwrap());
        }
    })
    .await;
    let sink = proxy.running().proxy().trace().cloned().unwrap();
    assert!(sink.flush(Duration::from_secs(5)));
    proxy.stop().await;

    let records = parse_trace(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(records.len(), REQUESTS);
    let mut config = ReplayConfig::new(PolicyKind::LeastPending);
    config.concurrency = 64;
    let predicted = replay(&records, &config).unwrap();
    let mut round_robin = config.clone();
    round_robin.policy = PolicyKind::RoundRobin;
    let round_robin = replay(&records, &round_robin).unwrap();

    measured_ms.sort_by(f64::total_cmp);
    let mean = measured_ms.iter().sum::<f64>() / measured_ms.len() as f64;
    // Nearest rank, as an HDR histogram reports it.
    let p99 = measured_ms[(measured_ms.len() * 99).div_ceil(100) - 1];
    let service_mean = records
        .iter()
        .map(|r| r.service_ns as f64 / 1e6)
        .sum::<f64>()
        / records.len() as f64;
    eprintln!(
        "live (client):  mean {mean:.3} ms  p99 {p99:.3} ms  ({REQUESTS} requests; proxy's \
         dispatch->headers mean {service_mean:.3} ms)\n\
         simulated:      mean {:.3} ms  p99 {:.3} ms  (least-pending replay, seed 1)\n\
         round-robin:    mean {:.3} ms  p99 {:.3} ms  (same trace, for scale)",
        predicted.latency_ms.mean,
        predicted.latency_ms.p99,
        round_robin.latency_ms.mean,
        round_robin.latency_ms.p99,
    );
    assert_eq!(predicted.completed, REQUESTS as u64);
    let mean_error = (predicted.latency_ms.mean - mean).abs();
    assert!(
        mean_error <= 0.15 * mean + 2.0,
        "mean: predicted {:.3} ms, measured {mean:.3} ms",
        predicted.latency_ms.mean
    );
    let p99_error = (predicted.latency_ms.p99 - p99).abs();
    assert!(
        p99_error <= 0.25 * p99 + 5.0,
        "p99: predicted {:.3} ms, measured {p99:.3} ms",
        predicted.latency_ms.p99
    );
}
