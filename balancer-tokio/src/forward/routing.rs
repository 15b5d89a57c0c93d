//! Routing: which pool a request goes to, by Host, path prefix and listener port.
//!
//! Precedence, decided once when the table is built: the longest matching path prefix wins;
//! on a tie an exact host beats a `*.` wildcard, which beats no host; then a route with a port
//! beats one without; then the earlier route in the file.

use crate::config::{HostPattern, PathNormalization, RouteConfig};

/// A route as the proxy uses it.
#[derive(Clone, Debug)]
pub struct Route {
    /// Its name for access logs.
    pub name: String,
    /// Index of the pool it sends to.
    pub pool: usize,
    /// Its position in the config file (indexes per-route state such as rate limiters).
    pub index: usize,
    host: HostPattern,
    path_prefix: String,
    port: Option<u16>,
}

/// Routes in precedence order; the first match wins.
#[derive(Clone, Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    normalization: PathNormalization,
}

impl RouteTable {
    /// Orders `routes` by precedence (see the module doc); paths are matched in the normal form
    /// of `normalization`.
    pub fn new(routes: &[RouteConfig], normalization: PathNormalization) -> RouteTable {
        let mut routes: Vec<Route> = routes
            .iter()
            .enumerate()
            .map(|(index, r)| Route {
                name: r.name.clone(),
                pool: r.pool,
                index,
                host: r.host.clone(),
                path_prefix: r.path_prefix.clone(),
                port: r.port,
            })
            .collect();
        // A stable sort keeps file order as the last tie-breaker.
        routes.sort_by_key(|r| {
            (
                std::cmp::Reverse(r.path_prefix.len()),
                std::cmp::Reverse(r.host.specificity()),
                std::cmp::Reverse(r.port.is_some()),
            )
        });
        RouteTable {
            routes,
            normalization,
        }
    }

    /// The route for a request to `host` (may carry a port) and `path`, arriving on `listener_port`.
    /// The first route for `host`, `path` and the listener's port. The path is matched in its
    /// normal form ([`normalize_path`]), so that `/x/../admin`, `//admin` or `/%61dmin` cannot
    /// pass a `/admin` route by; the request itself is forwarded as the client sent it.
    pub fn find(&self, host: Option<&str>, path: &str, listener_port: u16) -> Option<&Route> {
        let host = host.map(strip_port);
        let normal = normalize_path_with(path, self.normalization);
        let path = normal.as_ref();
        self.routes.iter().find(|route| {
            route.port.is_none_or(|port| port == listener_port)
                && route.host.matches(host)
                && prefix_matches(&route.path_prefix, path)
        })
    }
}

/// `example.com:8080` → `example.com`, `[::1]:80` → `[::1]`; a trailing dot is dropped.
fn strip_port(host: &str) -> &str {
    let without_port = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    without_port.strip_suffix('.').unwrap_or(without_port)
}

/// `path` as routing sees it by default (RFC 3986 §6.2.2, as nginx matches locations):
/// percent-escapes of unreserved characters decoded (`%61` is `a`), repeated slashes merged,
/// and `.` and `..` segments removed (never above the root). Borrowed when there is nothing
/// to do.
pub fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    normalize_path_with(path, PathNormalization::default())
}

/// `path` in the normal form `steps` asks for (each step on or off: `path_normalization`).
pub fn normalize_path_with(path: &str, steps: PathNormalization) -> std::borrow::Cow<'_, str> {
    let work = (steps.decode_unreserved && path.contains('%'))
        || (steps.merge_slashes && path.contains("//"))
        || (steps.remove_dot_segments && path.contains("/."));
    if !work {
        return std::borrow::Cow::Borrowed(path);
    }
    let decoded = if steps.decode_unreserved {
        decode_unreserved(path)
    } else {
        path.to_owned()
    };
    let mut segments: Vec<&str> = Vec::new();
    let after_root = decoded.strip_prefix('/').unwrap_or(&decoded);
    for segment in after_root.split('/') {
        match segment {
            "" if steps.merge_slashes => {}
            "." if steps.remove_dot_segments => {}
            ".." if steps.remove_dot_segments => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    // A trailing slash (or a last `.`/`..` segment) stays a directory.
    let ends_as_directory = decoded.ends_with('/')
        || (steps.remove_dot_segments && (decoded.ends_with("/.") || decoded.ends_with("/..")));
    if normal.is_empty() || (ends_as_directory && !normal.ends_with('/')) {
        normal.push('/');
    }
    std::borrow::Cow::Owned(normal)
}

/// Decodes `%XX` where XX is an unreserved character (RFC 3986 §2.3); others stay escaped.
/// A `%` that starts no escape becomes `%25`, the escape of `%` itself: left bare, it would
/// make a new escape of what is decoded behind it (`/%%3641` would become `/%641`, which is
/// `/d1` once more), and the normal form would not be normal.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let escape = match bytes.get(i + 1..i + 3) {
                Some(&[high, low]) if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
                    Some(hex_value(high) << 4 | hex_value(low))
                }
                _ => None,
            };
            match escape {
                Some(byte)
                    if byte.is_ascii_alphanumeric()
                        || matches!(byte, b'-' | b'.' | b'_' | b'~') =>
                {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                Some(_) => {}
                None => {
                    out.extend_from_slice(b"%25");
                    i += 1;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| path.to_owned())
}

/// The value of an ASCII hex digit.
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        _ => digit.to_ascii_lowercase() - b'a' + 10,
    }
}

/// Prefixes match on segment boundaries: `/api` matches `/api` and `/api/x`, not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_matched_in_their_normal_form() {
        for (path, normal) in [
            ("/api/x", "/api/x"),
            ("/x/../admin", "/admin"),
            ("/./admin", "/admin"),
            ("//admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/a/b/../../../admin/", "/admin/"),
            ("/admin/.", "/admin/"),
            ("/%2Fadmin", "/%2Fadmin"),
            ("/", "/"),
            ("/..", "/"),
        ] {
            assert_eq!(normalize_path(path), normal, "{path}");
        }
        assert!(matches!(
            normalize_path("/plain/path"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    /// Found by the request_head fuzz target in its first 26 s
    /// (fuzz/corpus/request_head/seed-regression-stray-percent): `/admin/%6a../y` was the
    /// normal form, and `/admin/j../y` that of it.
    #[test]
    fn a_percent_that_starts_no_escape_cannot_make_one_of_what_follows() {
        for (path, normal) in [
            ("/x/../admin/././%6%61%2e%2E//y", "/admin/%256a../y"),
            ("/%%3641", "/%25641"),
            ("/%4%31", "/%2541"),
            ("/a%", "/a%25"),
            ("/a%6", "/a%256"),
            ("/%zz/x", "/%25zz/x"),
            ("/%2%35", "/%2525"),
        ] {
            assert_eq!(normalize_path(path), normal, "{path}");
            assert_eq!(normalize_path(normal), normal, "{path}: normal twice");
        }
    }

    #[test]
    fn each_normalization_step_can_be_turned_off() {
        let all = PathNormalization::default();
        let without = |step: &str| match step {
            "decode" => PathNormalization {
                decode_unreserved: false,
                ..all
            },
            "merge" => PathNormalization {
                merge_slashes: false,
                ..all
            },
            _ => PathNormalization {
                remove_dot_segments: false,
                ..all
            },
        };
        let cases = [
            ("decode", "/%61dmin//x/../y", "/%61dmin/y"),
            ("merge", "/%61dmin//x/../y", "/admin//y"),
            ("dots", "/%61dmin//x/../y", "/admin/x/../y"),
            ("merge", "//a//", "//a//"),
            ("dots", "/a/./", "/a/./"),
        ];
        for (step, path, normal) in cases {
            let steps = without(step);
            assert_eq!(
                normalize_path_with(path, steps),
                normal,
                "without {step}: {path}"
            );
            assert_eq!(
                normalize_path_with(normal, steps),
                normal,
                "without {step}: {path}: normal twice"
            );
        }
        let none = PathNormalization {
            decode_unreserved: false,
            merge_slashes: false,
            remove_dot_segments: false,
        };
        assert!(matches!(
            normalize_path_with("/x/../%61dmin//", none),
            std::borrow::Cow::Borrowed("/x/../%61dmin//")
        ));
        let table = RouteTable::new(&[route("admin", None, "/admin", None)], without("dots"));
        assert_eq!(find(&table, "a", "/%61dmin/x", 80), Some("admin"));
        assert_eq!(find(&table, "a", "/x/../admin", 80), None);
    }

    fn route(name: &str, host: Option<&str>, prefix: &str, port: Option<u16>) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            host: host.map_or(HostPattern::Any, |h| HostPattern::parse(h).unwrap()),
            path_prefix: prefix.into(),
            port,
            pool: 0,
            rate_limit: None,
        }
    }

    fn find<'a>(table: &'a RouteTable, host: &str, path: &str, port: u16) -> Option<&'a str> {
        table.find(Some(host), path, port).map(|r| r.name.as_str())
    }

    #[test]
    fn longest_prefix_then_host_then_port_wins() {
        let table = RouteTable::new(
            &[
                route("root", None, "/", None),
                route("api", None, "/api", None),
                route("api-v2", None, "/api/v2", None),
                route("wild", Some("*.example.com"), "/api", None),
                route("exact", Some("a.example.com"), "/api", None),
                route("admin-port", None, "/", Some(9000)),
            ],
            PathNormalization::default(),
        );
        assert_eq!(find(&table, "x.org", "/", 80), Some("root"));
        assert_eq!(find(&table, "x.org", "/apix", 80), Some("root"));
        assert_eq!(find(&table, "x.org", "/api", 80), Some("api"));
        assert_eq!(find(&table, "x.org", "/api/v2/users", 80), Some("api-v2"));
        assert_eq!(
            find(&table, "b.example.com:8080", "/api/x", 80),
            Some("wild")
        );
        assert_eq!(find(&table, "A.Example.com", "/api", 80), Some("exact"));
        assert_eq!(find(&table, "example.com", "/api", 80), Some("api"));
        assert_eq!(find(&table, "x.org", "/", 9000), Some("admin-port"));
    }

    #[test]
    fn no_match_is_none() {
        let table = RouteTable::new(
            &[route("only", Some("a.com"), "/", None)],
            PathNormalization::default(),
        );
        assert_eq!(find(&table, "b.com", "/", 80), None);
        assert!(table.find(None, "/", 80).is_none());
    }

    #[test]
    fn host_ports_and_ipv6_are_stripped() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com."), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.com"), "a.com");
    }
}
