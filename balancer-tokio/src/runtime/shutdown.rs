//! Graceful shutdown: the phase broadcast to every task, drain tracking, and the OS signals.
//!
//! Running → Draining (stop accepting; connections finish their in-flight requests and close)
//! → Stopped (the grace period is over: whatever is left is closed).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

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

    /// `wait` (a [`PhaseWatcher::reached`] of a clone of this watcher), made cheap to poll
    /// again and again from one task: see [`QuietWait`].
    pub fn quiet<F: Future<Output = ()>>(mut self, wait: Pin<&mut F>) -> QuietWait<'_, F> {
        self.phase.mark_unchanged();
        QuietWait {
            wait,
            probe: self,
            waker: None,
            done: false,
        }
    }
}

/// A wait for a phase that a connection polls each time its task wakes, for its whole life.
/// The wait inside is polled again only when the phase has moved or the task's waker changed:
/// otherwise the waker it queued last time is still the right one, and polling it again would
/// take the channel's lock (with two such waits per connection, about 700 instructions of each
/// small GET). Ready once, then never again.
pub struct QuietWait<'a, F> {
    wait: Pin<&'a mut F>,
    probe: PhaseWatcher,
    waker: Option<Waker>,
    done: bool,
}

impl<F: Future<Output = ()>> Future for QuietWait<'_, F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.done {
            return Poll::Pending;
        }
        // A sender gone counts as moved: `reached` returns then.
        let moved = this.probe.phase.has_changed().unwrap_or(true);
        let same_waker = this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if !moved && same_waker {
            return Poll::Pending;
        }
        this.probe.phase.mark_unchanged();
        match this.wait.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.done = true;
                Poll::Ready(())
            }
            Poll::Pending => {
                if !same_waker {
                    this.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
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
