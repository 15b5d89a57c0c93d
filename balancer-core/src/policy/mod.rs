//! Policies: how to choose a backend, each a small piece over the shared load measurement.

pub mod consistent_hash;
mod least_pending;
mod p2c;
mod random;
mod round_robin;

use std::fmt;
use std::str::FromStr;

use rand::Rng;

use crate::backend::BackendTable;
use crate::time::Timestamp;

pub(crate) use consistent_hash::{ConsistentHash, HashChoice};
pub(crate) use least_pending::LeastPending;
pub(crate) use p2c::{P2c, P2cLoad};
pub(crate) use random::WeightedRandom;
pub(crate) use round_robin::SmoothRoundRobin;

/// The policies a scheduler can run, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// The original's heap: the backend with the fewest pending requests. Unweighted.
    LeastPending,
    /// Power of two choices: two random eligible backends, the one with fewer pending per weight.
    P2c,
    /// Round robin; smooth weighted round robin (nginx's algorithm) when weights differ.
    RoundRobin,
    /// Random, in proportion to weight.
    Random,
    /// Power of two choices over peak-EWMA latency × (pending + 1) ÷ weight.
    PeakEwma,
    /// Consistent hashing of the request's key with bounded load; p2c for requests without a
    /// key.
    ConsistentHash,
}

impl PolicyKind {
    /// Every policy, in a stable order.
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::LeastPending,
        PolicyKind::P2c,
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::PeakEwma,
        PolicyKind::ConsistentHash,
    ];

    /// The policy's name as written in configs and on command lines.
    pub const fn name(self) -> &'static str {
        match self {
            PolicyKind::LeastPending => "least-pending",
            PolicyKind::P2c => "p2c",
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::Random => "random",
            PolicyKind::PeakEwma => "peak-ewma",
            PolicyKind::ConsistentHash => "consistent-hash",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A policy name that is not one of [`PolicyKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown policy {0:?}; expected one of: least-pending, p2c, round-robin, random, peak-ewma, consistent-hash"
)]
pub struct UnknownPolicy(pub String);

impl FromStr for PolicyKind {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyKind::ALL
            .into_iter()
            .find(|kind| kind.name() == s)
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// A policy's choice: the slot index, and for p2c the other candidate it was compared with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pick {
    pub chosen: u32,
    pub rival: Option<u32>,
    /// consistent-hash: what the ring decided for the request's key.
    pub hash: Option<HashChoice>,
}

/// A running policy with whatever index or cursor it keeps between decisions.
#[derive(Clone, Debug)]
pub(crate) enum Policy {
    LeastPending(LeastPending),
    P2c(P2c),
    RoundRobin(SmoothRoundRobin),
    Random(WeightedRandom),
    /// The ring for requests with a key, p2c for those without.
    ConsistentHash(Box<ConsistentHash>, P2c),
}

impl Policy {
    pub fn new(kind: PolicyKind, hash_load_factor: Option<f64>) -> Self {
        match kind {
            PolicyKind::ConsistentHash => Policy::ConsistentHash(
                Box::new(ConsistentHash::new(hash_load_factor)),
                P2c::new(P2cLoad::PendingPerWeight),
            ),
            PolicyKind::LeastPending => Policy::LeastPending(LeastPending::default()),
            PolicyKind::P2c => Policy::P2c(P2c::new(P2cLoad::PendingPerWeight)),
            PolicyKind::PeakEwma => Policy::P2c(P2c::new(P2cLoad::PeakEwma)),
            PolicyKind::RoundRobin => Policy::RoundRobin(SmoothRoundRobin::default()),
            PolicyKind::Random => Policy::Random(WeightedRandom::default()),
        }
    }

    /// Chooses an eligible backend, or `None` when no backend is eligible.
    #[inline]
    pub fn pick<R: Rng + ?Sized>(
        &mut self,
        table: &BackendTable,
        now: Timestamp,
        decay_ns: f64,
        rng: &mut R,
        key: Option<u64>,
        in_flight: u32,
    ) -> Option<Pick> {
        let alone = |chosen| Pick {
            chosen,
            rival: None,
            hash: None,
        };
        let compared = |(chosen, rival)| Pick {
            chosen,
            rival,
            hash: None,
        };
        match self {
            Policy::LeastPending(p) => p.pick().map(alone),
            Policy::P2c(p) => p.pick(table, now, decay_ns, rng).map(compared),
            Policy::ConsistentHash(ring, fallback) => match key {
                Some(key) => ring.pick(table, in_flight, key).map(|(chosen, hash)| Pick {
                    chosen,
                    rival: None,
                    hash: Some(hash),
                }),
                None => fallback.pick(table, now, decay_ns, rng).map(compared),
            },
            Policy::RoundRobin(p) => p.pick(table).map(alone),
            Policy::Random(p) => p.pick(table, rng).map(alone),
        }
    }

    /// For explanations: the backend least-pending would have chosen next, and how many
    /// backends share the chosen one's pending count (counted up to `limit`).
    pub fn least_pending_context(&self, chosen: u32, limit: u32) -> Option<(Option<u32>, u32)> {
        match self {
            Policy::LeastPending(p) => Some((p.runner_up(chosen), p.ties(limit))),
            _ => None,
        }
    }

    /// The slot became eligible with `pending` requests in flight.
    pub fn on_eligible(&mut self, index: u32, pending: u32) {
        match self {
            Policy::LeastPending(p) => p.insert(index, pending),
            Policy::RoundRobin(p) => p.on_eligible(index),
            Policy::P2c(_) | Policy::Random(_) | Policy::ConsistentHash(..) => {}
        }
    }

    /// The slot stopped being eligible; it had `pending` requests in flight.
    pub fn on_ineligible(&mut self, index: u32, pending: u32) {
        if let Policy::LeastPending(p) = self {
            p.remove(index, pending);
        }
    }

    /// An eligible slot's pending count moved from `old` to `new` (by one).
    #[inline]
    pub fn on_pending_changed(&mut self, index: u32, old: u32, new: u32) {
        if let Policy::LeastPending(p) = self {
            p.remove(index, old);
            p.insert(index, new);
        }
    }

    /// Checks the policy's own index against the table.
    pub fn check(&self, table: &BackendTable) -> Result<(), String> {
        match self {
            Policy::LeastPending(p) => p.check(table),
            Policy::P2c(_)
            | Policy::RoundRobin(_)
            | Policy::Random(_)
            | Policy::ConsistentHash(..) => Ok(()),
        }
    }
}
