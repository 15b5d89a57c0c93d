//! The simulator's prediction for the last minute, while a trace records: every
//! `PREDICTION_INTERVAL` the last `PREDICTION_SPAN` of the trace is replayed through each
//! pool's definition by `balancer-sim` (as `balancer check --simulate` does), on a blocking
//! thread, and kept beside the p99 the pool measured over the same minute.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use balancer_core::trace::{TraceOutcome, TraceRecord, parse_trace};
use serde_json::{Value, json};

use crate::runtime::shutdown::{Phase, PhaseWatcher};
use crate::serve::Shared;

/// How often the last minute is replayed: a replay of a minute of traffic takes the simulator
/// well under a second, so this keeps the prediction fresh at a small cost.
pub const PREDICTION_INTERVAL: Duration = Duration::from_secs(30);
/// The first replay comes this soon after start, over what has been recorded by then, so
/// that a freshly started balancer shows one (and a test need not wait 30 s).
pub const PREDICTION_FIRST: Duration = Duration::from_secs(5);
/// The traffic replayed: the last minute, compared with the p99 measured over it.
pub const PREDICTION_SPAN: Duration = Duration::from_secs(60);
/// Requests each simulated backend serves at once (`balancer check --simulate`'s default).
const PREDICTION_CONCURRENCY: u32 = 1;
/// The simulator's seed.
const PREDICTION_SEED: u64 = 1;
/// Longest wait for the trace writer to write out what it holds before a replay.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// One pool's latest prediction.
#[derive(Clone, Debug)]
pub struct Prediction {
    /// The pool.
    pub pool: String,
    /// When it was made.
    pub at: SystemTime,
    /// Requests of the pool in the replayed span.
    pub requests: usize,
    /// The p99 the pool measured over the same span (the dashboard's window), in ms.
    pub measured_p99_ms: Option<f64>,
    /// The simulator's answer, or why there is none.
    pub outcome: Result<crate::ops::Prediction, String>,
}

impl Prediction {
    /// As the dashboard's state shows it.
    pub fn to_json(&self) -> Value {
        let (predicted, error) = match &self.outcome {
            Ok(p) => (
                Some(json!({
                    "p99_ms": (p.p99_ms * 1e3).round() / 1e3,
                    "mean_ms": (p.mean_ms * 1e3).round() / 1e3,
                    "completed": p.completed,
                    "rejected": p.rejected,
                    "failed": p.failed,
                })),
                None,
            ),
            Err(why) => (None, Some(why.clone())),
        };
        json!({
            "at": crate::observe::access_log::rfc3339(self.at),
            "span_s": PREDICTION_SPAN.as_secs(),
            "requests": self.requests,
            "measured_p99_ms": self.measured_p99_ms,
            "predicted": predicted,
            "error": error,
        })
    }
}

/// Replays the last minute `PREDICTION_FIRST` after start, then every `PREDICTION_INTERVAL`,
/// while a trace records, until shutdown begins.
pub(super) async fn run(
    shared: Arc<Shared>,
    predictions: Arc<Mutex<Vec<Prediction>>>,
    mut watcher: PhaseWatcher,
) {
    let mut wait = PREDICTION_FIRST;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => wait = PREDICTION_INTERVAL,
            _ = watcher.reached(Phase::Draining) => return,
        }
        let proxy = shared.current();
        let Some(sink) = proxy.trace().cloned() else {
            predictions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            continue;
        };
        let config = proxy.config().clone();
        // What each pool measured over the span being replayed.
        let measured: Vec<(String, Option<f64>)> = proxy
            .pools()
            .iter()
            .map(|pool| {
                let span = pool
                    .window()
                    .span(pool.clock.now(), PREDICTION_SPAN.as_secs() as usize);
                (pool.name.clone(), span.p99_ms)
            })
            .collect();
        drop(proxy);
        // Reading the file, and the simulator, block: never on the event loop.
        let made = tokio::task::spawn_blocking(move || {
            sink.flush(FLUSH_TIMEOUT);
            let elapsed = sink.start_instant().elapsed();
            predict_all(&config, &sink.config().path, elapsed, &measured)
        })
        .await;
        if let Ok(made) = made {
            *predictions.lock().unwrap_or_else(|p| p.into_inner()) = made;
        }
    }
}

/// Each pool's prediction over the last `PREDICTION_SPAN` of the trace at `path`, which has
/// been recording for `elapsed`.
fn predict_all(
    config: &crate::config::Config,
    path: &std::path::Path,
    elapsed: Duration,
    measured: &[(String, Option<f64>)],
) -> Vec<Prediction> {
    let at = SystemTime::now();
    let failed = |why: String| {
        config
            .pools
            .iter()
            .map(|pool| Prediction {
                pool: pool.name.clone(),
                at,
                requests: 0,
                measured_p99_ms: None,
                outcome: Err(why.clone()),
            })
            .collect()
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => return failed(format!("cannot read the trace {}: {err}", path.display())),
    };
    // The writer may be in the middle of a line: only whole lines are read.
    let whole = text.rfind('\n').map_or("", |end| &text[..=end]);
    let records = match parse_trace(whole) {
        Ok(records) => records,
        Err(err) => {
            return failed(format!(
                "the trace {} does not parse: {err}",
                path.display()
            ));
        }
    };
    let since_ns = elapsed.saturating_sub(PREDICTION_SPAN).as_nanos() as u64;
    config
        .pools
        .iter()
        .map(|pool| {
            // Arrivals from the span's start, so the replay begins with its first request.
            let recent: Vec<TraceRecord> = records
                .iter()
                .filter(|r| r.pool == pool.name && r.arrival_ns >= since_ns)
                .cloned()
                .map(|mut r| {
                    r.arrival_ns -= since_ns;
                    r
                })
                .collect();
            let measured_p99_ms = measured
                .iter()
                .find(|(name, _)| *name == pool.name)
                .and_then(|(_, p99)| *p99);
            let outcome = if recent.iter().any(|r| r.outcome == TraceOutcome::Ok) {
                let recent: Vec<&TraceRecord> = recent.iter().collect();
                crate::ops::predict(pool, &recent, PREDICTION_SEED, PREDICTION_CONCURRENCY)
                    .map_err(|err| format!("{err:#}"))
            } else {
                Err("no request of this pool served in the last minute of the trace".into())
            };
            Prediction {
                pool: pool.name.clone(),
                at,
                requests: recent.len(),
                measured_p99_ms,
                outcome,
            }
        })
        .collect()
}
