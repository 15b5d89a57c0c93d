//! Entry points for the fuzz targets in `fuzz/` and for the tests that replay their corpus:
//! each runs the proxy's own parsers on arbitrary bytes and panics only when one of their
//! invariants fails. Not an API (hidden from the docs); see docs/fuzzing.md.
//!
//! The parsers are hyper's where hyper serves; these are the ones this crate wrote itself.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use bytes::BytesMut;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Version};

use crate::config::Config;
use crate::forward::routing::{RouteTable, normalize_path};
use crate::http::body::ClientBody;
use crate::http::headers;
use crate::serve::h1::{self, Head};
use crate::serve::head::{declares_too_large_body, head_complete, head_ready};
use crate::upstream::HeadForm;
use crate::upstream::h1::{ArrivedBody, decode_arrived_chunked, head_length, read_arrived};

/// Most header lines read from a head that the plain path leaves to hyper (hyper's own limit),
/// to run the proxy's request checks on it.
const MAX_OTHER_HEADERS: usize = 100;

/// Split points of a head tried by [`request_head`]: each costs a pass over the head.
const MAX_SPLITS: usize = 64;

/// A client's request head, as the server reads it: the head-end search (whole and cut in
/// two reads), the body-size check, the plain HTTP/1.1 parser, and on the request it gives
/// the `check_host` and `check_framing` phases, hop-by-hop stripping, the forwarding headers
/// and routing by normalized path.
pub fn request_head(data: &[u8]) {
    check_head_search(data);
    for (small, large) in [(0, 1024), (1024, u64::MAX)] {
        if declares_too_large_body(data, large) {
            assert!(
                declares_too_large_body(data, small),
                "too large for {large} bytes but not for {small}"
            );
        }
    }

    let mut buffer = BytesMut::from(data);
    match h1::parse(&mut buffer) {
        Head::Plain { request, .. } => {
            let taken = data.len() - buffer.len();
            assert_eq!(&buffer[..], &data[taken..], "the bytes after the head stay");
            assert!(
                head_complete(&data[..taken]),
                "a plain head ends with a blank line the head reader finds"
            );
            assert!(
                !declares_too_large_body(data, 0),
                "a plain request declares no body"
            );
            assert!(
                super::forward::check_framing(&request).is_ok(),
                "a plain request has neither Transfer-Encoding nor Upgrade"
            );
            check_request(request);
        }
        Head::Malformed => assert!(buffer.len() < data.len(), "a malformed head is taken"),
        Head::Other => {
            assert_eq!(&buffer[..], data, "a head left to hyper is untouched");
            if let Some(request) = other_request(data) {
                check_request(request);
            }
        }
    }
}

/// The head reader searches only what each read added, from 3 bytes before it: wherever a
/// head is cut in two reads, it is found complete exactly when it is whole.
fn check_head_search(data: &[u8]) {
    let whole = head_complete(data);
    let splits = (1..data.len())
        .filter(|&at| matches!(data[at - 1], b'\r' | b'\n'))
        .take(MAX_SPLITS);
    for at in splits {
        let found = head_complete(&data[..at]) || head_complete(&data[at.saturating_sub(3)..]);
        assert_eq!(found, whole, "a head cut after {at} bytes");
    }
    if whole {
        assert!(head_ready(data), "a complete head is ready");
    }
}

/// The request hyper would build from a head it serves (when httparse takes it), so that
/// the proxy's own checks see requests the plain path does not take.
fn other_request(data: &[u8]) -> Option<Request<ClientBody>> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_OTHER_HEADERS];
    let mut parsed = httparse::Request::new(&mut lines);
    if !parsed.parse(data).ok()?.is_complete() {
        return None;
    }
    let mut request = Request::new(ClientBody::Empty);
    *request.method_mut() = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    *request.uri_mut() = parsed.path?.parse().ok()?;
    *request.version_mut() = match parsed.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    for line in parsed.headers.iter() {
        let name = HeaderName::from_bytes(line.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(line.value).ok()?;
        request.headers_mut().append(name, value);
    }
    Some(request)
}

/// The phases and header work the proxy does on every request before a backend sees it.
fn check_request(request: Request<ClientBody>) {
    let host_checked = super::forward::check_host(&request);
    let _ = super::forward::check_framing(&request);

    let mut forwarded = request.headers().clone();
    headers::strip_hop_by_hop(&mut forwarded, false);
    for name in forwarded.keys() {
        assert!(!headers::is_hop_by_hop(name), "{name} is hop-by-hop");
    }
    let id = headers::request_id(&forwarded);
    assert!(!id.is_empty() && id.len() <= headers::MAX_REQUEST_ID_BYTES);
    let host = request.headers().get(header::HOST);
    let via = HeaderValue::from_static("1.1 balancer");
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for trusted in [false, true] {
        let forwarding =
            headers::Forwarding::new(&forwarded, client, trusted, host, &via, id.clone());
        let mut lines = b"GET / HTTP/1.1\r\n".to_vec();
        forwarding.write(&mut lines);
        lines.extend_from_slice(b"\r\n");
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Request::new(&mut fields);
        assert_eq!(
            parsed.parse(&lines).map(|s| s.is_complete()),
            Ok(true),
            "the forwarding headers are lines a backend reads back: {:?}",
            String::from_utf8_lossy(&lines)
        );
        forwarding.apply(&mut forwarded.clone());
    }

    let path = request.uri().path();
    let normal = normalize_path(path);
    check_normal_form(path, &normal);
    if host_checked.is_ok() {
        let host = host.and_then(|h| h.to_str().ok());
        let _ = routes().find(host, path, 8080);
    }
}

/// What routing's normal form promises: one slash between segments, no `.` or `..` segment,
/// and nothing left to do when it is normalized again.
fn check_normal_form(path: &str, normal: &str) {
    if path.starts_with('/') {
        assert!(normal.starts_with('/'), "{path:?} became {normal:?}");
    }
    if normal == path {
        return;
    }
    assert!(!normal.contains("//"), "{path:?} became {normal:?}");
    for segment in normal.split('/') {
        assert!(
            segment != "." && segment != "..",
            "{path:?} became {normal:?}"
        );
    }
    assert_eq!(
        normalize_path(normal),
        normal,
        "the normal form of {path:?} is normal"
    );
}

/// A route table like the README's: hosts exact and wildcard, prefixes, a port.
fn routes() -> &'static RouteTable {
    static ROUTES: OnceLock<RouteTable> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let text = r#"
            listen = "127.0.0.1:8080"
            [pools.web]
            backends = ["127.0.0.1:9001"]
            [pools.api]
            backends = ["127.0.0.1:9002"]
            [[routes]]
            name = "api"
            host = "*.example.com"
            path_prefix = "/api"
            pool = "api"
            [[routes]]
            name = "admin"
            path_prefix = "/admin/"
            port = 8080
            pool = "api"
            [[routes]]
            name = "shop"
            host = "shop.example.com"
            pool = "web"
        "#;
        let config = Config::from_toml_str(text, "fuzzing.toml").expect("the fuzzing routes");
        RouteTable::new(&config.routes, config.path_normalization)
    })
}

/// A chunked body from a backend, as the response body decodes it: arbitrary bytes, then the
/// same bytes as the data of a well-formed chunked encoding, which must decode back to them.
pub fn chunked_body(data: &[u8]) {
    let decoded = decode_arrived_chunked(data);
    check_arrived(&decoded, data.len(), None);

    // The bytes cut into chunks whose sizes the bytes themselves give.
    let mut encoded = Vec::with_capacity(data.len() * 2 + 64);
    let mut rest = data;
    let mut index = 0;
    while let Some((&size, after)) = rest.split_first() {
        let (chunk, after) = after.split_at(usize::from(size).min(after.len()));
        rest = after;
        index += 1;
        if chunk.is_empty() {
            continue;
        }
        let size_line = match index % 3 {
            0 => format!("{:x}\r\n", chunk.len()),
            1 => format!("{:X};ext=\"v\"\r\n", chunk.len()),
            _ => format!("{:x}\n", chunk.len()),
        };
        encoded.extend_from_slice(size_line.as_bytes());
        encoded.extend_from_slice(chunk);
        encoded.extend_from_slice(b"\r\n");
    }
    let expected: Vec<u8> = {
        let mut expected = Vec::new();
        let mut rest = data;
        while let Some((&size, after)) = rest.split_first() {
            let (chunk, after) = after.split_at(usize::from(size).min(after.len()));
            expected.extend_from_slice(chunk);
            rest = after;
        }
        expected
    };
    encoded.extend_from_slice(b"0\r\n");
    if data.len() % 2 == 1 {
        encoded.extend_from_slice(b"x-trailer: t\r\n");
    }
    encoded.extend_from_slice(b"\r\n");
    // What follows the body's end is the next response's, not this body's.
    encoded.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    let decoded = decode_arrived_chunked(&encoded);
    assert!(
        decoded.error.is_none(),
        "a well-formed chunked body: {:?}",
        decoded.error
    );
    assert!(decoded.end_stream, "a well-formed chunked body ends");
    assert_eq!(decoded.frames.concat(), expected, "decodes to its data");
}

/// A body's invariants: never more data than bytes arrived, never an empty frame, the end
/// reported once it came, and a body framed by length exactly that long.
fn check_arrived(body: &ArrivedBody, arrived: usize, length: Option<u64>) {
    let total: usize = body.frames.iter().map(|f| f.len()).sum();
    assert!(total <= arrived, "{total} bytes decoded from {arrived}");
    assert!(body.frames.iter().all(|f| !f.is_empty()), "an empty frame");
    if body.error.is_none() {
        assert!(body.end_stream, "a body that ended says so");
        if let Some(length) = length {
            assert_eq!(total as u64, length, "a body framed by its length");
        }
    }
}

/// A backend's response, everything it sent before closing, read by the proxy's own
/// HTTP/1.1 client: the head's end agrees with httparse, both header forms pass on the same
/// headers (none hop-by-hop, each a line a client reads back), and the body decodes within
/// its framing.
pub fn response(data: &[u8]) {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    match httparse::Response::new(&mut fields).parse(data) {
        Ok(httparse::Status::Complete(length)) => {
            assert_eq!(head_length(data), Some(length), "where the head ends");
        }
        Ok(httparse::Status::Partial) => {
            assert_eq!(head_length(data), None, "a head still partial");
        }
        Err(_) => {}
    }

    for method in [Method::GET, Method::HEAD] {
        let map = read_arrived(data, &method, HeadForm::Map);
        let lines = read_arrived(data, &method, HeadForm::Lines);
        let (map, lines) = match (map, lines) {
            (Ok(map), Ok(lines)) => (map, lines),
            (Err(_), Err(_)) => continue,
            (map, lines) => panic!("the two forms disagree: {map:?} and {lines:?}"),
        };
        assert_eq!(
            (map.status, map.version, map.keep_alive, map.length),
            (lines.status, lines.version, lines.keep_alive, lines.length),
            "the two forms read one head"
        );
        let headers = map.headers.as_ref().expect("asked for a map");
        for name in headers.keys() {
            assert!(!headers::is_hop_by_hop(name), "{name} is hop-by-hop");
        }
        let head_lines = lines.lines.as_ref().expect("asked for lines");
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        head.extend_from_slice(&head_lines.bytes);
        head.extend_from_slice(b"\r\n");
        let mut fields = [httparse::EMPTY_HEADER; 130];
        let mut read_back = httparse::Response::new(&mut fields);
        assert_eq!(
            read_back.parse(&head).map(|s| s.is_complete()),
            Ok(true),
            "the lines are a head a client reads back: {:?}",
            String::from_utf8_lossy(&head)
        );
        // A map keeps the order of the values of one name, not that between names.
        let mut from_lines: Vec<(String, &[u8])> = read_back
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value))
            .collect();
        from_lines.sort_by(|a, b| a.0.cmp(&b.0));
        let mut from_map: Vec<(String, &[u8])> = headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes()))
            .collect();
        from_map.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(from_lines, from_map, "both forms pass on the same headers");
        for read in [&map, &lines] {
            check_arrived(&read.body, data.len(), read.length);
        }
        assert_eq!(
            map.body.frames.concat(),
            lines.body.frames.concat(),
            "one body"
        );
    }
}

/// A config file's text, parsed and validated: an error (which must print) or a config the
/// proxy can build its route table from; never a panic.
///
/// Text that names `admin_token_file` is skipped: that key makes validation read the file it
/// names, and fuzzing must not read the machine's files (`/dev/zero` would never end).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains("admin_token_file") {
        return;
    }
    match Config::from_toml_str(text, "fuzz.toml") {
        Ok(config) => {
            assert!(!config.listeners.is_empty(), "a config listens somewhere");
            let _ = config.summary();
            let _ = config.worker_count();
            let _ = RouteTable::new(&config.routes, config.path_normalization);
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
}
