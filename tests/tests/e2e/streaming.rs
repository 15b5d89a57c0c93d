//! Bodies stream both ways with bounded memory: a 50 MB body passes while the receiver stalls,
//! and the sender is held back instead of the proxy buffering the difference.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tests::{ConfigBuilder, CountingBackend, CountingBody, Proxy, within};
use tokio::net::TcpStream;

const BODY_BYTES: u64 = 50 * 1024 * 1024;
/// What loopback socket buffers (client, proxy both sides, backend) and hyper's buffers may
/// hold between sender and receiver; well under the 50 MB a buffering proxy would hold.
const MAX_IN_TRANSIT_BYTES: u64 = 32 * 1024 * 1024;
const STALL: Duration = Duration::from_millis(700);

async fn proxy_to(backend: &CountingBackend) -> Proxy {
    Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .max_body_bytes(104857600)
            .backends([backend]),
    )
    .await
}

#[tokio::test]
async fn a_50_mb_download_streams_while_the_client_stalls() {
    let backend = CountingBackend::start(Duration::ZERO).await;
    let proxy = proxy_to(&backend).await;
    let mut sender = tests::connect(proxy.addr()).await.unwrap();
    let request = tests::get(&format!("/download?bytes={BODY_BYTES}"), "a");
    let response = within("response head", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received: u64 = 0;
    let mut stalled = false;
    within("the download", async {
        while let Some(frame) = body.frame().await {
            received += frame.unwrap().into_data().map_or(0, |d| d.len() as u64);
            if !stalled && received >= 1 << 20 {
                stalled = true;
                tokio::time::sleep(STALL).await;
                let in_transit = backend.produced.load(Ordering::SeqCst) - received;
                assert!(
                    in_transit <= MAX_IN_TRANSIT_BYTES,
                    "{in_transit} bytes produced but not received: the proxy buffers"
                );
            }
        }
    })
    .await;
    assert_eq!(received, BODY_BYTES);
    assert_eq!(proxy.in_flight(), 0, "done reported at the end of the body");
    proxy.stop().await;
}

#[tokio::test]
async fn a_50_mb_upload_streams_while_the_backend_stalls() {
    let backend = CountingBackend::start(STALL).await;
    let proxy = proxy_to(&backend).await;
    let sent = Arc::new(AtomicU64::new(0));
    let request = Request::post("/upload")
        .header("host", "a")
        .body(CountingBody::new(BODY_BYTES, sent.clone()))
        .unwrap();
    let address = proxy.addr();
    let upload = tokio::spawn(tests::send_http1(address, request));
    // Sample while the backend sleeps after its first MiB.
    let mut worst_in_transit = 0;
    for _ in 0..20 {
        tokio::time::sleep(STALL / 20).await;
        let in_transit = sent.load(Ordering::SeqCst) - backend.consumed.load(Ordering::SeqCst);
        worst_in_transit = worst_in_transit.max(in_transit);
    }
    assert!(
        worst_in_transit <= MAX_IN_TRANSIT_BYTES,
        "{worst_in_transit} bytes sent but not consumed: the proxy buffers"
    );
    let reply = within("the upload", upload).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, format!("received {BODY_BYTES} bytes"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_leaving_mid_download_is_reported_as_done() {
    let backend = CountingBackend::start(Duration::ZERO).await;
    let proxy = proxy_to(&backend).await;
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let request = tests::get(&format!("/download?bytes={BODY_BYTES}"), "a");
    let response = within("response head", sender.send_request(request))
        .await
        .unwrap();
    let mut body = response.into_body();
    let _ = body.frame().await;
    assert_eq!(
        proxy.in_flight(),
        1,
        "a streaming download is pending in the core"
    );
    drop(body);
    drop(sender);
    connection.abort();
    proxy.wait_for_in_flight(0).await;
    proxy.stop().await;
}
