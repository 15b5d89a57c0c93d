//! The traffic workers 1..: each a thread with its own current-thread runtime, accepting on
//! its own socket of every listener.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::ListenerConfig;
use crate::runtime::shutdown::{DrainGuard, Phase, PhaseWatcher};
use crate::runtime::worker::WORKER_INDEX;
use crate::serve::Shared;
use crate::serve::listen::{ServeError, accept_loop, bind_error};

/// Longest a worker waits, after the grace period, for its blocking tasks (name lookups).
const WORKER_EXIT_TIMEOUT: Duration = Duration::from_secs(1);

/// One listener's socket for a worker (1..), with the listener's shared connection permits.
pub(super) struct WorkerSocket {
    pub(super) listener: ListenerConfig,
    pub(super) socket: std::net::TcpListener,
    pub(super) port: u16,
    pub(super) permits: Arc<Semaphore>,
}

/// Starts worker `index`: a thread running its own current-thread runtime, accepting on its
/// sockets and serving the connections it accepts until the shutdown is over.
pub(super) fn spawn_worker(
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
