//! Rate limits: per client IP, per route and global, 429 with `Retry-After`; the per-client
//! state stays within `max_tracked_clients` however many addresses ask.

use std::net::{Ipv4Addr, SocketAddr};

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tests::{ConfigBuilder, Proxy, get, start_backends, within};

/// `GET /` from the loopback address `source` (any of 127.0.0.0/8 works on Linux).
async fn get_from(source: Ipv4Addr, proxy: SocketAddr) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let stream = socket.connect(proxy).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(get("/", "t")).await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let _ = response.into_body().collect().await;
    (status, retry_after)
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .backends(&backends)
            .rate_limit(|l| l.per_client(1, 2)),
    )
    .await;
    assert_eq!(proxy.get("/").await.status, 200);
    assert_eq!(proxy.get("/").await.status, 200);
    let refused = proxy.get("/").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(
        refused.body,
        "too many requests (client limit); retry in 1 s\n"
    );
    // Another client address has its own budget.
    let other = within(
        "another client",
        get_from(Ipv4Addr::new(127, 0, 0, 2), proxy.addr()),
    )
    .await;
    assert_eq!(other.0, 200);
    let metrics = proxy.admin_get("/metrics").await.body;
    assert!(
        metrics.contains("balancer_rate_limited_total{limit=\"client\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("status=\"429\"} 1"),
        "429s are counted as requests too:\n{metrics}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn route_and_global_limits() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .rate_limit(|l| l.global(1, 4))
            .pool("web", |p| p.backends(&backends))
            .route(|r| {
                r.name("tight")
                    .path_prefix("/tight")
                    .pool("web")
                    .rate_limit(1, 1)
            })
            .route(|r| r.name("rest").pool("web")),
    )
    .await;
    assert_eq!(proxy.get("/tight").await.status, 200);
    let refused = proxy.get("/tight").await;
    assert_eq!(refused.status, 429);
    assert!(refused.body.contains("(route limit)"), "{}", refused.body);
    // The route limit refused before the global one was charged: 3 of its 4 remain.
    for _ in 0..3 {
        assert_eq!(proxy.get("/other").await.status, 200);
    }
    let refused = proxy.get("/other").await;
    assert_eq!(refused.status, 429);
    assert!(refused.body.contains("(global limit)"), "{}", refused.body);
    assert_eq!(refused.header("retry-after"), "1");
    proxy.stop().await;
}

#[tokio::test]
async fn per_client_state_stays_within_max_tracked_clients() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .backends(&backends)
            .rate_limit(|l| l.per_client(1, 1).max_tracked_clients(10)),
    )
    .await;
    let tracked = || proxy.running().proxy().rate_limits().tracked_clients();
    for n in 2..=61u8 {
        let source = Ipv4Addr::new(127, 0, 0, n);
        let (status, _) = within("a client", get_from(source, proxy.addr())).await;
        // A client's first request always passes (its burst is 1), whether or not the map
        // had to forget others to make room.
        assert_eq!(status, 200, "first request from {source}");
        assert!(
            tracked() <= 10,
            "{} clients tracked after {source}",
            tracked()
        );
    }
    // The most recent client is still remembered: its second request at once is refused.
    let (status, retry_after) = within(
        "a repeat",
        get_from(Ipv4Addr::new(127, 0, 0, 61), proxy.addr()),
    )
    .await;
    assert_eq!((status, retry_after.as_str()), (429, "1"));
    proxy.stop().await;
}
