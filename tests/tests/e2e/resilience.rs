//! Health and failure handling under load: a killed backend costs no request (retries), is
//! ejected, and comes back; active checks take a backend down and up; the per-backend cap
//! answers 503 at once.

use std::time::Duration;

use tests::{ConfigBuilder, Load, Proxy, eventually, start_backends, within};

#[tokio::test]
async fn a_backend_killed_under_load_fails_no_request_is_ejected_and_comes_back() {
    // The load keeps both cores busy for seconds.
    let _turn = tests::serial().await;
    let mut backends = start_backends(&[1, 1, 1]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().pool("default", |p| {
        p.backends(&backends)
            .outlier(|o| {
                o.consecutive_failures(2)
                    .base_ejection_ms(300)
                    .max_ejection_ms(1000)
            })
            .retry(|r| r.max_retries(2).backoff_base_ms(1).backoff_max_ms(5))
    }))
    .await;
    let load = Load::start(proxy.addr(), 4, "/");
    load.wait_for(100).await;

    let victim = backends.remove(1);
    let victim_address = victim.local_addr();
    victim.stop().await;
    eventually("the killed backend to be ejected", || async {
        proxy.backend_state(victim_address) == "ejected"
    })
    .await;
    load.wait_for(200).await;

    // Recovery: the same address answers again; once its ejection ends it gets traffic.
    let revived = tests::restart_backend(victim_address, 2).await;
    let served_by = |address| proxy.backend(address).map_or(0, |b| b.succeeded);
    let served_before = served_by(victim_address);
    eventually("the revived backend to serve again", || async {
        served_by(victim_address) > served_before + 10
    })
    .await;
    assert_eq!(proxy.backend_state(victim_address), "up");

    let report = load.finish().await;
    let metrics = proxy.admin_get("/metrics").await.body;
    let counted = |prefix: &str| -> Vec<String> {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    };
    eprintln!(
        "backend kill under load: {} requests ok, {} failed; {:?} {:?}",
        report.ok,
        report.failures.len(),
        counted("balancer_retries_total"),
        counted("balancer_outlier_ejections_total"),
    );
    assert!(report.failures.is_empty(), "failed: {:?}", report.failures);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("balancer_outlier_ejections_total{") && !l.ends_with(" 0")),
        "no ejection counted:\n{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("balancer_retries_total{pool=\"default\"}")),
        "no retry counted:\n{metrics}"
    );
    proxy.wait_for_in_flight(0).await;
    proxy.stop().await;
    tests::stop_backends(backends.into_iter().chain([revived])).await;
}

#[tokio::test]
async fn active_health_checks_take_a_dead_backend_down_and_bring_it_back_up() {
    let mut backends = start_backends(&[0, 0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().pool("default", |p| {
        p.backends(&backends).health_check(|h| {
            h.path("/status/204")
                .interval_ms(50)
                .timeout_ms(500)
                .rise(2)
                .fall(2)
                .expected_status("200-299")
        })
    }))
    .await;
    let second = backends.remove(1);
    let address = second.local_addr();
    assert_eq!(proxy.backend_state(address), "up");
    second.stop().await;
    eventually("the probes to mark the stopped backend down", || async {
        proxy.backend_state(address) == "down"
    })
    .await;
    let snapshot = proxy
        .backend(address)
        .expect("the stopped backend is still in the pool");
    assert_eq!(snapshot.state, balancer_core::BackendState::Down);
    assert!(!snapshot.eligible);
    // While it is down, every request goes to the other backend, without a retry.
    for _ in 0..10 {
        let reply = proxy.get("/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "Hello from #1\n");
    }
    let revived = tests::restart_backend(address, 2).await;
    eventually("the probes to mark the revived backend up", || async {
        proxy.backend_state(address) == "up"
    })
    .await;
    let metrics = proxy.admin_get("/metrics").await.body;
    for state in ["down", "up"] {
        let series = format!(
            "balancer_health_transitions_total{{pool=\"default\",backend=\"{address}\",state=\"{state}\"}} 1"
        );
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }
    proxy.stop().await;
    tests::stop_backends(backends.into_iter().chain([revived])).await;
}

#[tokio::test]
async fn a_probe_with_an_unexpected_status_fails() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().pool("default", |p| {
        p.backends(&backends)
            .health_check(|h| h.path("/status/500").interval_ms(50).fall(1))
    }))
    .await;
    let address = backends[0].local_addr();
    eventually("a 500 from the health path to mark it down", || async {
        proxy.backend_state(address) == "down"
    })
    .await;
    let reply = proxy.get("/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "no eligible backend in pool \"default\"\n");
    proxy.stop().await;
}

#[tokio::test]
async fn past_the_per_backend_cap_the_answer_is_503_at_once() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().pool("default", |p| {
        p.backends(&backends).max_pending_per_backend(1)
    }))
    .await;
    let address = proxy.addr();
    let slow =
        tokio::spawn(
            async move { tests::send_http1(address, tests::get("/sleep/2000", "t")).await },
        );
    proxy.wait_for_in_flight(1).await;
    // Well before the slow request ends: no waiting queue, so the refusal is immediate.
    let reply = tokio::time::timeout(Duration::from_millis(1500), proxy.get("/"))
        .await
        .expect("the 503 comes before the slow request ends");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "pool \"default\" is overloaded; retry later\n");
    assert_eq!(within("the slow request", slow).await.unwrap().status, 200);
    assert_eq!(proxy.get("/").await.status, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn below_the_panic_threshold_traffic_spreads_over_unhealthy_backends() {
    let backends = start_backends(&[0, 0]).await;
    for (panic, expected) in [(None, 503), (Some(50), 200)] {
        // Every probe fails (the health path answers 500), so both backends go down.
        let proxy = Proxy::start(ConfigBuilder::new().listen_any().pool("default", |p| {
            let p = p
                .backends(&backends)
                .health_check(|h| h.path("/status/500").interval_ms(50).fall(1));
            match panic {
                Some(percent) => p.panic_threshold_percent(percent),
                None => p,
            }
        }))
        .await;
        for backend in &backends {
            let address = backend.local_addr();
            eventually("the probes to mark both backends down", || async {
                proxy.backend_state(address) == "down"
            })
            .await;
        }
        assert_eq!(
            proxy.get("/").await.status,
            expected,
            "with panic_threshold_percent {panic:?}"
        );
        proxy.stop().await;
    }
}

#[tokio::test]
async fn an_ejection_ends_while_the_pool_is_idle() {
    let mut backends = start_backends(&[0, 0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().pool("default", |p| {
        p.backends(&backends)
            .outlier(|o| o.consecutive_failures(1).base_ejection_ms(1000))
    }))
    .await;
    let victim = backends.remove(1);
    let address = victim.local_addr();
    victim.stop().await;
    let eligible = |proxy: &Proxy| proxy.backend(address).is_some_and(|b| b.eligible);
    // Least-pending alternates, so the second request hits the dead backend (and is retried).
    for _ in 0..2 {
        assert_eq!(proxy.get("/").await.status, 200);
    }
    assert!(!eligible(&proxy), "one failure should eject it");
    // No request arrives from now on: only the maintenance tick can end the ejection.
    eventually("the ejection to end without traffic", || async {
        eligible(&proxy)
    })
    .await;
    proxy.stop().await;
}
