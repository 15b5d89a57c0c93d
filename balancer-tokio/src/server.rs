//! Listeners and connections: bind, accept within the connection limit, serve HTTP/1.1 and h2c,
//! and shut down gracefully.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use arc_swap::ArcSwap;

use crate::access_log::AccessRecord;
use crate::body::ClientBody;
use crate::config::{Config, ConfigError, Limits, ListenerConfig};
use crate::errors::raw_response;
use crate::h1;
use crate::metrics::{Metrics, ReloadLabels};
use crate::pool::PoolError;
use crate::proxy::{ConnectionInfo, Proxy};
use crate::runtime::shutdown::{Drain, DrainGuard, Phase, PhaseWatcher, QuietWait, Shutdown};
use crate::runtime::worker::WORKER_INDEX;

/// Concurrent HTTP/2 streams per client connection: bounds the work one connection can start.
pub const MAX_H2_STREAMS_PER_CONNECTION: u32 = 256;
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// After an error answered before parsing (408, 431), how long to keep reading and discarding
/// so that closing does not reset the connection before the client has read the answer.
const LINGER: Duration = Duration::from_millis(500);
/// Longest shutdown waits for the trace writer to write out what it has.
const TRACE_FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(5);

/// Pending connections the kernel queues per listening socket (what `TcpListener::bind` uses).
const LISTEN_BACKLOG: u32 = 1024;
/// Longest a worker waits, after the grace period, for its blocking tasks (name lookups).
const WORKER_EXIT_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes discarded during that linger, at most.
const LINGER_MAX_BYTES: usize = 256 * 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not bind.
    #[error("cannot listen on {address}: {reason}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// What the OS said, in words.
        reason: String,
    },
    /// A pool could not be built.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The config file could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A worker thread or its runtime could not be started.
    #[error("cannot start a worker thread: {reason}; lower `workers` or raise the thread limit")]
    Worker {
        /// What the OS said.
        reason: String,
    },
}

/// Why a reload was refused (the config in force keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The balancer was not started from a file.
    #[error("nothing to reload: the balancer was not started from a config file")]
    NoFile,
    /// The file is not a valid config: the same message `balancer check` prints.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new config changes what only a restart can change.
    #[error(
        "{path}: {what} changed; a reload cannot rebind sockets, restart the balancer to apply it"
    )]
    NeedsRestart {
        /// The file.
        path: String,
        /// What changed.
        what: &'static str,
    },
    /// A pool could not be built.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// What every connection shares: the config generation in force (swapped atomically by a
/// reload) and what a reload needs.
pub struct Shared {
    proxy: ArcSwap<Proxy>,
    config_path: Option<PathBuf>,
    /// One reload at a time: two concurrent ones would both diff against the same generation.
    reload_lock: Mutex<()>,
}

impl Shared {
    /// The config generation in force.
    pub fn current(&self) -> Arc<Proxy> {
        self.proxy.load_full()
    }

    /// Re-reads the config file, validates it and swaps it in; on any error the config in
    /// force keeps serving. Returns the new config's summary.
    pub fn reload(&self) -> Result<String, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.reload_locked();
        let metrics = self.current().metrics().clone();
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics
            .reloads
            .get_or_create(&ReloadLabels { result: outcome })
            .inc();
        match &result {
            Ok(summary) => tracing::info!(%summary, "config reloaded"),
            Err(err) => {
                tracing::error!(%err, "config reload refused; the previous config keeps serving")
            }
        }
        result
    }

    fn reload_locked(&self) -> Result<String, ReloadError> {
        let path = self.config_path.as_deref().ok_or(ReloadError::NoFile)?;
        let config = Config::load(path)?;
        let old = self.current();
        let shown = path.display().to_string();
        let old_config = old.config();
        let same_listeners = old_config.listeners.len() == config.listeners.len()
            && old_config
                .listeners
                .iter()
                .zip(&config.listeners)
                .all(|(a, b)| {
                    a.name == b.name
                        && a.address == b.address
                        && a.max_connections == b.max_connections
                });
        if !same_listeners {
            return Err(ReloadError::NeedsRestart {
                path: shown,
                what: "the listeners",
            });
        }
        if old_config.worker_count() != config.worker_count() {
            return Err(ReloadError::NeedsRestart {
                path: shown,
                what: "the worker count",
            });
        }
        if old_config.admin != config.admin {
            return Err(ReloadError::NeedsRestart {
                path: shown,
                what: "the admin address",
            });
        }
        let new = Arc::new(Proxy::reload(&config, &old)?);
        new.start_tasks();
        self.proxy.store(new);
        // Requests in flight keep the old generation alive until they finish; its background
        // work stops now (the new generation probes the same backends).
        old.retire();
        Ok(config.summary())
    }
}

/// A started balancer: its bound addresses and the handle to stop it.
pub struct RunningBalancer {
    addresses: Vec<(String, SocketAddr)>,
    admin: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    drain: Drain,
    accept_tasks: Vec<JoinHandle<()>>,
    /// Workers 1.. (worker 0 is the runtime that called `start`).
    worker_threads: Vec<std::thread::JoinHandle<()>>,
    shutdown_grace: Duration,
}

/// How a shutdown went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReport {
    /// Every connection finished within the grace period.
    Drained,
    /// The grace period ran out; the remaining connections were closed.
    GraceExpired,
}

/// Binds every listener of `config` and starts serving. Such a balancer cannot reload (it has
/// no file to re-read); see [`start_file`].
pub async fn start(config: Config) -> Result<RunningBalancer, ServeError> {
    start_with(config, None).await
}

/// Loads the config at `path`, binds its listeners and starts serving; `SIGHUP` (handled by the
/// binary) and the admin `POST /reload` re-read `path`.
pub async fn start_file(path: &Path) -> Result<RunningBalancer, ServeError> {
    let config = Config::load(path)?;
    start_with(config, Some(path.to_owned())).await
}

async fn start_with(
    config: Config,
    config_path: Option<PathBuf>,
) -> Result<RunningBalancer, ServeError> {
    let metrics = Arc::new(Metrics::new());
    let proxy = Arc::new(Proxy::new(&config, metrics)?);
    let admin_socket = match config.admin {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .map_err(|err| bind_error(address, &err))?,
        ),
        None => None,
    };
    let admin = admin_socket
        .as_ref()
        .and_then(|socket| socket.local_addr().ok());
    let workers = config.worker_count();
    let mut bound = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        let sockets = bind_listener(listener.address, workers)?;
        let local = sockets[0]
            .local_addr()
            .map_err(|err| bind_error(listener.address, &err))?;
        bound.push((listener.clone(), sockets, local));
    }
    // Built before anything is served so that a failure is a start error, not a lost worker.
    let worker_runtimes = (1..workers)
        .map(|_| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| ServeError::Worker {
                    reason: err.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shutdown = Shutdown::new();
    let drain = Drain::new();
    proxy.start_tasks();
    let shared = Arc::new(Shared {
        proxy: ArcSwap::new(proxy),
        config_path,
        reload_lock: Mutex::new(()),
    });
    let mut addresses = Vec::new();
    let mut accept_tasks = Vec::new();
    // Worker i accepts on socket i of every listener; the kernel spreads new connections over
    // the sockets (SO_REUSEPORT), and a connection stays on the worker that accepted it.
    let mut per_worker: Vec<Vec<WorkerSocket>> = (1..workers).map(|_| Vec::new()).collect();
    for (listener, sockets, local) in bound {
        addresses.push((listener.name.clone(), local));
        // One limit per listener, whichever worker accepts.
        let permits = Arc::new(Semaphore::new(listener.max_connections));
        let mut sockets = sockets.into_iter();
        if let Some(first) = sockets.next() {
            let socket = TcpListener::from_std(first).map_err(|err| bind_error(local, &err))?;
            accept_tasks.push(tokio::spawn(accept_loop(
                socket,
                listener.clone(),
                local.port(),
                permits.clone(),
                shared.clone(),
                shutdown.watcher(),
                drain.guard(),
            )));
        }
        for (worker, socket) in per_worker.iter_mut().zip(sockets) {
            worker.push(WorkerSocket {
                listener: listener.clone(),
                socket,
                port: local.port(),
                permits: permits.clone(),
            });
        }
    }
    let mut worker_threads = Vec::with_capacity(per_worker.len());
    for (index, (runtime, sockets)) in worker_runtimes.into_iter().zip(per_worker).enumerate() {
        let thread = spawn_worker(
            index + 1,
            runtime,
            sockets,
            shared.clone(),
            shutdown.watcher(),
            drain.guard(),
        )?;
        worker_threads.push(thread);
    }
    if let Some(socket) = admin_socket {
        accept_tasks.push(tokio::spawn(crate::admin::serve(
            socket,
            shared.clone(),
            shutdown.watcher(),
        )));
    }
    Ok(RunningBalancer {
        addresses,
        admin,
        shared,
        shutdown,
        drain,
        accept_tasks,
        worker_threads,
        shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
    })
}

/// Binds `address` once per worker. With more than one worker every socket sets
/// `SO_REUSEPORT` (the later ones bind the port the first one got, so port 0 works).
fn bind_listener(
    address: SocketAddr,
    workers: usize,
) -> Result<Vec<std::net::TcpListener>, ServeError> {
    if workers > 1 && address.port() != 0 {
        // SO_REUSEPORT would let this process join a group another balancer (same user)
        // already listens with, sharing its traffic instead of failing. A plain bind first
        // fails as a single worker's would when the port is taken.
        probe_bind(address).map_err(|err| bind_error(address, &err))?;
    }
    let mut sockets = Vec::with_capacity(workers);
    let mut target = address;
    for _ in 0..workers.max(1) {
        let socket = bind_one(target, workers > 1).map_err(|err| bind_error(address, &err))?;
        target = socket
            .local_addr()
            .map_err(|err| bind_error(address, &err))?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Binds `address` without `SO_REUSEPORT` and without listening, then lets it go: fails with
/// `AddrInUse` if anything listens there already.
fn probe_bind(address: SocketAddr) -> io::Result<()> {
    bound_socket(address, false).map(drop)
}

fn bind_one(address: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = bound_socket(address, reuse_port)?;
    // Converted to std so that each worker registers its socket with its own event loop;
    // `listen` needs a runtime only to register, which the std conversion undoes.
    let listener = socket.listen(LISTEN_BACKLOG)?;
    listener.into_std()
}

/// A TCP socket bound to `address` (not listening yet), with `SO_REUSEADDR` as
/// `TcpListener::bind` sets it (a restarted balancer can bind while old connections linger)
/// and, if asked, `SO_REUSEPORT`.
fn bound_socket(address: SocketAddr, reuse_port: bool) -> io::Result<tokio::net::TcpSocket> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    #[cfg(not(unix))]
    let _ = reuse_port;
    socket.bind(address)?;
    Ok(socket)
}

/// One listener's socket for a worker (1..), with the listener's shared connection permits.
struct WorkerSocket {
    listener: ListenerConfig,
    socket: std::net::TcpListener,
    port: u16,
    permits: Arc<Semaphore>,
}

/// Starts worker `index`: a thread running its own current-thread runtime, accepting on its
/// sockets and serving the connections it accepts until the shutdown is over.
fn spawn_worker(
    index: usize,
    runtime: tokio::runtime::Runtime,
    sockets: Vec<WorkerSocket>,
    shared: Arc<Shared>,
    watcher: PhaseWatcher,
    drain: Option<DrainGuard>,
) -> Result<std::thread::JoinHandle<()>, ServeError> {
    let listeners = {
        let _entered = runtime.enter();
        sockets
            .into_iter()
            .map(|worker_socket| {
                let WorkerSocket {
                    listener,
                    socket,
                    port,
                    permits,
                } = worker_socket;
                let local = socket.local_addr();
                TcpListener::from_std(socket)
                    .map(|socket| (listener, socket, port, permits))
                    .map_err(|err| match local {
                        Ok(local) => bind_error(local, &err),
                        Err(_) => ServeError::Worker {
                            reason: err.to_string(),
                        },
                    })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    std::thread::Builder::new()
        .name(format!("balancer-worker-{index}"))
        .spawn(move || {
            WORKER_INDEX.with(|worker| worker.set(index));
            runtime.block_on(async move {
                let mut watcher = watcher;
                let tasks: Vec<_> = listeners
                    .into_iter()
                    .map(|(listener, socket, port, permits)| {
                        tokio::spawn(accept_loop(
                            socket,
                            listener,
                            port,
                            permits,
                            shared.clone(),
                            watcher.clone(),
                            drain.clone(),
                        ))
                    })
                    .collect();
                drop(drain);
                for task in tasks {
                    let _ = task.await;
                }
                // Connections accepted here live on this runtime: keep it running until the
                // grace period is over (they close themselves on `Stopped`).
                watcher.reached(Phase::Stopped).await;
            });
            // Whatever outlived the grace period is cancelled with the runtime.
            runtime.shutdown_timeout(WORKER_EXIT_TIMEOUT);
        })
        .map_err(|err| ServeError::Worker {
            reason: err.to_string(),
        })
}

fn bind_error(address: SocketAddr, err: &io::Error) -> ServeError {
    let reason = match err.kind() {
        io::ErrorKind::AddrInUse => {
            format!(
                "port {} is already in use by another program; stop it or choose another port",
                address.port()
            )
        }
        io::ErrorKind::AddrNotAvailable => "the address is not one of this machine's".into(),
        io::ErrorKind::PermissionDenied => {
            format!("permission denied (ports below 1024 need privileges): {err}")
        }
        _ => err.to_string(),
    };
    ServeError::Bind { address, reason }
}

impl RunningBalancer {
    /// The bound address of each listener, in configuration order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addresses.iter().map(|(_, a)| *a).collect()
    }

    /// The bound address of the listener named `name`.
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.addresses
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// The admin listener's bound address, unless `admin = "off"`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The config generation in force (pools and their schedulers), for inspection.
    pub fn proxy(&self) -> Arc<Proxy> {
        self.shared.current()
    }

    /// What connections share; reloads go through it.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Re-reads the config file (as `SIGHUP` does); the old config keeps serving on error.
    pub fn reload(&self) -> Result<String, ReloadError> {
        self.shared.reload()
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, then closes
    /// whatever is left.
    pub async fn shutdown(self) -> ShutdownReport {
        self.shutdown.advance(Phase::Draining);
        for task in self.accept_tasks {
            let _ = task.await;
        }
        let report = match tokio::time::timeout(self.shutdown_grace, self.drain.wait()).await {
            Ok(()) => ShutdownReport::Drained,
            Err(_) => ShutdownReport::GraceExpired,
        };
        self.shutdown.advance(Phase::Stopped);
        let workers = self.worker_threads;
        let _ = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        })
        .await;
        let proxy = self.shared.current();
        proxy.retire();
        if let Some(trace) = proxy.trace().cloned() {
            // Records of the last requests are still in the writer's buffer.
            let _ = tokio::task::spawn_blocking(move || trace.flush(TRACE_FLUSH_AT_SHUTDOWN)).await;
        }
        for pool in proxy.pools() {
            tracing::info!(
                pool = %pool.name,
                dispatched = pool
                    .dispatched_per_backend()
                    .iter()
                    .map(|(_, n)| n)
                    .sum::<u64>(),
                contended_locks = pool.contended_locks(),
                "scheduler lock statistics"
            );
        }
        report
    }
}

/// The HTTP/1.1 + h2c server settings for `limits` (one per config generation).
pub(crate) fn connection_builder(limits: Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The first request's head is read (and timed) by `read_first_head`; this covers the
        // following requests on a keep-alive connection, and closes idle ones.
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_buf_size(limits.max_header_bytes)
        // A client may send a whole request and then shut its write side (`nc -N`, HTTP/1.0
        // scripts); without this hyper closes on that EOF and the request goes unanswered.
        .half_close(true)
        // Head and body copied into one buffer and sent with one `send`: measured 2.6%
        // fewer CPU per request than `writev` of the two (balancer-tokio/README.md).
        .writev(false)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS_PER_CONNECTION)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Accepts one connection, then waits for a connection permit; `None` once draining begins.
///
/// Excess clients wait in the kernel's backlog, except at most one per accepting loop that
/// waits, accepted, for a permit: with several workers the permits of a listener are shared,
/// and a worker must never hold a permit while blocked on its own (empty) socket when the
/// next client was queued on another worker's. So a listener serves at most its limit and
/// holds at most its limit plus one connection per worker. Shared by the traffic and admin
/// listeners.
pub(crate) async fn accept_within_limit(
    socket: &TcpListener,
    permits: &Arc<Semaphore>,
    watcher: &mut PhaseWatcher,
) -> Option<(OwnedSemaphorePermit, io::Result<(TcpStream, SocketAddr)>)> {
    let accepted = tokio::select! {
        biased;
        _ = watcher.reached(Phase::Draining) => return None,
        accepted = socket.accept() => accepted,
    };
    tokio::select! {
        biased;
        _ = watcher.reached(Phase::Draining) => None,
        permit = permits.clone().acquire_owned() => Some((permit.ok()?, accepted)),
    }
}

async fn accept_loop(
    socket: TcpListener,
    listener: ListenerConfig,
    port: u16,
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
    mut watcher: PhaseWatcher,
    drain: Option<DrainGuard>,
) {
    let Some(drain) = drain else { return };
    loop {
        let Some((permit, accepted)) = accept_within_limit(&socket, &permits, &mut watcher).await
        else {
            break;
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(listener = %listener.name, %err, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let connection = Connection {
            info: ConnectionInfo {
                client,
                listener_port: port,
            },
            shared: shared.clone(),
            watcher: watcher.clone(),
            drain: drain.clone(),
        };
        tokio::spawn(async move {
            connection.serve(stream).await;
            drop(permit);
        });
    }
    tracing::debug!(listener = %listener.name, "stopped accepting");
}

struct Connection {
    info: ConnectionInfo,
    shared: Arc<Shared>,
    watcher: PhaseWatcher,
    drain: DrainGuard,
}

impl Connection {
    async fn serve(mut self, mut stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        // The connection's limits come from the config in force when it was accepted; each
        // request is served by the config in force when it arrives.
        let proxy = self.shared.current();
        let limits = proxy.limits();
        let started = Instant::now();
        let mut buffer = BytesMut::new();
        let Some(first) = self.next_head(&mut stream, &mut buffer, limits).await else {
            return;
        };
        if !self
            .answer_unreadable_head(&proxy, &mut stream, first, limits, started)
            .await
        {
            return;
        }

        // Plain requests are served by `h1`; hyper takes the connection at the first other
        // one. Boxed: a connection that has not sent its first head yet should not carry the
        // state of serving one.
        let served = Box::pin(async {
            let mut stopped_watcher = self.watcher.clone();
            let stopped = std::pin::pin!(stopped_watcher.reached(Phase::Stopped));
            let stopped = self.watcher.clone().quiet(stopped);
            tokio::select! {
                biased;
                served = self.serve_plain(&mut stream, &mut buffer, limits) => Some(served),
                () = stopped => None,
            }
        })
        .await;
        let Some(served) = served else { return };
        if served == Plain::Closed {
            let _ = stream.shutdown().await;
            return;
        }
        if declares_too_large_body(&buffer, limits.max_body_bytes) {
            let message = crate::errors::ProxyError::BodyTooLarge {
                limit_bytes: limits.max_body_bytes,
            }
            .to_string();
            let status = StatusCode::PAYLOAD_TOO_LARGE;
            self.answer_raw(&proxy, &mut stream, status, &message, Instant::now())
                .await;
            return;
        }

        let io = TokioIo::new(Prefixed {
            prefix: buffer.freeze(),
            stream,
        });
        let shared = self.shared.clone();
        let info = self.info;
        let drain = self.drain.clone();
        let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            shared
                .current()
                .handle(request.map(ClientBody::Hyper), info, drain.clone())
        });
        // Boxed: hyper's connection state is most of this task's 10.7 KiB, and a connection
        // that has not sent its first head yet should not carry it.
        let mut connection = Box::pin(proxy.builder().serve_connection_with_upgrades(io, service));
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(client = %info.client, %err, "connection ended with an error");
                }
                return;
            }
            _ = self.watcher.reached(Phase::Draining) => connection.as_mut().graceful_shutdown(),
        }
        tokio::select! {
            _ = connection.as_mut() => {}
            _ = self.watcher.reached(Phase::Stopped) => {}
        }
    }

    /// Serves plain requests (`h1`) from the front of `buffer`, which holds a complete head,
    /// for as long as they come; returns `HandOver` with the first other request at the front
    /// of `buffer`.
    async fn serve_plain(
        &mut self,
        stream: &mut TcpStream,
        buffer: &mut BytesMut,
        limits: Limits,
    ) -> Plain {
        let mut out = Vec::new();
        // Made once per connection rather than per request: a timer registered and dropped
        // and a shutdown waiter queued and unqueued for every head cost about 2,000
        // instructions of each small GET. A timer moved later is only updated in place.
        let mut draining_watcher = self.watcher.clone();
        let draining = std::pin::pin!(draining_watcher.reached(Phase::Draining));
        let mut waits = HeadWaits {
            timer: None,
            draining: self.watcher.clone().quiet(draining),
            drained: false,
        };
        loop {
            let (request, close) = match h1::parse(buffer) {
                h1::Head::Plain { request, close } => (request, close),
                h1::Head::Other => return Plain::HandOver,
                h1::Head::Malformed => {
                    let proxy = self.shared.current();
                    let message = "malformed request: the request target or a header is invalid";
                    let status = StatusCode::BAD_REQUEST;
                    self.answer_raw(&proxy, stream, status, message, Instant::now())
                        .await;
                    return Plain::Closed;
                }
            };
            let head_request = request.method() == http::Method::HEAD;
            let response = self
                .shared
                .current()
                .handle(request, self.info, self.drain.clone())
                .await
                .unwrap_or_else(|never| match never {});
            // Draining: this response is the connection's last, and says so.
            let close = close || self.watcher.is_at(Phase::Draining);
            match h1::write_response(stream, &mut out, response, head_request, close).await {
                Ok(true) => {}
                Ok(false) | Err(_) => return Plain::Closed,
            }
            if head_complete(buffer) {
                continue;
            }
            let started = Instant::now();
            let Some(next) = self
                .next_plain_head(stream, buffer, limits, &mut waits)
                .await
            else {
                return Plain::Closed;
            };
            let proxy = self.shared.current();
            // An idle keep-alive connection that times out is closed without a word, as hyper
            // does; one in the middle of a head gets its 408.
            if matches!(next, Head::TimedOut) && buffer.is_empty() {
                return Plain::Closed;
            }
            if !self
                .answer_unreadable_head(&proxy, stream, next, limits, started)
                .await
            {
                return Plain::Closed;
            }
        }
    }

    /// Reads the next request head, or `None` once draining has begun with no request on its
    /// way. A request the client sent before it could know (bytes already read, or waiting in
    /// the socket) is still read, and the response to it closes the connection
    /// (`serve_plain` sees the phase): closing instead would fail a request no backend saw.
    async fn next_head(
        &mut self,
        stream: &mut TcpStream,
        buffer: &mut BytesMut,
        limits: Limits,
    ) -> Option<Head> {
        tokio::select! {
            biased;
            _ = self.watcher.reached(Phase::Draining) => {}
            head = read_head(stream, buffer, limits) => return Some(head),
        }
        self.head_on_its_way(stream, buffer, limits).await
    }

    /// [`Connection::next_head`] for the heads after the first, with the connection's own timer
    /// and shutdown waiter.
    async fn next_plain_head<D: Future<Output = ()>>(
        &mut self,
        stream: &mut TcpStream,
        buffer: &mut BytesMut,
        limits: Limits,
        waits: &mut HeadWaits<'_, D>,
    ) -> Option<Head> {
        if !waits.drained {
            let deadline = header_deadline(limits);
            let timer = match &mut waits.timer {
                Some(timer) => {
                    timer.as_mut().reset(deadline);
                    timer
                }
                None => waits
                    .timer
                    .insert(Box::pin(tokio::time::sleep_until(deadline))),
            };
            tokio::select! {
                biased;
                () = &mut waits.draining => waits.drained = true,
                head = read_head_within(stream, buffer, limits, timer.as_mut()) => return Some(head),
            }
        }
        self.head_on_its_way(stream, buffer, limits).await
    }

    /// Draining has begun: reads a request the client sent before it could know, or `None`.
    async fn head_on_its_way(
        &mut self,
        stream: &mut TcpStream,
        buffer: &mut BytesMut,
        limits: Limits,
    ) -> Option<Head> {
        // tokio learns of bytes that arrived only when it next polls for I/O events, which a
        // yield lets it do first; until then `try_read_buf` would say there is nothing.
        tokio::task::yield_now().await;
        let on_its_way =
            !buffer.is_empty() || matches!(stream.try_read_buf(buffer), Ok(n) if n > 0);
        if on_its_way {
            Some(read_head(stream, buffer, limits).await)
        } else {
            None
        }
    }

    /// Answers a head that could not be read (408, 431, 400) and returns false; true if it was.
    async fn answer_unreadable_head(
        &self,
        proxy: &Proxy,
        stream: &mut TcpStream,
        head: Head,
        limits: Limits,
        started: Instant,
    ) -> bool {
        let (status, message) = match head {
            Head::Ready => return true,
            Head::Closed => return false,
            Head::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request headers not received within {} ms",
                    limits.header_read_timeout_ms
                ),
            ),
            Head::Incomplete => (
                StatusCode::BAD_REQUEST,
                "malformed request: the client stopped sending before the end of the headers"
                    .to_owned(),
            ),
            Head::TooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "request headers are larger than the limit of {} bytes",
                    limits.max_header_bytes
                ),
            ),
        };
        self.answer_raw(proxy, stream, status, &message, started)
            .await;
        false
    }

    /// Answers an error found before hyper saw the request, then closes politely.
    async fn answer_raw(
        &self,
        proxy: &Proxy,
        stream: &mut TcpStream,
        status: StatusCode,
        message: &str,
        started: Instant,
    ) {
        let response = raw_response(status, message);
        let _ = tokio::time::timeout(LINGER, async {
            stream.write_all(&response).await?;
            stream.shutdown().await?;
            // On the heap: an array here would sit in every connection task's state (8 KiB
            // of each idle connection), not only in the rare ones that get here.
            let mut sink = vec![0u8; 8192];
            let mut discarded = 0;
            while discarded < LINGER_MAX_BYTES {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => discarded += n,
                }
            }
            io::Result::Ok(())
        })
        .await;
        let log = proxy.access_log();
        if log.enabled() {
            log.write(&AccessRecord {
                request_id: "-".into(),
                client: self.info.client,
                method: "-".into(),
                host: "-".into(),
                path: "-".into(),
                route: "-".into(),
                backend: "-".into(),
                status: status.as_u16(),
                bytes: (message.len() + 1) as u64,
                duration: started.elapsed(),
                outcome: "rejected",
            });
        }
    }
}

/// How the plain path ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Plain {
    /// The connection is done.
    Closed,
    /// The request at the front of the buffer is hyper's to serve, and so is the rest.
    HandOver,
}

/// What waiting for a plain connection's next head needs, made once per connection.
struct HeadWaits<'a, D> {
    /// The header timeout's timer, made at the second head (most connections in the load
    /// harness's idle test never send a first).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Ready once draining has begun; not polled again after (`drained`).
    draining: QuietWait<'a, D>,
    drained: bool,
}

/// What reading a request head gave.
enum Head {
    /// The buffer holds at least one complete request head (or the h2 preface).
    Ready,
    /// The client closed (or reset) before sending a head.
    Closed,
    /// The client stopped sending (half-closed) in the middle of a head.
    Incomplete,
    /// `header_read_timeout_ms` passed first.
    TimedOut,
    /// The head is over `max_header_bytes`.
    TooLarge,
}

/// Reads into `buffer` until it holds a complete request head, within the header timeout and
/// size limit.
///
/// hyper's own header timeout only closes the connection, and its size limit is a buffer size;
/// reading heads here gives the client a proper 408 or 431.
async fn read_head(stream: &mut TcpStream, buffer: &mut BytesMut, limits: Limits) -> Head {
    if head_complete(buffer) {
        return Head::Ready;
    }
    let timer = std::pin::pin!(tokio::time::sleep_until(header_deadline(limits)));
    read_head_within(stream, buffer, limits, timer).await
}

/// When a head starting to be awaited now must have arrived.
fn header_deadline(limits: Limits) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(limits.header_read_timeout_ms)
}

/// [`read_head`] with the header timeout kept by `timer`, set to [`header_deadline`].
async fn read_head_within(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    limits: Limits,
    mut timer: Pin<&mut tokio::time::Sleep>,
) -> Head {
    if head_complete(buffer) {
        return Head::Ready;
    }
    loop {
        let searched_from = buffer.len().saturating_sub(3);
        let read = tokio::select! {
            biased;
            // Never more than the limit: a head that has not ended by then is too large,
            // however it was cut into reads.
            read = read_through_scratch(
                stream,
                buffer,
                limits.max_header_bytes.saturating_sub(buffer.len()).max(1),
            ) => read,
            () = timer.as_mut() => return Head::TimedOut,
        };
        match read {
            Err(_) => return Head::Closed,
            // A client that half-closes mid-head may still read: tell it what went wrong.
            Ok(0) if !buffer.is_empty() => return Head::Incomplete,
            Ok(0) => return Head::Closed,
            Ok(_) => {}
        }
        if head_complete(&buffer[searched_from..]) {
            return Head::Ready;
        }
        if buffer.len() >= limits.max_header_bytes {
            return Head::TooLarge;
        }
    }
}

/// Size of each worker thread's buffer that client connections read their heads into.
const READ_SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    /// Where client connections read: one buffer per worker, used by every connection of the
    /// thread in turn and so always in the cache. Each connection used to read into a 4 KiB
    /// buffer of its own, 64 of them cold in turn under wrk -c64; reading here and copying the
    /// bytes out measured about 3% fewer CPU-seconds per request (with 512-byte per-connection
    /// buffers as the stand-in), and a connection keeps only the bytes it was sent.
    static READ_SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_SCRATCH_BYTES]);
}

/// Reads what the socket has (up to `at_most` bytes, and [`READ_SCRATCH_BYTES`]) and appends
/// it to `buffer`, through the worker's scratch buffer; `Ok(0)` at the end of the stream. The
/// buffer grows only by what was read, and not at all while the connection waits.
async fn read_through_scratch(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    at_most: usize,
) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        READ_SCRATCH.with_borrow_mut(|scratch| {
            let room = at_most.min(scratch.len());
            let mut read = ReadBuf::new(&mut scratch[..room]);
            // poll_read, not readiness and try_read: a short read clears tokio's readiness,
            // so the next wait costs no extra `recvfrom` that would only say "nothing yet".
            std::task::ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
            buffer.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        })
    })
    .await
}

/// Whether the first head declares a `content-length` over `max_body_bytes`. Answered here
/// because hyper calls a length near `u64::MAX` a header error (431) before the proxy's own
/// body limit (413) can see it; smaller excesses would get the same 413 later anyway.
fn declares_too_large_body(head: &[u8], max_body_bytes: u64) -> bool {
    head.split(|&b| b == b'\n')
        .skip(1)
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (name, value) = line.split_at(colon);
            name.eq_ignore_ascii_case(b"content-length")
                .then(|| value[1..].trim_ascii())
        })
        .any(|value| {
            // Only well-formed digits: anything else is hyper's 400 to give.
            !value.is_empty()
                && value.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_none_or(|length| length > max_body_bytes)
        })
}

/// A blank line ends a head; bare LF line ends are tolerated as hyper does.
fn head_complete(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"\r\n\r\n") || bytes.windows(2).any(|w| w == b"\n\n")
}

/// The client stream with the bytes already read in front of it.
struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_end_at_a_blank_line() {
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(head_complete(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n"));
    }

    #[test]
    fn oversized_declared_bodies_are_found_in_the_head_only() {
        let head = |length: &str| {
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n")
        };
        assert!(declares_too_large_body(
            head("18446744073709551615").as_bytes(),
            1024
        ));
        assert!(declares_too_large_body(
            head("99999999999999999999999").as_bytes(),
            1024
        ));
        assert!(declares_too_large_body(head("1025").as_bytes(), 1024));
        assert!(!declares_too_large_body(head("1024").as_bytes(), 1024));
        // Malformed values are hyper's to refuse with 400.
        assert!(!declares_too_large_body(head("12a").as_bytes(), 1024));
        assert!(!declares_too_large_body(head("").as_bytes(), 1024));
        // A header-like line in the body after the blank line is not a header.
        let body = b"POST / HTTP/1.1\r\nHost: a\r\n\r\ncontent-length: 99999\r\n";
        assert!(!declares_too_large_body(body, 1024));
        // The request line is not a header, and bare LF line ends work.
        assert!(declares_too_large_body(
            b"GET /content-length:9 HTTP/1.1\ncontent-length:5000\n\n",
            1024
        ));
        assert!(!declares_too_large_body(
            b"GET /content-length:9999 HTTP/1.1\n\n",
            1
        ));
    }
}
