//! `GET /explain/{request-id}` on the admin listener returns the core's decision
//! records for every try of a request; unknown or evicted ids are 404, malformed ones 400.

use tests::{AsBackend, ConfigBuilder, Proxy, start_backends};

#[tokio::test]
async fn a_known_id_is_explained_with_candidates_and_the_rule() {
    let backends = start_backends(&[0, 0, 0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
    let reply = proxy
        .send(proxy.addr(), tests::get_with_id("/", "explain-me-1"))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-request-id"), "explain-me-1");

    let explained = proxy.admin_get("/explain/explain-me-1").await;
    assert_eq!(explained.status, 200, "{}", explained.body);
    assert_eq!(explained.header("content-type"), "application/json");
    let json = explained.json();
    eprintln!("{}", explained.body);
    assert_eq!(json["request_id"], "explain-me-1");
    assert_eq!(json["ring_size"], 4096);
    let tries = json["tries"].as_array().unwrap();
    assert_eq!(tries.len(), 1);
    let first = &tries[0];
    assert_eq!(first["try"], 1);
    assert_eq!(first["retry"], false);
    assert_eq!(first["pool"], "default");
    assert_eq!(first["policy"], "least-pending");
    assert_eq!(first["decision"], "dispatch");
    assert_eq!(first["eligible"], 3);
    assert_eq!(first["backends"], 3);
    // Idle pool: all three tie at 0 pending.
    assert_eq!(first["ties"], 3);
    let chosen = first["chosen"].as_str().unwrap();
    let served_by = format!(
        "127.0.0.1:{}",
        backends[reply.header("x-backend-id").parse::<usize>().unwrap() - 1]
            .local_addr()
            .port()
    );
    assert_eq!(chosen, served_by);
    let rule = first["rule"].as_str().unwrap();
    assert!(
        rule.starts_with(&format!(
            "least-pending chose {chosen} (0 pending, weight 1), the fewest of 3 eligible"
        )),
        "{rule}"
    );
    assert!(rule.contains("3 tied at 0 pending"), "{rule}");
    let candidates = first["candidates"].as_array().unwrap();
    assert_eq!(candidates[0]["role"], "chosen");
    assert_eq!(candidates[0]["address"], chosen);
    assert_eq!(candidates[0]["pending"], 0);
    assert_eq!(candidates[0]["weight"], 1);
    assert_eq!(candidates[0]["state"], "eligible");
    assert!(candidates[0]["ewma_ms"].is_number());
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    proxy.stop().await;
}

#[tokio::test]
async fn a_retry_is_a_second_try_under_the_same_id_naming_the_skipped_backend() {
    let backends = start_backends(&[0]).await;
    // A port nothing listens on: connecting fails, the GET is retried on the live backend.
    let dead_port = tests::DeadPort::new();
    let dead = dead_port.address().port();
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().pool("p", |p| {
        p.policy("round-robin")
            .backends([dead_port.backend(), backends[0].backend()])
    }))
    .await;
    // Round-robin starts at the first backend: the dead one, then the retry.
    let reply = proxy
        .send(proxy.addr(), tests::get_with_id("/", "retried"))
        .await;
    assert_eq!(reply.status, 200);
    let json = proxy.admin_get("/explain/retried").await.json();
    let tries = json["tries"].as_array().unwrap();
    assert_eq!(tries.len(), 2, "{json}");
    assert_eq!(tries[0]["chosen"], format!("127.0.0.1:{dead}"));
    assert_eq!(tries[1]["retry"], true);
    assert_eq!(tries[1]["chosen"], backends[0].local_addr().to_string());
    let skipped = &tries[1]["skipped"][0];
    assert_eq!(skipped["address"], format!("127.0.0.1:{dead}"));
    assert_eq!(skipped["reason"], "already tried");
    let rule = tries[1]["rule"].as_str().unwrap();
    assert!(rule.contains("a retry"), "{rule}");
    assert!(
        rule.contains(&format!("127.0.0.1:{dead} already tried")),
        "{rule}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn an_evicted_id_is_404_naming_the_ring_size_and_a_malformed_one_400() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .explain_ring_size(2)
            .backends(&backends),
    )
    .await;
    for id in ["old-1", "new-2", "new-3"] {
        assert_eq!(
            proxy
                .send(proxy.addr(), tests::get_with_id("/", id))
                .await
                .status,
            200
        );
    }
    let evicted = proxy.admin_get("/explain/old-1").await;
    assert_eq!(evicted.status, 404);
    assert!(
        evicted.body.contains("explain_ring_size = 2"),
        "{}",
        evicted.body
    );
    assert!(evicted.body.contains("last 2 tries"), "{}", evicted.body);
    assert_eq!(proxy.admin_get("/explain/new-3").await.status, 200);
    assert_eq!(proxy.admin_get("/explain/never-seen").await.status, 404);

    let too_long = "x".repeat(129);
    let reply = proxy.admin_get(&format!("/explain/{too_long}")).await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("at most 128"), "{}", reply.body);
    let reply = proxy.admin_get("/explain/a%20b").await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("not printable ASCII"), "{}", reply.body);
    assert_eq!(proxy.admin_get("/explain/bad%zz").await.status, 400);
    proxy.stop().await;
}

#[tokio::test]
async fn explanations_off_answers_404_saying_so() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .explain_ring_size(0)
            .backends(&backends),
    )
    .await;
    assert_eq!(
        proxy
            .send(proxy.addr(), tests::get_with_id("/", "x1"))
            .await
            .status,
        200
    );
    let reply = proxy.admin_get("/explain/x1").await;
    assert_eq!(reply.status, 404);
    assert!(
        reply.body.contains("explain_ring_size = 0"),
        "{}",
        reply.body
    );
    proxy.stop().await;
}
