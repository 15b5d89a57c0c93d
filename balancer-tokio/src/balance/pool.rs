//! A pool as the proxy holds it: the core's scheduler, its RNG and the backend table behind one
//! mutex (the part that survives config reloads), plus the keep-alive HTTP client and timeouts
//! of the config generation in force.
//!
//! One `std::sync::Mutex` per pool: work and done are tens of nanoseconds, the lock is never held
//! across an `.await`, and one lock keeps pending counts exact (least-pending needs that).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use balancer_core::{
    AfterTry, BackendId, BackendSnapshot, BackendState, CoreError, Decision, DecisionRecord,
    HealthTransition, JournalEntry, MethodClass, RejectReason, RequestId, RequestInfo, Scheduler,
    SchedulerConfig, SlowStartConfig, Timestamp, TryReport,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::{HealthCheck, PoolConfig};
use crate::observe::metrics::{BackendLabels, HealthLabels, Metrics, PoolLabels};
use crate::observe::window::RequestWindow;
use crate::upstream::{Backend, BackendClient, Upstream, UpstreamSettings, backend_clients};

/// The proxy's clock for the core: nanoseconds since the process (or proxy) started.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    /// The wall-clock time at `start`, to show a timestamp to a person.
    wall_start: SystemTime,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Clock {
            start: Instant::now(),
            wall_start: SystemTime::now(),
        }
    }

    /// Now, as the core's timestamp.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.start.elapsed().as_nanos() as u64)
    }

    /// An instant already read, as the core's timestamp (so one reading serves twice).
    pub fn at(&self, instant: Instant) -> Timestamp {
        Timestamp::from_nanos(instant.saturating_duration_since(self.start).as_nanos() as u64)
    }

    /// The wall-clock time of a core timestamp of this clock.
    pub fn wall_time(&self, at: Timestamp) -> SystemTime {
        self.wall_start + Duration::from_nanos(at.as_nanos())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

struct Entry {
    backend: Arc<Backend>,
}

struct Scheduling {
    scheduler: Scheduler,
    /// The settings the config asked for (the core normalises some, so this is what a
    /// reloaded config is compared with).
    requested: SchedulerConfig,
    rng: ChaCha8Rng,
    /// Backends by `BackendId::index()` (the core reuses a removed backend's index).
    table: Vec<Option<Entry>>,
}

impl Scheduling {
    fn backend(&self, id: BackendId) -> Option<&Arc<Backend>> {
        self.table
            .get(id.index())
            .and_then(Option::as_ref)
            .map(|e| &e.backend)
            .filter(|b| b.id == id)
    }

    fn find(&self, address: &str) -> Option<&Entry> {
        self.table
            .iter()
            .flatten()
            .find(|e| e.backend.address == address)
    }
}

/// The scheduler side of a pool: what a config reload keeps, so that backends present before
/// and after keep their pending counts, health, ejections and latency estimates.
pub struct PoolCore {
    name: String,
    label: Arc<String>,
    scheduling: Mutex<Scheduling>,
    contended_locks: AtomicU64,
    protocol_errors: AtomicU64,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Wakes the pool's timer when a done ejected a backend (an earlier `next_timeout`).
    timer: tokio::sync::Notify,
    /// The last minutes of finished requests, for the dashboard (kept across reloads).
    window: RequestWindow,
}

/// What a dispatch decided: the request to report the done with, and its backend.
pub type Dispatch = (RequestId, Arc<Backend>);

/// A pool of backends with its scheduler, as one config generation sees it.
pub struct Pool {
    /// Its name.
    pub name: String,
    core: Arc<PoolCore>,
    /// Keep-alive connections to the pool's backends: one client (one pool of connections per
    /// backend) per traffic worker, so that a backend connection is only ever driven by the
    /// worker that uses it (see [`Pool::client`]).
    clients: Arc<[BackendClient]>,
    /// Keep-alive connections for requests whose body is in memory (no hyper client task per
    /// connection; see [`crate::upstream`]).
    pub upstream: Arc<Upstream>,
    /// Connect timeout (also used for upgrade connections).
    pub connect_timeout: Duration,
    /// Request sent → response headers, per try; then 504 (or a retry).
    pub response_header_timeout: Duration,
    /// Longest silence within a response body; then it is cut.
    pub response_body_idle_timeout: Duration,
    /// Request arrival → response headers over all tries and backoffs; then 504.
    pub request_timeout: Duration,
    /// Active health checks, if configured.
    pub health_check: Option<HealthCheck>,
    /// The retry rules this generation gave the core, to ask the core's rules about a method or
    /// a status without taking the scheduler's lock on every request.
    retry: Option<balancer_core::RetryConfig>,
    /// consistent-hash: where each request's key comes from.
    hash_key_source: Option<crate::config::HashKeySource>,
    client_settings: (u64, u64, usize),
    /// The clock that stamps work and done.
    pub clock: Clock,
    /// Names this pool in the explain ring (`explain::pool_key` of its name).
    pub explain_key: u64,
}

/// Failure building a pool: only possible with a config that bypassed validation.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The core refused a backend.
    #[error("pool {pool:?}: backend {address}: {reason}")]
    Core {
        /// Pool name.
        pool: String,
        /// Backend address.
        address: String,
        /// The core's reason (in the message, not as a source, so it is printed once).
        reason: CoreError,
    },
    /// The traffic trace file could not be opened (built with the pools, so reported with them).
    #[error("cannot open the traffic trace {path}: {reason}")]
    Trace {
        /// The trace file.
        path: String,
        /// What the OS said, in words (kept as text so it is printed once).
        reason: String,
    },
    /// The access log's file could not be opened (built with the pools, as the trace is).
    #[error("cannot open the access log {path}: {reason}")]
    AccessLog {
        /// The file.
        path: String,
        /// What the OS said, in words (kept as text so it is printed once).
        reason: String,
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

/// Why an admin action on a backend was refused.
#[derive(Debug, thiserror::Error)]
pub enum BackendActionError {
    /// No backend with that address in the pool.
    #[error("pool {pool:?} has no backend {address}")]
    UnknownBackend {
        /// Pool name.
        pool: String,
        /// The address asked for.
        address: String,
    },
    /// The core refused.
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// One backend's state for the admin API and metrics.
#[derive(Clone, Debug)]
pub struct BackendView {
    /// The backend.
    pub backend: Arc<Backend>,
    /// The core's snapshot.
    pub snapshot: BackendSnapshot,
    /// Gone from the config, waiting for its in-flight requests before removal.
    pub removing: bool,
}

impl BackendView {
    /// `up`, `down`, `draining` (still has requests in flight), `drained` or `ejected`.
    pub fn state_name(&self, now: Timestamp) -> &'static str {
        match self.snapshot.state {
            BackendState::Draining if self.snapshot.pending > 0 => "draining",
            BackendState::Draining => "drained",
            BackendState::Down => "down",
            BackendState::Up if self.snapshot.ejected_until.is_some_and(|t| t > now) => "ejected",
            BackendState::Up => "up",
        }
    }
}

/// The scheduler settings a pool config asks for.
pub fn scheduler_config(config: &PoolConfig) -> SchedulerConfig {
    let mut scheduler_config = SchedulerConfig::new(config.policy);
    scheduler_config.max_in_flight = config.max_in_flight;
    scheduler_config.max_pending_per_backend = config.max_pending_per_backend;
    scheduler_config.outlier = config.outlier;
    scheduler_config.retry = config.retry;
    if let Some(hash) = &config.hash {
        scheduler_config.hash_load_factor = hash.load_factor;
    }
    if let Some(check) = &config.health_check {
        scheduler_config.health_check = balancer_core::HealthCheckConfig {
            rise: check.rise,
            fall: check.fall,
        };
    }
    scheduler_config.slow_start = config.slow_start.map(|s| SlowStartConfig {
        window: Duration::from_millis(s.window_ms),
        min_weight_percent: s.min_weight_percent,
    });
    scheduler_config.panic_threshold_percent = config.panic_threshold_percent;
    scheduler_config.failure_status = config.failure_status;
    scheduler_config
}

impl PoolCore {
    fn new(
        config: &PoolConfig,
        clock: Clock,
        metrics: Arc<Metrics>,
        workers: usize,
        journal_size: usize,
    ) -> Result<Arc<PoolCore>, PoolError> {
        let scheduler_config = scheduler_config(config);
        let mut scheduler = Scheduler::new(scheduler_config);
        if journal_size > 0 {
            scheduler.enable_journal(journal_size);
        }
        let core = PoolCore {
            name: config.name.clone(),
            label: Arc::new(config.name.clone()),
            scheduling: Mutex::new(Scheduling {
                scheduler,
                requested: scheduler_config,
                rng: ChaCha8Rng::seed_from_u64(config.seed),
                table: Vec::with_capacity(config.backends.len()),
            }),
            contended_locks: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            clock,
            metrics,
            timer: tokio::sync::Notify::new(),
            window: RequestWindow::new(workers),
        };
        core.apply_backends(config)?;
        Ok(Arc::new(core))
    }

    /// Hands the backend list of `config` to the core's reconcile, which decides: new backends
    /// are added, weights set, backends gone from the config leave (removed at once if idle,
    /// else drained and removed by the done of their last request); a leaving backend listed
    /// again is undrained and keeps its state. Addresses are checked before anything changes.
    fn apply_backends(&self, config: &PoolConfig) -> Result<(), PoolError> {
        let now = self.clock.now();
        let mut authorities = Vec::with_capacity(config.backends.len());
        for wanted in &config.backends {
            let authority = wanted
                .address
                .parse::<http::uri::Authority>()
                .map_err(|_| PoolError::Address {
                    pool: config.name.clone(),
                    address: wanted.address.clone(),
                })?;
            authorities.push(authority);
        }
        let desired: Vec<(&str, u32)> = config
            .backends
            .iter()
            .map(|b| (b.address.as_str(), b.weight))
            .collect();
        let mut guard = self.lock();
        let scheduling = &mut *guard;
        let done = scheduling
            .scheduler
            .reconcile(now, &desired)
            .map_err(|reason| PoolError::Core {
                pool: config.name.clone(),
                address: String::new(),
                reason,
            })?;
        for (key, id) in &done.added {
            let position = config
                .backends
                .iter()
                .position(|b| *b.address == **key)
                .expect("the core adds only listed keys");
            if scheduling.table.len() <= id.index() {
                scheduling.table.resize_with(id.index() + 1, || None);
            }
            scheduling.table[id.index()] = Some(Entry {
                backend: Arc::new(Backend {
                    id: *id,
                    address: key.to_string(),
                    label: Arc::new(key.to_string()),
                    authority: authorities[position].clone(),
                    socket_addr: crate::upstream::socket_addr(key),
                }),
            });
        }
        for id in &done.removed {
            if let Some(entry) = scheduling.table.get_mut(id.index()).and_then(Option::take) {
                tracing::info!(pool = %self.name, backend = %entry.backend.address, "backend removed (gone from the config, nothing in flight)");
            }
        }
        self.check_invariants(&guard.scheduler);
        Ok(())
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

    /// In debug builds, the core's invariants after every event (O(backends + in flight):
    /// cheap at test sizes, too slow for release).
    fn check_invariants(&self, scheduler: &Scheduler) {
        if cfg!(debug_assertions)
            && let Err(violation) = scheduler.check_invariants()
        {
            self.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(pool = %self.name, %violation, "core invariant violated");
        }
    }

    /// Carries out a decision: the backend it names, or the reason for refusing.
    fn resolve(
        &self,
        scheduling: &mut Scheduling,
        decision: Decision,
    ) -> Result<Dispatch, RejectReason> {
        match decision {
            Decision::Dispatch { request, backend } => match scheduling.backend(backend) {
                Some(b) => Ok((request, b.clone())),
                None => {
                    // The core named a backend the table lacks: a bug; keep the counts exact.
                    let now = self.clock.now();
                    let _ = scheduling.scheduler.handle_done(
                        now,
                        request,
                        TryReport::cancelled(),
                        &mut scheduling.rng,
                    );
                    self.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(pool = %self.name, %backend, "core named an unknown backend");
                    Err(RejectReason::NoBackend)
                }
            },
            Decision::Reject { reason } => Err(reason),
        }
    }
}

impl Pool {
    /// Builds the pool: registers every backend with a fresh scheduler.
    /// `workers` is the number of traffic workers (one backend client each).
    pub fn new(
        config: &PoolConfig,
        clock: Clock,
        metrics: Arc<Metrics>,
        workers: usize,
        journal_size: usize,
    ) -> Result<Pool, PoolError> {
        let core = PoolCore::new(config, clock, metrics, workers, journal_size)?;
        Ok(Pool::with_core(config, core, None, workers))
    }

    /// The pool for a reloaded `config`: always the previous generation's scheduler, so every
    /// backend keeps its state (pending, health, ejection, EWMA) and in-flight requests their
    /// dones; changed scheduler settings (policy, limits, outlier, retry, ...) are applied in
    /// place with the core's `reconfigure`. The connection pool is kept when the client
    /// settings are unchanged. New backends are added, gone ones drained. The RNG is kept too
    /// (a changed `seed` applies at the next restart).
    pub fn reload(config: &PoolConfig, previous: &Pool) -> Result<Pool, PoolError> {
        let core = previous.core.clone();
        {
            let wanted = scheduler_config(config);
            let mut guard = core.lock();
            if guard.requested != wanted {
                let now = core.clock.now();
                guard.scheduler.reconfigure(now, wanted);
                guard.requested = wanted;
                core.check_invariants(&guard.scheduler);
                tracing::info!(
                    pool = %config.name,
                    "scheduler settings changed in place; backends keep their state"
                );
            }
        }
        core.apply_backends(config)?;
        let unchanged = client_settings(config) == previous.client_settings;
        let clients = unchanged.then(|| (previous.clients.clone(), previous.upstream.clone()));
        // A reload never changes the worker count (refused as needing a restart).
        Ok(Pool::with_core(
            config,
            core,
            clients,
            previous.clients.len(),
        ))
    }

    fn with_core(
        config: &PoolConfig,
        core: Arc<PoolCore>,
        clients: Option<(Arc<[BackendClient]>, Arc<Upstream>)>,
        workers: usize,
    ) -> Pool {
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let settings = UpstreamSettings {
            connect_timeout,
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            max_idle_per_backend: config.max_idle_per_backend,
        };
        let (clients, upstream) = clients.unzip();
        let upstream = upstream.unwrap_or_else(|| Upstream::new(settings, workers));
        let clients = clients.unwrap_or_else(|| backend_clients(settings, workers));
        Pool {
            name: config.name.clone(),
            clock: core.clock,
            core,
            clients,
            upstream,
            connect_timeout,
            response_header_timeout: Duration::from_millis(config.response_header_timeout_ms),
            response_body_idle_timeout: Duration::from_millis(config.response_body_idle_timeout_ms),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            health_check: config.health_check.clone(),
            retry: config.retry,
            hash_key_source: config.hash.as_ref().map(|h| h.key.clone()),
            client_settings: client_settings(config),
            explain_key: crate::observe::explain::pool_key(&config.name),
        }
    }

    /// The backend client of the worker running this code. Connections a client opens are
    /// driven by tasks on the runtime that opened them; one client per worker keeps a request
    /// and its backend connection on one thread (no cross-thread wake-up per request, no
    /// shared pool lock).
    pub fn client(&self) -> &BackendClient {
        let worker = crate::runtime::worker::worker_index();
        self.clients.get(worker).unwrap_or(&self.clients[0])
    }

    /// The pool's name as a metrics label.
    pub fn label(&self) -> &Arc<String> {
        &self.core.label
    }

    /// The last minutes of this pool's finished requests.
    pub fn window(&self) -> &RequestWindow {
        &self.core.window
    }

    /// Counts a request of this pool that finished at `now`, after `latency`, with `status`.
    pub fn record_request(&self, now: Instant, latency: Duration, status: u16) {
        self.core.window.record(self.clock.at(now), latency, status);
    }

    /// Outlier ejections of the backend labelled `backend` since the process started.
    pub fn ejections(&self, backend: &Arc<String>) -> u64 {
        self.core
            .metrics
            .ejections
            .get_or_create(&BackendLabels {
                pool: self.core.label.clone(),
                backend: backend.clone(),
            })
            .get()
    }

    /// Whether `other` drives the same scheduler (the reload kept it).
    pub fn shares_core_with(&self, other: &Pool) -> bool {
        Arc::ptr_eq(&self.core, &other.core)
    }

    /// What the core is told about a request arriving now: its method class, the end of its
    /// `request_timeout_ms` (after which no retry starts), and for a consistent-hash pool the
    /// hash of its key.
    pub fn request_info(
        &self,
        method: &http::Method,
        headers: &http::HeaderMap,
        uri: &http::Uri,
        client: std::net::IpAddr,
    ) -> RequestInfo {
        RequestInfo {
            method: MethodClass::of(method.as_str()),
            deadline: Some(self.clock.now() + self.request_timeout),
            hash_key: self
                .hash_key_source
                .as_ref()
                .and_then(|source| crate::http::affinity::key_hash(source, headers, uri, client)),
        }
    }

    /// Whether the core could retry a request of `method` (so its body is worth keeping).
    pub fn may_retry(&self, method: &http::Method) -> bool {
        self.retry
            .is_some_and(|r| r.may_retry(MethodClass::of(method.as_str())))
    }

    /// Whether the core could retry a response with `status`: such a try is reported when its
    /// head arrives, before anything of it reaches the client.
    pub fn retries_status(&self, status: u16) -> bool {
        self.retry.is_some_and(|r| r.retries_status(status))
    }

    /// Work: asks the core where to send a request's first try, now; with `record`, the core
    /// also says why.
    pub fn handle_work(
        &self,
        request: RequestInfo,
        record: Option<&mut DecisionRecord>,
    ) -> Result<Dispatch, RejectReason> {
        let now = self.clock.now();
        let mut guard = self.core.lock();
        let scheduling = &mut *guard;
        let decision = scheduling
            .scheduler
            .handle_work(now, &mut scheduling.rng, request, record);
        self.core.check_invariants(&scheduling.scheduler);
        self.core.resolve(scheduling, decision)
    }

    /// The next try of the request whose try `after` failed and was told to retry, once the
    /// backoff is over: the core chooses among the backends that have not failed it.
    pub fn handle_retry_work(
        &self,
        after: RequestId,
        record: Option<&mut DecisionRecord>,
    ) -> Result<Dispatch, RejectReason> {
        let now = self.clock.now();
        let mut guard = self.core.lock();
        let scheduling = &mut *guard;
        let result =
            scheduling
                .scheduler
                .handle_retry_work(now, &mut scheduling.rng, after, record);
        self.core.check_invariants(&scheduling.scheduler);
        let dispatched = match result {
            Ok(decision) => self.core.resolve(scheduling, decision),
            Err(err) => {
                // The tries loop waits out every backoff it is given: any error is a bug.
                self.core.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(pool = %self.name, %err, "retry refused by the core");
                let _ = scheduling.scheduler.handle_abandon(after);
                Err(RejectReason::NoBackend)
            }
        };
        drop(guard);
        if dispatched.is_ok() {
            self.count_retry();
        }
        dispatched
    }

    fn count_retry(&self) {
        self.core
            .metrics
            .retries
            .get_or_create(&PoolLabels {
                pool: self.core.label.clone(),
            })
            .inc();
    }

    /// The backend the core calls `id`, if it is still in the pool (a removed backend's
    /// index may be reused; the generation tells them apart).
    pub fn backend_by_id(&self, id: BackendId) -> Option<Arc<Backend>> {
        self.core.lock().backend(id).cloned()
    }

    /// Done: tells the core how a try ended; returns what the request does next (finished,
    /// or retry after a backoff). Logs and counts an ejection, and forgets a leaving backend
    /// the core removed at this done.
    pub fn handle_done(&self, request: RequestId, report: TryReport) -> AfterTry {
        let now = self.clock.now();
        let mut guard = self.core.lock();
        let scheduling = &mut *guard;
        let result = scheduling
            .scheduler
            .handle_done(now, request, report, &mut scheduling.rng);
        self.core.check_invariants(&scheduling.scheduler);
        let (next, ejected, removed) = match &result {
            Ok(completion) => (
                completion.next,
                completion
                    .ejected_until
                    .map(|until| (scheduling.backend(completion.backend).cloned(), until)),
                completion
                    .removed
                    .then(|| {
                        scheduling
                            .table
                            .get_mut(completion.backend.index())
                            .and_then(Option::take)
                    })
                    .flatten(),
            ),
            Err(_) => (AfterTry::Finished { no_retry: None }, None, None),
        };
        drop(guard);
        if let Err(err) = result {
            // Reloads keep the scheduler (and its requests in flight), so any error is a bug
            // in the done guard.
            self.core.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(pool = %self.name, %err, "done rejected by the core");
        }
        if let Some(entry) = removed {
            tracing::info!(pool = %self.name, backend = %entry.backend.address, "backend removed (gone from the config, its last request done)");
            self.reap_connections();
        }
        if let Some((Some(backend), until)) = ejected {
            let for_ms = until.saturating_since(now).as_millis();
            tracing::warn!(pool = %self.name, backend = %backend.address, for_ms, "backend ejected (outlier detection)");
            self.core
                .metrics
                .ejections
                .get_or_create(&BackendLabels {
                    pool: self.core.label.clone(),
                    backend: backend.label.clone(),
                })
                .inc();
            // The ejection's end may be earlier than what the timer sleeps for.
            self.core.timer.notify_one();
        }
        next
    }

    /// Done for a try that can be the request's last (its answer is being passed on): a
    /// retry the core would still allow is given up at once.
    pub fn handle_last_done(&self, request: RequestId, report: TryReport) {
        if let AfterTry::Retry { .. } = self.handle_done(request, report) {
            self.handle_abandon(request);
        }
    }

    /// Ends a request that was waiting for its retry (the client left during the backoff).
    pub fn handle_abandon(&self, request: RequestId) {
        let mut guard = self.core.lock();
        let result = guard.scheduler.handle_abandon(request);
        self.core.check_invariants(&guard.scheduler);
        drop(guard);
        if let Err(err) = result {
            self.core.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(pool = %self.name, %err, "abandon rejected by the core");
        }
    }

    /// The core's journal of calls (empty unless `journal_size` is set).
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.core
            .lock()
            .scheduler
            .journal()
            .map(|j| j.entries().cloned().collect())
            .unwrap_or_default()
    }

    /// An active health-check result for `backend`; logs and counts transitions.
    pub fn handle_health_check(&self, backend: &Backend, passed: bool) {
        let now = self.clock.now();
        let mut guard = self.core.lock();
        let result = guard.scheduler.handle_health_check(now, backend.id, passed);
        self.core.check_invariants(&guard.scheduler);
        drop(guard);
        let state = match result {
            Ok(Some(HealthTransition::WentUp)) => "up",
            Ok(Some(HealthTransition::WentDown)) => "down",
            // Unknown: removed by a reload while the probe ran.
            Ok(None) | Err(_) => return,
        };
        // Going down is worth an operator's attention; coming back is good news.
        if state == "down" {
            tracing::warn!(pool = %self.name, backend = %backend.address, state, "health check: backend went down");
        } else {
            tracing::info!(pool = %self.name, backend = %backend.address, state, "health check: backend went up");
        }
        self.core
            .metrics
            .health_transitions
            .get_or_create(&HealthLabels {
                pool: self.core.label.clone(),
                backend: backend.label.clone(),
                state,
            })
            .inc();
    }

    /// Ends the ejections whose time is up, whenever the core's `next_timeout()` says, and
    /// never otherwise: sleeps until then, or until a done ejects a backend. Runs for the life
    /// of the pool's scheduler (kept across reloads), stopped with the generation's tasks.
    pub async fn run_timer(self: Arc<Self>) {
        loop {
            let next = self.core.lock().scheduler.next_timeout();
            let notified = self.core.timer.notified();
            match next {
                Some(at) => {
                    let wait = at.saturating_since(self.clock.now());
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = notified => continue,
                    }
                }
                None => {
                    notified.await;
                    continue;
                }
            }
            let now = self.clock.now();
            let mut guard = self.core.lock();
            guard.scheduler.handle_timeout(now);
            self.core.check_invariants(&guard.scheduler);
        }
    }

    /// Closes idle connections to backends that are no longer in the pool.
    fn reap_connections(&self) {
        let current: Vec<BackendId> = self
            .core
            .lock()
            .table
            .iter()
            .flatten()
            .map(|e| e.backend.id)
            .collect();
        self.upstream.reap(|id| current.contains(&id));
    }

    /// The backends, for probes.
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        let now = self.clock.now();
        let guard = self.core.lock();
        guard
            .table
            .iter()
            .flatten()
            .filter(|e| {
                guard
                    .scheduler
                    .backend(e.backend.id, now)
                    .is_some_and(|b| !b.leaving)
            })
            .map(|e| e.backend.clone())
            .collect()
    }

    /// Every backend's state, in table order.
    pub fn views(&self) -> Vec<BackendView> {
        let now = self.clock.now();
        let guard = self.core.lock();
        guard
            .table
            .iter()
            .flatten()
            .filter_map(|e| {
                let snapshot = guard.scheduler.backend(e.backend.id, now)?;
                Some(BackendView {
                    backend: e.backend.clone(),
                    removing: snapshot.leaving,
                    snapshot,
                })
            })
            .collect()
    }

    /// Drains (`drain = true`) or undrains the backend at `address`.
    pub fn set_drained(&self, address: &str, drain: bool) -> Result<(), BackendActionError> {
        let mut guard = self.core.lock();
        let Some(entry) = guard.find(address) else {
            return Err(BackendActionError::UnknownBackend {
                pool: self.name.clone(),
                address: address.to_owned(),
            });
        };
        let id = entry.backend.id;
        if drain {
            guard.scheduler.drain(id)?;
        } else {
            // The core keeps a backend gone from the config drained until it is removed.
            guard.scheduler.undrain(id)?;
        }
        self.core.check_invariants(&guard.scheduler);
        Ok(())
    }

    /// Dones the core rejected plus invariant violations found in debug builds: always a bug,
    /// and the end-to-end tests assert it stays zero.
    pub fn protocol_errors(&self) -> u64 {
        self.core.protocol_errors.load(Ordering::Relaxed)
    }

    /// Requests in flight in this pool (for tests and the admin API).
    pub fn in_flight(&self) -> u32 {
        self.core.lock().scheduler.in_flight()
    }

    /// Requests dispatched to each backend so far, in table order.
    pub fn dispatched_per_backend(&self) -> Vec<(String, u64)> {
        self.views()
            .into_iter()
            .map(|v| (v.backend.address.clone(), v.snapshot.dispatched))
            .collect()
    }

    /// Lock acquisitions that found the scheduler held by another thread (the measure of
    /// whether one mutex per pool is a bottleneck; see docs/performance.md, "The scheduler lock").
    pub fn contended_locks(&self) -> u64 {
        self.core.contended_locks.load(Ordering::Relaxed)
    }
}

fn client_settings(config: &PoolConfig) -> (u64, u64, usize) {
    (
        config.connect_timeout_ms,
        config.idle_timeout_ms,
        config.max_idle_per_backend,
    )
}

/// Shared handle to a pool.
pub type SharedPool = Arc<Pool>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_config_maps_onto_the_core_scheduler_config() {
        let config = crate::Config::from_toml_str(
            "listen = \"127.0.0.1:1\"\n[pools.p]\nbackends = [\"a:1\"]\npolicy = \"p2c\"\n\
             max_in_flight = 9\nmax_pending_per_backend = 3\npanic_threshold_percent = 40\n\
             health_check = { rise = 4, fall = 5 }\noutlier = { consecutive_failures = 6 }\n\
             retry = { max_retries = 1 }\nslow_start = { window_ms = 1500, min_weight_percent = 20 }\n",
            "t.toml",
        )
        .unwrap();
        let mapped = scheduler_config(&config.pools[0]);
        assert_eq!(mapped.policy, balancer_core::PolicyKind::P2c);
        assert_eq!(mapped.max_in_flight, 9);
        assert_eq!(mapped.max_pending_per_backend, Some(3));
        assert_eq!(mapped.panic_threshold_percent, Some(40));
        assert_eq!((mapped.health_check.rise, mapped.health_check.fall), (4, 5));
        assert_eq!(mapped.outlier.unwrap().consecutive_failures, 6);
        assert_eq!(mapped.retry.unwrap().max_retries, 1);
        let slow = mapped.slow_start.unwrap();
        assert_eq!(slow.window, Duration::from_millis(1500));
        assert_eq!(slow.min_weight_percent, 20);
    }
}
