//! Graceful shutdown: a request in flight completes; new connections are refused.

use std::time::Duration;

use balancer_tokio::ShutdownReport;
use tests::{Proxy, get, start_backends, toml_list};
use tokio::net::TcpStream;

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(&format!(
        "listen = \"127.0.0.1:0\"\naccess_log = \"off\"\nshutdown_grace_ms = 5000\nbackends = {}\n",
        toml_list(&backends)
    ))
    .await;
    let address = proxy.addr();
    let in_flight = tokio::spawn(tests::send_http1(address, get("/sleep/800", "a")));
    proxy.wait_for_in_flight(1).await;

    let stopping = tokio::spawn(proxy.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(address).await.is_err(),
        "still accepting while draining"
    );

    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "Hello from #1\n");
    assert_eq!(stopping.await.unwrap(), ShutdownReport::Drained);
}

#[tokio::test]
async fn shutdown_gives_up_after_the_grace_period() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(&format!(
        "listen = \"127.0.0.1:0\"\naccess_log = \"off\"\nshutdown_grace_ms = 200\nbackends = {}\n",
        toml_list(&backends)
    ))
    .await;
    let address = proxy.addr();
    let _stuck = tokio::spawn(tests::send_http1(address, get("/sleep/10000", "a")));
    proxy.wait_for_in_flight(1).await;
    let started = std::time::Instant::now();
    assert_eq!(proxy.stop().await, ShutdownReport::GraceExpired);
    assert!(started.elapsed() < Duration::from_secs(2));
}
