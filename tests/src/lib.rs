//! End-to-end check helper: start demo backends and the balancer on loopback ports, talk to
//! them over real sockets, stop them. Tests read like a user's session:
//!
//! ```no_run
//! # async fn session() {
//! use tests::{ConfigBuilder, Proxy, start_backends};
//! let backends = start_backends(&[0, 0]).await;
//! let proxy = Proxy::start(ConfigBuilder::new().listen_any().backends(&backends)).await;
//! let reply = proxy.get("/").await;
//! assert_eq!(reply.status, 200);
//! proxy.stop().await;
//! # }
//! ```
#![deny(unsafe_code)]

mod config;

pub use config::{
    AsBackend, Backend, ConfigBuilder, HealthCheck, Outlier, Pool, RateLimit, Retry, Route, Trace,
};

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use balancer_core::BackendSnapshot;
use balancer_tokio::{Config, DemoBackend, DemoBackendConfig, RunningBalancer, ShutdownReport};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest any single exchange in these tests may take; a hang fails instead of blocking CI.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `future`, failing the test if it takes longer than `EXCHANGE_TIMEOUT`.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(EXCHANGE_TIMEOUT, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} took longer than {EXCHANGE_TIMEOUT:?}"),
    }
}

/// Waits for, then holds until dropped, the one turn shared by the tests that load both cores or
/// measure latency: all the tests share one process, and two such tests at once would measure
/// each other (a p99 against its baseline, a replay against live latency) or starve each other.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// Set on a process started by [`rerun_alone`], to the one test it runs.
const ALONE_VARIABLE: &str = "BALANCER_E2E_ALONE";

/// For a test that counts what belongs to the whole process (threads, descriptors, memory),
/// which the other tests sharing it would change: runs the test `name` of `module` (pass
/// `module_path!()`) again, alone, in a fresh process of this test binary, and returns true once
/// it passed there, when the caller should return. In that fresh process it returns false, and
/// the caller goes on with its body.
pub fn rerun_alone(module: &str, name: &str) -> bool {
    // libtest names a test by its path without the crate's name.
    let test = match module.split_once("::") {
        Some((_, path)) => format!("{path}::{name}"),
        None => name.to_owned(),
    };
    if std::env::var(ALONE_VARIABLE).is_ok_and(|running| running == test) {
        return false;
    }
    let binary = std::env::current_exe().expect("the test binary's path");
    let output = std::process::Command::new(binary)
        .args([
            test.as_str(),
            "--exact",
            "--include-ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(ALONE_VARIABLE, &test)
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprint!("{stderr}");
    assert!(
        output.status.success(),
        "{test}, run alone, failed (its stderr is above):\n{stdout}"
    );
    // A wrong name would match no test, and an empty run passes.
    assert!(
        stdout.contains("1 passed"),
        "{test} did not run alone:\n{stdout}"
    );
    true
}

/// Starts one demo backend per entry of `latencies_ms` (ids 1, 2, …) on free loopback ports.
pub async fn start_backends(latencies_ms: &[u64]) -> Vec<DemoBackend> {
    let mut backends = Vec::new();
    for (index, latency_ms) in latencies_ms.iter().enumerate() {
        let backend = DemoBackend::start(DemoBackendConfig {
            listen: "127.0.0.1:0".parse().expect("loopback address"),
            id: index as u32 + 1,
            latency_ms: *latency_ms,
            jitter_ms: 0,
        })
        .await
        .expect("demo backend starts on a free port");
        backends.push(backend);
    }
    backends
}

/// Starts demo backend `id` again on `address`, where an earlier one was stopped (a kill and a
/// restart), with a 1 ms latency.
pub async fn restart_backend(address: SocketAddr, id: u32) -> DemoBackend {
    // The old listener's port is free at once (SO_REUSEADDR), but a slow close is tolerated.
    const ATTEMPTS: u32 = 50;
    for _ in 0..ATTEMPTS {
        let started = DemoBackend::start(DemoBackendConfig {
            listen: address,
            id,
            latency_ms: 1,
            jitter_ms: 0,
        })
        .await;
        if let Ok(backend) = started {
            return backend;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("backend #{id} could not restart on {address}");
}

/// Stops every backend of `backends`.
pub async fn stop_backends(backends: impl IntoIterator<Item = DemoBackend>) {
    for backend in backends {
        backend.stop().await;
    }
}

/// A loopback address where nothing listens, so that connecting is refused at once, and where
/// nothing will while this lives: its port stays bound (without listening, and without
/// SO_REUSEADDR, so that no other socket of the tests running alongside can take it).
pub struct DeadPort {
    _socket: tokio::net::TcpSocket,
    address: SocketAddr,
}

impl DeadPort {
    /// Binds a free loopback port.
    pub fn new() -> DeadPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("a free loopback port");
        let address = socket.local_addr().expect("the bound address");
        DeadPort {
            _socket: socket,
            address,
        }
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Default for DeadPort {
    fn default() -> Self {
        DeadPort::new()
    }
}

impl AsBackend for DeadPort {
    fn backend(&self) -> Backend {
        Backend::at(self.address)
    }
}

/// A fresh directory in the system's temporary one, removed with what it holds when dropped.
pub struct TempDir {
    path: std::path::PathBuf,
}

impl TempDir {
    /// A new, empty directory whose name has `tag` (unique in this process and among processes).
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("balancer-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir { path }
    }

    /// Where it is.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Between 1 and `max_len - 1` bytes from `rng`, each any value.
pub fn random_bytes(rng: &mut impl rand::Rng, max_len: usize) -> Vec<u8> {
    (0..rng.random_range(1..max_len))
        .map(|_| rng.random())
        .collect()
}

/// A loopback port that was free a moment ago (for configs that route by listener port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body, as text (lossy).
    pub body: String,
}

impl Reply {
    /// A header's value as text, or "" if absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The body as JSON (the admin API's answers); panics, showing it, if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }
}

/// The balancer under test, started in-process from a TOML config.
pub struct Proxy {
    running: RunningBalancer,
}

impl Proxy {
    /// Starts the balancer from `config`, a [`ConfigBuilder`] or TOML text (listeners should
    /// use port 0 or `free_port()`). Unless it names an `admin` address, the admin listener
    /// gets a free port (the default 9901 would clash between tests running in parallel).
    pub async fn start(config: impl fmt::Display) -> Proxy {
        let toml = with_admin_on_a_free_port(&config.to_string());
        let config = Config::from_toml_str(&toml, "test.toml")
            .unwrap_or_else(|err| panic!("test config is invalid: {err}\n{toml}"));
        let running = balancer_tokio::start(config)
            .await
            .unwrap_or_else(|err| panic!("balancer does not start: {err}"));
        Proxy { running }
    }

    /// Starts the balancer from a config file, so that it can reload (`POST /reload`, which
    /// re-reads the file). The admin listener is put on a free port as in [`Proxy::start`].
    pub async fn start_file(file: &ConfigFile) -> Proxy {
        let running = balancer_tokio::start_file(&file.path)
            .await
            .unwrap_or_else(|err| panic!("balancer does not start: {err}"));
        Proxy { running }
    }

    /// The admin listener's address.
    pub fn admin(&self) -> SocketAddr {
        self.running
            .admin_addr()
            .expect("the admin listener is on in tests")
    }

    /// `GET path` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Reply {
        // The admin API only answers requests that name it as their Host, as curl does.
        let host = self.admin().to_string();
        self.send(self.admin(), get(path, &host)).await
    }

    /// `POST path` (empty body) on the admin listener.
    pub async fn admin_post(&self, path: &str) -> Reply {
        let request = Request::post(path)
            .header(http::header::HOST, self.admin().to_string())
            .body(Empty::<Bytes>::new())
            .expect("valid request");
        self.send(self.admin(), request).await
    }

    /// Wraps a balancer started some other way (e.g. demo mode).
    pub fn from_running(running: RunningBalancer) -> Proxy {
        Proxy { running }
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.running.local_addrs()[0]
    }

    /// The running balancer (pools, schedulers, other listeners).
    pub fn running(&self) -> &RunningBalancer {
        &self.running
    }

    /// Requests in flight in every pool, per the core.
    pub fn in_flight(&self) -> u32 {
        self.running
            .proxy()
            .pools()
            .iter()
            .map(|p| p.in_flight())
            .sum()
    }

    /// The core's snapshot of the backend at `address` in the first pool, if it is there.
    pub fn backend(&self, address: SocketAddr) -> Option<BackendSnapshot> {
        let address = address.to_string();
        self.running.proxy().pools()[0]
            .views()
            .into_iter()
            .find(|v| v.backend.address == address)
            .map(|v| v.snapshot)
    }

    /// The state of the backend at `address` in the first pool as the admin API names it (`up`,
    /// `down`, `ejected`, `drained`, …), or `absent`.
    pub fn backend_state(&self, address: SocketAddr) -> String {
        let current = self.running.proxy();
        let pool = &current.pools()[0];
        let now = pool.clock.now();
        let address = address.to_string();
        pool.views()
            .iter()
            .find(|v| v.backend.address == address)
            .map_or_else(|| "absent".into(), |v| v.state_name(now).to_owned())
    }

    /// Waits (bounded) until the core has exactly `count` requests in flight.
    pub async fn wait_for_in_flight(&self, count: u32) {
        within("the in-flight count", async {
            while self.in_flight() != count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// `GET path` on the first listener.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.addr(), get(path, "test.local")).await
    }

    /// Sends `request` to `address` over a fresh HTTP/1.1 connection.
    pub async fn send<B>(&self, address: SocketAddr, request: Request<B>) -> Reply
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        within("an HTTP exchange", send_http1(address, request)).await
    }

    /// Writes `bytes` on a fresh connection and returns everything read until the proxy closes
    /// it (or 5 s pass): for requests no well-behaved client would send.
    pub async fn raw(&self, bytes: &[u8]) -> String {
        raw_exchange(self.addr(), bytes, Duration::ZERO).await
    }

    /// Stops the balancer gracefully, then checks that the core never rejected a done nor
    /// found an invariant broken (checked after every event in debug builds).
    pub async fn stop(self) -> ShutdownReport {
        let pools = self.running.proxy().pools().to_vec();
        let report = within("shutdown", self.running.shutdown()).await;
        for pool in pools {
            assert_eq!(
                pool.protocol_errors(),
                0,
                "pool {:?}: rejected dones or broken core invariants (see the error log)",
                pool.name
            );
        }
        report
    }
}

fn with_admin_on_a_free_port(toml: &str) -> String {
    if toml.lines().any(|l| l.trim_start().starts_with("admin")) {
        toml.to_owned()
    } else {
        // Top-level keys must come before the first table, so it goes first.
        format!("admin = \"127.0.0.1:0\"\n{toml}")
    }
}

/// A config file in the temporary directory, removed when dropped; `write` replaces its text
/// (for reload tests).
pub struct ConfigFile {
    /// Where it is.
    pub path: std::path::PathBuf,
    _dir: TempDir,
}

impl ConfigFile {
    /// Writes `toml` (a [`ConfigBuilder`] or TOML text, with the admin listener on a free
    /// port as [`Proxy::start`] does) to a fresh file named after `tag`.
    pub fn new(tag: &str, toml: impl fmt::Display) -> ConfigFile {
        let dir = TempDir::new(tag);
        let file = ConfigFile {
            path: dir.path().join("balancer.toml"),
            _dir: dir,
        };
        file.write(toml);
        file
    }

    /// Replaces the file's text.
    pub fn write(&self, toml: impl fmt::Display) {
        let toml = with_admin_on_a_free_port(&toml.to_string());
        std::fs::write(&self.path, toml).expect("write the config file");
    }
}

/// Clients sending `GET path` in a loop over keep-alive connections until stopped, counting
/// answers: the load under which kills and reloads must not fail a request.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a [`Load`] saw.
#[derive(Debug)]
pub struct LoadReport {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests answered otherwise, or failed (a description of each).
    pub failures: Vec<String>,
}

/// Pause between one client's requests: keeps the load from hogging the shared cores while
/// still keeping requests in flight at every moment.
const LOAD_PAUSE: Duration = Duration::from_millis(1);

impl Load {
    /// Starts `clients` clients against `address`.
    pub fn start(address: SocketAddr, clients: usize, path: &'static str) -> Load {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                tokio::spawn(async move {
                    let mut sender = None;
                    while !stop.load(Ordering::Relaxed) {
                        if sender.is_none() {
                            match connect(address).await {
                                Ok(s) => sender = Some(s),
                                Err(err) => {
                                    failures.lock().unwrap().push(format!("connect: {err}"));
                                    tokio::time::sleep(LOAD_PAUSE).await;
                                    continue;
                                }
                            }
                        }
                        let Some(s) = sender.as_mut() else { continue };
                        let exchange = async {
                            s.ready().await?;
                            let response = s.send_request(get(path, "load.test")).await?;
                            let status = response.status();
                            let body = response.into_body().collect().await?.to_bytes();
                            Ok::<_, hyper::Error>((status, body))
                        };
                        match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
                            Ok(Ok((status, _))) if status == StatusCode::OK => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Ok((status, body))) => failures.lock().unwrap().push(format!(
                                "{status}: {}",
                                String::from_utf8_lossy(&body).trim_end()
                            )),
                            Ok(Err(err)) => {
                                failures.lock().unwrap().push(format!("exchange: {err}"));
                                sender = None;
                            }
                            Err(_) => {
                                failures.lock().unwrap().push("timed out".into());
                                sender = None;
                            }
                        }
                        tokio::time::sleep(LOAD_PAUSE).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (bounded) until `more` further requests have been answered 200.
    pub async fn wait_for(&self, more: u64) {
        let target = self.ok() + more;
        within("the load to make progress", async {
            while self.ok() < target {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// Stops the clients and reports.
    pub async fn finish(self) -> LoadReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let ok = self.ok.clone();
        let failures = self.failures.clone();
        within("the load to stop", async {
            for task in self.tasks {
                task.await.expect("load client");
            }
        })
        .await;
        let failures = std::mem::take(&mut *failures.lock().unwrap());
        LoadReport {
            ok: ok.load(std::sync::atomic::Ordering::Relaxed),
            failures,
        }
    }
}

/// A fresh HTTP/1.1 client connection to `address` (TCP_NODELAY, as a real client would), its
/// connection task spawned.
pub async fn connect(
    address: SocketAddr,
) -> Result<
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    Box<dyn std::error::Error + Send + Sync>,
> {
    let stream = TcpStream::connect(address).await?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Polls `condition` every 10 ms until it holds (bounded by `EXCHANGE_TIMEOUT`).
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A `GET path` with `Host: host`.
pub fn get(path: &str, host: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::new())
        .expect("valid request")
}

/// A `GET path` with `Host: test.local` and `x-request-id: id`, to look up in `/explain/{id}`.
pub fn get_with_id(path: &str, id: &str) -> Request<Empty<Bytes>> {
    let mut request = get(path, "test.local");
    request.headers_mut().insert(
        "x-request-id",
        id.parse().expect("a request id is a header value"),
    );
    request
}

/// One request over a fresh HTTP/1.1 connection; the body is read to the end.
pub async fn send_http1<B>(address: SocketAddr, request: Request<B>) -> Reply
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(address).await.expect("connect to proxy");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let response = sender.send_request(request).await.expect("response head");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Writes `bytes`, waits `pause`, then reads until the peer closes (at most 5 s).
pub async fn raw_exchange(address: SocketAddr, bytes: &[u8], pause: Duration) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect to proxy");
    stream.write_all(bytes).await.expect("write request");
    tokio::time::sleep(pause).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).into_owned()
}

/// The status code of a raw HTTP/1.1 response, or 0 if there is none.
pub fn raw_status(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// A backend that counts the bytes it produces (`/download?bytes=N`) and consumes (`/upload`,
/// which stops reading for `upload_pause` after its first MiB): the tests compare these counts
/// with the client's to prove the proxy streams instead of buffering.
pub struct CountingBackend {
    address: SocketAddr,
    /// Bytes the download handler has handed to hyper.
    pub produced: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Bytes the upload handler has read.
    pub consumed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Chunk size of the counting backend and the counting client body.
pub const COUNTING_CHUNK_BYTES: usize = 64 * 1024;

impl CountingBackend {
    /// Starts it on a free loopback port.
    pub async fn start(upload_pause: Duration) -> CountingBackend {
        use std::sync::Arc;
        use std::sync::atomic::AtomicU64;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let produced = Arc::new(AtomicU64::new(0));
        let consumed = Arc::new(AtomicU64::new(0));
        let (p, c) = (produced.clone(), consumed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (p, c) = (p.clone(), c.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let (p, c) = (p.clone(), c.clone());
                            async move {
                                let response = if request.uri().path() == "/upload" {
                                    let mut body = request.into_body();
                                    let mut paused = false;
                                    while let Some(frame) = body.frame().await {
                                        let n = frame
                                            .ok()
                                            .and_then(|f| f.into_data().ok())
                                            .map_or(0, |d| d.len());
                                        let total = c.fetch_add(
                                            n as u64,
                                            std::sync::atomic::Ordering::SeqCst,
                                        ) + n as u64;
                                        if !paused && total >= 1 << 20 {
                                            paused = true;
                                            tokio::time::sleep(upload_pause).await;
                                        }
                                    }
                                    let total = c.load(std::sync::atomic::Ordering::SeqCst);
                                    http::Response::new(CountingBody::text(format!(
                                        "received {total} bytes"
                                    )))
                                } else {
                                    let bytes = request
                                        .uri()
                                        .query()
                                        .and_then(|q| q.strip_prefix("bytes="))
                                        .and_then(|n| n.parse().ok())
                                        .unwrap_or(0);
                                    http::Response::new(CountingBody::new(bytes, p))
                                };
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        CountingBackend {
            address,
            produced,
            consumed,
        }
    }

    /// Its address.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }
}

/// A generated body of `remaining` bytes in 64 KiB chunks that counts what it hands out.
pub struct CountingBody {
    remaining: u64,
    chunk: Bytes,
    counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl CountingBody {
    /// `bytes` bytes, counted in `counter`.
    pub fn new(bytes: u64, counter: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        CountingBody {
            remaining: bytes,
            chunk: Bytes::from(vec![b'z'; COUNTING_CHUNK_BYTES]),
            counter: Some(counter),
        }
    }

    fn text(text: String) -> Self {
        CountingBody {
            remaining: text.len() as u64,
            chunk: Bytes::from(text),
            counter: None,
        }
    }
}

impl hyper::body::Body for CountingBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = (this.chunk.len() as u64).min(this.remaining) as usize;
        this.remaining -= n as u64;
        if let Some(counter) = &this.counter {
            counter.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
        }
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(this.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

/// What a raw backend does with a request, given its number (from 0) on its connection and
/// over the backend's life.
#[derive(Clone, Copy)]
pub enum Act {
    /// Writes these bytes and waits for the next request.
    Answer(&'static str),
    /// Writes these bytes and closes, without saying so in the response.
    AnswerAndClose(&'static str),
    /// Reads the request and closes without a byte back.
    Close,
}

/// A backend that answers by a script; counts its connections.
pub struct RawBackend {
    address: SocketAddr,
    connections: Arc<AtomicU64>,
}

impl RawBackend {
    /// Listens on a free loopback port and answers every connection by `script`.
    pub async fn start(script: fn(usize, usize) -> Act) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let counted = connections.clone();
        let requests = Arc::new(AtomicU64::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_script(stream, script, requests.clone()));
            }
        });
        RawBackend {
            address,
            connections,
        }
    }

    /// Its address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

async fn serve_script(
    mut stream: TcpStream,
    script: fn(usize, usize) -> Act,
    requests: Arc<AtomicU64>,
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    for n in 0.. {
        // Requests here have no body: a head ends the request.
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        };
        buffer.drain(..end);
        let overall = requests.fetch_add(1, Ordering::Relaxed) as usize;
        match script(n, overall) {
            Act::Answer(bytes) => {
                if stream.write_all(bytes.as_bytes()).await.is_err() {
                    return;
                }
            }
            Act::AnswerAndClose(bytes) => {
                let _ = stream.write_all(bytes.as_bytes()).await;
                return;
            }
            Act::Close => return,
        }
    }
}
