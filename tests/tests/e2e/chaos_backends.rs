//! Chaos: backends killed and restarted on their own ports, one after another, while
//! GET load runs through the proxy. Retries (on by default), passive outlier ejection and
//! active health checks must together cost zero failed requests.
//!
//! A "kill" stops the in-process `DemoBackend` (its listener closes, open connections close);
//! a "restart" starts a new one on the same port. CI runs a few seconds of it
//! (`killing_and_restarting_backends_under_load_fails_no_request`); the long run (60 s, a kill
//! every 2 s) is an ignored test, run on demand:
//!
//! ```sh
//! cargo test --release -p tests --test e2e chaos_backends:: -- --ignored --nocapture
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use balancer_tokio::DemoBackend;
use tests::{ConfigBuilder, Load, Proxy, start_backends};

/// Clients of the load: requests are in flight at every kill.
const LOAD_CLIENTS: usize = 6;
/// Kills backend `kills % 3` every `period`, keeps it dead for `down_for`, restarts it, for
/// `duration`, then checks that no GET failed.
async fn kill_and_restart_under_load(duration: Duration, period: Duration, down_for: Duration) {
    // The load and the kills keep both cores busy.
    let _turn = tests::serial().await;
    let backends = start_backends(&[1, 1, 1]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().pool("default", |p| {
        p.backends(&backends)
            .outlier(|o| {
                o.consecutive_failures(2)
                    .base_ejection_ms(200)
                    .max_ejection_ms(1000)
            })
            .health_check(|h| h.path("/").interval_ms(100).timeout_ms(500).rise(2).fall(1))
            .retry(|r| r.max_retries(2).backoff_base_ms(1).backoff_max_ms(5))
    }))
    .await;
    let mut backends: Vec<Option<DemoBackend>> = backends.into_iter().map(Some).collect();
    let addresses: Vec<SocketAddr> = backends
        .iter()
        .map(|b| b.as_ref().unwrap().local_addr())
        .collect();
    let load = Load::start(proxy.addr(), LOAD_CLIENTS, "/");
    load.wait_for(50).await;

    let started = Instant::now();
    let mut kills = 0usize;
    // Bounded by time, and by count in case the clock misbehaves.
    while started.elapsed() < duration && kills < 10_000 {
        let victim = kills % addresses.len();
        let backend = backends[victim].take().expect("the victim is running");
        backend.stop().await;
        kills += 1;
        tokio::time::sleep(down_for).await;
        backends[victim] = Some(tests::restart_backend(addresses[victim], victim as u32 + 1).await);
        tokio::time::sleep(period.saturating_sub(down_for)).await;
    }
    // Every backend serves again at the end.
    load.wait_for(50).await;
    let report = load.finish().await;
    let metrics = proxy.admin_get("/metrics").await.body;
    let sum_of = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    eprintln!(
        "backend kills under load: {kills} kills in {:.1?}; {} GETs ok, {} failed; \
         retries {}, ejections {}, health transitions {}",
        started.elapsed(),
        report.ok,
        report.failures.len(),
        sum_of("balancer_retries_total{"),
        sum_of("balancer_outlier_ejections_total{"),
        sum_of("balancer_health_transitions_total{"),
    );
    assert!(
        report.failures.is_empty(),
        "{} failed: {:?}",
        report.failures.len(),
        &report.failures[..report.failures.len().min(20)]
    );
    assert!(kills >= 2, "only {kills} kills");
    proxy.wait_for_in_flight(0).await;
    proxy.stop().await;
    tests::stop_backends(backends.into_iter().flatten()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_and_restarting_backends_under_load_fails_no_request() {
    kill_and_restart_under_load(
        Duration::from_secs(6),
        Duration::from_millis(1500),
        Duration::from_millis(700),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run: cargo test --release -p tests --test e2e chaos_backends:: -- --ignored --nocapture"]
async fn killing_and_restarting_backends_for_a_minute_fails_no_request() {
    kill_and_restart_under_load(
        Duration::from_secs(60),
        Duration::from_secs(2),
        Duration::from_secs(1),
    )
    .await;
}
