//! Connection limits: past `max_connections`, a listener stops accepting until one closes.

use std::time::Duration;

use tests::{Proxy, start_backends, toml_list, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn ask(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let n = stream.read(&mut buffer).await.unwrap();
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

#[tokio::test]
async fn a_listener_serves_at_most_max_connections_at_once() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(&format!(
        "listen = \"127.0.0.1:0\"\naccess_log = \"off\"\nmax_connections = 1\nbackends = {}\n",
        toml_list(&backends)
    ))
    .await;
    let mut first = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(
        within("first", ask(&mut first))
            .await
            .ends_with("Hello from #1\n")
    );

    // The second connection completes in the kernel backlog but is not served...
    let mut second = TcpStream::connect(proxy.addr()).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(300), ask(&mut second)).await;
    assert!(
        waiting.is_err(),
        "served beyond max_connections: {waiting:?}"
    );

    // ...until the first one closes.
    drop(first);
    let mut buffer = vec![0u8; 4096];
    let n = within("second", second.read(&mut buffer)).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).ends_with("Hello from #1\n"));
    proxy.stop().await;
}
