//! The proxy never falls over on input: seeded random bytes and mangled requests, then a normal
//! request still works and every dispatch got its done.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tests::{ConfigBuilder, Proxy, raw_status, start_backends, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bounded: this many inputs, each answered or closed within a second.
const INPUTS: usize = 150;

fn mangled_request(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut request = b"POST /echo?x=1 HTTP/1.1\r\nhost: a.example\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello".to_vec();
    match rng.random_range(0..3) {
        // Flip some bytes.
        0 => {
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..request.len());
                request[at] = rng.random();
            }
        }
        // Cut it short.
        1 => request.truncate(rng.random_range(0..request.len())),
        // Pure noise.
        _ => {
            request = tests::random_bytes(rng, 512);
        }
    }
    request
}

#[tokio::test]
async fn random_and_mangled_input_never_takes_the_proxy_down() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .header_read_timeout_ms(300)
            .backends(&backends),
    )
    .await;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..INPUTS {
        let input = mangled_request(&mut rng);
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        let _ = stream.write_all(&input).await;
        let _ = stream.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            stream.read_to_end(&mut answer),
        )
        .await;
        *statuses
            .entry(raw_status(&String::from_utf8_lossy(&answer)))
            .or_insert(0) += 1;
    }
    eprintln!("statuses seen (0 = closed without an answer): {statuses:?}");
    assert!(
        statuses.keys().all(|status| *status < 500),
        "client garbage must never look like a server fault: {statuses:?}"
    );
    let reply = within("a normal request afterwards", proxy.get("/")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(proxy.in_flight(), 0);
    proxy.stop().await;
}
