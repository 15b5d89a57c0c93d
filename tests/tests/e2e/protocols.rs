//! Protocols: h2c from clients (to HTTP/1.1 backends) and WebSocket passed through.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tests::{ConfigBuilder, Proxy, start_backends, within};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn h2c_clients_are_served_by_http1_backends() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c prior-knowledge handshake");
    tokio::spawn(connection);
    let request = Request::get("http://h2.example/headers")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within("h2 response", sender.send_request(request))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen = String::from_utf8_lossy(&body);
    assert!(seen.starts_with("GET /headers HTTP/1.1"), "{seen}");
    assert!(seen.contains("host: h2.example"), "{seen}");
    assert!(seen.contains("via: 2.0 balancer"), "{seen}");
    proxy.stop().await;
}

#[tokio::test]
async fn websocket_echo_passes_through() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let url = format!("ws://{}/ws", proxy.addr());
    let (mut socket, response) = within(
        "websocket handshake",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .expect("handshake through the proxy");
    assert_eq!(response.status(), 101);
    for text in ["hello", "through the balancer"] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = within("echo", socket.next()).await.unwrap().unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    assert_eq!(
        proxy.in_flight(),
        1,
        "an open WebSocket is pending in the core"
    );
    socket.close(None).await.unwrap();
    drop(socket);
    proxy.wait_for_in_flight(0).await;
    proxy.stop().await;
}
