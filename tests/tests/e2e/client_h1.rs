//! The client side of HTTP/1.1 (balancer-tokio/src/h1.rs): plain requests served by the
//! hand-written path, the hand-over to hyper at the first request it does not cover, and the
//! framing of what it writes, read byte for byte from raw connections over loopback.

use std::time::Duration;

use tests::{Act, ConfigBuilder, Proxy, RawBackend, raw_exchange, start_backends};

/// One response as read off the wire.
#[derive(Debug)]
struct Wire {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits `bytes` into responses, framed as RFC 9112 says; `heads` says which requests were
/// HEAD (no body whatever the length says).
fn responses(mut bytes: &[u8], heads: &[bool]) -> Vec<Wire> {
    let mut out = Vec::new();
    for &head_request in heads {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(head_len)) = parsed.parse(bytes) else {
            break;
        };
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let status = parsed.code.unwrap_or(0);
        bytes = &bytes[head_len..];
        let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let chunked = find("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let mut body = Vec::new();
        if head_request {
        } else if chunked {
            loop {
                let line_end = bytes
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .expect("chunk size");
                let size =
                    usize::from_str_radix(std::str::from_utf8(&bytes[..line_end]).unwrap(), 16)
                        .expect("hex chunk size");
                bytes = &bytes[line_end + 2..];
                if size == 0 {
                    assert_eq!(&bytes[..2], b"\r\n", "no trailers expected");
                    bytes = &bytes[2..];
                    break;
                }
                body.extend_from_slice(&bytes[..size]);
                assert_eq!(&bytes[size..size + 2], b"\r\n", "chunk ends with CRLF");
                bytes = &bytes[size + 2..];
            }
        } else if let Some(length) = find("content-length") {
            let length: usize = length.parse().expect("numeric length");
            body.extend_from_slice(&bytes[..length]);
            bytes = &bytes[length..];
        }
        out.push(Wire {
            status,
            headers,
            body,
            chunked,
        });
    }
    assert!(
        bytes.is_empty(),
        "bytes after the last response: {:?}",
        String::from_utf8_lossy(bytes)
    );
    out
}

async fn proxy_with_backend() -> (Proxy, Vec<balancer_tokio::DemoBackend>) {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .workers(1)
            .backends(&backends),
    )
    .await;
    (proxy, backends)
}

#[tokio::test]
async fn pipelined_plain_requests_then_a_body_are_answered_in_order() {
    let (proxy, _backends) = proxy_with_backend().await;
    // Three plain requests (the hand-written path), then a POST with a body (hyper from there
    // on), then a plain GET that hyper now serves, closing the connection.
    let requests = "GET /headers?n=1 HTTP/1.1\r\nhost: a\r\nx-one: 1\r\n\r\n\
                    HEAD / HTTP/1.1\r\nhost: a\r\n\r\n\
                    GET /stream?bytes=100&chunk_bytes=30 HTTP/1.1\r\nhost: a\r\n\r\n\
                    POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello\
                    GET /headers?n=5 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    let received = raw_exchange(proxy.addr(), requests.as_bytes(), Duration::ZERO).await;
    let wire = responses(received.as_bytes(), &[false, true, false, false, false]);
    assert_eq!(wire.len(), 5, "{received}");
    assert!(wire.iter().all(|w| w.status == 200), "{received}");
    assert!(
        wire.iter().all(|w| w.header("date").is_some()),
        "{received}"
    );

    let first = String::from_utf8_lossy(&wire[0].body);
    assert!(first.starts_with("GET /headers?n=1 HTTP/1.1"), "{first}");
    assert!(first.contains("x-one: 1"), "{first}");
    assert!(first.contains("x-forwarded-for: 127.0.0.1"), "{first}");
    // HEAD: the length of the body a GET would get, and no body.
    assert!(wire[1].header("content-length").is_some(), "{received}");
    assert!(wire[1].body.is_empty());
    assert_eq!(wire[2].body.len(), 100);
    assert_eq!(wire[3].body, b"hello");
    let last = String::from_utf8_lossy(&wire[4].body);
    assert!(last.starts_with("GET /headers?n=5 HTTP/1.1"), "{last}");
    assert_eq!(wire[4].header("connection"), Some("close"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_body_of_unknown_length_goes_out_chunked() {
    let backend = RawBackend::start(|_, _| {
        Act::Answer(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
        )
    })
    .await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .workers(1)
            .backends([&backend]),
    )
    .await;
    let requests = "GET /a HTTP/1.1\r\nhost: a\r\n\r\n\
                    GET /b HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    let received = raw_exchange(proxy.addr(), requests.as_bytes(), Duration::ZERO).await;
    let wire = responses(received.as_bytes(), &[false, false]);
    assert_eq!(wire.len(), 2, "{received}");
    for answer in &wire {
        assert_eq!(answer.status, 200);
        assert!(answer.chunked, "{received}");
        assert_eq!(answer.header("content-length"), None, "{received}");
        assert_eq!(answer.body, b"hello, world");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn connection_close_is_honoured_on_the_plain_path() {
    let (proxy, _backends) = proxy_with_backend().await;
    // The request after the one asking to close is never answered: the proxy closed.
    let requests = "GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n\
                    GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    let received = raw_exchange(proxy.addr(), requests.as_bytes(), Duration::ZERO).await;
    let wire = responses(received.as_bytes(), &[false]);
    assert_eq!(wire.len(), 1, "{received}");
    assert_eq!(wire[0].status, 200);
    assert_eq!(wire[0].header("connection"), Some("close"));
    assert!(String::from_utf8_lossy(&wire[0].body).starts_with("Hello from #"));
    proxy.stop().await;
}

#[tokio::test]
async fn the_proxys_own_answers_and_304s_are_framed() {
    let (proxy, _backends) = proxy_with_backend().await;
    let requests = "GET /status/404 HTTP/1.1\r\nhost: a\r\n\r\n\
                    GET /status/304 HTTP/1.1\r\nhost: a\r\n\r\n\
                    GET /status/204 HTTP/1.1\r\nhost: a\r\n\r\n\
                    GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    let received = raw_exchange(proxy.addr(), requests.as_bytes(), Duration::ZERO).await;
    let wire = responses(received.as_bytes(), &[false, true, true, false]);
    let statuses: Vec<u16> = wire.iter().map(|w| w.status).collect();
    assert_eq!(statuses, [404, 304, 204, 200], "{received}");
    proxy.stop().await;

    // No backend at all: the proxy's own 503 on the plain path, then the connection goes on.
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .workers(1)
            .backends(["127.0.0.1:1"]),
    )
    .await;
    let requests =
        "GET / HTTP/1.1\r\nhost: a\r\n\r\nGET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    let received = raw_exchange(proxy.addr(), requests.as_bytes(), Duration::ZERO).await;
    let wire = responses(received.as_bytes(), &[false, false]);
    assert_eq!(wire.len(), 2, "{received}");
    for answer in &wire {
        assert_eq!(answer.status, 502, "{received}");
        let text = String::from_utf8_lossy(&answer.body);
        assert!(text.contains("127.0.0.1:1"), "{text}");
        assert_eq!(
            answer.header("content-length"),
            Some(answer.body.len().to_string().as_str())
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_bad_head_after_plain_requests_gets_hyper_s_400() {
    let (proxy, _backends) = proxy_with_backend().await;
    let requests = "GET / HTTP/1.1\r\nhost: a\r\n\r\nGET / HTTP/1.1\r\nbad header line\r\n\r\n";
    let received = raw_exchange(proxy.addr(), requests.as_bytes(), Duration::ZERO).await;
    let wire = responses(received.as_bytes(), &[false, false]);
    let statuses: Vec<u16> = wire.iter().map(|w| w.status).collect();
    assert_eq!(statuses, [200, 400], "{received}");
    // A target httparse takes and `http` refuses (the plain path's own 400).
    let requests = "GET / HTTP/1.1\r\nhost: a\r\n\r\nGET /a<b> HTTP/1.1\r\nhost: a\r\n\r\n";
    let received = raw_exchange(proxy.addr(), requests.as_bytes(), Duration::ZERO).await;
    let wire = responses(received.as_bytes(), &[false, false]);
    let statuses: Vec<u16> = wire.iter().map(|w| w.status).collect();
    assert_eq!(statuses, [200, 400], "{received}");
    // And the proxy goes on serving.
    assert_eq!(proxy.get("/").await.status, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .workers(1)
            .header_read_timeout_ms(200)
            .backends(&backends),
    )
    .await;
    // One plain request, then silence: the answer, then a close without a second answer.
    let started = std::time::Instant::now();
    let received = raw_exchange(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
        Duration::ZERO,
    )
    .await;
    let waited = started.elapsed();
    let wire = responses(received.as_bytes(), &[false]);
    assert_eq!(wire.len(), 1, "{received}");
    assert!(waited < Duration::from_secs(4), "closed after {waited:?}");
    // A head begun and not finished within the timeout gets its 408.
    let received = raw_exchange(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nhost: a\r\n\r\nGET / HTTP/1.1\r\nhost:",
        Duration::ZERO,
    )
    .await;
    let wire = responses(received.as_bytes(), &[false, false]);
    let statuses: Vec<u16> = wire.iter().map(|w| w.status).collect();
    assert_eq!(statuses, [200, 408], "{received}");
    proxy.stop().await;
}
