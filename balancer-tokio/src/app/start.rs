//! Starting the balancer (bind, build the first generation, spawn the workers and the admin
//! listener) and stopping it gracefully.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::workers::{WorkerSocket, spawn_worker};
use crate::config::Config;
use crate::forward::proxy::Proxy;
use crate::observe::metrics::Metrics;
use crate::runtime::shutdown::{Drain, Phase, Shutdown};
use crate::serve::listen::{ServeError, accept_loop, bind_error, bind_listener};
use crate::serve::{ReloadError, Shared};

/// Longest shutdown waits for the trace writer to write out what it has.
const TRACE_FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(5);

/// How long shutdown waits for the access log's last lines: short, since an output nobody
/// reads would otherwise hold up the exit.
const ACCESS_LOG_FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(1);

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

/// Descriptors kept for everything but client and backend connections (listeners, the admin
/// API, health checks, logs, the runtime).
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// The open-files soft limit in force, if it can be read.
fn open_files_limit() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Client connections each listener serves at once: its `max_connections`, unless the
/// open-files limit cannot hold them all with a backend connection each and
/// [`RESERVED_DESCRIPTORS`] besides; then every listener's share is cut in proportion, so that
/// an accepted client can always reach a backend instead of failing with 502 for want of a
/// descriptor.
pub fn client_connection_permits(config: &Config, open_files: Option<u64>) -> Vec<usize> {
    let wanted: Vec<usize> = config.listeners.iter().map(|l| l.max_connections).collect();
    let total: u64 = wanted.iter().map(|&n| n as u64).sum();
    let Some(limit) = open_files else {
        return wanted;
    };
    let budget = limit.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    if total <= budget {
        return wanted;
    }
    let capped: Vec<usize> = wanted
        .iter()
        .map(|&n| ((n as u128 * u128::from(budget) / u128::from(total)) as usize).max(1))
        .collect();
    tracing::warn!(
        open_files_limit = limit,
        max_connections = total,
        capped_to = capped.iter().sum::<usize>(),
        "the open-files limit leaves room for {} client connections with a backend connection each (and {RESERVED_DESCRIPTORS} descriptors besides), not for max_connections = {total}: serving at most {} at once; raise the limit (ulimit -Hn, LimitNOFILE=, docker --ulimit nofile=) to serve more",
        budget,
        capped.iter().sum::<usize>()
    );
    capped
}

/// How to change the admin API's address, for a start that could not bind it.
const ADMIN_ADDRESS_SET_BY: &str = "it is the admin API's address (`admin`, by default 127.0.0.1:9901): write `admin = \"127.0.0.1:PORT\"` for another port, or `admin = \"off\"` to run without it";

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
        Some(address) => Some(TcpListener::bind(address).await.map_err(|err| {
            bind_error(address, &err).set_by(|_| Some(ADMIN_ADDRESS_SET_BY.to_owned()))
        })?),
        None => None,
    };
    let admin = admin_socket
        .as_ref()
        .and_then(|socket| socket.local_addr().ok());
    let workers = config.worker_count();
    let mut bound = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        let sockets = bind_listener(listener.address, workers).map_err(|err| {
            err.set_by(|_| {
                Some(format!(
                    "it is listener `{}`'s address (`listen`, or `address` in its [[listeners]] table)",
                    listener.name
                ))
            })
        })?;
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
    let shared = Arc::new(Shared::new(proxy, config_path));
    let mut addresses = Vec::new();
    let mut accept_tasks = Vec::new();
    // Worker i accepts on socket i of every listener; the kernel spreads new connections over
    // the sockets (SO_REUSEPORT), and a connection stays on the worker that accepted it.
    let mut per_worker: Vec<Vec<WorkerSocket>> = (1..workers).map(|_| Vec::new()).collect();
    let client_permits = client_connection_permits(&config, open_files_limit());
    for (listener_index, (listener, sockets, local)) in bound.into_iter().enumerate() {
        addresses.push((listener.name.clone(), local));
        // One limit per listener, whichever worker accepts.
        let permits = Arc::new(Semaphore::new(client_permits[listener_index]));
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
        let dashboard = crate::dashboard::Dashboard::start(shared.clone(), shutdown.watcher());
        accept_tasks.push(tokio::spawn(crate::admin::serve(
            socket,
            shared.clone(),
            shutdown.watcher(),
            Some(dashboard),
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

    /// What a person starting it needs to know: where each listener and the admin API listen,
    /// and a first command to try. One line each, the same in demo and config mode.
    pub fn banner(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .addresses
            .iter()
            .map(|(name, address)| {
                format!("balancer listening on http://{address}/ (listener {name})")
            })
            .collect();
        if let Some(admin) = self.admin {
            lines.push(format!(
                "admin listening on http://{admin}/ (/dashboard, /metrics, /backends, /config, /healthz)"
            ));
        }
        if let Some((_, address)) = self.addresses.first() {
            lines.push(format!("try: curl http://{address}/"));
        }
        lines
    }

    /// The config generation in force (pools and their schedulers), for inspection.
    pub fn proxy(&self) -> Arc<Proxy> {
        self.shared.current()
    }

    /// The journal of core calls of the pool named `pool` (empty unless `journal_size` is set,
    /// or if there is no such pool): what the conformance test compares with the simulator's.
    pub fn journal(&self, pool: &str) -> Vec<balancer_core::JournalEntry> {
        self.proxy()
            .pools()
            .iter()
            .find(|p| p.name == pool)
            .map(|p| p.journal())
            .unwrap_or_default()
    }

    /// Reopens the access log's file (SIGUSR1, after logrotate moved it); nothing for stdout.
    pub fn reopen_logs(&self) {
        self.proxy().access_log().reopen();
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
        // The last lines too, within a bound: a stalled output must not hold up the exit.
        let log = proxy.access_log().clone();
        let flushed = tokio::task::spawn_blocking(move || log.flush(ACCESS_LOG_FLUSH_AT_SHUTDOWN))
            .await
            .unwrap_or(false);
        if !flushed {
            tracing::warn!(
                "the access log's last lines could not be written out (its output is stalled or gone)"
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_share_what_the_open_files_limit_allows_in_proportion() {
        let config = Config::from_toml_str(
            "backends = [\"a:1\"]\nadmin = \"off\"\n\
             [[listeners]]\naddress = \"127.0.0.1:0\"\nmax_connections = 300\n\
             [[listeners]]\naddress = \"127.0.0.1:1\"\nmax_connections = 100\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(client_connection_permits(&config, None), [300, 100]);
        assert_eq!(
            client_connection_permits(&config, Some(1_000_000)),
            [300, 100]
        );
        // (264 - 64) / 2 = 100 clients in all, split 3:1.
        assert_eq!(client_connection_permits(&config, Some(264)), [75, 25]);
        // Never below one each, even with no room at all.
        assert_eq!(client_connection_permits(&config, Some(10)), [1, 1]);
    }
}
