//! The access log: one line per request, as JSON or text, to stdout or `access_log_path`,
//! written by a thread of its own so that a slow or stalled output never stops a worker.
//!
//! The request path hands the finished record to a bounded channel with `try_send`: when the
//! writer falls behind (a pipe nobody reads, a full disk) the record is dropped and counted
//! (`balancer_access_log_dropped_records_total`), never queued without bound and never waited
//! for. The writer formats lines into a buffer and writes it out at least every
//! [`FLUSH_INTERVAL`]; a file is reopened on SIGUSR1 and on reload, for logrotate.
//! Stdout carries only access-log lines; diagnostics (tracing) go to stderr.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::AccessLogFormat;
use crate::observe::metrics::Metrics;

/// Records queued for the writer: at ~300 bytes each about 5 MiB, and at 30 k req/s half a
/// second of traffic, enough to ride out a slow write without dropping.
pub const ACCESS_LOG_QUEUE_RECORDS: usize = 16_384;

/// The writer wakes this often and takes everything queued. Polling rather than blocking on
/// the channel, as the trace writer does: a receiver blocked in `recv` must be woken by every
/// send (a syscall per request); one the request path never has to wake costs nothing there.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Lines reach the output at most this late.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// The writer's buffer: a few hundred lines per `write` syscall.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

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

enum Message {
    Record(SystemTime, Box<AccessRecord>),
    /// Close and open the file again (logrotate moved it).
    Reopen,
    /// Write out what is buffered, then answer.
    Flush(SyncSender<()>),
}

/// The access-log sink of the proxy: cheap to clone, shared by every config generation that
/// has the same format and output.
#[derive(Clone)]
pub struct AccessLog {
    format: AccessLogFormat,
    writer: Option<Arc<Writer>>,
}

struct Writer {
    /// The file, or `None` for stdout.
    path: Option<PathBuf>,
    sender: SyncSender<Message>,
    dropped: AtomicU64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .field("path", &self.writer.as_ref().and_then(|w| w.path.as_ref()))
            .finish()
    }
}

impl AccessLog {
    /// The sink for `format`, to `path` or (`None`) stdout, with its writer thread; no thread
    /// when the log is off. Fails only if the file cannot be opened.
    pub fn start(
        format: AccessLogFormat,
        path: Option<&Path>,
        metrics: Arc<Metrics>,
    ) -> io::Result<AccessLog> {
        let path = path.map(Path::to_path_buf);
        if format == AccessLogFormat::Off {
            return Ok(AccessLog {
                format,
                writer: None,
            });
        }
        let mut output = Output::open(path.as_deref())?;
        let (sender, receiver) = mpsc::sync_channel(ACCESS_LOG_QUEUE_RECORDS);
        std::thread::Builder::new()
            .name("access-log-writer".into())
            .spawn(move || output.run(format, receiver))?;
        Ok(AccessLog {
            format,
            writer: Some(Arc::new(Writer {
                path,
                sender,
                dropped: AtomicU64::new(0),
                metrics,
            })),
        })
    }

    /// Whether `other` writes the same format to the same place (a reload keeps the sink).
    pub fn same_output(&self, format: AccessLogFormat, path: Option<&Path>) -> bool {
        self.format == format
            && (format == AccessLogFormat::Off
                || self.writer.as_ref().and_then(|w| w.path.as_deref()) == path)
    }

    /// Whether records are wanted at all (callers skip building them when not).
    pub fn enabled(&self) -> bool {
        self.format != AccessLogFormat::Off
    }

    /// Queues one record, or drops and counts it when the writer is behind; never waits.
    pub fn write(&self, record: Box<AccessRecord>) {
        let Some(writer) = &self.writer else { return };
        let message = Message::Record(SystemTime::now(), record);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            writer.sender.try_send(message)
        {
            writer.dropped.fetch_add(1, Ordering::Relaxed);
            writer.metrics.access_log_dropped.inc();
        }
    }

    /// Records dropped so far because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.writer
            .as_ref()
            .map_or(0, |w| w.dropped.load(Ordering::Relaxed))
    }

    /// Reopens the file (after logrotate moved it); nothing for stdout. Never waits.
    pub fn reopen(&self) {
        if let Some(writer) = self.writer.as_ref().filter(|w| w.path.is_some()) {
            // A full queue means the writer is stuck; it reopens at the next chance anyway.
            let _ = writer.sender.try_send(Message::Reopen);
        }
    }

    /// Waits (at most `timeout`) until everything queued so far is written out. For shutdown
    /// and tests: blocking, never called on the request path. False if the output is stuck.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(writer) = &self.writer else {
            return true;
        };
        crate::observe::flush_writer(&writer.sender, Message::Flush, timeout)
    }
}

/// Where lines go.
enum Output {
    Stdout(BufWriter<io::Stdout>),
    File { path: PathBuf, out: BufWriter<File> },
}

impl Output {
    fn open(path: Option<&Path>) -> io::Result<Output> {
        Ok(match path {
            None => Output::Stdout(BufWriter::with_capacity(WRITE_BUFFER_BYTES, io::stdout())),
            Some(path) => Output::File {
                path: path.to_path_buf(),
                out: BufWriter::with_capacity(WRITE_BUFFER_BYTES, append(path)?),
            },
        })
    }

    fn out(&mut self) -> &mut dyn Write {
        match self {
            Output::Stdout(out) => out,
            Output::File { out, .. } => out,
        }
    }

    /// The writer thread: takes what is queued every `POLL_INTERVAL`, writes it, flushes at
    /// least every `FLUSH_INTERVAL`; ends when every sender is gone. A failed write loses
    /// those lines (logged once per run of failures), never the process.
    fn run(&mut self, format: AccessLogFormat, receiver: Receiver<Message>) {
        let mut last_flush = Instant::now();
        let mut failing = false;
        let mut line = String::with_capacity(512);
        loop {
            let mut ended = false;
            loop {
                match receiver.try_recv() {
                    Ok(Message::Record(time, record)) => {
                        line.clear();
                        if write_line(&mut line, format, &record, &rfc3339(time)) {
                            line.push('\n');
                            let result = self.out().write_all(line.as_bytes());
                            report(&mut failing, result);
                        }
                    }
                    Ok(Message::Reopen) => self.reopen(&mut failing),
                    Ok(Message::Flush(done)) => {
                        let result = self.out().flush();
                        report(&mut failing, result);
                        last_flush = Instant::now();
                        let _ = done.send(());
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        ended = true;
                        break;
                    }
                }
            }
            if ended || last_flush.elapsed() >= FLUSH_INTERVAL {
                let result = self.out().flush();
                report(&mut failing, result);
                last_flush = Instant::now();
            }
            if ended {
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn reopen(&mut self, failing: &mut bool) {
        if let Output::File { path, out } = self {
            let _ = out.flush();
            match append(path) {
                Ok(file) => *out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
                Err(err) => {
                    tracing::error!(path = %path.display(), %err, "cannot reopen the access log; writing to the old file");
                    *failing = true;
                }
            }
        }
    }
}

fn append(path: &Path) -> io::Result<File> {
    File::options().append(true).create(true).open(path)
}

fn report(failing: &mut bool, result: io::Result<()>) {
    match result {
        Ok(()) => *failing = false,
        Err(err) if !*failing => {
            *failing = true;
            tracing::error!(%err, "access log write failed; lines are lost until it works again");
        }
        Err(_) => {}
    }
}

/// The line for `record` stamped `time` (without the newline), appended to `line`; false when
/// the log is off.
pub fn write_line(
    line: &mut String,
    format: AccessLogFormat,
    record: &AccessRecord,
    time: &str,
) -> bool {
    match format {
        AccessLogFormat::Off => false,
        AccessLogFormat::Json => {
            #[derive(Serialize)]
            struct Line<'a> {
                time: &'a str,
                #[serde(flatten)]
                record: &'a AccessRecord,
            }
            match serde_json::to_string(&Line { time, record }) {
                Ok(json) => {
                    line.push_str(&json);
                    true
                }
                Err(_) => false,
            }
        }
        AccessLogFormat::Text => {
            // Fields a client chose are escaped, so that none can write a space, a quote or a
            // line break into the line and forge fields (`route=admin` in a path).
            let _ = write!(
                line,
                "{time} {} {} \"{} {}{}\" route={} backend={} status={} bytes={} duration_ms={:.3} outcome={}",
                Escaped(&record.request_id),
                record.client,
                Escaped(&record.method),
                Escaped(&record.host),
                Escaped(&record.path),
                Escaped(&record.route),
                Escaped(&record.backend),
                record.status,
                record.bytes,
                record.duration.as_secs_f64() * 1e3,
                record.outcome
            );
            true
        }
    }
}

/// A field of a text line: printable ASCII but space, `"` and `\\` as is; those and every other
/// byte as `\\xHH`.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.0.as_bytes();
        if bytes.iter().all(|&b| plain(b)) {
            return f.write_str(self.0);
        }
        for &byte in bytes {
            if plain(byte) {
                f.write_char(char::from(byte))?;
            } else {
                write!(f, "\\x{byte:02X}")?;
            }
        }
        Ok(())
    }
}

fn plain(byte: u8) -> bool {
    byte.is_ascii_graphic() && byte != b'"' && byte != b'\\'
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

    fn line(format: AccessLogFormat, record: &AccessRecord) -> Option<String> {
        let mut line = String::new();
        write_line(&mut line, format, record, "2026-11-26T07:29:40.123Z").then_some(line)
    }

    #[test]
    fn text_and_json_lines() {
        let text = line(AccessLogFormat::Text, &record());
        assert_eq!(
            text.as_deref(),
            Some(
                "2026-11-26T07:29:40.123Z abc-1 127.0.0.1:5000 \"GET shop.example.com/cart?x=1\" route=shop backend=127.0.0.1:9001 status=200 bytes=14 duration_ms=1.250 outcome=success"
            )
        );
        let json = line(AccessLogFormat::Json, &record()).unwrap();
        assert_eq!(
            json,
            r#"{"time":"2026-11-26T07:29:40.123Z","request_id":"abc-1","client":"127.0.0.1:5000","method":"GET","host":"shop.example.com","path":"/cart?x=1","route":"shop","backend":"127.0.0.1:9001","status":200,"bytes":14,"duration_ms":1.25,"outcome":"success"}"#
        );
        assert!(line(AccessLogFormat::Off, &record()).is_none());
    }

    #[test]
    fn a_client_cannot_write_fields_into_a_text_line() {
        let mut forged = record();
        forged.host = "a\" route=admin backend=10.9.9.9:80 x=\"".into();
        forged.path = "/p q\r\n2026-01-01T00:00:00.000Z fake".into();
        forged.request_id = "id with\tspace\\".into();
        let text = line(AccessLogFormat::Text, &forged).unwrap();
        assert_eq!(
            text,
            "2026-11-26T07:29:40.123Z id\\x20with\\x09space\\x5C 127.0.0.1:5000 \"GET a\\x22\\x20route=admin\\x20backend=10.9.9.9:80\\x20x=\\x22/p\\x20q\\x0D\\x0A2026-01-01T00:00:00.000Z\\x20fake\" route=shop backend=127.0.0.1:9001 status=200 bytes=14 duration_ms=1.250 outcome=success"
        );
        // One line, and the fields a parser splits on are the real ones.
        assert!(!text.contains('\n') && !text.contains('\r'));
        assert_eq!(text.matches(" route=").count(), 1);
        assert_eq!(text.matches('"').count(), 2);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = Arc::new(Metrics::new());
        let (sender, _receiver) = mpsc::sync_channel(1);
        let log = AccessLog {
            format: AccessLogFormat::Text,
            writer: Some(Arc::new(Writer {
                path: None,
                sender,
                dropped: AtomicU64::new(0),
                metrics,
            })),
        };
        // Nobody takes from the queue (a writer stuck on a stalled output): the first record
        // fills it, the rest are dropped at once.
        for _ in 0..3 {
            log.write(Box::new(record()));
        }
        assert_eq!(log.dropped(), 2);
        assert!(!log.flush(Duration::from_millis(20)));
    }

    #[test]
    fn a_file_is_written_flushed_and_reopened_after_a_rotation() {
        let dir = std::env::temp_dir().join(format!("access-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let log =
            AccessLog::start(AccessLogFormat::Text, Some(&path), Arc::new(Metrics::new())).unwrap();
        log.write(Box::new(record()));
        assert!(log.flush(Duration::from_secs(5)));
        let rotated = dir.join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        log.write(Box::new(record()));
        assert!(log.flush(Duration::from_secs(5)));
        let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!((lines(&rotated), lines(&path)), (1, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
