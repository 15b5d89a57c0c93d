//! Many client connections held open at once, for the memory measurements: idle ones (no byte
//! sent) and ones with a request in flight to a slow backend.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio::task::JoinSet;

/// Connects in flight at once: well below the proxies' accept backlogs (tokio's default is 1024).
/// A full accept queue drops the client's final ACK: the client believes it is connected while
/// the server only accepts after SYN-ACK retransmits seconds later, which skews RSS readings.
const CONNECT_CONCURRENCY: usize = 64;

/// One connect may take this long before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections opened, as blocking-free std sockets (no runtime needed to hold them).
pub struct Held {
    /// The open sockets.
    pub streams: Vec<TcpStream>,
    /// Connects that failed or timed out.
    pub failed: usize,
}

/// Opens `n` TCP connections to `address`, [`CONNECT_CONCURRENCY`] at a time.
pub fn open(address: SocketAddr, n: usize) -> anyhow::Result<Held> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(async move {
        let mut streams = Vec::with_capacity(n);
        let mut failed = 0;
        let mut tasks = JoinSet::new();
        let mut started = 0;
        while started < n || !tasks.is_empty() {
            while started < n && tasks.len() < CONNECT_CONCURRENCY {
                tasks.spawn(tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tokio::net::TcpStream::connect(address),
                ));
                started += 1;
            }
            match tasks.join_next().await {
                // into_std keeps the socket non-blocking: reads below never wait.
                Some(Ok(Ok(Ok(stream)))) => match stream.into_std() {
                    Ok(std_stream) => streams.push(std_stream),
                    Err(_) => failed += 1,
                },
                Some(_) => failed += 1,
                None => break,
            }
        }
        Held { streams, failed }
    }))
}

impl Held {
    /// How many are still open from our side's view: a read would block (no EOF, no reset). A
    /// request in flight has no response yet, so it counts too.
    pub fn still_open(&self) -> usize {
        self.streams
            .iter()
            .filter(|s| {
                let mut byte = [0u8; 1];
                let mut s: &TcpStream = s;
                matches!(s.read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock)
            })
            .count()
    }

    /// Sends one `GET /` on every connection (they then wait on the slow backend). Returns how
    /// many writes went through.
    pub fn send_requests(&self) -> usize {
        const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        self.streams
            .iter()
            .filter(|s| {
                let mut s: &TcpStream = s;
                // A 36-byte write into an empty socket buffer completes at once.
                matches!(s.write(REQUEST), Ok(n) if n == REQUEST.len())
            })
            .count()
    }
}
