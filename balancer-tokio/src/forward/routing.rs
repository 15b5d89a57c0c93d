//! Routing: which pool a request goes to, by Host, path prefix and listener port.
//!
//! Precedence, decided once when the table is built: the longest matching path prefix wins;
//! on a tie an exact host beats a `*.` wildcard, which beats no host; then a route with a port
//! beats one without; then the earlier route in the file.

use crate::config::{HostPattern, RouteConfig};

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
}

impl RouteTable {
    /// Orders `routes` by precedence (see the module doc).
    pub fn new(routes: &[RouteConfig]) -> RouteTable {
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
        RouteTable { routes }
    }

    /// The route for a request to `host` (may carry a port) and `path`, arriving on `listener_port`.
    pub fn find(&self, host: Option<&str>, path: &str, listener_port: u16) -> Option<&Route> {
        let host = host.map(strip_port);
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
        let table = RouteTable::new(&[
            route("root", None, "/", None),
            route("api", None, "/api", None),
            route("api-v2", None, "/api/v2", None),
            route("wild", Some("*.example.com"), "/api", None),
            route("exact", Some("a.example.com"), "/api", None),
            route("admin-port", None, "/", Some(9000)),
        ]);
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
        let table = RouteTable::new(&[route("only", Some("a.com"), "/", None)]);
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
