//! Route host patterns: `example.com`, `*.example.com`, or any host.

/// How a route matches the request's host (port ignored, case-insensitive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// Any host, or none.
    Any,
    /// Exactly this host (lowercase).
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com` (stored as `.example.com`), not the bare domain.
    Suffix(String),
}

impl HostPattern {
    /// Parses `example.com` or `*.example.com`.
    pub fn parse(pattern: &str) -> Result<HostPattern, &'static str> {
        let lower = pattern.to_ascii_lowercase();
        let (body, wildcard) = match lower.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (lower.as_str(), false),
        };
        let valid = !body.is_empty()
            && body
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !valid {
            return Err(
                "write a host name without port or scheme, e.g. \"api.example.com\" or \"*.example.com\"",
            );
        }
        Ok(if wildcard {
            HostPattern::Suffix(format!(".{body}"))
        } else {
            HostPattern::Exact(body.to_owned())
        })
    }

    /// The pattern as written in a config file (`None` for any host).
    pub fn as_config(&self) -> Option<String> {
        match self {
            HostPattern::Any => None,
            HostPattern::Exact(host) => Some(host.clone()),
            HostPattern::Suffix(suffix) => Some(format!("*{suffix}")),
        }
    }

    /// Whether `host` (without its port) matches.
    pub(crate) fn matches(&self, host: Option<&str>) -> bool {
        match (self, host) {
            (HostPattern::Any, _) => true,
            (_, None) => false,
            (HostPattern::Exact(exact), Some(host)) => exact.eq_ignore_ascii_case(host),
            (HostPattern::Suffix(suffix), Some(host)) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }

    /// How specific the pattern is: exact beats wildcard beats any.
    pub(crate) fn specificity(&self) -> u8 {
        match self {
            HostPattern::Exact(_) => 2,
            HostPattern::Suffix(_) => 1,
            HostPattern::Any => 0,
        }
    }
}
