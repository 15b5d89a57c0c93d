//! Chaos: malformed and oversized input over real sockets. A seeded ChaCha8 generator
//! makes raw requests of eight kinds (bad request lines, bad header bytes, huge heads, bad
//! chunked bodies, early closes, bad `content-length`, pipelined garbage, random bytes, plus a
//! control kind of valid requests); each is written on its own connection, the write side is
//! half-closed, and the answer is read to the end under a timeout. The proxy must answer only
//! the client-error statuses it documents, or close the connection, never hang, and serve a
//! normal request afterwards with nothing left in flight.
//!
//! Allowed answers (decided from the error table in docs/proxying.md):
//! - 400 (malformed; a head cut short by the half-close), 408 (head too slow), 413 (body over
//!   `max_body_bytes`), 431 (head over `max_header_bytes`), or a close without an answer
//!   (hyper's silent close for garbage after a keep-alive request, a reset);
//! - 200, only where the mutated input still is valid HTTP (the demo backend's `/`, `/echo`,
//!   `/sink` answer 200). The single catch-all route makes 404 impossible, and with one healthy
//!   backend 502/503/504 would be proxy faults, so they are not allowed.
//!
//! CI runs 10,000 inputs (`chaos_input_10k`); the full 100,000 run is an ignored test:
//!
//! ```sh
//! cargo test --release -p tests --test e2e chaos_input:: -- --ignored --nocapture
//! ```
//!
//! A failure prints the case number and its bytes; `CASE_SEED` plus the number regenerates it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tests::{ConfigBuilder, Proxy, random_bytes, start_backends, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Seed of the generator; case `n` uses stream `n` of it, so any case replays alone.
const CASE_SEED: u64 = 7_007;
/// Inputs in the CI run (2–3 s in debug on 2 cores; the 100,000 take about 37 s).
const CI_INPUTS: usize = 10_000;
/// Inputs of the long run (an ignored test; see the module docs).
const LONG_INPUTS: usize = 100_000;
/// Connections open at once: enough to keep both cores busy in a debug build.
const CONCURRENT_CONNECTIONS: usize = 64;
/// Longest one exchange may take before it counts as a hang: well above the header timeout.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(5);
/// Short so that a head that never completes is answered quickly.
const HEADER_READ_TIMEOUT_MS: u64 = 1000;
/// The smallest `max_header_bytes` the config accepts: 431 needs fewer bytes sent.
const MAX_HEADER_BYTES: usize = 8192;
/// Small so that 413 needs few bytes sent.
const MAX_BODY_BYTES: usize = 4096;

const PATHS: [&str; 3] = ["/", "/echo", "/sink"];

fn valid_request(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let path = PATHS[rng.random_range(0..PATHS.len())];
    if rng.random_bool(0.5) {
        format!("GET {path} HTTP/1.1\r\nhost: chaos.test\r\nconnection: close\r\n\r\n").into_bytes()
    } else {
        let body: String = (0..rng.random_range(0..64))
            .map(|_| rng.random_range(b'a'..=b'z') as char)
            .collect();
        format!(
            "POST {path} HTTP/1.1\r\nhost: chaos.test\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// One generated input and the name of its kind.
fn generate(case: usize) -> (&'static str, Vec<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(CASE_SEED);
    rng.set_stream(case as u64);
    // Keep "valid" the last kind: `exchange` treats it apart.
    match rng.random_range(0..9) {
        0 => ("bad request line", bad_request_line(&mut rng)),
        1 => ("bad header bytes", bad_header_bytes(&mut rng)),
        2 => ("huge head", huge_head(&mut rng)),
        3 => ("bad chunked body", bad_chunked(&mut rng)),
        4 => ("early close", early_close(&mut rng)),
        5 => ("bad content-length", bad_content_length(&mut rng)),
        6 => ("pipelined garbage", pipelined_garbage(&mut rng)),
        7 => ("random bytes", random_bytes(&mut rng, 600)),
        _ => ("valid", valid_request(&mut rng)),
    }
}

fn bad_request_line(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let lines: [&[u8]; 12] = [
        b"GET / HTTP/9.9",
        b"GET /",
        b"GET  / HTTP/1.1",
        b"G\x00T / HTTP/1.1",
        b"GET / HTTP/1.1 extra",
        b"/ HTTP/1.1",
        b"GET\t/\tHTTP/1.1",
        b"GET /\x7f\x01 HTTP/1.1",
        b"\xff\xfe\xfd / HTTP/1.1",
        b"GET http://[::1 HTTP/1.1",
        b"GET / HTTP/1.1\rGET",
        b"",
    ];
    let mut request = lines[rng.random_range(0..lines.len())].to_vec();
    if rng.random_bool(0.3) {
        // A method token of random length and bytes.
        request = random_bytes(rng, 40);
        request.extend_from_slice(b" / HTTP/1.1");
    }
    request.extend_from_slice(b"\r\nhost: chaos.test\r\n\r\n");
    request
}

fn bad_header_bytes(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let headers: [&[u8]; 10] = [
        b"x-bad: a\x00b",
        b"x-bad\x01: v",
        b"no colon here",
        b"x-space : v",
        b" leading-space: v",
        b": empty-name",
        b"x-bad: \xff\xfe",
        b"x-bare-lf: v\nx-other: w",
        b"x-bad: v\rw",
        b"x-\x7fdel: v",
    ];
    let mut request = b"GET / HTTP/1.1\r\nhost: chaos.test\r\n".to_vec();
    for _ in 0..rng.random_range(1..4) {
        request.extend_from_slice(headers[rng.random_range(0..headers.len())]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request
}

fn huge_head(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut request = b"GET / HTTP/1.1\r\nhost: chaos.test\r\n".to_vec();
    match rng.random_range(0..3) {
        // One header value larger than the limit.
        0 => {
            let n = rng.random_range(MAX_HEADER_BYTES..3 * MAX_HEADER_BYTES);
            request.extend_from_slice(b"x-huge: ");
            request.extend(std::iter::repeat_n(b'a', n));
            request.extend_from_slice(b"\r\n");
        }
        // Many small headers.
        1 => {
            for i in 0..rng.random_range(500..2000) {
                request.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
            }
        }
        // A huge request target.
        _ => {
            let n = rng.random_range(MAX_HEADER_BYTES..2 * MAX_HEADER_BYTES);
            let mut line = b"GET /".to_vec();
            line.extend(std::iter::repeat_n(b'p', n));
            line.extend_from_slice(b" HTTP/1.1\r\nhost: chaos.test\r\n");
            request = line;
        }
    }
    request.extend_from_slice(b"\r\n");
    request
}

fn bad_chunked(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let path = PATHS[rng.random_range(1..PATHS.len())];
    let mut request =
        format!("POST {path} HTTP/1.1\r\nhost: chaos.test\r\ntransfer-encoding: chunked\r\n\r\n")
            .into_bytes();
    let bodies: [&[u8]; 10] = [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhel",
        b"5\r\nhelloXX0\r\n\r\n",
        b"ffffffffffffffffff\r\nx\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"5;\x00ext\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n",
        b"5\nhello\n0\n\n",
        b"100000\r\nabc",
        b"0\r\nx-trailer\x01: v\r\n\r\n",
    ];
    request.extend_from_slice(bodies[rng.random_range(0..bodies.len())]);
    request
}

fn early_close(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut request = valid_request(rng);
    let cut = rng.random_range(0..request.len());
    request.truncate(cut);
    request
}

fn bad_content_length(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let path = PATHS[rng.random_range(0..PATHS.len())];
    let over = (MAX_BODY_BYTES + 1).to_string();
    // u64::MAX is left out: it is answered 431 (see the ignored test at the end).
    let lengths: [&str; 8] = [
        "-1",
        "abc",
        "5, 6",
        "1e3",
        "",
        "99999999999999999999999",
        over.as_str(),
        "+5",
    ];
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: chaos.test\r\ncontent-length: {}\r\n",
        lengths[rng.random_range(0..lengths.len())]
    )
    .into_bytes();
    match rng.random_range(0..3) {
        0 => request.extend_from_slice(b"content-length: 7\r\n"),
        1 => request.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    request.extend_from_slice(b"\r\nhello");
    if rng.random_bool(0.2) {
        // The declared size over the limit, actually sent.
        request.extend(std::iter::repeat_n(b'b', MAX_BODY_BYTES + 1));
    }
    request
}

fn pipelined_garbage(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut request = Vec::new();
    for _ in 0..rng.random_range(1..4) {
        request.extend_from_slice(b"GET / HTTP/1.1\r\nhost: chaos.test\r\n\r\n");
    }
    request.extend(random_bytes(rng, 200));
    if rng.random_bool(0.5) {
        request.extend_from_slice(b"GET / HTTP/1.1\r\nhost: chaos.test\r\n\r\n");
    }
    request
}

/// Every status line in what the proxy sent (pipelined inputs get several answers).
fn statuses(answer: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(answer);
    let mut found = Vec::new();
    // A request in HTTP/1.0 is answered in HTTP/1.0; keep the answers in their order.
    let mut starts: Vec<usize> = text
        .match_indices("HTTP/1.1 ")
        .chain(text.match_indices("HTTP/1.0 "))
        .map(|(at, _)| at)
        .collect();
    starts.sort_unstable();
    for at in starts {
        if at == 0 || text[..at].ends_with('\n') || text[..at].ends_with("\r\n") {
            if let Some(code) = text.get(at + 9..at + 12).and_then(|c| c.parse().ok()) {
                found.push(code);
            }
        }
    }
    found
}

/// What one input got: the statuses answered (empty: closed without an answer), or a hang.
async fn exchange(
    address: std::net::SocketAddr,
    input: &[u8],
    half_close: bool,
) -> Result<Vec<u16>, String> {
    let run = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // The proxy may answer and close before all is written (431, 413): not a failure.
        let _ = stream.write_all(input).await;
        if half_close {
            let _ = stream.shutdown().await;
        }
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        Ok(statuses(&answer))
    };
    tokio::time::timeout(EXCHANGE_LIMIT, run)
        .await
        .unwrap_or_else(|_| Err(format!("no answer nor close within {EXCHANGE_LIMIT:?}")))
}

/// The answers each kind may get (0: closed without an answer; see the module comment).
fn allowed(kind: &str, status: u16) -> bool {
    match kind {
        "valid" => status == 200,
        // 0: the proxy answers 431 and closes before reading the rest, which can reset the
        // connection before the client reads the answer.
        "huge head" => matches!(status, 431 | 0),
        "bad content-length" => matches!(status, 400 | 413 | 0),
        // A chunk size over the limit is found while streaming: 413.
        "bad chunked body" => matches!(status, 200 | 400 | 413 | 0),
        _ => matches!(status, 200 | 400 | 408 | 0),
    }
}

async fn run_inputs(total: usize) {
    // 64 connections at once keep both cores busy.
    let _turn = tests::serial().await;
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .header_read_timeout_ms(HEADER_READ_TIMEOUT_MS)
            .max_header_bytes(MAX_HEADER_BYTES)
            .max_body_bytes(MAX_BODY_BYTES)
            .backends(&backends),
    )
    .await;
    let address = proxy.addr();
    let next = Arc::new(AtomicUsize::new(0));
    let seen: Arc<std::sync::Mutex<BTreeMap<(&'static str, u16), u64>>> = Arc::default();
    let bad: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENT_CONNECTIONS)
        .map(|_| {
            let (next, seen, bad) = (next.clone(), seen.clone(), bad.clone());
            tokio::spawn(async move {
                loop {
                    let case = next.fetch_add(1, Ordering::Relaxed);
                    if case >= total || bad.lock().unwrap().len() >= 10 {
                        break;
                    }
                    let (kind, input) = generate(case);
                    // Half-closing bounds every malformed input (an unfinished body would otherwise
                    // wait for the backend's response timeout); valid requests are not
                    // half-closed (see `bug_…_half_close…` below) and say `connection: close`.
                    let result = exchange(address, &input, kind != "valid").await;
                    let describe = |what: &str| {
                        format!(
                            "case {case} ({kind}): {what}; input {:?}",
                            String::from_utf8_lossy(&input[..input.len().min(300)])
                        )
                    };
                    match result {
                        Ok(codes) => {
                            let mut seen = seen.lock().unwrap();
                            let codes = if codes.is_empty() { vec![0] } else { codes };
                            for code in codes {
                                *seen.entry((kind, code)).or_insert(0) += 1;
                                if !allowed(kind, code) {
                                    bad.lock()
                                        .unwrap()
                                        .push(describe(&format!("status {code}")));
                                }
                            }
                        }
                        Err(err) => bad.lock().unwrap().push(describe(&err)),
                    }
                }
            })
        })
        .collect();
    // Bounded as a whole too: a generous 20 ms per input (debug runs about 1 ms).
    let limit = Duration::from_millis(20 * total as u64);
    tokio::time::timeout(limit, async {
        for worker in workers {
            worker.await.expect("input worker");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{total} inputs took longer than {limit:?}"));
    let elapsed = started.elapsed();
    let seen = seen.lock().unwrap().clone();
    eprintln!(
        "chaos input: {} inputs in {elapsed:.1?} ({:.0}/s), {CONCURRENT_CONNECTIONS} connections at once",
        next.load(Ordering::Relaxed).min(total),
        total as f64 / elapsed.as_secs_f64()
    );
    for ((kind, code), count) in &seen {
        eprintln!("  {kind:<20} {code:>3} x {count}   (0 = closed without an answer)");
    }
    let bad = bad.lock().unwrap().clone();
    assert!(
        bad.is_empty(),
        "inputs answered wrongly:\n{}",
        bad.join("\n")
    );
    let reply = within(
        "a normal request afterwards",
        tests::send_http1(address, tests::get("/", "x")),
    )
    .await;
    assert_eq!(reply.status, 200);
    proxy.wait_for_in_flight(0).await;
    proxy.stop().await;
    tests::stop_backends(backends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_input_10k() {
    run_inputs(CI_INPUTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run: cargo test --release -p tests --test e2e chaos_input:: -- --ignored --nocapture"]
async fn chaos_input_100k() {
    run_inputs(LONG_INPUTS).await;
}

/// A complete, valid request whose client then half-closes its write side (as `nc -N`, many
/// scripts and some HTTP/1.0 clients do) is answered: RFC 9112 §9.6 lets a client half-close
/// after its request, and nginx and HAProxy answer it. (It went unanswered until the server
/// set hyper's `half_close(true)`.)
#[tokio::test]
async fn a_complete_request_then_a_half_close_is_answered() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
    for request in [
        &b"GET / HTTP/1.1\r\nhost: chaos.test\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nhost: chaos.test\r\nconnection: close\r\n\r\n"[..],
        &b"GET / HTTP/1.0\r\n\r\n"[..],
    ] {
        let codes = exchange(proxy.addr(), request, true).await;
        assert_eq!(
            codes,
            Ok(vec![200]),
            "{:?} then half-close",
            String::from_utf8_lossy(request)
        );
    }
    proxy.stop().await;
    tests::stop_backends(backends).await;
}

/// `content-length: 18446744073709551615` (u64::MAX) on an 80-byte head must be 413 (declared
/// body over `max_body_bytes`) or 400, not 431: hyper calls such a length `Parse::TooLarge`,
/// which it answers 431, so the server checks the first head's declared length itself.
#[tokio::test]
async fn an_absurd_content_length_is_not_called_a_header_too_large() {
    let backends = start_backends(&[0]).await;
    let proxy = Proxy::start(
        ConfigBuilder::new()
            .listen_any()
            .max_body_bytes(MAX_BODY_BYTES)
            .backends(&backends),
    )
    .await;
    let request = format!(
        "POST /sink HTTP/1.1\r\nhost: chaos.test\r\ncontent-length: {}\r\n\r\nhello",
        u64::MAX
    );
    let codes = exchange(proxy.addr(), request.as_bytes(), true)
        .await
        .expect("an answer");
    assert!(
        codes == vec![413] || codes == vec![400],
        "content-length u64::MAX answered {codes:?}"
    );
    proxy.stop().await;
    tests::stop_backends(backends).await;
}
