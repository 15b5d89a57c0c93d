//! Header rewriting: hop-by-hop stripping, X-Forwarded-*, Via, and the request id.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The request id header, kept from the client or generated, sent to the backend and returned.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// How many headers the proxy adds to a forwarded request (X-Forwarded-For, X-Forwarded-Proto,
/// X-Forwarded-Host, Via, X-Request-Id): room is made for them before they are put in a map,
/// because growing a `HeaderMap` rehashes it (measured: a fifth of the user-space instructions
/// of a small GET).
pub const ADDED_REQUEST_HEADERS: usize = 5;

/// How many headers the proxy adds to a backend's response (Via, X-Request-Id).
pub const ADDED_RESPONSE_HEADERS: usize = 2;

/// Longest client-supplied request id kept; longer ones are replaced (bounds log lines).
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Whether the request asks to switch protocols (WebSocket and the like) over HTTP/1.1.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has_token(headers, "upgrade")
}

/// Whether a `Connection` header lists `token`.
pub(crate) fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

// Bits naming the hop-by-hop headers present in a map (see `hop_by_hop_bit`).
const CONNECTION_BIT: u16 = 1;
const KEEP_ALIVE_BIT: u16 = 1 << 1;
const TE_BIT: u16 = 1 << 2;
const TRAILER_BIT: u16 = 1 << 3;
const TRANSFER_ENCODING_BIT: u16 = 1 << 4;
const PROXY_AUTHENTICATE_BIT: u16 = 1 << 5;
const PROXY_AUTHORIZATION_BIT: u16 = 1 << 6;
const PROXY_CONNECTION_BIT: u16 = 1 << 7;
const UPGRADE_BIT: u16 = 1 << 8;

fn hop_by_hop_bit(name: &HeaderName) -> u16 {
    if name == header::CONNECTION {
        CONNECTION_BIT
    } else if name == KEEP_ALIVE {
        KEEP_ALIVE_BIT
    } else if name == header::TE {
        TE_BIT
    } else if name == header::TRAILER {
        TRAILER_BIT
    } else if name == header::TRANSFER_ENCODING {
        TRANSFER_ENCODING_BIT
    } else if name == header::PROXY_AUTHENTICATE {
        PROXY_AUTHENTICATE_BIT
    } else if name == header::PROXY_AUTHORIZATION {
        PROXY_AUTHORIZATION_BIT
    } else if name == PROXY_CONNECTION {
        PROXY_CONNECTION_BIT
    } else if name == header::UPGRADE {
        UPGRADE_BIT
    } else {
        0
    }
}

/// Whether `name` is hop-by-hop whatever a `Connection` header says (the ones
/// [`strip_hop_by_hop`] always removes, `Connection` included).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_bit(name) != 0
}

/// [`is_hop_by_hop`] for a name as it came on the wire (any case).
pub fn is_hop_by_hop_name(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"upgrade",
    ];
    NAMES
        .iter()
        .any(|hop| hop.len() == name.len() && hop.eq_ignore_ascii_case(name))
}

/// Removes hop-by-hop headers: Connection and every header it names, Keep-Alive, TE, Trailer,
/// Transfer-Encoding, Upgrade and Proxy-*. With `keep_upgrade`, `Connection: upgrade` and
/// `Upgrade` survive so that a protocol switch can pass through.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds which hop-by-hop headers are present (usually none, or
    // only Connection), so that absent ones cost no hashed lookups.
    let present = headers
        .keys()
        .fold(0, |bits, name| bits | hop_by_hop_bit(name));
    if present & CONNECTION_BIT != 0 {
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        if values.next().is_none() {
            // The usual single Connection header: its tokens are removed by name directly
            // (a `&str` name is looked up without building a `HeaderName`).
            if let Some(value) = first
                && let Ok(value) = value.to_str()
            {
                for token in value.split(',').map(str::trim) {
                    if !(keep_upgrade && token.eq_ignore_ascii_case("upgrade")) {
                        headers.remove(token);
                    }
                }
            }
        } else {
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .collect();
            for name in named {
                if !(keep_upgrade && name == header::UPGRADE) {
                    headers.remove(&name);
                }
            }
        }
        headers.remove(header::CONNECTION);
    }
    if present & KEEP_ALIVE_BIT != 0 {
        headers.remove(&KEEP_ALIVE);
    }
    if present & TE_BIT != 0 {
        headers.remove(header::TE);
    }
    if present & TRAILER_BIT != 0 {
        headers.remove(header::TRAILER);
    }
    if present & TRANSFER_ENCODING_BIT != 0 {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if present & PROXY_AUTHENTICATE_BIT != 0 {
        headers.remove(header::PROXY_AUTHENTICATE);
    }
    if present & PROXY_AUTHORIZATION_BIT != 0 {
        headers.remove(header::PROXY_AUTHORIZATION);
    }
    if present & PROXY_CONNECTION_BIT != 0 {
        headers.remove(&PROXY_CONNECTION);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & UPGRADE_BIT != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// The headers the proxy adds to a forwarded request: X-Forwarded-For (appended to any
/// earlier hops), X-Forwarded-Proto and X-Forwarded-Host (replacing what the client sent), Via
/// (appended), X-Request-Id (set), and Host for an HTTP/2 client that sent only `:authority`.
///
/// Decided once per request, then either put in the request's map ([`Forwarding::apply`], for
/// requests whose map is sent as it is: hyper's client, upgrades) or written as lines behind
/// the client's headers (`upstream::write_request`): inserting them into the map and writing
/// it out cost about 1,500 instructions of each small GET.
#[derive(Clone, Debug)]
pub struct Forwarding {
    /// The earlier hops a trusted peer sent, then the peer itself: always ends with the real
    /// client address.
    forwarded_for: HeaderValue,
    /// The client's `Forwarded` is dropped: it came from a peer that is not trusted.
    drop_forwarded: bool,
    forwarded_host: Option<HeaderValue>,
    via: HeaderValue,
    request_id: HeaderValue,
    /// Only when the client's headers have no Host.
    host: Option<HeaderValue>,
}

impl Forwarding {
    /// The headers for a request with `headers` (hop-by-hop ones already stripped) from
    /// `client_ip`. `host` is the Host the client asked for, as a header value. With
    /// `trusted`, the peer's X-Forwarded-For (every line of it, bytes as sent) and Forwarded
    /// are kept and the peer appended; otherwise they are replaced by the peer alone.
    pub fn new(
        headers: &HeaderMap,
        client_ip: IpAddr,
        trusted: bool,
        host: Option<&HeaderValue>,
        via: &HeaderValue,
        request_id: HeaderValue,
    ) -> Forwarding {
        let forwarded_for = match headers.get(&X_FORWARDED_FOR) {
            Some(_) if trusted => {
                let mut joined = Vec::with_capacity(64);
                for earlier in headers.get_all(&X_FORWARDED_FOR) {
                    joined.extend_from_slice(earlier.as_bytes());
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(client_ip.to_string().as_bytes());
                // Header bytes parsed once are valid again; the fallback never passes the
                // client's value on without the real address last.
                HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip_value(client_ip))
            }
            _ => client_ip_value(client_ip),
        };
        Forwarding {
            forwarded_for,
            drop_forwarded: !trusted,
            // This proxy is where the client's connection ends, so it alone knows the scheme
            // and the host the client used: values a client sent are overwritten, not trusted.
            forwarded_host: host.cloned(),
            via: via.clone(),
            request_id,
            host: host
                .filter(|_| !headers.contains_key(header::HOST))
                .cloned(),
        }
    }

    /// Puts the headers in `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.reserve(ADDED_REQUEST_HEADERS);
        headers.insert(X_FORWARDED_FOR.clone(), self.forwarded_for.clone());
        if self.drop_forwarded {
            headers.remove(header::FORWARDED);
        }
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        match &self.forwarded_host {
            Some(value) => headers.insert(X_FORWARDED_HOST.clone(), value.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        append_via(headers, &self.via);
        headers.insert(X_REQUEST_ID.clone(), self.request_id.clone());
        if let Some(host) = &self.host {
            headers.insert(header::HOST, host.clone());
        }
    }

    /// Whether a client's header of this name is replaced by [`Forwarding::write`], and so
    /// is not to be written itself.
    pub fn replaces(&self, name: &HeaderName) -> bool {
        name == X_FORWARDED_FOR
            || (name == header::FORWARDED && self.drop_forwarded)
            || name == X_FORWARDED_PROTO
            || name == X_FORWARDED_HOST
            || name == X_REQUEST_ID
    }

    /// Writes the headers as HTTP/1.1 header lines.
    pub fn write(&self, out: &mut Vec<u8>) {
        fn line(out: &mut Vec<u8>, name_colon: &[u8], value: &HeaderValue) {
            out.extend_from_slice(name_colon);
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        line(out, b"x-forwarded-for: ", &self.forwarded_for);
        out.extend_from_slice(b"x-forwarded-proto: http\r\n");
        if let Some(value) = &self.forwarded_host {
            line(out, b"x-forwarded-host: ", value);
        }
        line(out, b"via: ", &self.via);
        line(out, b"x-request-id: ", &self.request_id);
        if let Some(host) = &self.host {
            line(out, b"host: ", host);
        }
    }
}

/// `client_ip` as a header value. A keep-alive connection sends every request from one
/// address, so each thread keeps the last one made (a clone is a reference count).
fn client_ip_value(client_ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((ip, value)) = &*last
            && *ip == client_ip
        {
            return value.clone();
        }
        let value = HeaderValue::from_str(&client_ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        *last = Some((client_ip, value.clone()));
        value
    })
}

/// Appends this proxy to Via (on requests and responses).
pub fn append_via(headers: &mut HeaderMap, via: &HeaderValue) {
    headers.append(header::VIA, via.clone());
}

/// The client's request id if it is a sane one, else a new one. The ids this process makes
/// are reserved: a client that sends one (to mix its decision records with another request's
/// in `explain`) gets a new one instead.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(value)
            if !value.is_empty()
                && value.len() <= MAX_REQUEST_ID_BYTES
                && value.as_bytes().iter().all(|b| b.is_ascii_graphic())
                && !is_ours(value.as_bytes()) =>
        {
            value.clone()
        }
        _ => new_request_id(),
    }
}

/// Whether `id` has the form of an id this process makes (`{prefix:08x}-{count:012x}`).
fn is_ours(id: &[u8]) -> bool {
    let mut prefix = [0u8; 8];
    hex_into(&mut prefix, u64::from(process_prefix()));
    id.len() == 21 && id[..8] == prefix && id[8] == b'-'
}

/// This process's prefix of request ids: start time and pid, mixed.
fn process_prefix() -> u32 {
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PREFIX.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // splitmix64 finaliser: spreads start time and pid over all bits.
        let mut x = nanos ^ (u64::from(std::process::id()) << 32);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (x ^ (x >> 31)) as u32
    })
}

/// A process-unique id: the process's prefix and a counter.
fn new_request_id() -> HeaderValue {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = process_prefix();
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `{prefix:08x}-{count:012x}`, written without the formatting machinery.
    let mut id = [b'-'; 21];
    hex_into(&mut id[..8], u64::from(prefix));
    hex_into(&mut id[9..], count);
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Writes the low `out.len()` hex digits of `value` (lower case, zero-padded) into `out`.
fn hex_into(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for place in out.iter_mut().rev() {
        *place = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert("proxy-authorization", HeaderValue::from_static("x"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn hop_by_hop_names_agree_in_both_forms() {
        let names = [
            "connection",
            "Keep-Alive",
            "TE",
            "trailer",
            "Transfer-Encoding",
            "proxy-authenticate",
            "Proxy-Authorization",
            "proxy-connection",
            "upgrade",
            "x-kept",
            "t",
            "tee",
            "content-length",
            "date",
        ];
        for name in names {
            let parsed = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(
                is_hop_by_hop_name(name.as_bytes()),
                is_hop_by_hop(&parsed),
                "{name}"
            );
        }
        assert_eq!(
            names
                .iter()
                .filter(|n| is_hop_by_hop_name(n.as_bytes()))
                .count(),
            9
        );
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade_request(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert_eq!(headers[header::CONNECTION], "upgrade");
    }

    #[test]
    fn a_client_cannot_take_an_id_this_process_made() {
        let ours = request_id(&HeaderMap::new());
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID.clone(), ours.clone());
        let given = request_id(&headers);
        assert_ne!(
            given, ours,
            "a generated id sent back by a client is replaced"
        );
        assert!(is_ours(given.as_bytes()));
        headers.insert(
            X_REQUEST_ID.clone(),
            HeaderValue::from_static("client-chosen-1"),
        );
        assert_eq!(request_id(&headers), "client-chosen-1");
    }

    #[test]
    fn the_real_client_address_is_always_the_last_hop() {
        let via = HeaderValue::from_static("1.1 balancer");
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let forward = |headers: &HeaderMap, trusted: bool| {
            let mut out = headers.clone();
            Forwarding::new(
                headers,
                peer,
                trusted,
                None,
                &via,
                HeaderValue::from_static("i"),
            )
            .apply(&mut out);
            out
        };
        // Not text (a byte 0xFF): kept as bytes, the peer still appended.
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"10.0.0.1\xff").unwrap(),
        );
        let out = forward(&headers, true);
        assert_eq!(
            out["x-forwarded-for"].as_bytes(),
            b"10.0.0.1\xff, 192.0.2.7"
        );
        // Two lines: both kept, in order, then the peer.
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        headers.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        headers.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        let out = forward(&headers, true);
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 192.0.2.7");
        assert_eq!(out.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(out["forwarded"], "for=10.0.0.1");
        // A peer that is not trusted: what it claims is replaced by what it is.
        let out = forward(&headers, false);
        assert_eq!(out["x-forwarded-for"], "192.0.2.7");
        assert!(out.get("forwarded").is_none());
    }

    #[test]
    fn forwarded_for_appends() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        headers.insert(
            "x-forwarded-host",
            HeaderValue::from_static("spoofed.example"),
        );
        let via = HeaderValue::from_static("1.1 balancer");
        Forwarding::new(
            &headers,
            "127.0.0.1".parse().unwrap(),
            true,
            Some(&HeaderValue::from_static("a.com")),
            &via,
            HeaderValue::from_static("id-1"),
        )
        .apply(&mut headers);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(headers["x-forwarded-host"], "a.com");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["via"], "1.1 balancer");
        assert_eq!(headers["x-request-id"], "id-1");
        // The client sent no Host (an HTTP/2 client sends :authority): the one it asked for.
        assert_eq!(headers[header::HOST], "a.com");
    }

    /// Applied to the map or written behind it, the same header lines go out.
    #[test]
    fn forwarding_written_is_forwarding_applied() {
        let maps: [&[(&str, &[u8])]; 5] = [
            &[("host", b"a.com")],
            &[
                ("host", b"a.com"),
                ("x-forwarded-for", b"10.0.0.1"),
                ("x-forwarded-for", b"10.0.0.2"),
                ("x-forwarded-proto", b"https"),
                ("x-forwarded-host", b"spoofed"),
                ("via", b"1.0 other"),
                ("x-request-id", b"theirs"),
                ("accept", b"*/*"),
            ],
            &[("x-forwarded-for", b"\xff not text"), ("user-agent", b"x")],
            &[("accept", b"*/*")],
            &[
                ("via", b"1.1 a"),
                ("via", b"1.1 b"),
                ("x-forwarded-host", b"h"),
            ],
        ];
        let via = HeaderValue::from_static("1.1 balancer");
        for (i, pairs) in maps.iter().enumerate() {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs.iter() {
                headers.append(*name, HeaderValue::from_bytes(value).unwrap());
            }
            // Maps without Host get the one the client asked for (HTTP/2's :authority),
            // except the last, where none is known.
            let host = (i != 4).then(|| HeaderValue::from_static("a.com"));
            let forwarding = Forwarding::new(
                &headers,
                "192.0.2.7".parse().unwrap(),
                true,
                host.as_ref(),
                &via,
                HeaderValue::from_static("id-1"),
            );
            let lines = |headers: &HeaderMap, forwarding: Option<&Forwarding>| {
                let mut out = Vec::new();
                for (name, value) in headers {
                    if forwarding.is_some_and(|f| f.replaces(name)) {
                        continue;
                    }
                    out.extend_from_slice(name.as_str().as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(value.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                if let Some(forwarding) = forwarding {
                    forwarding.write(&mut out);
                }
                let mut lines: Vec<Vec<u8>> = out
                    .split_inclusive(|&b| b == b'\n')
                    .map(<[u8]>::to_vec)
                    .collect();
                // Different names may come in another order; lines of one name may not.
                lines.sort_by(|a, b| {
                    let name = |l: &[u8]| l.split(|&b| b == b':').next().unwrap().to_vec();
                    name(a).cmp(&name(b))
                });
                lines
            };
            let written = lines(&headers, Some(&forwarding));
            let mut applied_map = headers.clone();
            forwarding.apply(&mut applied_map);
            assert_eq!(written, lines(&applied_map, None), "map {i}");
        }
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let mut headers = HeaderMap::new();
        let made = request_id(&headers);
        assert_ne!(made, request_id(&headers));
        headers.insert("x-request-id", HeaderValue::from_static("abc-1"));
        assert_eq!(request_id(&headers), "abc-1");
        headers.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id(&headers), "has space");
        let made = made.to_str().unwrap();
        assert_eq!(made.len(), 21);
        assert_eq!(&made[8..9], "-");
        assert!(made.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
        assert!(!made.bytes().any(|b| b.is_ascii_uppercase()));
        let mut digits = [0; 12];
        hex_into(&mut digits, 0xabc);
        assert_eq!(&digits, b"000000000abc");
    }

    #[test]
    fn connection_tokens_are_removed_whatever_their_case() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, X-Secret, ,bad name"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        // Two Connection headers take the general path.
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, HeaderValue::from_static("x-a"));
        headers.append(header::CONNECTION, HeaderValue::from_static("x-b, upgrade"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert("x-b", HeaderValue::from_static("1"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert_eq!(headers[header::CONNECTION], "upgrade");
        assert_eq!(headers.len(), 2);
    }
}
