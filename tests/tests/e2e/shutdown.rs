//! Graceful shutdown: a request in flight completes; a request already sent on an idle
//! keep-alive connection is answered; new connections are refused.

use std::time::Duration;

use balancer_tokio::ShutdownReport;
use tests::{ConfigBuilder, Proxy, get, start_backends};
use tokio::net::TcpStream;

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .shutdown_grace_ms(5000)
            .backends(&backends),
    )
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
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .shutdown_grace_ms(200)
            .backends(&backends),
    )
    .await;
    let address = proxy.addr();
    let _stuck = tokio::spawn(tests::send_http1(address, get("/sleep/10000", "a")));
    proxy.wait_for_in_flight(1).await;
    let started = std::time::Instant::now();
    assert_eq!(proxy.stop().await, ShutdownReport::GraceExpired);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_request_sent_on_an_idle_connection_as_draining_begins_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backends = start_backends(&[0]).await;
    // One worker: the connection's task runs on this test's runtime, so the order below is
    // the order in which the proxy sees things.
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .workers(1)
            .shutdown_grace_ms(5000)
            .backends(&backends),
    )
    .await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"GET /first HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while !received.ends_with(b"Hello from #1\n") {
        let read = stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "closed before the first answer");
        received.extend_from_slice(&chunk[..read]);
    }
    // The connection is idle, waiting for its next head. The next request is in the socket
    // before the proxy's task runs again, and so is the start of draining.
    stream
        .write_all(b"GET /second HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let stopping = tokio::spawn(proxy.stop());
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the proxy closes the connection")
        .expect("read the answer");
    let rest = String::from_utf8_lossy(&rest);
    assert_eq!(tests::raw_status(&rest), 200, "{rest:?}");
    assert!(rest.contains("connection: close\r\n"), "{rest}");
    assert!(rest.ends_with("Hello from #1\n"), "{rest}");
    assert_eq!(stopping.await.unwrap(), ShutdownReport::Drained);
}
