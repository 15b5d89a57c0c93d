//! The recording backend: a raw TCP server on loopback that keeps every byte a proxy sends it,
//! splits those bytes into requests by their own framing (noting any ambiguous framing, which
//! would be a desync the proxy let through), and answers each by a script.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::wire::{self, Framing, Head, Parsed};

/// Largest head or body the recorder buffers: the vectors' messages are far smaller, so more
/// is a proxy sending something it should not have.
const MAX_RECORDED_BYTES: usize = 1 << 20;

/// What the backend writes for one request.
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    /// The bytes, written as they are (possibly malformed on purpose).
    pub bytes: &'static [u8],
    /// Close the connection after writing them.
    pub close: bool,
}

/// A request the backend read whole.
pub struct Seen {
    /// Its head.
    pub head: Head,
    /// Its body, de-chunked.
    pub body: Vec<u8>,
}

/// Everything the backend received.
#[derive(Default)]
pub struct Log {
    /// Every byte, in arrival order (connections one after another as they sent).
    pub raw: Vec<u8>,
    /// Requests read whole.
    pub requests: Vec<Seen>,
    /// Requests whose head arrived but whose body did not (the proxy gave up mid-body).
    pub incomplete: usize,
    /// Bytes after a `101` answer: the tunnel.
    pub tunnel: Vec<u8>,
    /// Framing the backend could not read unambiguously (each a description).
    pub faults: Vec<String>,
}

/// A recording backend on a free loopback port.
pub struct Recorder {
    address: SocketAddr,
    log: Arc<Mutex<Log>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Starts it; request `n` of each connection is answered `script[n]` (the last one for
    /// later requests).
    pub async fn start(script: &'static [Reply]) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let address = listener.local_addr().expect("its address");
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = log.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, script, shared.clone()));
            }
        });
        Recorder {
            address,
            log,
            accept,
        }
    }

    /// Its address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// What it received so far.
    pub fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve(mut stream: TcpStream, script: &'static [Reply], log: Arc<Mutex<Log>>) {
    let lock = || log.lock().unwrap_or_else(|p| p.into_inner());
    let mut buffer = Vec::new();
    for n in 0.. {
        let head = loop {
            match wire::request_head(&buffer) {
                Parsed::Head(head) => break head,
                Parsed::Partial => {
                    if !fill(&mut stream, &mut buffer, &log).await {
                        return;
                    }
                }
                Parsed::Invalid(why) => {
                    lock()
                        .faults
                        .push(format!("unreadable request head: {why}"));
                    return;
                }
            }
        };
        buffer.drain(..head.len);
        let framing = match wire::request_framing(&head) {
            Ok(framing) => framing,
            Err(why) => {
                lock().faults.push(format!("ambiguous framing: {why}"));
                return;
            }
        };
        let expects_continue = head
            .values("expect")
            .any(|v| v.eq_ignore_ascii_case(b"100-continue"));
        if expects_continue
            && !matches!(framing, Framing::Empty)
            && stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        let body = loop {
            let done = match framing {
                Framing::Empty => Ok(Some((Vec::new(), 0))),
                Framing::Length(len) if buffer.len() >= len => {
                    Ok(Some((buffer[..len].to_vec(), len)))
                }
                Framing::Length(_) => Ok(None),
                Framing::Chunked => wire::dechunk(&buffer),
                Framing::UntilClose => unreachable!("requests are never close-delimited"),
            };
            match done {
                Ok(Some((body, used))) => {
                    buffer.drain(..used);
                    break body;
                }
                Ok(None) => {
                    if !fill(&mut stream, &mut buffer, &log).await {
                        lock().incomplete += 1;
                        return;
                    }
                }
                Err(why) => {
                    lock().faults.push(format!("malformed chunked body: {why}"));
                    return;
                }
            }
        };
        lock().requests.push(Seen { head, body });
        let reply = script[n.min(script.len() - 1)];
        if stream.write_all(reply.bytes).await.is_err() {
            return;
        }
        if reply.close {
            return;
        }
        if reply.bytes.starts_with(b"HTTP/1.1 101") {
            // A tunnel: keep and echo what comes, no more HTTP.
            let mut tunnel = std::mem::take(&mut buffer);
            loop {
                if !tunnel.is_empty() {
                    lock().tunnel.extend_from_slice(&tunnel);
                    if stream.write_all(&tunnel).await.is_err() {
                        return;
                    }
                    tunnel.clear();
                }
                if !fill(&mut stream, &mut tunnel, &log).await {
                    return;
                }
            }
        }
    }
}

/// Reads once from `stream` onto `buffer` (and the log); false at the end of the stream, on an
/// error, or past the recording bound.
async fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>, log: &Mutex<Log>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .raw
                .extend_from_slice(&chunk[..n]);
            buffer.len() <= MAX_RECORDED_BYTES
        }
    }
}
