//! HTTP/1.1 to backends inside the request's own task: keep-alive connections per worker and
//! backend, the request written and the response head read by the task that serves the
//! client, the body read by the response body as the client's connection polls it.
//!
//! Why not hyper's client: it drives every backend connection from a task of its own and
//! talks to it over channels, so each request wakes two more tasks and crosses two queues.
//! The load harness measured that machinery as the largest share of the proxy's user time
//! (docs/performance.md, "Where the time goes"). This module is used for requests whose
//! body is in memory (no body, or a small one read whole for retries); streamed uploads and
//! upgrades still go through hyper's client.
//!
//! Invariants:
//! - A connection is back in its idle list only after a response was read to its exact end,
//!   the backend did not ask to close, and no byte beyond the response arrived.
//! - An idle list holds at most `max_idle_per_backend` connections, none older than
//!   `idle_timeout` once [`Upstream::reap`] has run.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use balancer_core::BackendId;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::peer::Backend;
use crate::http::headers::Forwarding;

/// Most header lines a backend response may have.
const MAX_RESPONSE_HEADERS: usize = 128;
/// Largest backend response head (status line and headers) accepted.
const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;
/// Largest chunk-size line or trailer section of a chunked response.
const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;
/// How much a body read asks of the socket at once; the buffer never holds more than this
/// plus one partial chunk-size line, as every read is handed on before the next.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// A request body up to this size is copied behind the head so that both go out in one write.
const COALESCE_BODY_BYTES: usize = 16 * 1024;

/// Why a try on a backend failed, before any of its response reached the client.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be opened.
    #[error("connecting to the backend failed: {0}")]
    Connect(#[source] io::Error),
    /// Opening a connection took longer than `connect_timeout_ms`.
    #[error("connecting to the backend timed out")]
    ConnectTimeout,
    /// The connection failed or closed before a whole response head arrived.
    #[error("the backend connection failed: {0}")]
    Io(#[source] io::Error),
    /// The backend answered something that is not a valid HTTP/1.x response.
    #[error("the backend sent an invalid response: {0}")]
    BadResponse(&'static str),
}

/// The settings of one pool's backend connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// Longest wait for a new connection.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Idle connections kept per backend per worker.
    pub max_idle_per_backend: usize,
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// One worker's idle connections, per backend, oldest first. Hashed with foldhash: std's
/// SipHash cost about 200 instructions per lookup, and there are two per request (backend ids
/// come from the core, not from clients, so no flooding resistance is needed).
type IdleLists = HashMap<BackendId, Vec<Idle>, foldhash::fast::RandomState>;

/// One pool's keep-alive connections to its backends, one set per traffic worker (a
/// connection is registered with the runtime of the worker that opened it, and only that
/// worker's requests use it, so a lock is never contended but by [`Upstream::reap`]).
pub struct Upstream {
    settings: UpstreamSettings,
    idle: Box<[Mutex<IdleLists>]>,
}

impl Upstream {
    /// Empty idle lists for `workers` workers.
    pub fn new(settings: UpstreamSettings, workers: usize) -> Arc<Upstream> {
        Arc::new(Upstream {
            settings,
            idle: (0..workers.max(1))
                .map(|_| Mutex::new(IdleLists::default()))
                .collect(),
        })
    }

    /// The settings these connections were made with.
    pub fn settings(&self) -> UpstreamSettings {
        self.settings
    }

    fn worker_slot(&self) -> &Mutex<IdleLists> {
        let worker = crate::runtime::worker::worker_index();
        self.idle.get(worker).unwrap_or(&self.idle[0])
    }

    /// The most recently used idle connection to `backend` that is still open.
    fn checkout(&self, backend: BackendId) -> Option<TcpStream> {
        let now = Instant::now();
        let mut idle = self.worker_slot().lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&backend)?;
        while let Some(entry) = list.pop() {
            if now.duration_since(entry.since) >= self.settings.idle_timeout {
                continue;
            }
            // A backend that closed an idle connection has left its EOF (or reset) queued;
            // the readiness tokio recorded lets this check cost no syscall when nothing came.
            let mut probe = [0u8; 1];
            match entry.stream.try_read(&mut probe) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Some(entry.stream),
                _ => continue,
            }
        }
        None
    }

    fn checkin(&self, backend: BackendId, stream: TcpStream) {
        if self.settings.max_idle_per_backend == 0 {
            return;
        }
        let mut idle = self.worker_slot().lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(backend).or_default();
        if list.len() >= self.settings.max_idle_per_backend {
            // The oldest is the likeliest to be closed by the backend soon.
            list.remove(0);
        }
        list.push(Idle {
            stream,
            since: Instant::now(),
        });
        debug_assert!(list.len() <= self.settings.max_idle_per_backend);
    }

    /// Closes idle connections past the idle timeout, and those to backends that are gone.
    pub fn reap(&self, is_current: impl Fn(BackendId) -> bool) {
        let now = Instant::now();
        for slot in &self.idle {
            let mut idle = slot.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|backend, list| {
                list.retain(|entry| now.duration_since(entry.since) < self.settings.idle_timeout);
                !list.is_empty() && is_current(*backend)
            });
        }
    }

    async fn connect(&self, backend: &Backend) -> Result<TcpStream, UpstreamError> {
        let connecting = async {
            match backend.socket_addr {
                Some(address) => TcpStream::connect(address).await,
                None => TcpStream::connect(backend.address.as_str()).await,
            }
        };
        let stream = tokio::time::timeout(self.settings.connect_timeout, connecting)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Sends a request (`message` and `rest` as [`write_request`] made them) to `backend` and
    /// reads the response head. A kept-alive connection that turns out closed before any of
    /// the response came is replaced by a new one once, for a request safe to repeat
    /// (`repeatable`); a new connection's failure is the try's.
    pub async fn send(
        self: &Arc<Self>,
        backend: &Backend,
        message: &[u8],
        rest: &Bytes,
        method: &Method,
        repeatable: bool,
        form: HeadForm,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let mut pooled = self.checkout(backend.id);
        loop {
            let reused = pooled.is_some();
            let stream = match pooled.take() {
                Some(stream) => stream,
                None => self.connect(backend).await?,
            };
            match self
                .exchange(stream, backend.id, message, rest, method, form)
                .await
            {
                Ok(response) => return Ok(response),
                Err(Exchange::NothingBack(_)) if reused && repeatable => continue,
                Err(Exchange::NothingBack(err) | Exchange::Failed(err)) => return Err(err),
            }
        }
    }

    async fn exchange(
        self: &Arc<Self>,
        mut stream: TcpStream,
        backend: BackendId,
        message: &[u8],
        rest: &Bytes,
        method: &Method,
        form: HeadForm,
    ) -> Result<Response<UpstreamBody>, Exchange> {
        let written = match stream.write_all(message).await {
            Ok(()) if !rest.is_empty() => stream.write_all(rest).await,
            done => done,
        };
        written.map_err(|err| Exchange::NothingBack(UpstreamError::Io(err)))?;

        let mut buffer = BytesMut::with_capacity(4096);
        let parsed = loop {
            if let Some(parsed) = take_head(&mut buffer, form)? {
                break parsed;
            }
            let before = buffer.len();
            match stream.read_buf(&mut buffer).await {
                Ok(0) if before == 0 => {
                    return Err(Exchange::NothingBack(UpstreamError::Io(
                        io::ErrorKind::UnexpectedEof.into(),
                    )));
                }
                Ok(0) => {
                    return Err(Exchange::Failed(UpstreamError::BadResponse(
                        "connection closed in the middle of the response head",
                    )));
                }
                Ok(_) => {}
                Err(err) if before == 0 => {
                    return Err(Exchange::NothingBack(UpstreamError::Io(err)));
                }
                Err(err) => return Err(Exchange::Failed(UpstreamError::Io(err))),
            }
        };

        let framing = body_framing(method, &parsed);
        let reusable = parsed.keep_alive && !matches!(framing, Framing::UntilClose);
        let mut body = UpstreamBody {
            buffer,
            stream: Some(stream),
            framing,
            return_to: reusable.then(|| (self.clone(), backend)),
            pending: None,
            head_lines: None,
        };
        body.settle_if_buffered();
        let mut response = Response::new(body);
        *response.status_mut() = parsed.status;
        *response.version_mut() = parsed.version;
        match parsed.fields {
            HeadFields::Map(headers) => *response.headers_mut() = headers,
            HeadFields::Lines(lines) => response.body_mut().head_lines = Some(lines),
        }
        Ok(response)
    }
}

/// Takes the response heads that have arrived off the front of `buffer`: the final one, or
/// `None` while it is still to come.
fn take_head(buffer: &mut BytesMut, form: HeadForm) -> Result<Option<ParsedHead>, UpstreamError> {
    while !buffer.is_empty() {
        match head_length(buffer) {
            Some(length) => {
                let head = buffer.split_to(length).freeze();
                match ParsedHead::from_head(&head, form)? {
                    // 100 Continue, 103 Early Hints: the final response follows.
                    ResponseHead::Informational => {}
                    ResponseHead::Final(parsed) => return Ok(Some(parsed)),
                }
            }
            None if buffer.len() >= MAX_RESPONSE_HEAD_BYTES => {
                return Err(UpstreamError::BadResponse("response head over 64 KiB"));
            }
            // Garbage is refused as soon as it arrives, not when a head end shows up.
            None => {
                check_partial_head(buffer)?;
                return Ok(None);
            }
        }
    }
    Ok(None)
}

/// How the body of a response to `method` with head `parsed` is delimited.
fn body_framing(method: &Method, parsed: &ParsedHead) -> Framing {
    if *method == Method::HEAD
        || parsed.status == StatusCode::NO_CONTENT
        || parsed.status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else {
        parsed.framing
    }
}

/// How a try failed: `NothingBack` when not a byte of the response arrived (a stale kept-alive
/// connection looks exactly like this).
enum Exchange {
    NothingBack(UpstreamError),
    Failed(UpstreamError),
}

impl From<UpstreamError> for Exchange {
    fn from(error: UpstreamError) -> Self {
        Exchange::Failed(error)
    }
}

/// The length of the response head at the front of `bytes`, through the empty line that ends
/// it, once all of it has arrived. Leading empty lines are skipped, as httparse skips them, so
/// the length is the one httparse finds for a head it accepts.
///
/// Why not httparse: a head is then parsed once, after it has arrived, instead of once to find
/// its end and again to read it (httparse was a sixth of the user-space instructions of a small
/// GET).
pub(crate) fn head_length(bytes: &[u8]) -> Option<usize> {
    let mut start = 0;
    loop {
        match &bytes[start..] {
            [b'\r', b'\n', ..] => start += 2,
            [b'\n', ..] => start += 1,
            _ => break,
        }
    }
    memchr::memchr_iter(b'\n', &bytes[start..]).find_map(|newline| {
        let after = start + newline + 1;
        match &bytes[after..] {
            [b'\n', ..] => Some(after + 1),
            [b'\r', b'\n', ..] => Some(after + 2),
            _ => None,
        }
    })
}

/// Refuses a head that has not fully arrived but is already not HTTP.
fn check_partial_head(bytes: &[u8]) -> Result<(), UpstreamError> {
    let mut lines = [const { std::mem::MaybeUninit::uninit() }; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut response, bytes, &mut lines)
        .map(|_| ())
        .map_err(head_error)
}

fn head_error(error: httparse::Error) -> UpstreamError {
    match error {
        httparse::Error::TooManyHeaders => UpstreamError::BadResponse("more than 128 header lines"),
        _ => UpstreamError::BadResponse("malformed response head"),
    }
}

/// A complete response head.
enum ResponseHead {
    /// A 1xx head other than 101: the final response follows.
    Informational,
    Final(ParsedHead),
}

/// A final response head, turned into `http` types (header values share `head`'s memory),
/// without its hop-by-hop headers: they are left out while the head is read, which costs
/// nothing, rather than removed from the map afterwards.
struct ParsedHead {
    status: StatusCode,
    version: Version,
    fields: HeadFields,
    keep_alive: bool,
    framing: Framing,
}

impl ParsedHead {
    /// Reads a head [`head_length`] found complete, its headers in `form`.
    fn from_head(head: &Bytes, form: HeadForm) -> Result<ResponseHead, UpstreamError> {
        let mut lines = [const { std::mem::MaybeUninit::uninit() }; MAX_RESPONSE_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        match config.parse_response_with_uninit_headers(&mut response, head, &mut lines) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(UpstreamError::BadResponse("malformed response head"));
            }
            Err(error) => return Err(head_error(error)),
        }
        let code = response.code.unwrap_or(0);
        if (100..200).contains(&code) && code != 101 {
            return Ok(ResponseHead::Informational);
        }
        if code == 101 {
            return Err(UpstreamError::BadResponse(
                "101 Switching Protocols to a request that asked for no upgrade",
            ));
        }
        let status = StatusCode::from_u16(code)
            .map_err(|_| UpstreamError::BadResponse("invalid status code"))?;
        let version = if response.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let mut close = version == Version::HTTP_10;
        let mut chunked = None;
        let mut length: Option<u64> = None;
        // Whether a Connection header names headers beyond the hop-by-hop ones.
        let mut strip_named = false;
        for line in response.headers.iter() {
            let name = line.name.as_bytes();
            if name.eq_ignore_ascii_case(b"connection") {
                for token in line.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"keep-alive") {
                        close = close && version != Version::HTTP_10;
                    } else {
                        close |= token.eq_ignore_ascii_case(b"close");
                        // A token naming a header to remove (`close` could too).
                        strip_named = true;
                    }
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // Only the last coding says whether the body is chunked (RFC 9112 §6.3).
                let last = line.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case(b"content-length") {
                for part in line.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    let parsed = std::str::from_utf8(part)
                        .ok()
                        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|p| p.parse::<u64>().ok())
                        .ok_or(UpstreamError::BadResponse("invalid content-length"))?;
                    if length.is_some_and(|l| l != parsed) {
                        return Err(UpstreamError::BadResponse("conflicting content-length"));
                    }
                    length = Some(parsed);
                }
            }
        }
        let framing = match (chunked, length) {
            (Some(true), _) => Framing::Chunked(Chunked::Size),
            (Some(false), _) => Framing::UntilClose,
            (None, Some(length)) => Framing::Length(length),
            (None, None) => Framing::UntilClose,
        };
        // Sent with Transfer-Encoding, a length is to be ignored, and must not reach the client.
        let passed_length = length.filter(|_| chunked.is_none());
        let fields = if form == HeadForm::Lines && !strip_named {
            HeadFields::Lines(HeadLines::from_fields(response.headers, passed_length))
        } else {
            let headers = header_map(head, response.headers, strip_named, chunked.is_some())?;
            match form {
                HeadForm::Map => HeadFields::Map(headers),
                HeadForm::Lines => HeadFields::Lines(HeadLines::from_map(&headers, passed_length)),
            }
        };
        Ok(ResponseHead::Final(ParsedHead {
            status,
            version,
            fields,
            keep_alive: !close,
            framing,
        }))
    }
}

/// The headers of `fields` (of `head`) as a map, without hop-by-hop headers, nor those a
/// Connection header names (`strip_named`), nor a length sent with Transfer-Encoding.
fn header_map(
    head: &Bytes,
    fields: &[httparse::Header<'_>],
    strip_named: bool,
    transfer_encoded: bool,
) -> Result<HeaderMap, UpstreamError> {
    let mut headers =
        HeaderMap::with_capacity(fields.len() + crate::http::headers::ADDED_RESPONSE_HEADERS);
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| UpstreamError::BadResponse("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(field.value))
            .map_err(|_| UpstreamError::BadResponse("invalid header value"))?;
        // A Connection naming other headers is kept for `strip_hop_by_hop` to read.
        let keep = !crate::http::headers::is_hop_by_hop(&name)
            || (strip_named && name == header::CONNECTION);
        if keep {
            headers.append(name, value);
        }
    }
    if transfer_encoded {
        headers.remove(header::CONTENT_LENGTH);
    }
    if strip_named {
        // Rare (the usual `Connection: keep-alive` names only a hop-by-hop header): the
        // headers its tokens name go too, and the Connection kept for it.
        crate::http::headers::strip_hop_by_hop(&mut headers, false);
    }
    Ok(headers)
}

/// How a response head's headers are handed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadForm {
    /// In the response's `HeaderMap`, for hyper's server to write.
    Map,
    /// As [`HeadLines`] in the response body, for the client side's own HTTP/1.1 code to copy; the response's map
    /// stays empty. Building a map only to write it out again cost about 3,000 instructions
    /// of each small GET.
    Lines,
}

/// A backend response's headers, in the form asked for.
enum HeadFields {
    Map(HeaderMap),
    Lines(HeadLines),
}

/// A backend response's headers as lines ready for an HTTP/1.1 client.
#[derive(Debug, Default)]
pub struct HeadLines {
    /// `name: value\r\n` for each header passed on: names in lowercase (as `HeaderName`
    /// writes them), hop-by-hop headers left out, in the backend's order.
    pub bytes: Vec<u8>,
    /// A `date` line is among them.
    pub has_date: bool,
    /// The value of the `content-length` line among them, if there is one.
    pub content_length: Option<u64>,
}

impl HeadLines {
    fn from_fields(fields: &[httparse::Header<'_>], content_length: Option<u64>) -> Self {
        // With room for the Via and X-Request-Id lines the proxy adds (about 50 bytes).
        let size: usize = fields
            .iter()
            .map(|f| f.name.len() + f.value.len() + 4)
            .sum::<usize>()
            + 64;
        let mut lines = HeadLines {
            bytes: Vec::with_capacity(size),
            has_date: false,
            content_length,
        };
        for field in fields {
            let name = field.name.as_bytes();
            if crate::http::headers::is_hop_by_hop_name(name)
                || (content_length.is_none() && name.eq_ignore_ascii_case(b"content-length"))
            {
                continue;
            }
            lines.has_date |= name.eq_ignore_ascii_case(b"date");
            lines.push(name, field.value);
        }
        lines
    }

    fn from_map(headers: &HeaderMap, content_length: Option<u64>) -> Self {
        let mut lines = HeadLines {
            bytes: Vec::new(),
            has_date: headers.contains_key(header::DATE),
            content_length: content_length.filter(|_| headers.contains_key(header::CONTENT_LENGTH)),
        };
        for (name, value) in headers {
            lines.push(name.as_str().as_bytes(), value.as_bytes());
        }
        lines
    }

    /// Adds a header line; `name` is written in lowercase.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        self.bytes.reserve(name.len() + value.len() + 4);
        self.bytes
            .extend(name.iter().map(u8::to_ascii_lowercase).chain(*b": "));
        self.bytes.extend_from_slice(value);
        self.bytes.extend_from_slice(b"\r\n");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    /// The body ends when the backend closes.
    UntilClose,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: this many data bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until a blank one.
    Trailers,
}

/// A backend response's body, read from its connection as the client's connection asks for
/// it; the connection goes back to its idle list at the body's exact end.
pub struct UpstreamBody {
    /// Bytes read from the connection and not handed on yet.
    buffer: BytesMut,
    /// `None` once the body is done (the connection is back in its list, or closed).
    stream: Option<TcpStream>,
    framing: Framing,
    /// Where the connection goes at the end, when it may be reused.
    return_to: Option<(Arc<Upstream>, BackendId)>,
    /// Data decoded by the last step and not returned yet.
    pending: Option<Bytes>,
    /// The response's headers, when asked for as [`HeadForm::Lines`].
    head_lines: Option<HeadLines>,
}

impl UpstreamBody {
    /// The response's headers, when they were asked for as [`HeadForm::Lines`] (once).
    pub fn take_head_lines(&mut self) -> Option<HeadLines> {
        self.head_lines.take()
    }

    /// The response's headers as lines, to add to, when they were asked for so.
    pub fn head_lines_mut(&mut self) -> Option<&mut HeadLines> {
        self.head_lines.as_mut()
    }

    /// When the whole body came with the head (the usual small response), hands the
    /// connection back at once rather than when the client has been sent everything.
    fn settle_if_buffered(&mut self) {
        if let Framing::Length(length) = self.framing
            && self.buffer.len() as u64 >= length
        {
            let data = self.buffer.split_to(length as usize).freeze();
            self.pending = (!data.is_empty()).then_some(data);
            self.framing = Framing::Done;
            self.release();
        }
    }

    /// The body ended: the connection goes back if it may, else it is closed.
    fn release(&mut self) {
        let stream = self.stream.take();
        let clean = self.buffer.is_empty();
        if let (Some(stream), Some((upstream, backend)), true) =
            (stream, self.return_to.take(), clean)
        {
            upstream.checkin(backend, stream);
        }
    }

    fn fail(&mut self, message: &'static str) -> io::Error {
        self.framing = Framing::Done;
        self.return_to = None;
        self.stream = None;
        io::Error::new(io::ErrorKind::InvalidData, message)
    }

    /// Reads more from the connection into the buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        self.buffer.reserve(READ_CHUNK_BYTES);
        loop {
            ready!(stream.poll_read_ready(cx))?;
            match stream.try_read_buf(&mut self.buffer) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                read => return Poll::Ready(read),
            }
        }
    }

    /// One step of decoding: `Some(data)`, or `None` at the end of the body.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            match self.framing {
                Framing::Done => return Poll::Ready(Ok(None)),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    self.release();
                    return Poll::Ready(Ok(None));
                }
                Framing::Length(left) => {
                    if self.buffer.is_empty() && ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(
                            self.fail("backend closed in the middle of the body")
                        ));
                    }
                    let take = (self.buffer.len() as u64).min(left);
                    self.framing = Framing::Length(left - take);
                    return Poll::Ready(Ok(Some(self.buffer.split_to(take as usize).freeze())));
                }
                Framing::UntilClose => {
                    if self.buffer.is_empty() && ready!(self.poll_fill(cx))? == 0 {
                        self.framing = Framing::Done;
                        self.stream = None;
                        return Poll::Ready(Ok(None));
                    }
                    return Poll::Ready(Ok(Some(self.buffer.split().freeze())));
                }
                Framing::Chunked(Chunked::Data(left)) => {
                    if self.buffer.is_empty() && ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(
                            self.fail("backend closed in the middle of a chunk")
                        ));
                    }
                    let take = (self.buffer.len() as u64).min(left);
                    self.framing = Framing::Chunked(if take == left {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left - take)
                    });
                    return Poll::Ready(Ok(Some(self.buffer.split_to(take as usize).freeze())));
                }
                Framing::Chunked(state) => {
                    let Some(end) = self.buffer.iter().position(|&b| b == b'\n') else {
                        if self.buffer.len() >= MAX_CHUNK_LINE_BYTES {
                            return Poll::Ready(Err(self.fail("chunk line too long")));
                        }
                        if ready!(self.poll_fill(cx))? == 0 {
                            return Poll::Ready(Err(self.fail("backend closed in a chunked body")));
                        }
                        continue;
                    };
                    let line = self.buffer.split_to(end + 1);
                    let line = line.strip_suffix(b"\n").unwrap_or(&line);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    self.framing = match state {
                        Chunked::Size => match chunk_size(line) {
                            Some(0) => Framing::Chunked(Chunked::Trailers),
                            Some(size) => Framing::Chunked(Chunked::Data(size)),
                            None => return Poll::Ready(Err(self.fail("invalid chunk size"))),
                        },
                        Chunked::DataEnd if line.is_empty() => Framing::Chunked(Chunked::Size),
                        Chunked::DataEnd => {
                            return Poll::Ready(Err(self.fail("chunk data longer than its size")));
                        }
                        // Trailer fields are dropped: the client's response is already framed.
                        Chunked::Trailers if line.is_empty() => Framing::Length(0),
                        Chunked::Trailers => Framing::Chunked(Chunked::Trailers),
                        Chunked::Data(_) => unreachable!("handled above"),
                    };
                }
            }
        }
    }
}

/// The size of a chunk-size line (`HEX[;extensions]`).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|&b| b == b';').next()?.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(data) = this.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match ready!(this.poll_data(cx)) {
            Ok(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Ok(None) => Poll::Ready(None),
            Err(err) => Poll::Ready(Some(Err(err))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        let pending = self.pending.as_ref().map_or(0, |d| d.len() as u64);
        match self.framing {
            Framing::Done => SizeHint::with_exact(pending),
            Framing::Length(left) => SizeHint::with_exact(pending + left),
            _ => {
                let mut hint = SizeHint::new();
                hint.set_lower(pending);
                hint
            }
        }
    }
}

/// Writes a request for a backend into `out`: the request line in origin form, `headers` as
/// they are but for the framing headers and those `forwarding` replaces, then `forwarding`'s,
/// `Content-Length` where a body is sent (or the method expects one), and a small body behind
/// the head so that one write sends all. Returns what is left of the body to send after `out`
/// (empty but for bodies over 16 KiB).
pub fn write_request(
    out: &mut Vec<u8>,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    forwarding: &Forwarding,
    body: &Bytes,
) -> Bytes {
    let body_len = body.len();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || forwarding.replaces(name)
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    forwarding.write(out);
    let body_expected = !matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::OPTIONS
            | Method::TRACE
            | Method::CONNECT
    );
    if body_len > 0 || body_expected || headers.contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if body_len <= COALESCE_BODY_BYTES {
        out.extend_from_slice(body);
        Bytes::new()
    } else {
        body.clone()
    }
}

/// A response read by [`read_arrived`]: the parts `Upstream::send` hands on, and its body as
/// [`UpstreamBody`] decoded it.
#[derive(Debug)]
pub(crate) struct ArrivedResponse {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    /// Whether the connection could have gone back to its idle list.
    pub(crate) keep_alive: bool,
    /// The headers, when asked for as [`HeadForm::Map`].
    pub(crate) headers: Option<HeaderMap>,
    /// The headers, when asked for as [`HeadForm::Lines`].
    pub(crate) lines: Option<HeadLines>,
    /// The body length the head declared, when it framed the body by length.
    pub(crate) length: Option<u64>,
    pub(crate) body: ArrivedBody,
}

/// A body decoded from bytes that all arrived before the backend closed.
#[derive(Debug)]
pub(crate) struct ArrivedBody {
    /// The data frames, as the decoder handed them on.
    pub(crate) frames: Vec<Bytes>,
    /// Why the body ended before its end, if it did.
    pub(crate) error: Option<io::Error>,
    /// [`Body::is_end_stream`] once the decoder said it was done.
    pub(crate) end_stream: bool,
}

/// The response reading of [`Upstream::send`] without a connection, for the fuzz targets
/// (`crate::fuzzing`): `bytes` is everything the backend sent before it closed. Heads are
/// taken as `exchange` takes them and the body is decoded by [`UpstreamBody`] itself.
pub(crate) fn read_arrived(
    bytes: &[u8],
    method: &Method,
    form: HeadForm,
) -> Result<ArrivedResponse, UpstreamError> {
    let mut buffer = BytesMut::from(bytes);
    let Some(parsed) = take_head(&mut buffer, form)? else {
        return Err(if buffer.is_empty() {
            UpstreamError::Io(io::ErrorKind::UnexpectedEof.into())
        } else {
            UpstreamError::BadResponse("connection closed in the middle of the response head")
        });
    };
    let framing = body_framing(method, &parsed);
    let (headers, lines) = match parsed.fields {
        HeadFields::Map(headers) => (Some(headers), None),
        HeadFields::Lines(lines) => (None, Some(lines)),
    };
    Ok(ArrivedResponse {
        status: parsed.status,
        version: parsed.version,
        keep_alive: parsed.keep_alive && !matches!(framing, Framing::UntilClose),
        headers,
        lines,
        length: match framing {
            Framing::Length(length) => Some(length),
            _ => None,
        },
        body: decode_arrived(buffer, framing),
    })
}

/// The chunked decoder of [`UpstreamBody`] over `bytes`, all that arrived before the backend
/// closed, for the fuzz targets (`crate::fuzzing`).
pub(crate) fn decode_arrived_chunked(bytes: &[u8]) -> ArrivedBody {
    decode_arrived(BytesMut::from(bytes), Framing::Chunked(Chunked::Size))
}

fn decode_arrived(buffer: BytesMut, framing: Framing) -> ArrivedBody {
    let mut body = UpstreamBody {
        buffer,
        stream: None,
        framing,
        return_to: None,
        pending: None,
        head_lines: None,
    };
    body.settle_if_buffered();
    let mut frames = Vec::new();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let error = loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frames.extend(frame.into_data().ok()),
            Poll::Ready(Some(Err(err))) => break Some(err),
            Poll::Ready(None) => break None,
            // With no connection every read is the end of the stream, at once.
            Poll::Pending => unreachable!("the decoder waited for a connection it does not have"),
        }
    };
    ArrivedBody {
        frames,
        error,
        end_stream: body.is_end_stream(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &str) -> Result<ParsedHead, UpstreamError> {
        match ParsedHead::from_head(&Bytes::copy_from_slice(head.as_bytes()), HeadForm::Map)? {
            ResponseHead::Final(parsed) => Ok(parsed),
            ResponseHead::Informational => panic!("{head:?} is informational"),
        }
    }

    fn map(parsed: &ParsedHead) -> &HeaderMap {
        match &parsed.fields {
            HeadFields::Map(headers) => headers,
            HeadFields::Lines(_) => panic!("asked for a map"),
        }
    }

    fn lines(head: &str) -> HeadLines {
        let parsed =
            ParsedHead::from_head(&Bytes::copy_from_slice(head.as_bytes()), HeadForm::Lines);
        match parsed {
            Ok(ResponseHead::Final(ParsedHead {
                fields: HeadFields::Lines(lines),
                ..
            })) => lines,
            _ => panic!("{head:?} gave no lines"),
        }
    }

    /// Both forms pass on the same headers: the lines are the map written out.
    #[test]
    fn head_lines_are_the_header_map_written_out() {
        let heads = [
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 26 Nov 2026 16:14:16 GMT\r\n\
             Content-Type: text/plain\r\nContent-Length: 64\r\nConnection: keep-alive\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nKeep-Alive: timeout=5\r\n\
             Transfer-Encoding: chunked\r\nContent-Length: 9\r\nTE: x\r\nTrailer: y\r\n\
             Upgrade: z\r\nProxy-Connection: close\r\nProxy-Authenticate: Basic\r\n\
             Proxy-Authorization: w\r\nX-B: é obs-text\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nconnection: close, X-A\r\nx-a: 1\r\n\
             x-b: 2\r\n\r\n",
            "HTTP/1.0 404 Not Found\r\nDATE: x\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
        ];
        for head in heads {
            let from_map = map(&parsed(head).unwrap())
                .iter()
                .map(|(name, value)| {
                    let mut line = format!("{name}: ").into_bytes();
                    line.extend_from_slice(value.as_bytes());
                    line.extend_from_slice(b"\r\n");
                    line
                })
                .collect::<Vec<_>>();
            let lines = lines(head);
            let mut written: Vec<&[u8]> = lines.bytes.split_inclusive(|&b| b == b'\n').collect();
            let mut expected: Vec<&[u8]> = from_map.iter().map(Vec::as_slice).collect();
            // A map that removed a header named by Connection has reordered the rest.
            written.sort();
            expected.sort();
            assert_eq!(written, expected, "{head:?}");
            let map = map(&parsed(head).unwrap()).clone();
            assert_eq!(lines.has_date, map.contains_key(header::DATE), "{head:?}");
            assert_eq!(
                lines.content_length,
                map.get(header::CONTENT_LENGTH).map(|v| v
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()),
                "{head:?}"
            );
        }
        assert_eq!(
            lines(heads[0]).bytes,
            b"server: nginx\r\ndate: Thu, 26 Nov 2026 16:14:16 GMT\r\n\
              content-type: text/plain\r\ncontent-length: 64\r\n"
        );
    }

    fn idle_count(upstream: &Upstream) -> usize {
        let idle = upstream.idle[0].lock().unwrap();
        idle.values().map(Vec::len).sum()
    }

    fn backend_id() -> BackendId {
        balancer_core::Scheduler::new(balancer_core::SchedulerConfig::new(
            balancer_core::PolicyKind::RoundRobin,
        ))
        .add_backend(balancer_core::Timestamp::from_nanos(0), 1)
        .unwrap()
    }

    #[tokio::test]
    async fn idle_lists_are_bounded_expire_and_skip_closed_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // The peer keeps what it accepts open until told to close it.
        let (close_tx, mut close_rx) = tokio::sync::mpsc::channel::<()>(1);
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    biased;
                    accepted = listener.accept() => held.push(accepted.unwrap().0),
                    _ = close_rx.recv() => held.clear(),
                }
            }
        });
        let upstream = Upstream::new(
            UpstreamSettings {
                connect_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_millis(300),
                max_idle_per_backend: 2,
            },
            1,
        );
        let id = backend_id();
        for _ in 0..3 {
            upstream.checkin(id, TcpStream::connect(address).await.unwrap());
        }
        assert_eq!(idle_count(&upstream), 2, "bounded by max_idle_per_backend");
        let taken = upstream
            .checkout(id)
            .expect("an open idle connection is reused");
        upstream.checkin(id, taken);

        // The peer closes them all (once it has accepted them): a checkout skips every one.
        tokio::time::sleep(Duration::from_millis(50)).await;
        close_tx.send(()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(upstream.checkout(id).is_none());
        assert_eq!(idle_count(&upstream), 0);

        // Past the idle timeout: not reused, and reaped.
        upstream.checkin(id, TcpStream::connect(address).await.unwrap());
        tokio::time::sleep(Duration::from_millis(350)).await;
        upstream.reap(|_| true);
        assert_eq!(idle_count(&upstream), 0, "reaped after idle_timeout");
        upstream.checkin(id, TcpStream::connect(address).await.unwrap());
        upstream.reap(|_| false);
        assert_eq!(
            idle_count(&upstream),
            0,
            "a backend gone from the config keeps none"
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let length = parsed("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n").unwrap();
        assert_eq!(length.framing, Framing::Length(5));
        assert!(length.keep_alive);
        let chunked = parsed(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        )
        .unwrap();
        assert_eq!(chunked.framing, Framing::Chunked(Chunked::Size));
        assert!(!map(&chunked).contains_key(header::CONTENT_LENGTH));
        let other = parsed("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n").unwrap();
        assert_eq!(other.framing, Framing::UntilClose);
        let none = parsed("HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!(none.framing, Framing::UntilClose);
        assert!(matches!(
            parsed("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"),
            Err(UpstreamError::BadResponse(_))
        ));
        assert!(matches!(
            parsed("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"),
            Err(UpstreamError::BadResponse(_))
        ));
        assert_eq!(
            parsed("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n")
                .unwrap()
                .framing,
            Framing::Length(5)
        );
    }

    #[test]
    fn keep_alive_is_the_default_of_http_1_1_only() {
        assert!(
            !parsed("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            !parsed("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            parsed("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            parsed("HTTP/1.1 200 OK\r\nconnection: Keep-Alive, x\r\n\r\n")
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn informational_heads_are_skipped_and_101_refused() {
        let two = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert_eq!(head_length(two), Some(25));
        assert!(matches!(
            ParsedHead::from_head(&Bytes::copy_from_slice(&two[..25]), HeadForm::Map),
            Ok(ResponseHead::Informational)
        ));
        assert!(matches!(
            parsed("HTTP/1.1 101 Switching\r\n\r\n"),
            Err(UpstreamError::BadResponse(_))
        ));
        assert!(matches!(
            check_partial_head(b"HTTP/1.1 200 OK\r\nbad header\r\n"),
            Err(UpstreamError::BadResponse(_))
        ));
        assert!(matches!(
            parsed("HTTP/1.1 200 OK\r\nbad header\r\n\r\n"),
            Err(UpstreamError::BadResponse(_))
        ));
        assert!(check_partial_head(b"HTTP/1.1 200 OK\r\nfine: yes\r\n").is_ok());
    }

    /// Every head built from these pieces, and every prefix of it: where httparse finds a
    /// complete head, `head_length` finds the same length; where httparse waits for more,
    /// so does `head_length`.
    #[test]
    fn head_length_agrees_with_httparse() {
        let leading = ["", "\r\n", "\n", "\r\n\n"];
        let ends = ["\r\n", "\n"];
        let mut texts = Vec::new();
        for lead in leading {
            for status_end in ends {
                for header_count in 0..3 {
                    for header_end in ends {
                        for last in ends {
                            let mut text = format!("{lead}HTTP/1.1 200 OK{status_end}");
                            for i in 0..header_count {
                                text.push_str(&format!("x-{i}: v{i}{header_end}"));
                            }
                            text.push_str(last);
                            text.push_str("body\n\nmore");
                            texts.push(text);
                        }
                    }
                }
            }
        }
        let mut complete = 0;
        for text in &texts {
            for cut in 0..=text.len() {
                let bytes = &text.as_bytes()[..cut];
                let mut lines = [httparse::EMPTY_HEADER; 8];
                match httparse::Response::new(&mut lines).parse(bytes) {
                    Ok(httparse::Status::Complete(length)) => {
                        complete += 1;
                        assert_eq!(head_length(bytes), Some(length), "{bytes:?}");
                    }
                    Ok(httparse::Status::Partial) => {
                        assert_eq!(head_length(bytes), None, "{bytes:?}");
                    }
                    Err(_) => {}
                }
            }
        }
        assert!(complete > texts.len(), "the cuts include complete heads");
    }

    #[test]
    fn heads_come_without_hop_by_hop_headers() {
        let names = |parsed: &ParsedHead| -> Vec<String> {
            let mut names: Vec<String> = map(parsed).keys().map(|n| n.to_string()).collect();
            names.sort();
            names
        };
        let usual = parsed(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             x-a: 1\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nTrailer: x-t\r\n\
             Upgrade: h2c\r\nProxy-Connection: keep-alive\r\nProxy-Authenticate: Basic\r\n\r\n",
        )
        .unwrap();
        assert_eq!(names(&usual), ["x-a"]);
        assert!(usual.keep_alive);
        let naming = parsed(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nx-a: 1\r\nx-b: 2\r\n\
             connection: close, X-A\r\ncontent-length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(names(&naming), ["content-length", "x-b"]);
        assert!(!naming.keep_alive);
    }

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"1A;name=value"), Some(26));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b""), None);
        assert_eq!(chunk_size(b"xyz"), None);
        assert_eq!(chunk_size(b"ffffffffffffffff"), None);
    }

    #[test]
    fn requests_carry_the_body_length_only_where_due() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a.test"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let forwarding = Forwarding::new(
            &headers,
            "192.0.2.7".parse().unwrap(),
            true,
            Some(&HeaderValue::from_static("a.test")),
            &HeaderValue::from_static("1.1 balancer"),
            HeaderValue::from_static("id-1"),
        );
        let added = "x-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\n\
                     x-forwarded-host: a.test\r\nvia: 1.1 balancer\r\nx-request-id: id-1\r\n";
        let mut out = Vec::new();
        let rest = write_request(
            &mut out,
            &Method::POST,
            "/p?q=1",
            &headers,
            &forwarding,
            &"abc".into(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("POST /p?q=1 HTTP/1.1\r\nhost: a.test\r\n{added}content-length: 3\r\n\r\nabc")
        );
        assert!(rest.is_empty());
        let large = Bytes::from(vec![b'x'; COALESCE_BODY_BYTES + 1]);
        let mut out = Vec::new();
        let rest = write_request(&mut out, &Method::PUT, "/", &headers, &forwarding, &large);
        assert!(out.ends_with(b"content-length: 16385\r\n\r\n"));
        assert_eq!(rest, large);
        headers.remove(header::CONTENT_LENGTH);
        let mut out = Vec::new();
        write_request(
            &mut out,
            &Method::GET,
            "/",
            &headers,
            &forwarding,
            &Bytes::new(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("GET / HTTP/1.1\r\nhost: a.test\r\n{added}\r\n")
        );
    }
}
