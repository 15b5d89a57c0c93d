//! Retries: idempotent requests go to another backend after a connect failure; POST only when
//! configured and its body could be kept; 503s only with `retry_on_503`; per-try and overall
//! timeouts.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tests::{AsBackend, ConfigBuilder, DeadPort, Proxy, Retry, start_backends};

fn post(path: &str, body: Vec<u8>) -> Request<Full<Bytes>> {
    Request::post(path)
        .header(http::header::HOST, "t")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn retries(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("balancer_retries_total{pool=\"default\"} "))
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn gets_are_retried_posts_only_when_allowed_and_small() {
    let backends = start_backends(&[0]).await;
    // Nothing listens there: connecting is refused at once.
    let dead = DeadPort::new();
    let pool = |retry: fn(Retry) -> Retry| {
        ConfigBuilder::new().listen_any().pool("default", |p| {
            p.backends([dead.backend(), backends[0].backend()])
                .retry(|r| retry(r.backoff_base_ms(1)))
        })
    };
    let proxy = Proxy::start(pool(|r| r)).await;
    // Least-pending alternates between the two idle backends, so half the first tries fail.
    for _ in 0..10 {
        let reply = proxy.get("/").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            proxy
                .send(proxy.addr(), post("/echo", b"x".to_vec()))
                .await
                .status
                .as_u16(),
        );
    }
    assert!(
        statuses.contains(&502),
        "POST was retried by default: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 502].contains(s)),
        "{statuses:?}"
    );
    assert!(retries(&proxy.admin_get("/metrics").await.body) >= 3);
    proxy.stop().await;

    let proxy = Proxy::start(pool(|r| r.retry_non_idempotent(true))).await;
    for _ in 0..10 {
        let reply = proxy
            .send(proxy.addr(), post("/echo", b"small body".to_vec()))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body, "small body", "the replayed body arrived whole");
    }
    // Above the 64 KiB replay buffer a body streams once and cannot be retried.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let reply = proxy
            .send(proxy.addr(), post("/echo", vec![b'y'; 100 * 1024]))
            .await;
        if reply.status == 200 {
            assert_eq!(reply.body.len(), 100 * 1024);
        }
        statuses.push(reply.status.as_u16());
    }
    assert!(
        statuses.contains(&502),
        "a streamed body was retried: {statuses:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_503_is_retried_only_with_retry_on_503() {
    let backends = start_backends(&[0, 0]).await;
    for (retry_on_503, expected_retries) in [(false, 0), (true, 4)] {
        let proxy = Proxy::start(ConfigBuilder::new().listen_any().pool("default", |p| {
            p.backends(&backends)
                .retry(|r| r.retry_on_503(retry_on_503).backoff_base_ms(1))
        }))
        .await;
        for _ in 0..4 {
            let reply = proxy.get("/status/503").await;
            // Both backends say 503: after the retry the second answer goes to the client.
            assert_eq!(reply.status, 503);
            assert!(
                reply.body.starts_with("status 503 from #"),
                "{}",
                reply.body
            );
        }
        assert_eq!(
            retries(&proxy.admin_get("/metrics").await.body),
            expected_retries,
            "retry_on_503 = {retry_on_503}"
        );
        proxy.stop().await;
    }
}

#[tokio::test]
async fn per_try_and_overall_timeouts_bound_a_request() {
    let backends = start_backends(&[0, 0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().pool("default", |p| {
        p.backends(&backends)
            .response_header_timeout_ms(200)
            .request_timeout_ms(300)
            .retry(|r| r.backoff_base_ms(1))
    }))
    .await;
    let reply = proxy.get("/sleep/5000").await;
    assert_eq!(reply.status, 504);
    // The second try only had what was left of the overall 300 ms.
    let ms: u64 = reply
        .body
        .split("within ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected body {:?}", reply.body));
    assert!(
        ms < 200,
        "second try was not cut to the overall timeout: {}",
        reply.body
    );
    assert_eq!(retries(&proxy.admin_get("/metrics").await.body), 1);
    proxy.wait_for_in_flight(0).await;
    proxy.stop().await;
}
