//! Which traffic worker the calling thread is, so that per-worker state (backend connections,
//! explain shards) is picked without a lock or a lookup.

thread_local! {
    /// Which traffic worker this thread is: 0 for the runtime that called `start` (and any
    /// other thread), `N` on `balancer-worker-N`.
    pub(crate) static WORKER_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The traffic worker running the calling code (see [`WORKER_INDEX`]).
pub(crate) fn worker_index() -> usize {
    WORKER_INDEX.with(std::cell::Cell::get)
}
