//! Tells a service manager (systemd, through `$NOTIFY_SOCKET`) that the balancer is ready,
//! reloading or stopping, so that `systemctl start` and `systemctl reload` return when the
//! balancer is serving the new state, not when the process merely exists.
//!
//! Without `$NOTIFY_SOCKET` (not started by a service manager) every call does nothing. A
//! notification that cannot be sent is logged and otherwise ignored: the balancer serves
//! whether or not its manager hears about it.

/// Serving: the listeners are bound and the config is in force. `status` is shown by
/// `systemctl status`.
pub async fn ready(status: String) {
    send(move || {
        sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status(&status),
            ],
        )
    })
    .await;
}

/// A reload begins; [`ready`] ends it. systemd (v253 and later) wants the monotonic time with
/// it, to tell this reload from an earlier one.
pub async fn reloading() {
    send(|| {
        let mut states = vec![sd_notify::NotifyState::Reloading];
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        sd_notify::notify(false, &states)
    })
    .await;
}

/// The graceful shutdown begins.
pub async fn stopping() {
    send(|| sd_notify::notify(false, &[sd_notify::NotifyState::Stopping])).await;
}

/// Sends on a blocking thread: the datagram socket's send may block while the manager's queue
/// is full, and the caller is an event loop.
async fn send(notify: impl FnOnce() -> std::io::Result<()> + Send + 'static) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    match tokio::task::spawn_blocking(notify).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(%err, "cannot notify the service manager"),
        Err(err) => tracing::warn!(%err, "cannot notify the service manager"),
    }
}
