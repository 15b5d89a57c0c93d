//! A pool as the proxy holds it: the core's scheduler and its RNG behind one mutex, the backend
//! addresses, and the keep-alive HTTP client to them.
//!
//! One `std::sync::Mutex` per pool: work and done are tens of nanoseconds, the lock is never held
//! across an `.await`, and one lock keeps pending counts exact (least-pending needs that).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use balancer_core::{
    BackendId, Completion, CoreError, Decision, Outcome, RequestId, Scheduler, SchedulerConfig,
    Timestamp,
};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::body::RequestBody;
use crate::config::PoolConfig;

/// The proxy's clock for the core: nanoseconds since the process (or proxy) started.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    /// Now, as the core's timestamp.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.start.elapsed().as_nanos() as u64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// One backend's address in the forms the proxy needs.
#[derive(Debug)]
pub struct Backend {
    /// The core's id for it.
    pub id: BackendId,
    /// `host:port` as configured.
    pub address: String,
    /// The same, parsed as an URI authority for request URIs.
    pub authority: http::uri::Authority,
}

struct Scheduling {
    scheduler: Scheduler,
    rng: ChaCha8Rng,
}

/// The client type used to reach backends.
pub type BackendClient = Client<HttpConnector, RequestBody>;

/// A pool of backends with its scheduler.
pub struct Pool {
    /// Its name.
    pub name: String,
    /// Backends by `BackendId::index()`.
    backends: Vec<Backend>,
    scheduling: Mutex<Scheduling>,
    contended_locks: AtomicU64,
    protocol_errors: AtomicU64,
    /// Keep-alive connections to the pool's backends (one pool of connections per backend).
    pub client: BackendClient,
    /// Connect timeout (also used for upgrade connections).
    pub connect_timeout: Duration,
    /// Request sent → response headers; then 504.
    pub response_header_timeout: Duration,
    /// The clock that stamps work and done.
    pub clock: Clock,
}

/// Failure building a pool: only possible with a config that bypassed validation.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The core refused a backend.
    #[error("pool {pool:?}: backend {address}: {source}")]
    Core {
        /// Pool name.
        pool: String,
        /// Backend address.
        address: String,
        /// The core's reason.
        source: CoreError,
    },
    /// The address is not an URI authority.
    #[error("pool {pool:?}: backend address {address:?} is not HOST:PORT")]
    Address {
        /// Pool name.
        pool: String,
        /// Backend address.
        address: String,
    },
}

impl Pool {
    /// Builds the pool: registers every backend with a fresh scheduler.
    pub fn new(config: &PoolConfig, clock: Clock) -> Result<Pool, PoolError> {
        let mut scheduler_config = SchedulerConfig::new(config.policy);
        scheduler_config.max_in_flight = config.max_in_flight;
        let mut scheduler = Scheduler::new(scheduler_config);
        let now = clock.now();
        let mut backends: Vec<Backend> = Vec::with_capacity(config.backends.len());
        for backend in &config.backends {
            let id = scheduler
                .add_backend(now, backend.weight)
                .map_err(|source| PoolError::Core {
                    pool: config.name.clone(),
                    address: backend.address.clone(),
                    source,
                })?;
            let authority = backend
                .address
                .parse::<http::uri::Authority>()
                .map_err(|_| PoolError::Address {
                    pool: config.name.clone(),
                    address: backend.address.clone(),
                })?;
            // The core hands out dense indices for a fresh scheduler; the table relies on it.
            debug_assert_eq!(id.index(), backends.len());
            backends.push(Backend {
                id,
                address: backend.address.clone(),
                authority,
            });
        }
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_millis(config.idle_timeout_ms))
            .pool_max_idle_per_host(config.max_idle_per_backend)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Pool {
            name: config.name.clone(),
            backends,
            scheduling: Mutex::new(Scheduling {
                scheduler,
                rng: ChaCha8Rng::seed_from_u64(config.seed),
            }),
            contended_locks: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            client,
            connect_timeout,
            response_header_timeout: Duration::from_millis(config.response_header_timeout_ms),
            clock,
        })
    }

    /// Work: asks the core where to send a request arriving now.
    pub fn handle_work(&self) -> Decision {
        let now = self.clock.now();
        let mut guard = self.lock();
        let Scheduling { scheduler, rng } = &mut *guard;
        let decision = scheduler.handle_work(now, rng);
        self.check_invariants(scheduler);
        decision
    }

    /// Done: tells the core how a dispatched request ended.
    pub fn handle_done(&self, request: RequestId, outcome: Outcome) {
        let now = self.clock.now();
        let mut guard = self.lock();
        let result: Result<Completion, CoreError> =
            guard.scheduler.handle_done(now, request, outcome);
        self.check_invariants(&guard.scheduler);
        drop(guard);
        if let Err(err) = result {
            // Only reachable through a bug in the done guard; the core kept its state intact.
            self.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(pool = %self.name, %err, "done rejected by the core");
        }
    }

    /// Dones the core rejected plus invariant violations found in debug builds: always a bug,
    /// and the end-to-end tests assert it stays zero.
    pub fn protocol_errors(&self) -> u64 {
        self.protocol_errors.load(Ordering::Relaxed)
    }

    /// In debug builds, the core's invariants after every event (O(backends + in flight):
    /// cheap at test sizes, too slow for release).
    fn check_invariants(&self, scheduler: &Scheduler) {
        if cfg!(debug_assertions) {
            if let Err(violation) = scheduler.check_invariants() {
                self.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(pool = %self.name, %violation, "core invariant violated");
            }
        }
    }

    /// The backend the core named.
    pub fn backend(&self, id: BackendId) -> Option<&Backend> {
        self.backends.get(id.index()).filter(|b| b.id == id)
    }

    /// Requests in flight in this pool (for tests and, later, the admin API).
    pub fn in_flight(&self) -> u32 {
        self.lock().scheduler.in_flight()
    }

    /// Requests dispatched to each backend so far, in configuration order.
    pub fn dispatched_per_backend(&self) -> Vec<(String, u64)> {
        let now = self.clock.now();
        let guard = self.lock();
        self.backends
            .iter()
            .map(|b| {
                let dispatched = guard
                    .scheduler
                    .backend(b.id, now)
                    .map_or(0, |s| s.dispatched);
                (b.address.clone(), dispatched)
            })
            .collect()
    }

    /// Lock acquisitions that found the scheduler held by another thread (the measure of
    /// whether one mutex per pool is a bottleneck; see the README's load-test section).
    pub fn contended_locks(&self) -> u64 {
        self.contended_locks.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Scheduling> {
        // A panic while holding the lock cannot leave the scheduler half-updated in a way
        // that matters more than stopping all traffic would, so poisoning is ignored.
        match self.scheduling.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // Counted only when contended, so the uncontended path stays one atomic.
                self.contended_locks.fetch_add(1, Ordering::Relaxed);
                self.scheduling.lock().unwrap_or_else(|p| p.into_inner())
            }
        }
    }
}

/// Shared handle to a pool.
pub type SharedPool = Arc<Pool>;
