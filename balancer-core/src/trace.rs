//! The traffic trace format both drivers share: one line per request, recorded by the proxy, replayed by the simulator.
//!
//! Text, tab-separated, one header line, so that `grep`, `awk` and `cut` work on it and
//! neither driver needs the other to read or write it:
//!
//! ```text
//! # balancer-trace v1 → arrival_ns → pool → route → method → request_bytes → response_bytes → backend → service_ns → status → outcome
//! 0 → web → /api → GET → 0 → 12 → 127.0.0.1:9001 → 183000 → 200 → ok
//! ```
//! (each `→` is one tab character).
//!
//! - `arrival_ns`: when the request arrived, in nanoseconds since the trace began (non-decreasing
//!   within a file is not required; readers sort).
//! - `pool`, `route`, `method`: names as configured (route `-` when none matched).
//! - `request_bytes`, `response_bytes`: body bytes seen (0 when unknown).
//! - `backend`: the backend's address, `-` when the request was not dispatched.
//! - `service_ns`: dispatch to response headers, as observed: the backend's service time
//!   plus one loopback round trip; what replay draws service times from. 0 when not dispatched.
//! - `status`: the HTTP status sent to the client.
//! - `outcome`: `ok`, `failed` (backend failure), `cancelled` (client left), `rejected` (not dispatched).

use std::fmt;
use std::str::FromStr;

/// The first line of every trace file.
pub const TRACE_HEADER: &str = "# balancer-trace v1\tarrival_ns\tpool\troute\tmethod\trequest_bytes\tresponse_bytes\tbackend\tservice_ns\tstatus\toutcome";

/// How a traced request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TraceOutcome {
    /// Served.
    Ok,
    /// The backend failed it.
    Failed,
    /// The client went away first.
    Cancelled,
    /// Not dispatched (no backend, overloaded, rate limited).
    Rejected,
}

impl TraceOutcome {
    fn name(self) -> &'static str {
        match self {
            TraceOutcome::Ok => "ok",
            TraceOutcome::Failed => "failed",
            TraceOutcome::Cancelled => "cancelled",
            TraceOutcome::Rejected => "rejected",
        }
    }
}

/// One request of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    /// Arrival, nanoseconds since the trace began.
    pub arrival_ns: u64,
    /// The pool it was routed to.
    pub pool: String,
    /// The route that matched.
    pub route: String,
    /// The HTTP method.
    pub method: String,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// The backend's address; `None` when not dispatched.
    pub backend: Option<String>,
    /// Dispatch to response headers, nanoseconds (0 when not dispatched).
    pub service_ns: u64,
    /// HTTP status sent to the client.
    pub status: u16,
    /// How it ended.
    pub outcome: TraceOutcome,
}

/// A trace line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trace line {line}: {message}")]
pub struct TraceError {
    /// 1-based line number in the file (0 when parsing a lone line).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Names may not carry the separators; anything that would is replaced, not rejected,
/// because a trace must never fail to record.
fn clean(field: &str) -> std::borrow::Cow<'_, str> {
    if field.is_empty() {
        "-".into()
    } else if field.contains(['\t', '\n', '\r']) {
        field.replace(['\t', '\n', '\r'], " ").into()
    } else {
        field.into()
    }
}

impl fmt::Display for TraceRecord {
    /// The record as one line, without the newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.arrival_ns,
            clean(&self.pool),
            clean(&self.route),
            clean(&self.method),
            self.request_bytes,
            self.response_bytes,
            clean(self.backend.as_deref().unwrap_or("-")),
            self.service_ns,
            self.status,
            self.outcome.name()
        )
    }
}

impl FromStr for TraceRecord {
    type Err = TraceError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let error = |message: String| TraceError { line: 0, message };
        let fields: Vec<&str> = line.trim_end_matches(['\r', '\n']).split('\t').collect();
        if fields.len() != 10 {
            return Err(error(format!(
                "expected 10 tab-separated fields, found {}",
                fields.len()
            )));
        }
        let number = |index: usize, name: &str| {
            fields[index]
                .parse::<u64>()
                .map_err(|_| error(format!("{name} {:?} is not a whole number", fields[index])))
        };
        let outcome = match fields[9] {
            "ok" => TraceOutcome::Ok,
            "failed" => TraceOutcome::Failed,
            "cancelled" => TraceOutcome::Cancelled,
            "rejected" => TraceOutcome::Rejected,
            other => {
                return Err(error(format!(
                    "outcome {other:?} is not one of ok, failed, cancelled, rejected"
                )));
            }
        };
        let status = fields[8]
            .parse::<u16>()
            .ok()
            .filter(|s| (100..=999).contains(s))
            .ok_or_else(|| error(format!("status {:?} is not an HTTP status", fields[8])))?;
        Ok(TraceRecord {
            arrival_ns: number(0, "arrival_ns")?,
            pool: fields[1].to_owned(),
            route: fields[2].to_owned(),
            method: fields[3].to_owned(),
            request_bytes: number(4, "request_bytes")?,
            response_bytes: number(5, "response_bytes")?,
            backend: (fields[6] != "-").then(|| fields[6].to_owned()),
            service_ns: number(7, "service_ns")?,
            status,
            outcome,
        })
    }
}

/// Reads a whole trace: the header line, then records. Comment lines (`#`) and blank lines
/// are skipped, so rotated files can be concatenated. Errors name the line.
pub fn parse_trace(text: &str) -> Result<Vec<TraceRecord>, TraceError> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, first)) if first.starts_with("# balancer-trace v1") => {}
        _ => {
            return Err(TraceError {
                line: 1,
                message: format!("not a balancer trace: the first line must be {TRACE_HEADER:?}"),
            });
        }
    }
    lines
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|(index, line)| {
            line.parse().map_err(|e: TraceError| TraceError {
                line: index + 1,
                ..e
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TraceRecord {
        TraceRecord {
            arrival_ns: 1_500,
            pool: "web".into(),
            route: "/api".into(),
            method: "GET".into(),
            request_bytes: 0,
            response_bytes: 12,
            backend: Some("127.0.0.1:9001".into()),
            service_ns: 183_000,
            status: 200,
            outcome: TraceOutcome::Ok,
        }
    }

    #[test]
    fn a_record_round_trips_through_its_line() {
        let line = record().to_string();
        assert_eq!(
            line,
            "1500\tweb\t/api\tGET\t0\t12\t127.0.0.1:9001\t183000\t200\tok"
        );
        assert_eq!(line.parse::<TraceRecord>(), Ok(record()));
        let rejected = TraceRecord {
            backend: None,
            service_ns: 0,
            status: 503,
            outcome: TraceOutcome::Rejected,
            ..record()
        };
        assert_eq!(rejected.to_string().parse::<TraceRecord>(), Ok(rejected));
    }

    #[test]
    fn separators_in_names_are_replaced_not_propagated() {
        let odd = TraceRecord {
            route: "/a\tb\nc".into(),
            ..record()
        };
        let parsed: TraceRecord = odd.to_string().parse().unwrap();
        assert_eq!(parsed.route, "/a b c");
    }

    #[test]
    fn a_file_parses_with_line_numbers_in_errors() {
        let text = format!("{TRACE_HEADER}\n{}\n\n# rotated\n{}\n", record(), record());
        assert_eq!(parse_trace(&text).unwrap().len(), 2);
        let bad = format!("{TRACE_HEADER}\n{}\n1\tx\n", record());
        let error = parse_trace(&bad).unwrap_err();
        assert_eq!(error.line, 3);
        assert!(
            error
                .to_string()
                .contains("expected 10 tab-separated fields"),
            "{error}"
        );
        assert_eq!(parse_trace("hello").unwrap_err().line, 1);
        let status = format!("{TRACE_HEADER}\n0\tp\tr\tGET\t0\t0\t-\t0\t42\tok\n");
        assert!(parse_trace(&status).unwrap_err().message.contains("status"));
    }
}
