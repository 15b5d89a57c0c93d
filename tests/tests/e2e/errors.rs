//! Every error status the proxy produces itself, checked over real sockets (raw ones where no
//! well-behaved client would send such a request).

use std::time::Duration;

use tests::{
    ConfigBuilder, DeadPort, Proxy, get, raw_exchange, raw_status, start_backends, within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn proxy_with(config: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Proxy {
    Proxy::start(config(ConfigBuilder::new().listen_any())).await
}

#[tokio::test]
async fn refused_backend_is_502() {
    let dead = DeadPort::new();
    let closed = dead.address().port();
    let proxy = proxy_with(|c| c.backends([&dead])).await;
    let reply = proxy.get("/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.body,
        format!("backend 127.0.0.1:{closed} refused the connection\n")
    );
    assert_eq!(proxy.in_flight(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn overloaded_pool_is_503() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .pool("tiny", |p| p.max_in_flight(1).backends(&backends)),
    )
    .await;
    let address = proxy.addr();
    let slow = tokio::spawn(tests::send_http1(address, get("/sleep/600", "a")));
    proxy.wait_for_in_flight(1).await;
    let reply = proxy.get("/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "pool \"tiny\" is overloaded; retry later\n");
    assert_eq!(slow.await.unwrap().status, 200);
    assert_eq!(
        proxy.get("/").await.status,
        200,
        "capacity is back once the first is done"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn slow_backend_headers_are_504() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().pool("p", |p| {
        p.response_header_timeout_ms(200).backends(&backends)
    }))
    .await;
    let reply = proxy.get("/sleep/3000").await;
    assert_eq!(reply.status, 504);
    assert!(
        reply.body.contains("did not answer within 200 ms"),
        "{}",
        reply.body
    );
    assert_eq!(proxy.in_flight(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn oversized_headers_are_431_on_first_and_later_requests() {
    let backends = start_backends(&[0]).await;
    let proxy = proxy_with(|c| c.max_header_bytes(8192).backends(&backends)).await;
    let big = "a".repeat(10_000);
    let first = proxy
        .raw(format!("GET / HTTP/1.1\r\nhost: a\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(raw_status(&first), 431, "{first}");
    assert!(
        first.contains("larger than the limit of 8192 bytes"),
        "{first}"
    );

    // The limit is the head's length, however its bytes are cut into reads: a head of exactly
    // 8192 bytes sent at once is served, one of 8193 is not.
    let head_of = |length: usize| {
        let start = "GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\nx-pad: ";
        let pad = "p".repeat(length - start.len() - 4);
        format!("{start}{pad}\r\n\r\n")
    };
    assert_eq!(head_of(8192).len(), 8192);
    let at_limit = proxy.raw(head_of(8192).as_bytes()).await;
    assert_eq!(raw_status(&at_limit), 200, "{at_limit}");
    let over = proxy.raw(head_of(8193).as_bytes()).await;
    assert_eq!(raw_status(&over), 431, "{over}");

    // A later request on a keep-alive connection is held to the same limit (by hyper).
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut first_reply = Vec::new();
    while !String::from_utf8_lossy(&first_reply).contains("Hello from #1\n") {
        let mut buffer = [0u8; 1024];
        let n = within("first reply", stream.read(&mut buffer))
            .await
            .unwrap();
        assert!(n > 0, "connection closed after {first_reply:?}");
        first_reply.extend_from_slice(&buffer[..n]);
    }
    stream
        .write_all(format!("GET / HTTP/1.1\r\nhost: a\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut second = String::new();
    let _ = within("second reply", stream.read_to_string(&mut second)).await;
    assert_eq!(raw_status(&second), 431, "{second}");
    proxy.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_413_declared_or_streamed() {
    let backends = start_backends(&[0]).await;
    let proxy = proxy_with(|c| c.max_body_bytes(1000).backends(&backends)).await;
    let declared = proxy
        .raw(format!("POST /sink HTTP/1.1\r\nhost: a\r\nconnection: close\r\ncontent-length: 2000\r\n\r\n{}", "x".repeat(2000)).as_bytes())
        .await;
    assert_eq!(raw_status(&declared), 413, "{declared}");
    assert!(
        declared.contains("larger than the limit of 1000 bytes"),
        "{declared}"
    );

    let chunk = "y".repeat(600);
    let chunked = proxy
        .raw(format!("POST /sink HTTP/1.1\r\nhost: a\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n").as_bytes())
        .await;
    assert_eq!(raw_status(&chunked), 413, "{chunked}");

    let small = proxy
        .raw(b"POST /sink HTTP/1.1\r\nhost: a\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello")
        .await;
    assert_eq!(raw_status(&small), 200, "{small}");
    assert!(small.contains("received 5 bytes"), "{small}");
    assert_eq!(proxy.in_flight(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_400() {
    let backends = start_backends(&[0]).await;
    let proxy = proxy_with(|c| c.backends(&backends)).await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nhost: a\r\nno colon here\r\n\r\n"[..],
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello",
    ] {
        let response = proxy.raw(garbage).await;
        assert_eq!(
            raw_status(&response),
            400,
            "{:?} got {response:?}",
            String::from_utf8_lossy(garbage)
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn slow_request_headers_are_408() {
    let backends = start_backends(&[0]).await;
    let proxy = proxy_with(|c| c.header_read_timeout_ms(300).backends(&backends)).await;
    // Half a head, then silence.
    let response = raw_exchange(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nhost: a\r\n",
        Duration::ZERO,
    )
    .await;
    assert_eq!(raw_status(&response), 408, "{response}");
    assert!(
        response.contains("not received within 300 ms"),
        "{response}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn unknown_route_is_404() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .pool("p", |p| p.backends(&backends))
            .route(|r| r.host("known.example").pool("p")),
    )
    .await;
    let reply = proxy.get("/").await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.body,
        "no route for host \"test.local\" and path \"/\"\n"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn backend_closing_without_answer_is_502() {
    // A backend that reads the request and hangs up without a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = [0u8; 1024];
            let _ = stream.read(&mut buffer).await;
            drop(stream);
        }
    });
    let proxy = proxy_with(|c| c.backends([backend])).await;
    let reply = proxy.get("/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.body,
        format!("backend {backend} closed the connection before answering\n")
    );
    assert_eq!(proxy.in_flight(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn backend_connect_timeout_is_504() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so connecting
    // to it hangs, like a backend behind a black hole, while staying on loopback.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let backend = socket.local_addr().unwrap();
    let _listener = socket.listen(1).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(100),
            tokio::net::TcpStream::connect(backend),
        )
        .await
        {
            Ok(Ok(stream)) => fillers.push(stream),
            _ => break,
        }
    }
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .pool("p", |p| p.connect_timeout_ms(200).backends([backend])),
    )
    .await;
    let reply = proxy.get("/").await;
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert_eq!(
        reply.body,
        format!("backend {backend} did not accept the connection within 200 ms\n")
    );
    assert_eq!(proxy.in_flight(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn a_request_must_name_one_valid_host() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
    for (what, request) in [
        (
            "two Host lines",
            &b"GET / HTTP/1.1\r\nhost: a.test\r\nhost: admin.test\r\nconnection: close\r\n\r\n"[..],
        ),
        (
            "HTTP/1.1 without Host",
            b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n",
        ),
        (
            "a Host that is not host[:port]",
            b"GET / HTTP/1.1\r\nhost: a b.test\r\nconnection: close\r\n\r\n",
        ),
        (
            "a Host with userinfo",
            b"GET / HTTP/1.1\r\nhost: user@a.test\r\nconnection: close\r\n\r\n",
        ),
    ] {
        let answer = proxy.raw(request).await;
        assert_eq!(raw_status(&answer), 400, "{what}: {answer}");
    }
    // HTTP/1.0 needs none, and one valid Host is fine.
    let answer = proxy.raw(b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.") && answer.contains(" 200 "),
        "{answer}"
    );
    let answer = proxy
        .raw(b"GET / HTTP/1.1\r\nhost: a.test:8080\r\nconnection: close\r\n\r\n")
        .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    proxy.stop().await;
}

#[tokio::test]
async fn an_http2_preface_after_http1_requests_is_refused() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
    let answer = proxy
        .raw(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let second = answer
        .find("HTTP/1.1 400")
        .unwrap_or_else(|| panic!("the preface must get a 400: {answer}"));
    assert!(second > 0);
    proxy.stop().await;
}

/// A backend that records each request head it gets and answers 200 with no body.
async fn recording_backend() -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (heads, received) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = heads
                    .send(String::from_utf8_lossy(&head).into_owned())
                    .await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (address, received)
}

#[tokio::test]
async fn an_upgrade_is_forwarded_in_origin_form_and_one_with_a_body_is_refused_at_once() {
    let (backend, mut heads) = recording_backend().await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .backends([backend.to_string().as_str()]),
    )
    .await;
    let upgrade = b"GET /chat?room=1 HTTP/1.1\r\nhost: a.test\r\nconnection: upgrade, close\r\nupgrade: websocket\r\n\r\n";
    let answer = raw_exchange(proxy.addr(), upgrade, Duration::ZERO).await;
    assert_eq!(
        raw_status(&answer),
        200,
        "the backend declined the switch: {answer}"
    );
    let head = within("the backend's view of the upgrade", heads.recv())
        .await
        .unwrap();
    assert!(
        head.starts_with("GET /chat?room=1 HTTP/1.1\r\n"),
        "origin form, so the client's Host stands: {head}"
    );
    let started = std::time::Instant::now();
    let answer = raw_exchange(
        proxy.addr(),
        b"GET /chat HTTP/1.1\r\nhost: a.test\r\nconnection: upgrade, close\r\nupgrade: websocket\r\ncontent-length: 5\r\n\r\nhello",
        Duration::ZERO,
    )
    .await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered at once, not at a timeout"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_not_implemented() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
    let answer = proxy
        .raw(b"POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    assert_eq!(raw_status(&answer), 501, "{answer}");
    let answer = proxy
        .raw(b"POST / HTTP/1.1\r\nhost: a.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    proxy.stop().await;
}

#[tokio::test]
async fn heads_whose_end_is_known_are_answered_at_once() {
    let backends = start_backends(&[0]).await;
    // A long header timeout: an answer before it cannot be the 408.
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .header_read_timeout_ms(20_000)
            .backends(&backends),
    )
    .await;
    let started = std::time::Instant::now();
    let answer = proxy
        .raw(b"GET / HTTP/1.1\r\nhost: a.test\nconnection: close\n\r\n")
        .await;
    assert_eq!(
        raw_status(&answer),
        200,
        "a bare LF then CRLF ends the head: {answer}"
    );
    let answer = proxy.raw(b"GET /\r\n").await;
    assert_eq!(raw_status(&answer), 400, "HTTP/0.9: {answer}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn an_upload_that_stops_is_408_after_body_read_timeout() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .body_read_timeout_ms(300)
            .backends(&backends),
    )
    .await;
    // A POST streams (it is not retried, so its body is not read first); a PUT is read into
    // memory first (it may be retried). Either way, 10 of 100 bytes then silence.
    for method in ["POST", "PUT"] {
        let started = std::time::Instant::now();
        let request = format!(
            "{method} /sink HTTP/1.1\r\nhost: a.test\r\ncontent-length: 100\r\nconnection: close\r\n\r\n0123456789"
        );
        let answer = raw_exchange(proxy.addr(), request.as_bytes(), Duration::ZERO).await;
        assert_eq!(raw_status(&answer), 408, "{method}: {answer}");
        assert!(
            answer.contains("nothing received for 300 ms"),
            "{method}: {answer}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{method}: {:?}",
            started.elapsed()
        );
    }
    proxy.stop().await;
}
