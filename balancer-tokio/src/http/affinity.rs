//! A request's consistent-hash key: taken from the header, cookie, query parameter, path or
//! client address the pool names, and hashed at once (no copy of the key is made).

use std::net::IpAddr;

use balancer_core::hash_key;
use http::header::COOKIE;
use http::{HeaderMap, Uri};

use crate::config::HashKeySource;

/// Longest key hashed: a longer one is hashed by its first this many bytes, so a client
/// cannot make the proxy hash megabytes per request.
pub const MAX_HASH_KEY_BYTES: usize = 1024;

/// The hash of the request's key (`balancer_core::hash_key`), or `None` when the request has
/// no such key (or an empty one): the core then lets p2c choose.
pub fn key_hash(
    source: &HashKeySource,
    headers: &HeaderMap,
    uri: &Uri,
    client: IpAddr,
) -> Option<u64> {
    let bounded = |bytes: &[u8]| {
        (!bytes.is_empty()).then(|| hash_key(&bytes[..bytes.len().min(MAX_HASH_KEY_BYTES)]))
    };
    match source {
        HashKeySource::Header(name) => bounded(headers.get(name)?.as_bytes()),
        HashKeySource::Cookie(name) => headers
            .get_all(COOKIE)
            .iter()
            .find_map(|value| cookie(value.as_bytes(), name.as_bytes()))
            .and_then(bounded),
        HashKeySource::Query(name) => {
            query(uri.query()?.as_bytes(), name.as_bytes()).and_then(bounded)
        }
        HashKeySource::Path => bounded(uri.path().as_bytes()),
        HashKeySource::ClientIp => match client {
            IpAddr::V4(v4) => bounded(&v4.octets()),
            // An IPv4 client seen through a dual-stack socket is the same client.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => bounded(&v4.octets()),
                None => bounded(&v6.octets()),
            },
        },
    }
}

/// The value of cookie `name` in one Cookie header (`a=1; b=2`, RFC 6265 §4.2.1).
fn cookie<'h>(header: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let (key, value) = split_once(pair, b'=')?;
        (key.trim_ascii() == name).then(|| {
            let value = value.trim_ascii();
            value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value)
        })
    })
}

/// The first value of parameter `name` in a query string (`a=1&b=2`), as written.
fn query<'q>(query: &'q [u8], name: &[u8]) -> Option<&'q [u8]> {
    query
        .split(|&b| b == b'&')
        .find_map(|pair| match split_once(pair, b'=') {
            Some((key, value)) => (key == name).then_some(value),
            None => None,
        })
}

fn split_once(bytes: &[u8], separator: u8) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == separator)?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn each_source_finds_its_key() {
        let uri: Uri = "/cart/7?user=ann&x=1".parse().unwrap();
        let map = headers(&[("x-user", "ann"), ("cookie", "theme=dark; session=\"ann\"")]);
        let ann = Some(hash_key(b"ann"));
        let header = HashKeySource::Header(http::HeaderName::from_static("x-user"));
        assert_eq!(key_hash(&header, &map, &uri, LOCAL), ann);
        let cookie = HashKeySource::Cookie("session".into());
        assert_eq!(key_hash(&cookie, &map, &uri, LOCAL), ann);
        let query = HashKeySource::Query("user".into());
        assert_eq!(key_hash(&query, &map, &uri, LOCAL), ann);
        assert_eq!(
            key_hash(&HashKeySource::Path, &map, &uri, LOCAL),
            Some(hash_key(b"/cart/7"))
        );
        assert_eq!(
            key_hash(&HashKeySource::ClientIp, &map, &uri, LOCAL),
            Some(hash_key(&[127, 0, 0, 1]))
        );
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            key_hash(&HashKeySource::ClientIp, &map, &uri, mapped),
            Some(hash_key(&[127, 0, 0, 1]))
        );
    }

    #[test]
    fn a_missing_or_empty_key_is_none_and_a_long_one_is_bounded() {
        let uri: Uri = "/?user=&other=1".parse().unwrap();
        let none = headers(&[("cookie", "sessionx=1; other=2")]);
        let header = HashKeySource::Header(http::HeaderName::from_static("x-user"));
        assert_eq!(key_hash(&header, &none, &uri, LOCAL), None);
        let cookie = HashKeySource::Cookie("session".into());
        assert_eq!(key_hash(&cookie, &none, &uri, LOCAL), None);
        let query = HashKeySource::Query("user".into());
        assert_eq!(key_hash(&query, &none, &uri, LOCAL), None);

        let long = "a".repeat(MAX_HASH_KEY_BYTES + 500);
        let map = headers(&[("x-user", &long)]);
        assert_eq!(
            key_hash(&header, &map, &uri, LOCAL),
            Some(hash_key(&long.as_bytes()[..MAX_HASH_KEY_BYTES]))
        );
    }
}
