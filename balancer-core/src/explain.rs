//! Decision records: why a request went where it did, as a plain value a driver can keep.

use std::fmt;

use crate::backend::BackendId;
use crate::event::{Decision, RejectReason};
use crate::load::PeakEwma;
use crate::policy::PolicyKind;
use crate::time::Timestamp;

/// Most backends sharing the minimum that a least-pending record counts: each one counted is
/// a pointer chase, and past a handful the number says no more to a person.
pub const EXPLAIN_TIE_LIMIT: u32 = 16;

/// Pools up to this size have their ineligible backends listed by name in a record; larger
/// pools only count them, so that recording stays O(1) on big pools.
pub const EXPLAIN_LIST_SKIPPED_UP_TO: usize = 32;

/// How many skipped backends a record names.
pub const EXPLAIN_SKIPPED_NAMED: usize = 4;

/// A backend as the policy saw it at the moment of the decision (before the dispatch counted).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// The backend.
    pub backend: BackendId,
    /// Its pending requests at that moment.
    pub pending: u32,
    /// Its weight.
    pub weight: u32,
    /// Its latency estimate; decayed to the decision's time only when read, so that recording
    /// costs no `exp()` on the hot path.
    pub(crate) ewma: PeakEwma,
    pub(crate) at: Timestamp,
    pub(crate) decay_ns: f64,
}

impl Candidate {
    /// Its peak-EWMA latency estimate at the moment of the decision, in nanoseconds.
    pub fn ewma_ns(&self) -> f64 {
        self.ewma.estimate_ns(self.at, self.decay_ns)
    }

    /// How long before the decision the estimate took its last latency sample. Past one decay
    /// time most of the estimate has decayed away: a low EWMA then means "not heard from
    /// lately", not "fast".
    pub fn ewma_sample_age(&self) -> core::time::Duration {
        self.at.saturating_since(self.ewma.updated_at())
    }

    /// The estimate in words for the decision sentence: the value, and when it is mostly
    /// decayed, why it is low.
    fn ewma_words(&self) -> String {
        let ms = self.ewma_ns() / 1e6;
        let age = self.ewma_sample_age();
        if age.as_secs_f64() * 1e9 > self.decay_ns {
            format!(
                "ewma {ms:.3} ms, decayed: no response in the last {:.1} s",
                age.as_secs_f64()
            )
        } else {
            format!("ewma {ms:.3} ms")
        }
    }

    /// The load peak-ewma compares: (EWMA + 1 ns) × (pending + 1) ÷ weight, in nanoseconds.
    pub fn peak_ewma_cost_ns(&self) -> f64 {
        (self.ewma_ns() + 1.0) * f64::from(self.pending + 1) / f64::from(self.weight)
    }
}

/// Why a backend in the set could not take the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Marked down (health check or operator).
    Down,
    /// Draining.
    Draining,
    /// Ejected by outlier detection until then.
    Ejected {
        /// End of the ejection.
        until: Timestamp,
    },
    /// At its per-backend in-flight cap.
    Full,
    /// Already failed this request (a retry avoids it).
    AlreadyTried,
}

/// An ineligible backend and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The backend.
    pub backend: BackendId,
    /// Why it was passed over.
    pub reason: SkipReason,
}

/// Everything needed to say why one decision came out as it did. `Copy`, no heap: a driver
/// can keep the latest thousands in a ring at no allocation cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecisionRecord {
    /// When the decision was made.
    pub at: Timestamp,
    /// The policy that made it.
    pub policy: PolicyKind,
    /// The decision itself.
    pub decision: Decision,
    /// The chosen backend as it was just before the dispatch.
    pub chosen: Option<Candidate>,
    /// The backend it was preferred over: p2c and peak-ewma's other draw; least-pending's
    /// next in line. `None` for round-robin and random, which compare nothing.
    pub rival: Option<Candidate>,
    /// least-pending: how many eligible backends shared the minimum (up to [`EXPLAIN_TIE_LIMIT`]).
    pub ties: u32,
    /// Eligible backends at that moment.
    pub eligible: u32,
    /// Backends in the set at that moment.
    pub backends: u32,
    /// Up to [`EXPLAIN_SKIPPED_NAMED`] ineligible backends by name (pools up to
    /// [`EXPLAIN_LIST_SKIPPED_UP_TO`] backends).
    pub skipped: [Option<Skipped>; EXPLAIN_SKIPPED_NAMED],
    /// Whether this was a retry's dispatch, avoiding backends that already failed it.
    pub retry: bool,
    /// Whether the pool was in panic (too few healthy backends): the choice was p2c by
    /// pending over every backend not draining or full, healthy or not.
    pub panic: bool,
    /// consistent-hash with a key: what the ring decided. `None` for other policies, and for
    /// a request without a key (p2c chose; `rival` is its other draw).
    pub hash: Option<HashDecision>,
}

/// The ring's part of a consistent-hash decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashDecision {
    /// The key's hash (the key itself is never recorded).
    pub key_hash: u64,
    /// The backend owning the key on the ring.
    pub owner: BackendId,
    /// Ring points walked past before the chosen backend's: points of backends that were
    /// ineligible or at their load cap.
    pub passed: u32,
    /// The chosen backend's load cap (`u32::MAX`: unbounded).
    pub cap: u32,
}

/// A blank record for a driver to hand to `handle_work` or `handle_retry_work`, which
/// overwrite all of it.
impl Default for DecisionRecord {
    fn default() -> Self {
        DecisionRecord::empty(Timestamp::ZERO, PolicyKind::LeastPending)
    }
}

impl DecisionRecord {
    /// A blank record, for a driver to hand to `handle_work` (which fills it in).
    pub fn empty(at: Timestamp, policy: PolicyKind) -> Self {
        DecisionRecord {
            at,
            policy,
            decision: Decision::Reject {
                reason: RejectReason::NoBackend,
            },
            chosen: None,
            rival: None,
            ties: 0,
            eligible: 0,
            backends: 0,
            skipped: [None; EXPLAIN_SKIPPED_NAMED],
            retry: false,
            panic: false,
            hash: None,
        }
    }

    /// The ineligible backends the record names.
    pub fn skipped(&self) -> impl Iterator<Item = &Skipped> {
        self.skipped.iter().flatten()
    }
}

fn load(c: &Candidate) -> String {
    format!("{} ({} pending, weight {})", c.backend, c.pending, c.weight)
}

impl fmt::Display for DecisionRecord {
    /// One sentence for a person, e.g. "least-pending chose b2 (1 pending, weight 1), the
    /// fewest of 4 eligible; 2 tied at 1 pending, the one waiting longest wins".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let eligible = self.eligible;
        if self.panic {
            write!(
                f,
                "panic mode ({eligible} of {} backends healthy): ",
                self.backends
            )?;
            if let (Decision::Dispatch { .. }, Some(chosen)) = (self.decision, self.chosen) {
                write!(f, "p2c over all backends chose {}", load(&chosen))?;
                if let Some(rival) = self.rival {
                    write!(f, " over {}", load(&rival))?;
                }
                return Ok(());
            }
        }
        match (self.decision, self.chosen) {
            (Decision::Reject { reason }, _) => write!(
                f,
                "rejected: {reason} ({eligible} of {} backends eligible)",
                self.backends
            )?,
            (Decision::Dispatch { .. }, Some(chosen)) => match self.policy {
                PolicyKind::LeastPending => {
                    write!(
                        f,
                        "least-pending chose {}, the fewest of {eligible} eligible",
                        load(&chosen)
                    )?;
                    if self.ties > 1 {
                        let more = if self.ties >= EXPLAIN_TIE_LIMIT {
                            "+"
                        } else {
                            ""
                        };
                        write!(
                            f,
                            "; {}{more} tied at {} pending, the one waiting longest wins",
                            self.ties, chosen.pending
                        )?;
                    }
                    if let Some(rival) = self.rival {
                        write!(f, "; next in line {}", load(&rival))?;
                    }
                }
                PolicyKind::P2c => match self.rival {
                    Some(rival) => write!(
                        f,
                        "p2c drew {} and {}: {} has fewer pending per weight{}",
                        load(&chosen),
                        load(&rival),
                        chosen.backend,
                        if (chosen.pending + 1) * rival.weight
                            == (rival.pending + 1) * chosen.weight
                        {
                            " (a tie: the first draw wins)"
                        } else {
                            ""
                        }
                    )?,
                    None => write!(f, "p2c chose {}, the only eligible backend", load(&chosen))?,
                },
                PolicyKind::PeakEwma => match self.rival {
                    Some(rival) => write!(
                        f,
                        "peak-ewma drew {} at cost {:.3} ms ({}) and {} at cost {:.3} ms ({}): the lower cost wins",
                        load(&chosen),
                        chosen.peak_ewma_cost_ns() / 1e6,
                        chosen.ewma_words(),
                        load(&rival),
                        rival.peak_ewma_cost_ns() / 1e6,
                        rival.ewma_words(),
                    )?,
                    None => write!(
                        f,
                        "peak-ewma chose {}, the only eligible backend",
                        load(&chosen)
                    )?,
                },
                PolicyKind::RoundRobin => write!(
                    f,
                    "round-robin chose {}, next in turn among {eligible} eligible",
                    load(&chosen)
                )?,
                PolicyKind::Random => write!(
                    f,
                    "random chose {} among {eligible} eligible, in proportion to weight",
                    load(&chosen)
                )?,
                PolicyKind::ConsistentHash => match (self.hash, self.rival) {
                    (Some(hash), _) => {
                        let cap = if hash.cap == u32::MAX {
                            "no load bound".to_owned()
                        } else {
                            format!("under its cap of {}", hash.cap)
                        };
                        if hash.owner == chosen.backend {
                            write!(
                                f,
                                "consistent-hash: key {:016x} is owned by {}, chosen ({cap})",
                                hash.key_hash,
                                load(&chosen)
                            )?;
                        } else {
                            write!(
                                f,
                                "consistent-hash: key {:016x} is owned by {}, passed over (ineligible or at its cap); {}, {} ring points on, is the first that can take it ({cap})",
                                hash.key_hash,
                                hash.owner,
                                load(&chosen),
                                hash.passed
                            )?;
                        }
                    }
                    (None, Some(rival)) => write!(
                        f,
                        "consistent-hash: no key, so p2c drew {} and {}: {} has fewer pending per weight",
                        load(&chosen),
                        load(&rival),
                        chosen.backend
                    )?,
                    (None, None) => write!(
                        f,
                        "consistent-hash: no key, so p2c chose {}, the only eligible backend",
                        load(&chosen)
                    )?,
                },
            },
            (Decision::Dispatch { backend, .. }, None) => write!(f, "dispatched to {backend}")?,
        }
        if self.retry {
            f.write_str("; a retry, avoiding backends that already failed it")?;
        }
        let mut skipped = self.skipped().peekable();
        if skipped.peek().is_some() {
            f.write_str("; skipped: ")?;
            for (i, s) in skipped.enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                match s.reason {
                    SkipReason::Down => write!(f, "{} down", s.backend)?,
                    SkipReason::Draining => write!(f, "{} draining", s.backend)?,
                    SkipReason::Ejected { until } => {
                        let left = until.saturating_since(self.at);
                        write!(
                            f,
                            "{} ejected for {:.1} s more",
                            s.backend,
                            left.as_secs_f64()
                        )?
                    }
                    SkipReason::Full => write!(f, "{} at its in-flight cap", s.backend)?,
                    SkipReason::AlreadyTried => write!(f, "{} already tried", s.backend)?,
                }
            }
        }
        Ok(())
    }
}
