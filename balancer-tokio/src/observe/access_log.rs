//! The access log: one line per request on stdout, as JSON or text, written when the request ends.
//!
//! Stdout carries only access-log lines; diagnostics (tracing) go to stderr, so either can be
//! piped on its own.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::AccessLogFormat;

/// What is known about one request when it ends.
#[derive(Debug, Serialize)]
pub struct AccessRecord {
    /// The `x-request-id` sent to the backend and returned to the client.
    pub request_id: String,
    /// The client's address.
    pub client: SocketAddr,
    /// HTTP method, or `-` if the head never parsed.
    pub method: String,
    /// Host header (or :authority), `-` if none.
    pub host: String,
    /// Path and query.
    pub path: String,
    /// Name of the route taken, `-` if none.
    pub route: String,
    /// Backend address, `-` if none.
    pub backend: String,
    /// Status sent to the client.
    pub status: u16,
    /// Response body bytes sent to the client (both directions for a WebSocket tunnel).
    pub bytes: u64,
    /// From request head received to response body finished.
    #[serde(rename = "duration_ms", serialize_with = "as_millis")]
    pub duration: Duration,
    /// `success`, `failure:KIND`, `cancelled` or `rejected`.
    pub outcome: &'static str,
}

fn as_millis<S: serde::Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((duration.as_secs_f64() * 1e6).round() / 1e3)
}

/// The access-log sink.
#[derive(Clone, Copy, Debug)]
pub struct AccessLog {
    format: AccessLogFormat,
}

impl AccessLog {
    /// A sink writing `format`.
    pub fn new(format: AccessLogFormat) -> Self {
        AccessLog { format }
    }

    /// Whether records are wanted at all (callers skip building them when not).
    pub fn enabled(&self) -> bool {
        self.format != AccessLogFormat::Off
    }

    /// Writes one line. A failed write (closed stdout) is ignored: logging never fails a request.
    pub fn write(&self, record: &AccessRecord) {
        if let Some(line) = self.format_line(record, &rfc3339_now()) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
        }
    }

    /// The line for `record` stamped `time`, or `None` when the log is off.
    pub fn format_line(&self, record: &AccessRecord, time: &str) -> Option<String> {
        match self.format {
            AccessLogFormat::Off => None,
            AccessLogFormat::Json => {
                #[derive(Serialize)]
                struct Line<'a> {
                    time: &'a str,
                    #[serde(flatten)]
                    record: &'a AccessRecord,
                }
                serde_json::to_string(&Line { time, record }).ok()
            }
            AccessLogFormat::Text => Some(format!(
                "{time} {} {} \"{} {}{}\" route={} backend={} status={} bytes={} duration_ms={:.3} outcome={}",
                record.request_id,
                record.client,
                record.method,
                record.host,
                record.path,
                record.route,
                record.backend,
                record.status,
                record.bytes,
                record.duration.as_secs_f64() * 1e3,
                record.outcome
            )),
        }
    }
}

/// Current UTC time as `2026-11-26T07:29:40.123Z`, without a date library.
fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

/// `time` in UTC as `2026-11-26T07:29:40.123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        AccessRecord {
            request_id: "abc-1".into(),
            client: "127.0.0.1:5000".parse().unwrap(),
            method: "GET".into(),
            host: "shop.example.com".into(),
            path: "/cart?x=1".into(),
            route: "shop".into(),
            backend: "127.0.0.1:9001".into(),
            status: 200,
            bytes: 14,
            duration: Duration::from_micros(1_250),
            outcome: "success",
        }
    }

    #[test]
    fn text_and_json_lines() {
        let time = "2026-11-26T07:29:40.123Z";
        let text = AccessLog::new(AccessLogFormat::Text).format_line(&record(), time);
        assert_eq!(
            text.as_deref(),
            Some(
                "2026-11-26T07:29:40.123Z abc-1 127.0.0.1:5000 \"GET shop.example.com/cart?x=1\" route=shop backend=127.0.0.1:9001 status=200 bytes=14 duration_ms=1.250 outcome=success"
            )
        );
        let json = AccessLog::new(AccessLogFormat::Json)
            .format_line(&record(), time)
            .unwrap();
        assert_eq!(
            json,
            r#"{"time":"2026-11-26T07:29:40.123Z","request_id":"abc-1","client":"127.0.0.1:5000","method":"GET","host":"shop.example.com","path":"/cart?x=1","route":"shop","backend":"127.0.0.1:9001","status":200,"bytes":14,"duration_ms":1.25,"outcome":"success"}"#
        );
        assert!(
            AccessLog::new(AccessLogFormat::Off)
                .format_line(&record(), time)
                .is_none()
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
