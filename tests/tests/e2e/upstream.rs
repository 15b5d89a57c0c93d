//! The backend side of a request whose body is in memory (balancer-tokio/src/upstream.rs):
//! keep-alive reuse, a kept-alive connection the backend closed, and the ways an HTTP/1.x
//! response may be framed, against raw backends over loopback that answer exactly the bytes a
//! test gives them.

use tests::{Act, ConfigBuilder, Proxy, RawBackend, raw_status};

async fn proxy_to(backend: &RawBackend) -> Proxy {
    Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .workers(1)
            .backends([backend]),
    )
    .await
}

async fn exchange(proxy: &Proxy, request: &str) -> String {
    proxy.raw(request.as_bytes()).await
}

fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// Sends `count` GETs one after another through a proxy to `backend`, each of which must be
/// answered 200 with `body`; returns how many connections the backend saw.
async fn connections_for_gets(backend: &RawBackend, count: usize, body: &str) -> u64 {
    let proxy = proxy_to(backend).await;
    for i in 0..count {
        let reply = proxy.get("/").await;
        assert_eq!(reply.status, 200, "GET {i}: {}", reply.body);
        assert_eq!(reply.body, body, "GET {i}");
    }
    proxy.stop().await;
    backend.connections()
}

#[tokio::test]
async fn kept_alive_connections_are_reused() {
    let backend = RawBackend::start(|_, _| Act::Answer(OK)).await;
    let connections = connections_for_gets(&backend, 20, "ok").await;
    assert_eq!(connections, 1, "sequential requests share one connection");
}

#[tokio::test]
async fn a_kept_alive_connection_closed_by_the_backend_costs_no_get() {
    // Every connection answers one request, then takes the next one and closes without a
    // byte: what a backend's idle timeout racing with a new request looks like.
    let backend = RawBackend::start(|n, _| if n == 0 { Act::Answer(OK) } else { Act::Close }).await;
    // Each GET after the first found the kept connection closed and went on a new one.
    assert_eq!(connections_for_gets(&backend, 20, "ok").await, 20);
}

#[tokio::test]
async fn a_post_is_not_sent_twice_on_a_closed_kept_alive_connection() {
    let backend = RawBackend::start(|n, _| if n == 0 { Act::Answer(OK) } else { Act::Close }).await;
    let proxy = proxy_to(&backend).await;
    let first = exchange(
        &proxy,
        "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx",
    )
    .await;
    assert_eq!(raw_status(&first), 200, "{first}");
    // The backend took this request and closed: it may have acted on it, so it is not
    // repeated (retries of non-idempotent methods are off by default).
    let second = exchange(
        &proxy,
        "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx",
    )
    .await;
    assert_eq!(raw_status(&second), 502, "{second}");
    assert_eq!(backend.connections(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn a_backend_that_closes_after_each_answer_is_never_reused() {
    let backend = RawBackend::start(|_, _| Act::AnswerAndClose(OK)).await;
    assert_eq!(connections_for_gets(&backend, 20, "ok").await, 20);
}

#[tokio::test]
async fn chunked_bodies_are_decoded_with_extensions_and_trailers() {
    let backend = RawBackend::start(|_, _| {
        Act::Answer(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 999\r\n\r\n\
             5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n",
        )
    })
    .await;
    let connections = connections_for_gets(&backend, 3, "hello, world").await;
    assert_eq!(connections, 1, "a chunked body's end is exact: reused");
}

#[tokio::test]
async fn a_body_without_a_length_ends_with_the_connection() {
    let backend =
        RawBackend::start(|_, _| Act::AnswerAndClose("HTTP/1.1 200 OK\r\n\r\nuntil the end")).await;
    assert_eq!(connections_for_gets(&backend, 3, "until the end").await, 3);
}

#[tokio::test]
async fn informational_responses_are_skipped() {
    let backend = RawBackend::start(|_, _| {
        Act::Answer("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone")
    })
    .await;
    let proxy = proxy_to(&backend).await;
    let reply = proxy.get("/").await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.body, "done");
    proxy.stop().await;
}

#[tokio::test]
async fn heads_and_204_have_no_body_whatever_their_length_says() {
    let backend = RawBackend::start(|n, _| {
        if n % 2 == 0 {
            Act::Answer("HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n")
        } else {
            Act::Answer("HTTP/1.1 204 No Content\r\n\r\n")
        }
    })
    .await;
    let proxy = proxy_to(&backend).await;
    let head = exchange(
        &proxy,
        "HEAD / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&head), 200, "{head}");
    assert_eq!(body_of(&head), "");
    let empty = proxy.get("/").await;
    assert_eq!(empty.status, 204);
    assert_eq!(backend.connections(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn malformed_responses_are_502_and_the_proxy_goes_on() {
    let backend = RawBackend::start(|_, overall| match overall {
        0 => Act::Answer("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello"),
        1 => Act::Answer("HTTP/1.1 2000 Nope\r\n\r\n"),
        2 => Act::Answer("NOT HTTP AT ALL\r\n\r\n"),
        3 => Act::Answer("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"),
        _ => Act::Answer(OK),
    })
    .await;
    let proxy = proxy_to(&backend).await;
    for i in 0..3 {
        let reply = proxy.get("/").await;
        assert_eq!(reply.status, 502, "response {i}: {}", reply.body);
        assert!(
            reply.body.contains("sent an invalid response"),
            "response {i}: {}",
            reply.body
        );
    }
    // A chunked body that turns out broken after its head: the proxy has committed to the
    // backend's status, so the client's connection is cut (before or after the head, as
    // hyper flushes it) rather than answered 502; it never sees a complete body.
    let broken = exchange(
        &proxy,
        "GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(matches!(raw_status(&broken), 0 | 200), "{broken}");
    assert_eq!(body_of(&broken), "", "{broken}");
    let reply = proxy.get("/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "ok");
    proxy.stop().await;
}
