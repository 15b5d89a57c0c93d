//! Traffic recording (`[trace]`): one line per request in the shared format of
//! `balancer_core::trace`, written by a thread of its own so that the request path never
//! waits on the disk.
//!
//! The request path hands a small event (counted references, no formatting) to a bounded
//! channel with `try_send`: when the writer falls behind the event is dropped and counted
//! (`balancer_trace_dropped_records_total`), never queued without bound and never waited for.
//! The writer formats lines into a buffered file and rotates it by size: `path`, `path.1`, …
//! up to `max_files` files, each starting with the header line so that each parses alone.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use balancer_core::trace::{TRACE_HEADER, TraceOutcome, TraceRecord};
use http::Method;

use crate::config::TraceConfig;
use crate::observe::metrics::Metrics;
use crate::upstream::Backend;

/// Events queued for the writer: at ~100 bytes each about 2 MiB, and at 30 k req/s half a
/// second of traffic, enough to ride out a slow disk write without dropping.
pub const TRACE_QUEUE_RECORDS: usize = 16_384;

/// The writer wakes this often and takes everything queued. Polling rather than blocking on
/// the channel is deliberate: a receiver blocked in `recv` must be woken by every send (a
/// futex syscall and a context switch per request, measured at ~10 µs of CPU per request);
/// one the request path never has to wake costs nothing there. 5 ms at 30 k req/s is ~150
/// records a batch, far below the queue's bound.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The writer flushes its buffer after this long without a record, so that a quiet proxy's
/// trace is on disk within a moment (a busy one flushes as its 64 KiB buffer fills).
const FLUSH_IDLE: Duration = Duration::from_millis(100);

/// Buffer of the trace file: a few hundred lines per `write` syscall.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// One finished request as the request path hands it over.
pub struct TraceEvent {
    /// When the request arrived.
    pub arrival: Instant,
    /// Its pool (`-` when none).
    pub pool: Arc<String>,
    /// Its route (`-` when none matched).
    pub route: Arc<String>,
    /// The method.
    pub method: Method,
    /// Request body bytes (as declared or read; 0 when unknown).
    pub request_bytes: u64,
    /// Response body bytes sent.
    pub response_bytes: u64,
    /// The backend of the try that answered, if any was dispatched.
    pub backend: Option<Arc<Backend>>,
    /// That try's dispatch to response headers (or to its failure).
    pub service: Duration,
    /// The status sent to the client.
    pub status: u16,
    /// How it ended.
    pub outcome: TraceOutcome,
}

enum Message {
    Event(TraceEvent),
    /// Write out what is buffered, then answer.
    Flush(SyncSender<()>),
}

/// The request path's handle on the trace writer.
pub struct TraceSink {
    sender: SyncSender<Message>,
    start: Instant,
    config: TraceConfig,
    dropped: AtomicU64,
    metrics: Arc<Metrics>,
}

impl TraceSink {
    /// Opens the trace (an existing file is rotated away first, so that each run's arrivals
    /// start at 0 in a fresh file) and starts the writer thread.
    pub fn start(config: &TraceConfig, metrics: Arc<Metrics>) -> io::Result<Arc<TraceSink>> {
        let start = Instant::now();
        let mut file = TraceFile::open(config)?;
        let (sender, receiver) = mpsc::sync_channel(TRACE_QUEUE_RECORDS);
        let writer_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("trace-writer".into())
            .spawn(move || file.run(receiver, start, &writer_metrics))?;
        Ok(Arc::new(TraceSink {
            sender,
            start,
            config: config.clone(),
            dropped: AtomicU64::new(0),
            metrics,
        }))
    }

    /// The config it writes by.
    pub fn config(&self) -> &TraceConfig {
        &self.config
    }

    /// Queues one record, or drops and counts it when the writer is behind; never waits.
    pub fn record(&self, event: TraceEvent) {
        match self.sender.try_send(Message::Event(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.metrics.trace_dropped.inc();
            }
        }
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits (at most `timeout`) until everything queued so far is in the file. For shutdown
    /// and tests: blocking, never called on the request path.
    pub fn flush(&self, timeout: Duration) -> bool {
        crate::observe::flush_writer(&self.sender, Message::Flush, timeout)
    }

    /// When the trace began (arrivals are counted from here).
    pub fn start_instant(&self) -> Instant {
        self.start
    }
}

/// The file being written and its rotation.
struct TraceFile {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    out: BufWriter<File>,
    written_bytes: u64,
    failing: bool,
}

impl TraceFile {
    fn open(config: &TraceConfig) -> io::Result<TraceFile> {
        let mut file = TraceFile {
            path: config.path.clone(),
            max_bytes: config.max_bytes,
            max_files: config.max_files,
            out: BufWriter::new(
                File::options()
                    .append(true)
                    .create(true)
                    .open(&config.path)?,
            ),
            written_bytes: 0,
            failing: false,
        };
        if std::fs::metadata(&config.path).is_ok_and(|m| m.len() > 0) {
            file.shift()?;
        }
        file.begin()?;
        Ok(file)
    }

    /// A fresh file at `path`, with the header line.
    fn begin(&mut self) -> io::Result<()> {
        self.out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, File::create(&self.path)?);
        writeln!(self.out, "{TRACE_HEADER}")?;
        self.written_bytes = TRACE_HEADER.len() as u64 + 1;
        Ok(())
    }

    /// `path.(n-1)` → `path.n`, …, `path` → `path.1`; the oldest beyond `max_files` is overwritten.
    fn shift(&mut self) -> io::Result<()> {
        if self.max_files <= 1 {
            return Ok(()); // `begin` truncates the only file
        }
        for n in (1..self.max_files - 1).rev() {
            match std::fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))
    }

    fn write(&mut self, line: &str) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.written_bytes + len > self.max_bytes {
            self.out.flush()?;
            self.shift()?;
            self.begin()?;
        }
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.written_bytes += len;
        Ok(())
    }

    fn run(&mut self, receiver: Receiver<Message>, start: Instant, metrics: &Metrics) {
        let mut line = String::with_capacity(256);
        let mut last_record = Instant::now();
        let mut dirty = false;
        loop {
            let mut written = 0;
            loop {
                match receiver.try_recv() {
                    Ok(Message::Event(event)) => {
                        line.clear();
                        format_line(&mut line, &event, start);
                        let result = self.write(&line);
                        self.report(result);
                        written += 1;
                    }
                    Ok(Message::Flush(reply)) => {
                        let result = self.out.flush();
                        self.report(result);
                        dirty = false;
                        let _ = reply.send(());
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        let result = self.out.flush();
                        self.report(result);
                        return;
                    }
                }
            }
            if written > 0 {
                metrics.trace_written.inc_by(written);
                last_record = Instant::now();
                dirty = true;
            } else if dirty && last_record.elapsed() >= FLUSH_IDLE {
                let result = self.out.flush();
                self.report(result);
                dirty = false;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Logs the first error of a run of failures (a full disk would otherwise log per line).
    fn report(&mut self, result: io::Result<()>) {
        match result {
            Ok(()) => self.failing = false,
            Err(error) if !self.failing => {
                self.failing = true;
                tracing::error!(path = %self.path.display(), %error, "cannot write the traffic trace");
            }
            Err(_) => {}
        }
    }
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The event as one trace line (without the newline): written field by field, no allocation,
/// unless a name holds a separator, when `TraceRecord`'s `Display` cleans it.
fn format_line(line: &mut String, event: &TraceEvent, start: Instant) {
    use std::fmt::Write as _;
    let backend = event.backend.as_ref().map_or("-", |b| b.address.as_str());
    let names = [event.pool.as_str(), event.route.as_str(), backend];
    if names
        .iter()
        .any(|n| n.is_empty() || n.contains(['\t', '\n', '\r']))
    {
        let _ = write!(line, "{}", to_record(event, start));
        return;
    }
    let dispatched = event.backend.is_some();
    let _ = write!(
        line,
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
        event.arrival.saturating_duration_since(start).as_nanos() as u64,
        event.pool,
        event.route,
        event.method.as_str(),
        event.request_bytes,
        event.response_bytes,
        backend,
        if dispatched {
            event.service.as_nanos() as u64
        } else {
            0
        },
        event.status,
        outcome_name(event.outcome),
    );
}

fn outcome_name(outcome: TraceOutcome) -> &'static str {
    match outcome {
        TraceOutcome::Ok => "ok",
        TraceOutcome::Failed => "failed",
        TraceOutcome::Cancelled => "cancelled",
        TraceOutcome::Rejected => "rejected",
    }
}

fn to_record(event: &TraceEvent, start: Instant) -> TraceRecord {
    let dispatched = event.backend.is_some();
    TraceRecord {
        arrival_ns: event.arrival.saturating_duration_since(start).as_nanos() as u64,
        pool: event.pool.as_str().to_owned(),
        route: event.route.as_str().to_owned(),
        method: event.method.as_str().to_owned(),
        request_bytes: event.request_bytes,
        response_bytes: event.response_bytes,
        backend: event.backend.as_ref().map(|b| b.address.clone()),
        service_ns: if dispatched {
            event.service.as_nanos() as u64
        } else {
            0
        },
        status: event.status,
        outcome: event.outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(status: u16) -> TraceEvent {
        TraceEvent {
            arrival: Instant::now(),
            pool: Arc::new("web".into()),
            route: Arc::new("default".into()),
            method: Method::GET,
            request_bytes: 0,
            response_bytes: 14,
            backend: None,
            service: Duration::ZERO,
            status,
            outcome: TraceOutcome::Rejected,
        }
    }

    #[test]
    fn the_fast_line_is_the_core_format() {
        let start = Instant::now();
        let mut served = event(200);
        served.outcome = TraceOutcome::Ok;
        served.service = Duration::from_micros(1234);
        served.backend = Some(Arc::new(Backend {
            id: balancer_core::Scheduler::new(balancer_core::SchedulerConfig::new(
                balancer_core::PolicyKind::RoundRobin,
            ))
            .add_backend(balancer_core::Timestamp::from_nanos(0), 1)
            .unwrap(),
            address: "127.0.0.1:9001".into(),
            label: Arc::new("127.0.0.1:9001".into()),
            authority: "127.0.0.1:9001".parse().unwrap(),
            socket_addr: None,
        }));
        let odd = TraceEvent {
            route: Arc::new("a\tb".into()),
            ..event(503)
        };
        for e in [served, event(404), odd] {
            let mut line = String::new();
            format_line(&mut line, &e, start);
            assert_eq!(line, to_record(&e, start).to_string());
        }
    }

    #[test]
    fn rotation_keeps_at_most_max_files_each_parseable() {
        let dir = std::env::temp_dir().join(format!("balancer-trace-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.trace");
        let config = TraceConfig {
            path: path.clone(),
            max_bytes: 1024,
            max_files: 3,
        };
        let sink = TraceSink::start(&config, Arc::new(Metrics::new())).unwrap();
        for _ in 0..200 {
            sink.record(event(503));
        }
        assert!(sink.flush(Duration::from_secs(5)));
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["t.trace", "t.trace.1", "t.trace.2"]);
        for name in &names {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            assert!(text.len() as u64 <= 1024, "{name}: {} bytes", text.len());
            let records = balancer_core::trace::parse_trace(&text).unwrap();
            assert!(
                records
                    .iter()
                    .all(|r| r.status == 503 && r.backend.is_none())
            );
        }
        assert_eq!(sink.dropped(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
