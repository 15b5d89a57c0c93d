//! Retry decisions and the retry budget that keeps retries from multiplying an outage.

use std::time::Duration;

use rand::Rng;

use crate::scheduler::FailureKind;
use crate::time::Timestamp;

/// When and how often a failed request may be tried again on another backend.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first try (0 disables retries).
    pub max_retries: u32,
    /// Retry non-idempotent methods too (POST, PATCH). Off by default: they may have had effects.
    pub retry_non_idempotent: bool,
    /// Retry on a 503 from the backend (it said it did not process the request).
    pub retry_on_503: bool,
    /// Retries allowed as a fraction of requests in the budget window (linkerd's 0.2).
    pub budget_ratio: f64,
    /// Retries per second allowed however few requests there were, so a quiet pool can still
    /// retry (the budget is the larger of this and the ratio, not their sum).
    pub budget_min_per_s: u32,
    /// The sliding window the budget counts over.
    pub budget_window: Duration,
    /// Backoff before the first retry; doubles each retry, full jitter.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 2,
            retry_non_idempotent: false,
            retry_on_503: false,
            budget_ratio: 0.2,
            budget_min_per_s: 10,
            budget_window: Duration::from_secs(10),
            backoff_base: Duration::from_millis(2),
            backoff_max: Duration::from_millis(100),
        }
    }
}

/// What the driver knows about a failed try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailedTry {
    /// Retries already made for this request (0 after the first try failed).
    pub retries_so_far: u32,
    /// The request's method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE).
    pub idempotent: bool,
    /// How the try failed.
    pub failure: FailureKind,
    /// The backend answered with status 503 (only then is `ServerError` retryable).
    pub status_503: bool,
    /// Some of the response already reached the client: a retry would corrupt it.
    pub response_started: bool,
    /// The request body was streamed and cannot be sent again.
    pub body_consumed: bool,
}

/// The decision on a failed try.
#[must_use = "a retry decision must be carried out"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again on a different backend after `backoff`.
    Retry {
        /// How long to wait first (jittered).
        backoff: Duration,
    },
    /// Return the failure to the client.
    GiveUp {
        /// Why not.
        reason: NoRetryReason,
    },
}

/// Why a failed try is not retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoRetryReason {
    /// Retries are disabled or `max_retries` were made.
    AttemptsExhausted,
    /// The method is not idempotent and `retry_non_idempotent` is off.
    NotIdempotent,
    /// The failure may have had effects, or part of the response was sent, or the body is gone.
    NotRetryable,
    /// The retry budget is spent: the pool is failing broadly, retries would only add load.
    BudgetExhausted,
}

/// Counts requests and retries over a sliding window of `SLOTS` time slots.
///
/// Bounded memory: two fixed arrays, whatever the request rate.
#[derive(Clone, Debug)]
pub(crate) struct RetryBudget {
    slot_ns: u64,
    /// Per slot: (slot number, requests, retries).
    slots: [(u64, u64, u64); Self::SLOTS],
}

impl RetryBudget {
    /// Ten slots: the window slides in tenths, so old traffic leaves it smoothly.
    const SLOTS: usize = 10;

    pub fn new(window: Duration) -> Self {
        let window_ns = u64::try_from(window.as_nanos())
            .unwrap_or(u64::MAX)
            .max(Self::SLOTS as u64);
        RetryBudget {
            slot_ns: window_ns / Self::SLOTS as u64,
            slots: [(u64::MAX, 0, 0); Self::SLOTS],
        }
    }

    fn slot(&mut self, now: Timestamp) -> &mut (u64, u64, u64) {
        let number = now.as_nanos() / self.slot_ns;
        let slot = &mut self.slots[(number % Self::SLOTS as u64) as usize];
        if slot.0 != number {
            *slot = (number, 0, 0);
        }
        slot
    }

    pub fn record_request(&mut self, now: Timestamp) {
        self.slot(now).1 += 1;
    }

    /// (requests, retries) in the window ending at `now`.
    fn totals(&self, now: Timestamp) -> (u64, u64) {
        let current = now.as_nanos() / self.slot_ns;
        self.slots
            .iter()
            .filter(|(number, _, _)| *number <= current && current - number < Self::SLOTS as u64)
            .fold((0, 0), |(req, ret), (_, r, t)| (req + r, ret + t))
    }

    /// Takes one retry from the budget if there is one left.
    pub fn try_withdraw(&mut self, now: Timestamp, config: &RetryConfig) -> bool {
        let (requests, retries) = self.totals(now);
        let window_s = config.budget_window.as_secs_f64();
        // The larger of the two, not their sum (Envoy's retry budget): under load the ratio
        // alone bounds amplification at 1 + ratio; the floor only matters for a quiet pool.
        let allowed = (config.budget_ratio * requests as f64)
            .max(f64::from(config.budget_min_per_s) * window_s);
        if (retries + 1) as f64 > allowed {
            return false;
        }
        self.slot(now).2 += 1;
        true
    }
}

/// Decides on one failed try; `budget` is charged only when the answer is to retry.
pub(crate) fn decide<R: Rng + ?Sized>(
    config: &RetryConfig,
    budget: &mut RetryBudget,
    now: Timestamp,
    failed: &FailedTry,
    rng: &mut R,
) -> RetryDecision {
    let give_up = |reason| RetryDecision::GiveUp { reason };
    if failed.retries_so_far >= config.max_retries {
        return give_up(NoRetryReason::AttemptsExhausted);
    }
    if !failed.idempotent && !config.retry_non_idempotent {
        return give_up(NoRetryReason::NotIdempotent);
    }
    let retryable_failure = match failed.failure {
        // Nothing reached the backend, or it never answered: safe to try elsewhere.
        FailureKind::Connect | FailureKind::Reset | FailureKind::Timeout | FailureKind::Crashed => {
            true
        }
        FailureKind::ServerError => failed.status_503 && config.retry_on_503,
    };
    if !retryable_failure || failed.response_started || failed.body_consumed {
        return give_up(NoRetryReason::NotRetryable);
    }
    if !budget.try_withdraw(now, config) {
        return give_up(NoRetryReason::BudgetExhausted);
    }
    let ceiling = config
        .backoff_base
        .saturating_mul(1u32 << failed.retries_so_far.min(16))
        .min(config.backoff_max);
    let ceiling_ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    // Full jitter (AWS architecture blog): spreads retries of many clients apart.
    let backoff = Duration::from_nanos(if ceiling_ns == 0 {
        0
    } else {
        rng.random_range(0..=ceiling_ns)
    });
    RetryDecision::Retry { backoff }
}
