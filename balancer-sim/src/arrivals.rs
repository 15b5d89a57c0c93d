//! Arrival processes: open-loop Poisson, bursty on/off Poisson, and closed loop with think time.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand_distr::{Distribution, Exp1};

use crate::distribution::{SpecError, format_duration_ns, parse_duration_ns};

/// Most closed-loop clients: one event and one in-flight request each; far above any fleet
/// the CLI accepts, small enough that a typo cannot exhaust memory.
pub const MAX_CLIENTS: u32 = 1_000_000;

/// How requests arrive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ArrivalSpec {
    /// Open loop, Poisson at rate ρ × capacity.
    Poisson,
    /// Open loop, Poisson switched on and off: on and off periods are exponential with means
    /// `on_ns` and `off_ns`; while on, the rate is raised so the long-run load stays ρ.
    Bursty {
        /// Mean on period.
        on_ns: u64,
        /// Mean off period.
        off_ns: u64,
    },
    /// Closed loop: `clients` clients, each sends a request, waits for its end, thinks for an
    /// exponential time of mean `think_ns` (0 = not at all), and sends the next. `--load` is unused.
    Closed {
        /// Number of clients.
        clients: u32,
        /// Mean think time.
        think_ns: u64,
    },
}

/// Default mean on and off periods of `bursty`, in units of the mean service time: long
/// enough that queues build during a burst (100 services), short enough that a 100k-request
/// run sees many bursts.
pub const BURSTY_DEFAULT_PERIOD_SERVICES: f64 = 100.0;

impl FromStr for ArrivalSpec {
    type Err = SpecError;

    /// `poisson` | `bursty` | `bursty:ON:OFF` | `closed:N` | `closed:N:THINK`.
    /// `bursty` without periods is written here with zeros and resolved against the fleet.
    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let bad = |why: &str| SpecError::Arrivals {
            spec: spec.to_owned(),
            why: why.to_owned(),
        };
        let parts: Vec<&str> = spec.trim().split(':').collect();
        let dur = |s: &str| parse_duration_ns(s).map_err(|e| bad(&e.to_string()));
        match parts.as_slice() {
            ["poisson"] => Ok(ArrivalSpec::Poisson),
            ["bursty"] => Ok(ArrivalSpec::Bursty {
                on_ns: 0,
                off_ns: 0,
            }),
            ["bursty", on, off] => {
                let (on_ns, off_ns) = (dur(on)?, dur(off)?);
                if on_ns == 0 {
                    return Err(bad("the on period must be positive"));
                }
                Ok(ArrivalSpec::Bursty { on_ns, off_ns })
            }
            ["closed", n, rest @ ..] if rest.len() <= 1 => {
                let clients: u32 = n
                    .parse()
                    .ok()
                    .filter(|c| (1..=MAX_CLIENTS).contains(c))
                    .ok_or_else(|| bad(&format!("N must be in 1..={MAX_CLIENTS}")))?;
                let think_ns = match rest {
                    [think] => dur(think)?,
                    _ => 0,
                };
                Ok(ArrivalSpec::Closed { clients, think_ns })
            }
            _ => Err(bad("unknown arrival process")),
        }
    }
}

impl fmt::Display for ArrivalSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ArrivalSpec::Poisson => f.write_str("poisson"),
            ArrivalSpec::Bursty { on_ns, off_ns } => write!(
                f,
                "bursty:{}:{}",
                format_duration_ns(on_ns),
                format_duration_ns(off_ns)
            ),
            ArrivalSpec::Closed { clients, think_ns } => {
                write!(f, "closed:{clients}:{}", format_duration_ns(think_ns))
            }
        }
    }
}

/// The open-loop generator: yields arrival times in nanoseconds, one at a time.
#[derive(Clone, Debug)]
pub struct OpenLoop {
    /// Mean gap between arrivals while on, in ns.
    mean_gap_ns: f64,
    /// `Some((mean_on_ns, mean_off_ns))` for bursty arrivals.
    bursts: Option<(f64, f64)>,
    /// End of the current on period (bursty only).
    on_until_ns: f64,
    /// Time of the last arrival, kept in f64 so rounding never accumulates.
    now_ns: f64,
}

impl OpenLoop {
    /// Poisson at `rate_per_ns`, or on/off modulated with the long-run rate `rate_per_ns`.
    pub fn new<R: Rng + ?Sized>(rate_per_ns: f64, bursts: Option<(u64, u64)>, rng: &mut R) -> Self {
        match bursts {
            None => OpenLoop {
                mean_gap_ns: 1.0 / rate_per_ns,
                bursts: None,
                on_until_ns: f64::INFINITY,
                now_ns: 0.0,
            },
            Some((on_ns, off_ns)) => {
                let (on, off) = (on_ns as f64, off_ns as f64);
                // While on, arrivals come faster by (on + off) / on so the average is ρ.
                let on_rate = rate_per_ns * (on + off) / on;
                let first_on: f64 = Exp1.sample(rng);
                OpenLoop {
                    mean_gap_ns: 1.0 / on_rate,
                    bursts: Some((on, off)),
                    on_until_ns: first_on * on,
                    now_ns: 0.0,
                }
            }
        }
    }

    /// The next arrival time, in ns.
    #[inline]
    pub fn next_ns<R: Rng + ?Sized>(&mut self, rng: &mut R) -> u64 {
        let gap: f64 = Exp1.sample(rng);
        let mut t = self.now_ns + gap * self.mean_gap_ns;
        if let Some((on, off)) = self.bursts {
            // Memorylessness: a gap that runs past the end of the burst is redrawn from the
            // start of the next one, after an off period.
            while t > self.on_until_ns {
                let off_len: f64 = Exp1.sample(rng);
                let on_len: f64 = Exp1.sample(rng);
                let start = self.on_until_ns + off_len * off;
                self.on_until_ns = start + on_len * on;
                let gap: f64 = Exp1.sample(rng);
                t = start + gap * self.mean_gap_ns;
            }
        }
        self.now_ns = t;
        t.round() as u64
    }
}

/// Draws one think time (exponential, mean `think_ns`), 0 if `think_ns` is 0.
#[inline]
pub fn think_ns<R: Rng + ?Sized>(think_ns: u64, rng: &mut R) -> u64 {
    if think_ns == 0 {
        return 0;
    }
    let e: f64 = Exp1.sample(rng);
    (e * think_ns as f64).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn grammar() {
        assert_eq!(
            "poisson".parse::<ArrivalSpec>().unwrap(),
            ArrivalSpec::Poisson
        );
        assert_eq!(
            "closed:8".parse::<ArrivalSpec>().unwrap(),
            ArrivalSpec::Closed {
                clients: 8,
                think_ns: 0
            }
        );
        assert_eq!(
            "bursty:10ms:30ms".parse::<ArrivalSpec>().unwrap(),
            ArrivalSpec::Bursty {
                on_ns: 10_000_000,
                off_ns: 30_000_000
            }
        );
        for bad in ["closed", "closed:0", "closed:x", "bursty:1ms", "uniform"] {
            assert!(bad.parse::<ArrivalSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn long_run_rates_match() {
        // 100k arrivals: relative error of the rate ≈ 1/√n for Poisson (0.3%); bursty adds
        // variance from ~n·gap/period ≈ 500 cycles, ≈ 5% worst case; tolerance 10%.
        for bursts in [None, Some((1_000_000u64, 3_000_000u64))] {
            let mut rng = ChaCha8Rng::seed_from_u64(9);
            let rate = 1.0 / 1_000.0;
            let mut arrivals = OpenLoop::new(rate, bursts, &mut rng);
            let n = 100_000;
            let mut last = 0;
            for _ in 0..n {
                let t = arrivals.next_ns(&mut rng);
                assert!(t >= last);
                last = t;
            }
            let measured = n as f64 / last as f64;
            assert!(
                (measured / rate - 1.0).abs() < 0.1,
                "{bursts:?}: {measured}"
            );
        }
    }
}
