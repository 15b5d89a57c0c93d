//! Hot reload: `POST /reload` re-reads the file; under load no request fails, backends kept
//! across keep their state, gone ones drain; a bad file is refused and the old config serves.

use balancer_tokio::Config;
use tests::{
    AsBackend, Backend, ConfigBuilder, ConfigFile, Load, Pool, Proxy, eventually, start_backends,
    within,
};

/// A config with one pool, "default", of `backends` and the rest from `pool`.
fn with_pool<B: AsBackend>(
    backends: impl IntoIterator<Item = B>,
    pool: impl FnOnce(Pool) -> Pool,
) -> ConfigBuilder {
    ConfigBuilder::new()
        .listen_any()
        .pool("default", |p| pool(p.backends(backends)))
}

#[tokio::test]
async fn reload_under_load_fails_no_request_and_keeps_backend_state() {
    // The load keeps both cores busy for seconds.
    let _turn = tests::serial().await;
    let backends = start_backends(&[1, 1, 1]).await;
    let [a, b, c] = [0, 1, 2].map(|i| backends[i].local_addr());
    let file = ConfigFile::new("reload-load", with_pool([a, b], |p| p));
    let proxy = Proxy::start_file(&file).await;
    let load = Load::start(proxy.addr(), 4, "/");
    load.wait_for(100).await;
    // A slow request in flight across the reload finishes on the config it started with.
    let address = proxy.addr();
    let slow = tokio::spawn(async move {
        tests::send_http1(address, tests::get("/sleep/400", "slow.test")).await
    });
    let b_before = proxy
        .backend(b)
        .map(|b| b.dispatched)
        .expect("b is in the pool");

    // A goes, C comes, B stays (with a new weight).
    file.write(with_pool([Backend::at(b).weight(2), Backend::at(c)], |p| p));
    let reply = proxy.admin_post("/reload").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.starts_with("reloaded: 1 listener(s)"),
        "{}",
        reply.body
    );
    // The answer says what changed, backend by backend.
    for change in [
        format!("backends[{b}].weight"),
        format!("backends[{c}] (new)"),
        format!("backends[{a}] (removed)"),
    ] {
        assert!(reply.body.contains(&change), "{change}: {}", reply.body);
    }
    load.wait_for(200).await;
    assert!(backends[2].served() > 0, "the new backend got no traffic");
    let b_after = proxy
        .backend(b)
        .map(|b| b.dispatched)
        .expect("b is still in the pool");
    assert!(
        b_after > b_before,
        "b's counters restarted: {b_before} -> {b_after}"
    );
    eventually("the removed backend to drain and leave", || async {
        proxy.backend(a).map(|b| b.dispatched).is_none()
    })
    .await;
    let a_served = backends[0].served();

    // A reload that changes the scheduler settings reconfigures the scheduler in place; still
    // no failure.
    file.write(with_pool([a, b, c], |p| p.policy("round-robin")));
    let reply = proxy.admin_post("/reload").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    load.wait_for(200).await;
    assert!(
        backends[0].served() > a_served,
        "the re-added backend got no traffic"
    );

    assert_eq!(within("the slow request", slow).await.unwrap().status, 200);
    let report = load.finish().await;
    eprintln!(
        "reload under load: {} requests ok, {} failed (2 reloads)",
        report.ok,
        report.failures.len()
    );
    assert!(report.failures.is_empty(), "failed: {:?}", report.failures);
    let metrics = proxy.admin_get("/metrics").await.body;
    assert!(
        metrics.contains("balancer_config_reloads_total{result=\"ok\"} 2"),
        "{metrics}"
    );
    proxy.wait_for_in_flight(0).await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_bad_file_is_refused_with_checks_message_and_the_old_config_keeps_serving() {
    let backends = start_backends(&[0]).await;
    let good = with_pool(&backends, |p| p).to_string();
    let file = ConfigFile::new("reload-bad", &good);
    let proxy = Proxy::start_file(&file).await;
    let config_before = proxy.admin_get("/config").await.body;

    // Deliberately bad files, as a hand edit of the good one makes them: literal TOML.
    let bad_files = [
        good.replace("[pools.default]", "[pools.default]\ntimeout = 3"),
        format!("{good}[[routes]]\npool = \"missing\"\n"),
        good.replace("backends = [", "backends = "),
        good.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.2:0\""),
    ];
    for bad in &bad_files {
        assert_ne!(bad, &good, "the edit found nothing to change");
        file.write(bad);
        let reply = proxy.admin_post("/reload").await;
        assert_eq!(reply.status, 400, "{bad}\n{}", reply.body);
        // What `balancer check FILE` prints after "balancer: error: ".
        match Config::load(&file.path) {
            Err(expected) => assert_eq!(reply.body, format!("reload refused: {expected}\n")),
            Ok(_) => assert!(
                reply.body.contains("restart the balancer"),
                "{}",
                reply.body
            ),
        }
        let served = proxy.get("/").await;
        assert_eq!(served.status, 200);
        assert_eq!(served.body, "Hello from #1\n");
    }
    assert_eq!(proxy.admin_get("/config").await.body, config_before);
    let metrics = proxy.admin_get("/metrics").await.body;
    assert!(
        metrics.contains("balancer_config_reloads_total{result=\"error\"} 4"),
        "{metrics}"
    );
    // A balancer started without a file says so.
    let plain = Proxy::start(&good).await;
    let reply = plain.admin_post("/reload").await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.body.contains("not started from a config file"),
        "{}",
        reply.body
    );
    plain.stop().await;
    proxy.stop().await;
}

#[tokio::test]
async fn changed_scheduler_settings_apply_in_place_and_backends_keep_their_state() {
    let backends = start_backends(&[0, 0, 0]).await;
    let [a, b, c] = [0, 1, 2].map(|i| backends[i].local_addr());
    let file = ConfigFile::new("reload-reconfigure", with_pool([a, b, c], |p| p));
    let proxy = Proxy::start_file(&file).await;
    for _ in 0..9 {
        assert_eq!(proxy.get("/").await.status, 200);
    }
    let before = proxy.running().proxy().pools()[0].clone();
    let a_before = proxy.backend(a).map(|b| b.dispatched).unwrap();
    assert!(a_before > 0);
    // Operator state: c drained by hand. A slow request is in flight across the reload.
    let reply = proxy
        .admin_post(&format!("/backends/default/{c}/drain"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let address = proxy.addr();
    let slow = tokio::spawn(async move {
        tests::send_http1(address, tests::get("/sleep/300", "slow.test")).await
    });
    proxy.wait_for_in_flight(1).await;

    file.write(with_pool([a, b, c], |p| {
        p.policy("round-robin")
            .max_pending_per_backend(50)
            .outlier(|o| o.consecutive_failures(3))
    }));
    let reply = proxy.admin_post("/reload").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let after = proxy.running().proxy().pools()[0].clone();
    assert!(
        after.shares_core_with(&before),
        "the scheduler was replaced"
    );
    // The request in flight is still counted, and its done is accepted (`stop` checks).
    assert_eq!(after.in_flight(), 1);
    let a_after = proxy.backend(a).map(|b| b.dispatched).unwrap();
    // (The slow request may have gone to a: at least as many, never restarted from 0.)
    assert!(
        a_after >= a_before,
        "a's counters restarted: {a_before} -> {a_after}"
    );
    let states: Vec<String> = after
        .views()
        .iter()
        .map(|v| v.state_name(after.clock.now()).to_owned())
        .collect();
    assert_eq!(states, ["up", "up", "drained"]);

    // The new policy decides from now on, as the decision records show.
    let request = tests::get_with_id("/", "after-reload");
    assert_eq!(proxy.send(proxy.addr(), request).await.status, 200);
    let explained = proxy.admin_get("/explain/after-reload").await.json();
    assert_eq!(explained["tries"][0]["policy"], "round-robin");
    assert_eq!(explained["tries"][0]["eligible"], 2);
    assert_eq!(within("the slow request", slow).await.unwrap().status, 200);
    proxy.wait_for_in_flight(0).await;
    proxy.stop().await;
}
