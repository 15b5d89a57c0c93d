//! HTTP/1.1 framing as the suite reads it off the wire: message heads, chunked bodies, and the
//! client's sequence of responses. Lenient where a proxy's output only needs to be understood,
//! exact where the recording backend must notice ambiguous framing.

/// Most headers a recorded message may have; more is recorded as a fault, not a crash.
pub const MAX_HEADERS: usize = 256;

/// A header as received: lowercased name, raw value.
pub type Header = (String, Vec<u8>);

/// One parsed message head.
pub struct Head {
    /// Request method, or "" for a response.
    pub method: String,
    /// Request target, or "" for a response.
    pub target: String,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub version: u8,
    /// Response status, or 0 for a request.
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<Header>,
    /// Bytes the head took.
    pub len: usize,
}

/// What parsing a head from the start of a buffer found.
pub enum Parsed {
    /// A whole head.
    Head(Head),
    /// More bytes are needed.
    Partial,
    /// Not a valid head (the reason).
    Invalid(String),
}

fn headers_of(raw: &[httparse::Header<'_>]) -> Vec<Header> {
    raw.iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect()
}

/// Parses a request head from the start of `buf`.
pub fn request_head(buf: &[u8]) -> Parsed {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut storage);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Parsed::Head(Head {
            method: request.method.unwrap_or_default().to_owned(),
            target: request.path.unwrap_or_default().to_owned(),
            version: request.version.unwrap_or(1),
            status: 0,
            headers: headers_of(request.headers),
            len,
        }),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(err) => Parsed::Invalid(format!("{err}: {}", escape(&buf[..buf.len().min(200)]))),
    }
}

/// Parses a response head from the start of `buf`.
pub fn response_head(buf: &[u8]) -> Parsed {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut storage);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Parsed::Head(Head {
            method: String::new(),
            target: String::new(),
            version: response.version.unwrap_or(1),
            status: response.code.unwrap_or(0),
            headers: headers_of(response.headers),
            len,
        }),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(err) => Parsed::Invalid(format!("{err}: {}", escape(&buf[..buf.len().min(200)]))),
    }
}

impl Head {
    /// Every value of header `name` (lowercase).
    pub fn values<'h>(&'h self, name: &'h str) -> impl Iterator<Item = &'h [u8]> + 'h {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Whether header `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.values(name).next().is_some()
    }
}

/// How a message's body is delimited.
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(usize),
    /// Chunked.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// The framing of a request head (RFC 9112 §6.3), or why it is ambiguous: an upstream request
/// must have at most one unambiguous framing header, else the proxy forwarded a desync.
pub fn request_framing(head: &Head) -> Result<Framing, String> {
    let te: Vec<&[u8]> = head.values("transfer-encoding").collect();
    let cl: Vec<&[u8]> = head.values("content-length").collect();
    if !te.is_empty() && !cl.is_empty() {
        return Err("both Transfer-Encoding and Content-Length".into());
    }
    if !te.is_empty() {
        return if te.len() == 1 && te[0].eq_ignore_ascii_case(b"chunked") {
            Ok(Framing::Chunked)
        } else {
            Err(format!(
                "Transfer-Encoding other than one `chunked`: {te:?}"
            ))
        };
    }
    match cl.as_slice() {
        [] => Ok(Framing::Empty),
        [one] => length(one)
            .map(Framing::Length)
            .ok_or_else(|| format!("Content-Length {:?}", escape(one))),
        more => Err(format!("{} Content-Length headers", more.len())),
    }
}

/// The framing of a response head, for the client's reading (lenient: the proxies' output).
pub fn response_framing(head: &Head, to_head: bool) -> Framing {
    if to_head || head.status < 200 || head.status == 204 || head.status == 304 {
        return Framing::Empty;
    }
    if head
        .values("transfer-encoding")
        .any(|v| v.to_ascii_lowercase().ends_with(b"chunked"))
    {
        return Framing::Chunked;
    }
    match head.values("content-length").next().and_then(length) {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    }
}

fn length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Decodes a chunked body at the start of `buf`: `Ok(Some((body, consumed)))` when complete,
/// `Ok(None)` when more bytes are needed, `Err` when it is malformed.
pub fn dechunk(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[at..at + line_end];
        let size_part = line.split(|&b| b == b';').next().unwrap_or_default();
        if size_part.is_empty()
            || size_part.len() > 15
            || !size_part.iter().all(u8::is_ascii_hexdigit)
        {
            return Err(format!("chunk size line {:?}", escape(line)));
        }
        let size = usize::from_str_radix(std::str::from_utf8(size_part).unwrap_or("x"), 16)
            .map_err(|e| e.to_string())?;
        at += line_end + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(end) = find(&buf[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Bytes as printable text (`\r`, `\n`, `\xNN`).
pub fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// One response as the client read it.
pub struct Response {
    /// Its status.
    pub status: u16,
    /// Its head.
    pub head: Head,
    /// Its body (decoded when chunked; what arrived when cut short).
    pub body: Vec<u8>,
    /// Whether the body arrived whole by its framing.
    pub complete: bool,
}

/// The responses at the start of `bytes`, in order, and whether bytes were left that were not a
/// response (garbage, or a body longer than its framing said).
pub fn responses(bytes: &[u8], to_head: bool) -> (Vec<Response>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Parsed::Head(head) = response_head(&bytes[at..]) else {
            return (out, true);
        };
        at += head.len;
        let (body, complete) = match response_framing(&head, to_head) {
            Framing::Empty => (Vec::new(), true),
            Framing::Length(n) => {
                let end = bytes.len().min(at + n);
                let body = bytes[at..end].to_vec();
                at = end;
                let complete = body.len() == n;
                (body, complete)
            }
            Framing::Chunked => match dechunk(&bytes[at..]) {
                Ok(Some((body, used))) => {
                    at += used;
                    (body, true)
                }
                _ => {
                    let body = bytes[at..].to_vec();
                    at = bytes.len();
                    (body, false)
                }
            },
            Framing::UntilClose => {
                let body = bytes[at..].to_vec();
                at = bytes.len();
                (body, true)
            }
        };
        out.push(Response {
            status: head.status,
            head,
            body,
            complete,
        });
    }
    (out, false)
}
