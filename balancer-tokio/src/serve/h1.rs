//! HTTP/1.1 to clients for plain requests, by hand: a bodiless HTTP/1.1 request is parsed with
//! httparse and its response written with as few `send`s as its body allows. The first request
//! of a connection that is not plain hands the connection, with every byte read so far, to
//! hyper's server (`connection::Connection::serve`).
//!
//! Why: a connection of bodiless requests (most of what a balancer carries) then never builds
//! hyper's connection state, which took the memory per in-flight request from 29.7 to 11.8 KiB;
//! and the response is written from the backend's header lines (`upstream::HeadLines`) without
//! a `HeaderMap` in between. (It was first written because two throw-away spike proxies,
//! at commit d40a8e2, suggested hyper's server cost 13% of the CPU; alone it measured no
//! faster.) What is covered here is kept narrow on purpose, so that every unusual
//! request (a body, `Expect`, an upgrade, HTTP/1.0, h2c, anything malformed) keeps hyper's
//! behaviour exactly, and this module has little to get wrong.
//!
//! The hand-over is to hyper-util's auto builder, which takes an HTTP/2 preface at the start of
//! a connection as HTTP/2 with prior knowledge; after plain requests the connection refuses one
//! with 400 (only a connection's first bytes choose its protocol).
//!
//! A request is plain when httparse parses it completely as HTTP/1.1 with at most
//! [`MAX_HEADERS`] header lines, its method is not CONNECT, its target is in origin form
//! (`/path?query`), and it has no `Transfer-Encoding`, `Upgrade` or `Expect` header, no
//! `Content-Length` other than 0, and no `upgrade` token in `Connection`.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::Poll;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Body;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::forward::body::ProxyBody;
use crate::http::body::ClientBody;

/// Most header lines a plain request may have; a request with more goes to hyper (which
/// takes up to 100).
pub const MAX_HEADERS: usize = 64;

/// Bytes of a response gathered before they are written: the head and the frames that are
/// ready at once go out in one `send`; a long body goes out in pieces of about this size.
const WRITE_CHUNK_BYTES: usize = 64 * 1024;

/// A write buffer larger than this after a response is given back, so that one large
/// response does not pin its memory for the rest of the connection.
const KEEP_WRITE_BUFFER_BYTES: usize = 2 * WRITE_CHUNK_BYTES;

/// What the start of the read buffer holds.
// Returned once per request and matched at once: boxing the large variant would cost an
// allocation per request to save stack space nobody keeps.
#[allow(clippy::large_enum_variant)]
pub enum Head {
    /// A plain request, taken out of the buffer. `close` is set when the client asked for
    /// `Connection: close`.
    Plain {
        /// The request, with no body.
        request: Request<ClientBody>,
        /// The client asked to close after this response.
        close: bool,
    },
    /// A plain-looking head whose target or header bytes `http` refuses; taken out of the
    /// buffer. hyper answers these with 400 too.
    Malformed,
    /// Not a plain request (or not a complete head): hyper's to serve. The buffer is untouched.
    Other,
}

/// Where the parts of a plain head are in the buffer (found while httparse borrows it).
struct Layout {
    head_len: usize,
    method: Method,
    path: Range<usize>,
    header_count: usize,
    close: bool,
}

/// Where one header line's name and value are in the head: offsets, so that the table of
/// them is small (it lives on the stack for every request).
#[derive(Clone, Copy, Default)]
struct HeaderSpan {
    name_start: u32,
    name_len: u32,
    value_start: u32,
    value_len: u32,
}

impl HeaderSpan {
    fn name(self) -> Range<usize> {
        let start = self.name_start as usize;
        start..start + self.name_len as usize
    }

    fn value(self) -> Range<usize> {
        let start = self.value_start as usize;
        start..start + self.value_len as usize
    }
}

/// Takes a plain request off the front of `buffer`, or says why not.
pub fn parse(buffer: &mut BytesMut) -> Head {
    let mut spans = [HeaderSpan::default(); MAX_HEADERS];
    let Some(layout) = layout(buffer, &mut spans) else {
        return Head::Other;
    };
    let head = buffer.split_to(layout.head_len).freeze();
    let close = layout.close;
    match build(&head, layout, &spans) {
        Some(request) => Head::Plain { request, close },
        None => Head::Malformed,
    }
}

/// Parses the head at the front of `buffer`, checks that it is plain (module docs) and notes
/// where its header lines are in `spans`.
fn layout(buffer: &[u8], spans: &mut [HeaderSpan; MAX_HEADERS]) -> Option<Layout> {
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed.parse_with_uninit_headers(buffer, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return None,
    };
    // Offsets are kept as u32: a head longer than 4 GiB is not plain.
    u32::try_from(head_len).ok()?;
    if parsed.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    if method == Method::CONNECT {
        return None;
    }
    let path = parsed.path?;
    if !path.starts_with('/') {
        return None;
    }
    let base = buffer.as_ptr() as usize;
    let offset_of = |part: &[u8]| part.as_ptr() as usize - base;
    let path_start = offset_of(path.as_bytes());
    let mut layout = Layout {
        head_len,
        method,
        path: path_start..path_start + path.len(),
        header_count: parsed.headers.len(),
        close: false,
    };
    for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = field.name.as_bytes();
        let value = field.value;
        if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return None;
        }
        if name.eq_ignore_ascii_case(b"content-length") && value.trim_ascii() != b"0" {
            return None;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return None;
                }
                layout.close |= token.eq_ignore_ascii_case(b"close");
            }
        }
        // Within the head, so below its length, which fits in u32 (checked above).
        *span = HeaderSpan {
            name_start: offset_of(name) as u32,
            name_len: name.len() as u32,
            value_start: offset_of(value) as u32,
            value_len: value.len() as u32,
        };
    }
    Some(layout)
}

/// The request for a plain head; `None` if `http` refuses its target or a header.
fn build(head: &Bytes, layout: Layout, spans: &[HeaderSpan]) -> Option<Request<ClientBody>> {
    let uri = Uri::from_maybe_shared(head.slice(layout.path.clone())).ok()?;
    let mut request = Request::new(ClientBody::Empty);
    *request.method_mut() = layout.method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    // Exactly the client's: the proxy's own headers are written behind them, not added to
    // the map (`headers::Forwarding`).
    headers.reserve(layout.header_count);
    for span in &spans[..layout.header_count] {
        let name = HeaderName::from_bytes(&head[span.name()]).ok()?;
        // A slice of the head: no copy, as hyper does.
        let value = HeaderValue::from_maybe_shared(head.slice(span.value())).ok()?;
        headers.append(name, value);
    }
    Some(request)
}

/// How the body of a response is delimited on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    /// No body may follow (HEAD, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (the response carried a `Content-Length` that is not a
    /// number, so nothing else can be trusted).
    Close,
}

/// Writes `response` to `stream` in HTTP/1.1, body included. `out` is the connection's write
/// buffer. Returns whether the connection may serve another request: not when either side
/// asked to close, or the body ended short of its length.
///
/// Like hyper's server: a `date` header is added when missing, `content-length` when the
/// body's length is known and no framing header is set, chunked coding otherwise; no body for
/// HEAD, 1xx, 204 and 304. An error from the body ends the connection without finishing the
/// message, so the client can tell the response is incomplete.
pub async fn write_response(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    response: Response<ProxyBody>,
    head_request: bool,
    close: bool,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    // The backend's headers, when they came as lines; `parts.headers` then holds only the
    // ones the proxy added.
    let lines = body.take_head_lines().unwrap_or_default();
    let status = parts.status;
    let mut close = close || crate::http::headers::connection_has_token(&parts.headers, "close");
    let has_length =
        lines.content_length.is_some() || parts.headers.contains_key(header::CONTENT_LENGTH);
    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else if let Some(length) = lines.content_length {
        Framing::Length(length)
    } else if let Some(length) = parts.headers.get(header::CONTENT_LENGTH) {
        match std::str::from_utf8(length.as_bytes())
            .ok()
            .and_then(|l| l.trim().parse::<u64>().ok())
        {
            Some(length) => Framing::Length(length),
            None => Framing::Close,
        }
    } else {
        match body.size_hint().exact() {
            Some(length) => Framing::Length(length),
            None => Framing::Chunked,
        }
    };
    close |= framing == Framing::Close;

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&lines.bytes);
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !lines.has_date && !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        append_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if !has_length {
        match framing {
            Framing::Length(length) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            Framing::None | Framing::Close => {}
        }
    }
    if close && !parts.headers.contains_key(header::CONNECTION) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    let mut sent: u64 = 0;
    if framing != Framing::None {
        while !body.is_end_stream() {
            // A frame that is ready now joins the bytes already gathered (the head, most
            // often); otherwise those go out before waiting for it.
            let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    flush(stream, out).await?;
                    poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(err)) => return Err(io::Error::other(err)),
                // Trailers are dropped, as hyper does unless the client asked for them.
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            match framing {
                Framing::Length(length) if sent > length => {
                    return Err(io::Error::other("response body longer than its length"));
                }
                Framing::Chunked => {
                    append_hex(out, data.len());
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                }
                _ => out.extend_from_slice(&data),
            }
            if out.len() >= WRITE_CHUNK_BYTES {
                flush(stream, out).await?;
            }
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    flush(stream, out).await?;
    if out.capacity() > KEEP_WRITE_BUFFER_BYTES {
        *out = Vec::new();
    }
    let complete = match framing {
        Framing::Length(length) => sent == length,
        _ => true,
    };
    Ok(complete && !close)
}

async fn flush(stream: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

fn append_hex(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

thread_local! {
    /// The `date` value of the current second: formatted once a second per worker thread.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn append_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(cached_second, text)| {
        if *cached_second != second {
            *text = httpdate::fmt_http_date(now);
            *cached_second = second;
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> (Head, BytesMut) {
        let mut buffer = BytesMut::from(text.as_bytes());
        let head = parse(&mut buffer);
        (head, buffer)
    }

    #[test]
    fn a_plain_get_is_taken_with_its_headers_and_leaves_the_next_request() {
        let (head, rest) = parse_str(
            "GET /a/b?c=d HTTP/1.1\r\nHost: example.test\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next",
        );
        let Head::Plain { request, close } = head else {
            panic!("not plain")
        };
        assert!(!close);
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), "/a/b");
        assert_eq!(request.uri().query(), Some("c=d"));
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()["host"], "example.test");
        let twos: Vec<_> = request.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn connection_close_is_noted_and_a_zero_length_is_plain() {
        let (head, rest) = parse_str(
            "DELETE /x HTTP/1.1\r\nhost: a\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n",
        );
        assert!(matches!(head, Head::Plain { close: true, .. }));
        assert!(rest.is_empty());
    }

    #[test]
    fn everything_else_is_left_to_hyper_untouched() {
        let others = [
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\n\r\n",
            "PUT / HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.0\r\nhost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nhost: a\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nhost: a\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\n",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            "GET / HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: x\r\n\r\n",
        ];
        for text in others {
            let (head, rest) = parse_str(text);
            assert!(matches!(head, Head::Other), "{text:?} was taken");
            assert_eq!(&rest[..], text.as_bytes(), "{text:?} was consumed");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse_str(&text).0, Head::Other));
    }

    #[test]
    fn targets_httparse_takes_and_http_refuses_are_malformed_and_consumed() {
        for target in ["/a<b>", "/a`b"] {
            let text = format!("GET {target} HTTP/1.1\r\nhost: a\r\n\r\nGET /next");
            let (head, rest) = parse_str(&text);
            assert!(matches!(head, Head::Malformed), "{target}");
            assert_eq!(&rest[..], b"GET /next", "{target}");
        }
        // Bytes past ASCII are obs-text in a value and taken, as hyper does.
        let mut buffer = BytesMut::from(&b"GET /\xc3\xa9 HTTP/1.1\r\nx: a\x80b\r\n\r\n"[..]);
        let Head::Plain { request, .. } = parse(&mut buffer) else {
            panic!("not plain")
        };
        assert_eq!(request.headers()["x"].as_bytes(), b"a\x80b");
    }

    #[test]
    fn hex_chunk_sizes() {
        let mut out = Vec::new();
        for n in [0, 9, 10, 255, 0x1000, usize::MAX] {
            out.clear();
            append_hex(&mut out, n);
            assert_eq!(String::from_utf8(out.clone()).unwrap(), format!("{n:x}"));
        }
    }

    #[test]
    fn dates_are_http_dates() {
        let mut out = Vec::new();
        append_date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.len(), 29, "{text}");
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
    }
}
