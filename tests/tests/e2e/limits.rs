//! Connection limits: past `max_connections`, a listener stops accepting until one closes.

use std::time::Duration;

use tests::{ConfigBuilder, Proxy, start_backends, within};
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
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .max_connections(1)
            .backends(&backends),
    )
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

/// With several workers the limit is still the listener's: whichever worker's socket a client
/// lands on, no more than `max_connections` are served at once, and each closing connection
/// lets exactly one waiting client in.
#[tokio::test]
async fn the_limit_is_shared_by_all_workers() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .workers(3)
            .max_connections(2)
            .backends(&backends),
    )
    .await;
    let mut served = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            within("a first client", ask(&mut stream))
                .await
                .ends_with("Hello from #1\n")
        );
        served.push(stream);
    }
    // Six more clients, spread by the kernel over the three workers' sockets. Each task keeps
    // its connection open after its answer (the stream is its output), so it holds its slot.
    let waiting: Vec<_> = (0..6)
        .map(|_| {
            let address = proxy.addr();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(address).await.unwrap();
                let answer = ask(&mut stream).await;
                (answer, stream)
            })
        })
        .collect();
    let answered = |waiting: &[tokio::task::JoinHandle<(String, TcpStream)>]| {
        waiting.iter().filter(|task| task.is_finished()).count()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(answered(&waiting), 0, "served beyond max_connections");
    for expected in 1..=2 {
        drop(served.pop());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            answered(&waiting),
            expected,
            "each closed connection lets exactly one waiting client in"
        );
    }
    for task in waiting {
        task.abort();
    }
    proxy.stop().await;
}
