//! Listening: sockets bound once per worker (`SO_REUSEPORT`), and accept loops that hold each
//! listener to its connection limit.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::connection::Connection;
use super::generation::Shared;
use crate::balance::pool::PoolError;
use crate::config::{ConfigError, ListenerConfig};
use crate::forward::proxy::ConnectionInfo;
use crate::runtime::shutdown::{DrainGuard, Phase, PhaseWatcher};

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Pending connections the kernel queues per listening socket (what `TcpListener::bind` uses).
const LISTEN_BACKLOG: u32 = 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not bind.
    #[error("cannot listen on {address}: {reason}{set_by}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// What the OS said, in words.
        reason: String,
        /// Which setting chose the address and how to change it ("; …"), or empty.
        set_by: String,
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

/// Binds `address` once per worker. With more than one worker every socket sets
/// `SO_REUSEPORT` (the later ones bind the port the first one got, so port 0 works).
pub fn bind_listener(
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

/// The start error for `address` that `err` stopped from binding, in an operator's words.
pub fn bind_error(address: SocketAddr, err: &io::Error) -> ServeError {
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
    ServeError::Bind {
        address,
        reason,
        set_by: String::new(),
    }
}

impl ServeError {
    /// Names, for a bind error, the setting that chose the address and how to change it, so
    /// that a port clash says which key (or flag) to edit. The outermost caller knows best: a
    /// `Some` replaces what an inner one said. Other errors are returned as they are.
    #[must_use]
    pub fn set_by(self, setting: impl FnOnce(SocketAddr) -> Option<String>) -> ServeError {
        match self {
            ServeError::Bind {
                address,
                reason,
                set_by,
            } => ServeError::Bind {
                address,
                reason,
                set_by: setting(address).map_or(set_by, |s| format!("; {s}")),
            },
            other => other,
        }
    }
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

/// At most one log line per [`ACCEPT_ERROR_LOG_INTERVAL`] for failed accepts, with how many
/// failed since the last one: out of descriptors, a loop would otherwise log 20 lines a second.
const ACCEPT_ERROR_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<std::time::Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn failed(&mut self, listener: &str, err: &io::Error) {
        self.unlogged += 1;
        if self
            .last_logged
            .is_some_and(|at| at.elapsed() < ACCEPT_ERROR_LOG_INTERVAL)
        {
            return;
        }
        let hint = if err.raw_os_error() == Some(24) || err.raw_os_error() == Some(23) {
            "; out of file descriptors: raise the open-files limit or lower max_connections"
        } else {
            ""
        };
        tracing::warn!(listener, %err, failed = self.unlogged, "accept failed{hint}");
        self.unlogged = 0;
        self.last_logged = Some(std::time::Instant::now());
    }
}

/// Accepts on `socket` until draining begins, serving each connection in a task of its own.
pub(crate) async fn accept_loop(
    socket: TcpListener,
    listener: ListenerConfig,
    port: u16,
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
    mut watcher: PhaseWatcher,
    drain: Option<DrainGuard>,
) {
    let Some(drain) = drain else { return };
    let mut accept_errors = AcceptErrors::default();
    loop {
        let Some((permit, accepted)) = accept_within_limit(&socket, &permits, &mut watcher).await
        else {
            break;
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                accept_errors.failed(&listener.name, &err);
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
