//! Graceful shutdown: the phase broadcast to every task, drain tracking, and the OS signals.
//!
//! Running → Draining (stop accepting; connections finish their in-flight requests and close)
//! → Stopped (the grace period is over: whatever is left is closed).

use tokio::sync::{mpsc, watch};

/// Where the shutdown is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving.
    Running,
    /// No new connections; in-flight requests finish.
    Draining,
    /// Grace period over: close everything now.
    Stopped,
}

/// Sends phase changes.
#[derive(Debug)]
pub struct Shutdown {
    phase: watch::Sender<Phase>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A shutdown still in [`Phase::Running`].
    pub fn new() -> Self {
        Shutdown {
            phase: watch::Sender::new(Phase::Running),
        }
    }

    /// A receiver of phase changes.
    pub fn watcher(&self) -> PhaseWatcher {
        PhaseWatcher {
            phase: self.phase.subscribe(),
        }
    }

    /// Moves to `phase` (never backwards).
    pub fn advance(&self, phase: Phase) {
        self.phase.send_if_modified(|current| {
            let moved = phase > *current;
            if moved {
                *current = phase;
            }
            moved
        });
    }
}

/// Receives phase changes.
#[derive(Clone, Debug)]
pub struct PhaseWatcher {
    phase: watch::Receiver<Phase>,
}

impl PhaseWatcher {
    /// Waits until the phase is at least `phase` (returns at once if it already is; also
    /// returns if the sender is gone, which means the server is being torn down).
    pub async fn reached(&mut self, phase: Phase) {
        let _ = self.phase.wait_for(|current| *current >= phase).await;
    }

    /// Whether the phase is already at least `phase` (without waiting).
    pub fn is_at(&self, phase: Phase) -> bool {
        *self.phase.borrow() >= phase
    }
}

/// Counts live connections and tunnels: each holds a [`DrainGuard`]; [`Drain::wait`] returns
/// when all are gone. (A channel nobody sends on: it closes when the last sender drops.)
#[derive(Debug)]
pub struct Drain {
    sender: Option<mpsc::Sender<()>>,
    receiver: mpsc::Receiver<()>,
}

/// Held by a connection or tunnel while it lives.
#[derive(Clone, Debug)]
pub struct DrainGuard {
    _sender: mpsc::Sender<()>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain::new()
    }
}

impl Drain {
    /// No guards yet.
    pub fn new() -> Self {
        let (sender, receiver) = mpsc::channel(1);
        Drain {
            sender: Some(sender),
            receiver,
        }
    }

    /// A guard to hold while a connection lives.
    pub fn guard(&self) -> Option<DrainGuard> {
        self.sender
            .as_ref()
            .map(|s| DrainGuard { _sender: s.clone() })
    }

    /// Waits until every guard is dropped.
    pub async fn wait(mut self) {
        self.sender = None;
        let _ = self.receiver.recv().await;
    }
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM; returns the signal's name.
pub async fn os_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = interrupt.recv() => Ok("SIGINT"),
            _ = terminate.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("Ctrl-C")
    }
}
