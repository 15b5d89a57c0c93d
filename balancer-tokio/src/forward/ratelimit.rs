//! Rate limiting (governor's GCRA): global, per client IP, per route; 429 with `Retry-After`.
//!
//! The per-client map is bounded by `max_tracked_clients`: when a check leaves the map over the
//! bound, entries of clients back at a full burst are dropped (`retain_recent`, which loses
//! nothing: such a client would start from a full burst anyway); if the map is still over, it
//! is replaced by an empty one (between a check's insert and that trim, concurrent checks can
//! overshoot the bound by at most the number of checks in progress). That forgets the state of every client at once, so a flood of
//! distinct addresses can make limits lenient for a moment but can never grow memory past the
//! bound. The maintenance task also calls `retain_recent` every tick.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

use crate::config::{Rate, RateLimitConfig, RouteConfig};

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The limit shared by all requests.
    Global,
    /// The client IP's limit.
    Client,
    /// The route's limit.
    Route,
}

impl Limit {
    /// Its name in metrics and messages.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Global => "global",
            Limit::Client => "client",
            Limit::Route => "route",
        }
    }
}

/// A refusal: which limit, and how long until a request would pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The limit.
    pub limit: Limit,
    /// Time until the next request would be allowed.
    pub wait: Duration,
}

impl Refusal {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_s(&self) -> u64 {
        (self.wait.as_secs() + u64::from(self.wait.subsec_nanos() > 0)).max(1)
    }
}

struct ClientLimiter {
    quota: Quota,
    limiter: ArcSwap<DefaultKeyedRateLimiter<IpAddr>>,
    max_tracked: usize,
}

impl ClientLimiter {
    fn check(&self, ip: IpAddr, clock: &DefaultClock) -> Result<(), Duration> {
        let limiter = self.limiter.load();
        let checked = limiter
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(clock.now()));
        if limiter.len() > self.max_tracked {
            limiter.retain_recent();
            if limiter.len() > self.max_tracked {
                tracing::warn!(
                    max_tracked_clients = self.max_tracked,
                    "rate limiter: too many distinct clients; forgetting all their state"
                );
                self.limiter
                    .store(Arc::new(DefaultKeyedRateLimiter::keyed(self.quota)));
            }
        }
        checked
    }

    fn tracked(&self) -> usize {
        self.limiter.load().len()
    }

    fn maintain(&self) {
        let limiter = self.limiter.load();
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

/// Every rate limit of one config.
pub struct RateLimits {
    clock: DefaultClock,
    global: Option<DefaultDirectRateLimiter>,
    per_client: Option<ClientLimiter>,
    routes: Vec<Option<DefaultDirectRateLimiter>>,
    config: (RateLimitConfig, Vec<Option<Rate>>),
    any: bool,
}

fn quota(rate: Rate) -> Quota {
    // Validation guarantees both are at least 1.
    let per_s = NonZeroU32::new(rate.rate_per_s).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_s).allow_burst(burst)
}

impl RateLimits {
    /// The limiters `config` and `routes` ask for (none: every check passes at once).
    pub fn new(config: &RateLimitConfig, routes: &[RouteConfig]) -> Self {
        RateLimits {
            clock: DefaultClock::default(),
            global: config
                .global
                .map(|r| DefaultDirectRateLimiter::direct(quota(r))),
            per_client: config.per_client.map(|r| ClientLimiter {
                quota: quota(r),
                limiter: ArcSwap::from_pointee(DefaultKeyedRateLimiter::keyed(quota(r))),
                max_tracked: config.max_tracked_clients,
            }),
            routes: routes
                .iter()
                .map(|r| {
                    r.rate_limit
                        .map(|r| DefaultDirectRateLimiter::direct(quota(r)))
                })
                .collect(),
            config: (*config, routes.iter().map(|r| r.rate_limit).collect()),
            any: config.global.is_some()
                || config.per_client.is_some()
                || routes.iter().any(|r| r.rate_limit.is_some()),
        }
    }

    /// Whether these limiters implement exactly `config` and `routes` (a reload that leaves the
    /// limits alone keeps their state).
    pub fn same_config(&self, config: &RateLimitConfig, routes: &[RouteConfig]) -> bool {
        self.config.0 == *config
            && self.config.1.len() == routes.len()
            && self
                .config
                .1
                .iter()
                .zip(routes)
                .all(|(a, b)| *a == b.rate_limit)
    }

    /// Whether any limit is configured (so the request path can skip the checks).
    pub fn any(&self) -> bool {
        self.any
    }

    /// Checks the client's, the route's and the global limit, in that order (the most specific
    /// first, so that one noisy client is refused before it spends the shared budget).
    pub fn check(&self, route: usize, client: IpAddr) -> Result<(), Refusal> {
        if let Some(limiter) = &self.per_client {
            limiter.check(client, &self.clock).map_err(|wait| Refusal {
                limit: Limit::Client,
                wait,
            })?;
        }
        if let Some(Some(limiter)) = self.routes.get(route) {
            limiter.check().map_err(|not_until| Refusal {
                limit: Limit::Route,
                wait: not_until.wait_time_from(self.clock.now()),
            })?;
        }
        if let Some(limiter) = &self.global {
            limiter.check().map_err(|not_until| Refusal {
                limit: Limit::Global,
                wait: not_until.wait_time_from(self.clock.now()),
            })?;
        }
        Ok(())
    }

    /// Client addresses whose state is kept now.
    pub fn tracked_clients(&self) -> usize {
        self.per_client.as_ref().map_or(0, ClientLimiter::tracked)
    }

    /// Drops the state of clients back at a full burst (periodic).
    pub fn maintain(&self) {
        if let Some(limiter) = &self.per_client {
            limiter.maintain();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_client: Rate, max_tracked_clients: usize) -> RateLimits {
        RateLimits::new(
            &RateLimitConfig {
                global: None,
                per_client: Some(per_client),
                max_tracked_clients,
            },
            &[],
        )
    }

    #[test]
    fn a_client_gets_its_burst_then_a_refusal_with_a_wait() {
        let limits = limits(
            Rate {
                rate_per_s: 1,
                burst: 3,
            },
            100,
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.check(0, ip).is_ok());
        }
        let refusal = limits.check(0, ip).unwrap_err();
        assert_eq!(refusal.limit, Limit::Client);
        assert!(refusal.wait > Duration::ZERO && refusal.wait <= Duration::from_secs(1));
        assert_eq!(refusal.retry_after_s(), 1);
        // Another client is not affected.
        assert!(limits.check(0, "192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn the_client_map_never_exceeds_max_tracked_clients() {
        let max = 1_000;
        // A burst of 1 at 1/s: each client's state stays "recent" for a second, so
        // retain_recent alone cannot free room and the hard bound must act.
        let limits = limits(
            Rate {
                rate_per_s: 1,
                burst: 1,
            },
            max,
        );
        for n in 0..20_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            let _ = limits.check(0, ip);
            assert!(
                limits.tracked_clients() <= max,
                "{} clients tracked after {n} checks",
                limits.tracked_clients()
            );
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let refusal = |wait| Refusal {
            limit: Limit::Global,
            wait,
        };
        assert_eq!(refusal(Duration::from_millis(1)).retry_after_s(), 1);
        assert_eq!(refusal(Duration::from_millis(1000)).retry_after_s(), 1);
        assert_eq!(refusal(Duration::from_millis(1001)).retry_after_s(), 2);
        assert_eq!(refusal(Duration::ZERO).retry_after_s(), 1);
    }
}
