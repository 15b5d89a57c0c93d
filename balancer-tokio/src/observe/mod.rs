//! What the proxy tells about its traffic: metrics, the access log, the traffic trace and the
//! core's decision records. Everything here is written to, never asked for a decision.

pub mod access_log;
pub mod explain;
pub mod metrics;
pub mod trace;
pub mod window;

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Asks a writer thread to write out what it holds (the message `flush` makes, carrying the
/// reply channel) and waits for its answer, all within `timeout`. Blocking: for shutdown and
/// tests, never the request path. False if the writer is stuck or gone.
pub(crate) fn flush_writer<M>(
    sender: &SyncSender<M>,
    flush: impl FnOnce(SyncSender<()>) -> M,
    timeout: Duration,
) -> bool {
    let (reply, done) = mpsc::sync_channel(1);
    let deadline = Instant::now() + timeout;
    let mut message = flush(reply);
    loop {
        match sender.try_send(message) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                message = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return false,
        }
    }
    done.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .is_ok()
}
