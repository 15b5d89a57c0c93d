//! The model of synthetic backends: servers, a FIFO queue, speed, fault state and counters.

use std::collections::VecDeque;

use balancer_core::BackendId;
use rand_chacha::ChaCha8Rng;

use crate::distribution::ServiceDist;
use crate::events::Job;

/// Most simulated backends in one run (initial fleet plus added ones). Each costs a
/// ChaCha8 state (~330 bytes) and a few vectors; 10 000 is 100× a large real pool.
pub const MAX_SIM_BACKENDS: usize = 10_000;

/// Most parallel servers in one backend; bounds the per-backend server vector.
pub const MAX_CONCURRENCY: u32 = 4_096;

/// How one synthetic backend behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackendSpec {
    /// Service-time distribution at speed 1.
    pub service: ServiceDist,
    /// Requests served in parallel; the rest wait in its FIFO queue (1 = a single server).
    pub concurrency: u32,
    /// Speed factor: service times are divided by it (2.0 = twice as fast).
    pub speed: f64,
    /// Weight given to the core.
    pub weight: u32,
}

impl BackendSpec {
    /// A backend of `concurrency` servers with service `service` at speed 1, weight 1.
    pub fn new(service: ServiceDist, concurrency: u32) -> Self {
        BackendSpec {
            service,
            concurrency,
            speed: 1.0,
            weight: 1,
        }
    }

    /// Requests per nanosecond it completes when always busy.
    pub fn capacity_per_ns(&self) -> f64 {
        f64::from(self.concurrency) * self.speed / self.service.mean_ns()
    }
}

/// One simulated backend during a run.
///
/// Its queue is not bounded here on purpose: every queued job is in flight in the core, so
/// the sum of all queues is bounded by the core's `max_in_flight` (beyond it the core rejects).
#[derive(Debug)]
pub struct SimBackend {
    /// How it was configured.
    pub spec: BackendSpec,
    /// Its id in the core.
    pub core_id: BackendId,
    /// Its own service-time stream, so one backend's draws never shift another's.
    pub rng: ChaCha8Rng,
    /// Jobs waiting for a server, oldest first.
    pub queue: VecDeque<Job>,
    /// The job on each server, if any.
    pub servers: Vec<Option<Job>>,
    /// When each server's current job started, in ns.
    pub started_ns: Vec<u64>,
    /// Indices of idle servers.
    pub idle: Vec<u32>,
    /// Bumped by a crash: service-done events of an older epoch are void.
    pub epoch: u32,
    /// Current speed (slowdowns change it).
    pub speed: f64,
    /// Latency-spike multiplier for services starting now (1 = none).
    pub spike: f64,
    /// Crashed: its work failed; new work fails at once until it recovers.
    pub crashed: bool,
    /// Answers every new request with an error at once.
    pub black_hole: bool,
    /// Stalled: takes requests and never answers (a try there ends at the try timeout).
    pub stalled: bool,
    /// Fraction of new requests answered with an error at once (flaky backend), 0 = none.
    pub error_rate: f64,
    /// What the simulator last told the core: marked down.
    pub marked_down: bool,
    /// What the simulator last told the core: draining.
    pub draining: bool,
    /// Removed from the core (it still finishes its queue; those dones count as failed).
    pub removed: bool,
    /// When it joined, in ns.
    pub added_ns: u64,
    /// Requests completed with success.
    pub served: u64,
    /// Requests that ended with a failure here.
    pub failed: u64,
    /// Server-nanoseconds spent serving.
    pub busy_ns: u64,
    /// Longest the waiting queue has been.
    pub max_queue: usize,
}

impl SimBackend {
    /// A fresh, idle backend.
    pub fn new(spec: BackendSpec, core_id: BackendId, rng: ChaCha8Rng, now_ns: u64) -> Self {
        let servers = spec.concurrency as usize;
        SimBackend {
            spec,
            core_id,
            rng,
            queue: VecDeque::new(),
            servers: vec![None; servers],
            started_ns: vec![0; servers],
            // Reversed so server 0 is used first.
            idle: (0..spec.concurrency).rev().collect(),
            epoch: 0,
            speed: spec.speed,
            spike: 1.0,
            crashed: false,
            black_hole: false,
            stalled: false,
            error_rate: 0.0,
            marked_down: false,
            draining: false,
            removed: false,
            added_ns: now_ns,
            served: 0,
            failed: 0,
            busy_ns: 0,
            max_queue: 0,
        }
    }

    /// The service time of `base_ns` if it started now, with speed and spikes (`global_spike`
    /// applies to every backend) applied; at least 1 ns.
    #[inline]
    pub fn effective_service_ns(&self, base_ns: u64, global_spike: f64) -> u64 {
        if self.speed == 1.0 && self.spike == 1.0 && global_spike == 1.0 {
            return base_ns;
        }
        let ns = base_ns as f64 * self.spike * global_spike / self.speed;
        (ns.ceil() as u64).clamp(1, crate::distribution::MAX_DURATION_NS)
    }

    /// Jobs waiting or in service.
    pub fn in_system(&self) -> usize {
        self.queue.len() + self.servers.len() - self.idle.len()
    }
}
