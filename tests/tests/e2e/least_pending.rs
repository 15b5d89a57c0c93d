//! Least-pending sends fewer requests to a slow backend, because its requests stay pending.

use tests::{ConfigBuilder, Proxy, get, start_backends, within};

#[tokio::test]
async fn least_pending_avoids_the_slow_backend() {
    let backends = start_backends(&[0, 100]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .policy("least-pending")
            .backends(&backends),
    )
    .await;
    let address = proxy.addr();
    // 4 concurrent clients, 40 requests each: bounded in count, and in time by `within`.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(tokio::spawn(async move {
            for _ in 0..40 {
                let reply = tests::send_http1(address, get("/", "test.local")).await;
                assert_eq!(reply.status, 200);
            }
        }));
    }
    within("the load", async {
        for client in clients {
            client.await.unwrap();
        }
    })
    .await;
    let fast = backends[0].served();
    let slow = backends[1].served();
    eprintln!("fast backend served {fast}, slow backend served {slow}");
    assert_eq!(fast + slow, 160);
    assert!(slow * 4 < fast, "slow backend got {slow}, fast got {fast}");
    assert_eq!(proxy.in_flight(), 0);
    proxy.stop().await;
}
