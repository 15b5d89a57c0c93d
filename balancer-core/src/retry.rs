//! Retry decisions and the retry budget that keeps retries from multiplying an outage.

use std::time::Duration;

use rand::Rng;

use crate::event::{FailureKind, MethodClass, NoRetryReason, TryEnd, TryReport};
use crate::status::StatusSet;
use crate::time::Timestamp;

/// When and how often a failed request may be tried again on another backend.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first try (0 disables retries).
    pub max_retries: u32,
    /// Retry non-idempotent methods too (POST, PATCH). Off by default: they may have had effects.
    pub retry_non_idempotent: bool,
    /// Response statuses that are retried (e.g. 502, 503, 504). Empty by default: only failures
    /// without an answer (connect, reset, timeout) are retried.
    pub retry_on_status: StatusSet,
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

impl RetryConfig {
    /// Whether a request of `method` may be retried at all (so its body is worth keeping).
    pub fn may_retry(&self, method: MethodClass) -> bool {
        self.max_retries > 0 && (method == MethodClass::Idempotent || self.retry_non_idempotent)
    }

    /// Whether a response with `status` is one these rules may retry, so a driver knows to
    /// report the try when the head arrives rather than after the body.
    pub fn retries_status(&self, status: u16) -> bool {
        self.max_retries > 0 && self.retry_on_status.contains(status)
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 2,
            retry_non_idempotent: false,
            retry_on_status: StatusSet::EMPTY,
            budget_ratio: 0.2,
            budget_min_per_s: 10,
            budget_window: Duration::from_secs(10),
            backoff_base: Duration::from_millis(2),
            backoff_max: Duration::from_millis(100),
        }
    }
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

    /// Gives back the retry taken at `now` by [`RetryBudget::try_withdraw`].
    pub fn refund(&mut self, now: Timestamp) {
        let slot = self.slot(now);
        slot.2 = slot.2.saturating_sub(1);
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

/// What the core knows about a try that ended, for its retry decision.
pub(crate) struct EndedTry<'a> {
    /// Retries already made for this request (0 after the first try).
    pub retries_so_far: u32,
    pub method: MethodClass,
    pub report: &'a TryReport,
    pub deadline: Option<Timestamp>,
}

/// Decides on one ended try: `Ok(backoff)` to retry, or why not. `budget` is charged only
/// when the answer is to retry.
pub(crate) fn decide<R: Rng + ?Sized>(
    config: &RetryConfig,
    budget: &mut RetryBudget,
    now: Timestamp,
    ended: &EndedTry<'_>,
    rng: &mut R,
) -> Result<Duration, NoRetryReason> {
    if ended.retries_so_far >= config.max_retries {
        return Err(NoRetryReason::AttemptsExhausted);
    }
    if ended.method == MethodClass::NonIdempotent && !config.retry_non_idempotent {
        return Err(NoRetryReason::NotIdempotent);
    }
    let retryable_end = match ended.report.end {
        // Nothing reached the backend, or it never answered: safe to try elsewhere.
        TryEnd::Failed(
            FailureKind::Connect | FailureKind::Reset | FailureKind::Timeout | FailureKind::Crashed,
        ) => true,
        TryEnd::Failed(FailureKind::ServerError) => false,
        TryEnd::Response { status } => config.retry_on_status.contains(status),
        TryEnd::Cancelled => false,
    };
    if !retryable_end || ended.report.response_started || !ended.report.body_replayable {
        return Err(NoRetryReason::NotRetryable);
    }
    if ended.deadline.is_some_and(|deadline| now >= deadline) {
        return Err(NoRetryReason::DeadlineExceeded);
    }
    if !budget.try_withdraw(now, config) {
        return Err(NoRetryReason::BudgetExhausted);
    }
    let ceiling = config
        .backoff_base
        .saturating_mul(1u32 << ended.retries_so_far.min(16))
        .min(config.backoff_max);
    let ceiling_ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    // Full jitter (AWS architecture blog): spreads retries of many clients apart.
    let backoff = Duration::from_nanos(if ceiling_ns == 0 {
        0
    } else {
        rng.random_range(0..=ceiling_ns)
    });
    if ended
        .deadline
        .is_some_and(|deadline| now + backoff >= deadline)
    {
        budget.refund(now);
        return Err(NoRetryReason::DeadlineExceeded);
    }
    Ok(backoff)
}
