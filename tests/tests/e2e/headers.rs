//! Header rewriting: X-Forwarded-*, Via, x-request-id; hop-by-hop headers stripped both ways.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use tests::{ConfigBuilder, Proxy, start_backends};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test]
async fn forwarding_headers_are_added_and_hop_by_hop_ones_stripped() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
    let request = Request::get("/headers")
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "203.0.113.7")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic eA==")
        .header("x-end-to-end", "kept")
        .header("x-request-id", "client-chosen-id")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let reply = proxy.send(proxy.addr(), request).await;
    assert_eq!(reply.status, 200);
    let seen = reply.body.to_lowercase();
    for expected in [
        "x-forwarded-for: 203.0.113.7, 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: shop.example.com",
        "via: 1.1 balancer",
        "x-end-to-end: kept",
        "x-request-id: client-chosen-id",
        "host: shop.example.com",
    ] {
        assert!(
            seen.contains(expected),
            "backend did not see {expected:?}:\n{seen}"
        );
    }
    for stripped in ["x-hop", "keep-alive", "te:", "proxy-authorization"] {
        assert!(
            !seen.contains(stripped),
            "backend saw {stripped:?}:\n{seen}"
        );
    }
    assert_eq!(reply.header("x-request-id"), "client-chosen-id");
    assert_eq!(reply.header("via"), "1.1 balancer");

    // Without one, an id is made, sent to the backend and returned.
    let reply = proxy.get("/headers").await;
    let id = reply.header("x-request-id").to_owned();
    assert!(!id.is_empty());
    assert!(
        reply.body.contains(&format!("x-request-id: {id}")),
        "{}",
        reply.body
    );
    proxy.stop().await;
}

/// A backend that answers every request with hop-by-hop headers a proxy must not pass on.
async fn rude_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nconnection: x-private\r\nx-private: 1\r\n\
                          keep-alive: timeout=60\r\nproxy-authenticate: Basic\r\n\
                          x-public: 1\r\ncontent-length: 2\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    address
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    let backend = rude_backend().await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends([backend])).await;
    let reply = proxy.get("/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "ok");
    assert_eq!(reply.header("x-public"), "1");
    for stripped in ["x-private", "keep-alive", "proxy-authenticate"] {
        assert!(
            !reply.headers.contains_key(stripped),
            "client saw {stripped}: {:?}",
            reply.headers
        );
    }
    proxy.stop().await;
}

/// The X-Forwarded-For line a backend saw, from the demo backend's `/headers` echo.
fn forwarded_for(echo: &str) -> Vec<&str> {
    echo.lines()
        .filter_map(|l| l.strip_prefix("x-forwarded-for: "))
        .collect()
}

#[tokio::test]
async fn x_forwarded_for_that_is_not_text_still_ends_with_the_real_client() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
    let answer = proxy
        .raw(b"GET /headers HTTP/1.1\r\nhost: a.test\r\nx-forwarded-for: 10.9.9.9\xff\r\nconnection: close\r\n\r\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = forwarded_for(&answer);
    assert_eq!(seen.len(), 1, "{answer}");
    assert!(
        seen[0].ends_with(", 127.0.0.1"),
        "the last hop must be the peer: {answer}"
    );
    assert!(seen[0].starts_with("10.9.9.9"), "{answer}");
    proxy.stop().await;
}

#[tokio::test]
async fn trusted_proxies_decide_whose_forwarding_headers_are_kept() {
    let backends = start_backends(&[0]).await;
    // The test's peer (127.0.0.1) is not in the list: what it claims is replaced.
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .trusted_proxies(&["10.0.0.0/8"])
            .backends(&backends),
    )
    .await;
    let answer = proxy
        .raw(b"GET /headers HTTP/1.1\r\nhost: a.test\r\nx-forwarded-for: 10.9.9.9\r\nforwarded: for=10.9.9.9\r\nconnection: close\r\n\r\n")
        .await;
    assert_eq!(forwarded_for(&answer), ["127.0.0.1"], "{answer}");
    assert!(!answer.contains("forwarded: for="), "{answer}");
    proxy.stop().await;
    // Trusted: both kept, the peer appended.
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .trusted_proxies(&["127.0.0.0/8"])
            .backends(&backends),
    )
    .await;
    let answer = proxy
        .raw(b"GET /headers HTTP/1.1\r\nhost: a.test\r\nx-forwarded-for: 10.9.9.9\r\nforwarded: for=10.9.9.9\r\nconnection: close\r\n\r\n")
        .await;
    assert_eq!(forwarded_for(&answer), ["10.9.9.9, 127.0.0.1"], "{answer}");
    assert!(answer.contains("forwarded: for=10.9.9.9"), "{answer}");
    proxy.stop().await;
}
