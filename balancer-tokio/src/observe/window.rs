//! The last minutes of a pool's requests for the dashboard: a fixed ring of one-second buckets,
//! each a request count, a 5xx count and a log-scale latency histogram, so that the rate and
//! p50/p99 of any recent second (or of the last minute) can be read without keeping requests.
//!
//! Recording is a handful of relaxed atomic additions into the shard of the worker running the
//! request (one writer per shard but for worker 0's, which other threads share); a bucket is
//! reused for a later second by whoever first sees it stale, with a compare-and-swap on its
//! second, and zeroed. A request counted by another thread between that swap and the zeroing is
//! lost: a figure for people, not for billing. Memory is fixed when the pool is built.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use balancer_core::Timestamp;

/// Seconds of history kept: "the last minutes" on the dashboard, five of them.
pub const WINDOW_SECONDS: usize = 300;
/// Latency buckets: four per power of two of microseconds, from 1 µs to about 134 s (2^27 µs);
/// slower requests share the last bucket. A bucket is at most 25% of its lower edge wide, so a
/// percentile read at its middle is within 12.5% of the truth.
pub const LATENCY_BUCKETS: usize = 104;

struct Second {
    /// Which second (of the pool's clock) the counts are for; `u64::MAX` for none yet.
    second: AtomicU64,
    requests: AtomicU32,
    errors: AtomicU32,
    latency: [AtomicU32; LATENCY_BUCKETS],
}

impl Second {
    fn new() -> Second {
        Second {
            second: AtomicU64::new(u64::MAX),
            requests: AtomicU32::new(0),
            errors: AtomicU32::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// The ring of one pool.
pub struct RequestWindow {
    /// One ring per traffic worker, each `WINDOW_SECONDS` long.
    shards: Box<[Box<[Second]>]>,
}

/// One second's requests, merged over the workers.
#[derive(Clone, Debug, PartialEq)]
pub struct SecondSummary {
    /// The second of the pool's clock.
    pub second: u64,
    /// Requests finished in it.
    pub requests: u64,
    /// Of which answered with a 5xx.
    pub errors: u64,
    /// Median latency in milliseconds (`None` without requests).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: Option<f64>,
}

/// Requests of a span of seconds, merged.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanSummary {
    /// How many seconds the span covers.
    pub seconds: u64,
    /// Requests finished in it.
    pub requests: u64,
    /// Of which answered with a 5xx.
    pub errors: u64,
    /// Median latency in milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: Option<f64>,
}

/// The bucket of a latency.
fn bucket(latency: Duration) -> usize {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    if micros < 4 {
        return micros as usize;
    }
    let octave = 63 - micros.leading_zeros() as usize;
    let quarter = ((micros >> (octave - 2)) & 3) as usize;
    (4 * (octave - 1) + quarter).min(LATENCY_BUCKETS - 1)
}

/// The middle of a bucket, in milliseconds.
fn bucket_middle_ms(index: usize) -> f64 {
    if index < 4 {
        return (index as f64 + 0.5) / 1e3;
    }
    let octave = index / 4 + 1;
    let quarter = index % 4;
    let width = (1u64 << (octave - 2)) as f64;
    let low = (1u64 << octave) as f64 + quarter as f64 * width;
    (low + width / 2.0) / 1e3
}

/// The `q` quantile (0..1) of a merged histogram.
fn quantile_ms(latency: &[u64; LATENCY_BUCKETS], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    // The rank of the quantile, 1-based: the p99 of 100 requests is the 99th.
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (index, count) in latency.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(bucket_middle_ms(index));
        }
    }
    Some(bucket_middle_ms(LATENCY_BUCKETS - 1))
}

impl RequestWindow {
    /// A ring for `workers` traffic workers.
    pub fn new(workers: usize) -> RequestWindow {
        RequestWindow {
            shards: (0..workers.max(1))
                .map(|_| (0..WINDOW_SECONDS).map(|_| Second::new()).collect())
                .collect(),
        }
    }

    /// Counts one request that finished at `now` after `latency`, with `status`.
    pub fn record(&self, now: Timestamp, latency: Duration, status: u16) {
        let second = now.as_nanos() / 1_000_000_000;
        let shard = &self.shards[crate::runtime::worker::worker_index() % self.shards.len()];
        let slot = &shard[(second % WINDOW_SECONDS as u64) as usize];
        let seen = slot.second.load(Ordering::Relaxed);
        if seen != second {
            if seen != u64::MAX && seen > second {
                // A request stamped before a newer one already took the slot: too old to keep.
                return;
            }
            if slot
                .second
                .compare_exchange(seen, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                slot.requests.store(0, Ordering::Relaxed);
                slot.errors.store(0, Ordering::Relaxed);
                for count in &slot.latency {
                    count.store(0, Ordering::Relaxed);
                }
            }
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds the counts of `second` (over every shard) into the totals given.
    fn merge(&self, second: u64, latency: &mut [u64; LATENCY_BUCKETS]) -> (u64, u64) {
        let (mut requests, mut errors) = (0, 0);
        for shard in &self.shards {
            let slot = &shard[(second % WINDOW_SECONDS as u64) as usize];
            if slot.second.load(Ordering::Relaxed) != second {
                continue;
            }
            requests += u64::from(slot.requests.load(Ordering::Relaxed));
            errors += u64::from(slot.errors.load(Ordering::Relaxed));
            for (total, count) in latency.iter_mut().zip(&slot.latency) {
                *total += u64::from(count.load(Ordering::Relaxed));
            }
        }
        (requests, errors)
    }

    /// The last `seconds` complete seconds before `now` (at most `WINDOW_SECONDS - 1`: the
    /// oldest slot is the next to be reused), oldest first.
    pub fn seconds(&self, now: Timestamp, seconds: usize) -> Vec<SecondSummary> {
        let current = now.as_nanos() / 1_000_000_000;
        let seconds = seconds.min(WINDOW_SECONDS - 1) as u64;
        (current.saturating_sub(seconds)..current)
            .map(|second| {
                let mut latency = [0; LATENCY_BUCKETS];
                let (requests, errors) = self.merge(second, &mut latency);
                SecondSummary {
                    second,
                    requests,
                    errors,
                    p50_ms: quantile_ms(&latency, requests, 0.5),
                    p99_ms: quantile_ms(&latency, requests, 0.99),
                }
            })
            .collect()
    }

    /// The last `seconds` complete seconds before `now`, merged into one summary.
    pub fn span(&self, now: Timestamp, seconds: usize) -> SpanSummary {
        let current = now.as_nanos() / 1_000_000_000;
        let seconds = seconds.min(WINDOW_SECONDS - 1) as u64;
        let mut latency = [0; LATENCY_BUCKETS];
        let (mut requests, mut errors) = (0, 0);
        for second in current.saturating_sub(seconds)..current {
            let (r, e) = self.merge(second, &mut latency);
            requests += r;
            errors += e;
        }
        SpanSummary {
            seconds: seconds.min(current),
            requests,
            errors,
            p50_ms: quantile_ms(&latency, requests, 0.5),
            p99_ms: quantile_ms(&latency, requests, 0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: f64) -> Timestamp {
        Timestamp::from_nanos((seconds * 1e9) as u64)
    }

    #[test]
    fn buckets_are_ordered_and_their_middles_within_an_eighth() {
        let mut last = 0;
        for micros in [1u64, 3, 4, 5, 7, 8, 100, 1_000, 12_345, 999_999, 50_000_000] {
            let index = bucket(Duration::from_micros(micros));
            assert!(index >= last, "{micros} µs");
            last = index;
            if micros >= 4 {
                let middle = bucket_middle_ms(index) * 1e3;
                let error = (middle - micros as f64).abs() / micros as f64;
                assert!(error <= 0.125, "{micros} µs read as {middle} µs");
            }
        }
        assert_eq!(
            bucket(Duration::from_secs(10_000)),
            LATENCY_BUCKETS - 1,
            "slower than the last bucket: counted in it"
        );
    }

    #[test]
    fn seconds_and_spans_count_rates_errors_and_percentiles() {
        let window = RequestWindow::new(2);
        // Second 10: 99 fast requests and one slow 503; second 11: none; second 12: two.
        for _ in 0..99 {
            window.record(at(10.2), Duration::from_millis(2), 200);
        }
        window.record(at(10.9), Duration::from_millis(400), 503);
        window.record(at(12.1), Duration::from_millis(10), 200);
        window.record(at(12.5), Duration::from_millis(10), 200);
        let seconds = window.seconds(at(13.0), 3);
        assert_eq!(
            seconds.iter().map(|s| s.second).collect::<Vec<_>>(),
            [10, 11, 12]
        );
        assert_eq!(seconds[0].requests, 100);
        assert_eq!(seconds[0].errors, 1);
        let p50 = seconds[0].p50_ms.unwrap();
        assert!((1.75..=2.25).contains(&p50), "p50 {p50}");
        // The 99th of 100 is still a fast one; with two slow ones it would not be.
        assert!(seconds[0].p99_ms.unwrap() < 3.0);
        assert_eq!(seconds[1].requests, 0);
        assert_eq!(seconds[1].p99_ms, None);
        assert_eq!(seconds[2].requests, 2);
        let span = window.span(at(13.0), 60);
        assert_eq!(span.requests, 102);
        assert_eq!(span.errors, 1);
        assert_eq!(span.seconds, 13, "no more seconds than the clock has run");
        // The current second is not complete: not shown yet.
        window.record(at(13.5), Duration::from_millis(1), 200);
        assert_eq!(window.span(at(13.9), 60).requests, 102);
    }

    #[test]
    fn a_slot_is_reused_for_a_later_second_and_old_stamps_are_dropped() {
        let window = RequestWindow::new(1);
        window.record(at(5.0), Duration::from_millis(1), 200);
        let later = 5.0 + WINDOW_SECONDS as f64;
        window.record(at(later), Duration::from_millis(1), 200);
        window.record(at(later), Duration::from_millis(1), 200);
        // A late request stamped in the old second finds its slot taken by the newer one.
        window.record(at(5.5), Duration::from_millis(1), 200);
        let seconds = window.seconds(at(later + 1.0), 1);
        assert_eq!(seconds[0].requests, 2);
        let all = window.span(at(later + 1.0), WINDOW_SECONDS);
        assert_eq!(all.requests, 2, "second 5 is out of the window");
    }
}
