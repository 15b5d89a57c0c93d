//! Service-time distributions: the `KIND:MEAN[:PARAM..]` grammar, durations with units, and sampling.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand_distr::{Distribution, Exp1, StandardNormal};

/// A grammar or range error in a duration or distribution spec.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// A duration that is not `NUMBER UNIT` with a unit of ns, us, ms or s.
    #[error(
        "bad duration {0:?}: expected a number and a unit, e.g. 250us, 1ms, 1.5s (units: ns, us, ms, s)"
    )]
    Duration(String),
    /// A service-time distribution that does not follow the grammar.
    #[error(
        "bad service-time distribution {spec:?}: {why}; grammar: const:MEAN | exp:MEAN | lognormal:MEAN:SIGMA | pareto:MEAN:ALPHA | bimodal:FAST:SLOW:P_SLOW (durations like 1ms)"
    )]
    Distribution {
        /// The spec as written.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// An arrival process that does not follow the grammar.
    #[error(
        "bad arrival process {spec:?}: {why}; grammar: poisson | bursty[:ON:OFF] | closed:N[:THINK]"
    )]
    Arrivals {
        /// The spec as written.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Longest duration accepted anywhere: one day of virtual time. Keeps every sum of event
/// times far inside `u64` nanoseconds (≈ 584 years) even for millions of requests.
pub const MAX_DURATION_NS: u64 = 86_400 * 1_000_000_000;

/// Parses `1ms`, `250us`, `1.5s`, `100ns` into nanoseconds (rounded to the nearest ns).
pub fn parse_duration_ns(text: &str) -> Result<u64, SpecError> {
    let bad = || SpecError::Duration(text.to_owned());
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(bad)?;
    let (number, unit) = t.split_at(split);
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    let scale = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return Err(bad()),
    };
    let ns = value * scale;
    if !ns.is_finite() || ns < 0.0 || ns > MAX_DURATION_NS as f64 {
        return Err(bad());
    }
    Ok(ns.round() as u64)
}

/// Formats nanoseconds back into the grammar (`1ms`, `250us`, ...), exactly when possible.
pub fn format_duration_ns(ns: u64) -> String {
    if ns != 0 && ns % 1_000_000_000 == 0 {
        format!("{}s", ns / 1_000_000_000)
    } else if ns != 0 && ns % 1_000_000 == 0 {
        format!("{}ms", ns / 1_000_000)
    } else if ns != 0 && ns % 1_000 == 0 {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

/// A service-time distribution, each given by its mean.
///
/// Sampling uses only the primitives in `rand_distr` that draw from `Exp1` and
/// `StandardNormal` (ziggurat tables) and `f64::exp`/`powf`, so a seed replays the same draws.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ServiceDist {
    /// Always `mean_ns`.
    Constant {
        /// The service time.
        mean_ns: f64,
    },
    /// Exponential with mean `mean_ns` (the M in M/M/1).
    Exponential {
        /// The mean.
        mean_ns: f64,
    },
    /// Lognormal with the given mean and shape `sigma` (σ of the underlying normal).
    LogNormal {
        /// The mean.
        mean_ns: f64,
        /// σ of ln(X).
        sigma: f64,
    },
    /// Pareto (heavy tail) with the given mean and tail index `alpha` > 1.
    Pareto {
        /// The mean.
        mean_ns: f64,
        /// Tail index; smaller is heavier; the variance is infinite for α ≤ 2.
        alpha: f64,
    },
    /// `fast_ns` with probability 1 − `p_slow`, else `slow_ns` (two constants).
    Bimodal {
        /// The common, fast service time.
        fast_ns: f64,
        /// The rare, slow service time.
        slow_ns: f64,
        /// Probability of the slow one.
        p_slow: f64,
    },
}

impl ServiceDist {
    /// The mean service time in nanoseconds.
    pub fn mean_ns(&self) -> f64 {
        match *self {
            ServiceDist::Constant { mean_ns }
            | ServiceDist::Exponential { mean_ns }
            | ServiceDist::LogNormal { mean_ns, .. }
            | ServiceDist::Pareto { mean_ns, .. } => mean_ns,
            ServiceDist::Bimodal {
                fast_ns,
                slow_ns,
                p_slow,
            } => (1.0 - p_slow) * fast_ns + p_slow * slow_ns,
        }
    }

    /// One service time in nanoseconds (≥ 1, ≤ [`MAX_DURATION_NS`]).
    #[inline]
    pub fn sample_ns<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        let x = match *self {
            ServiceDist::Constant { mean_ns } => mean_ns,
            ServiceDist::Exponential { mean_ns } => {
                let e: f64 = Exp1.sample(rng);
                e * mean_ns
            }
            ServiceDist::LogNormal { mean_ns, sigma } => {
                // E[X] = exp(mu + σ²/2), so mu = ln(mean) − σ²/2.
                let mu = mean_ns.ln() - sigma * sigma / 2.0;
                let z: f64 = StandardNormal.sample(rng);
                (mu + sigma * z).exp()
            }
            ServiceDist::Pareto { mean_ns, alpha } => {
                // E[X] = α·x_m/(α−1); X = x_m·U^(−1/α) with U uniform in (0, 1].
                let scale = mean_ns * (alpha - 1.0) / alpha;
                let u: f64 = 1.0 - rng.random::<f64>();
                scale * u.powf(-1.0 / alpha)
            }
            ServiceDist::Bimodal {
                fast_ns,
                slow_ns,
                p_slow,
            } => {
                if rng.random::<f64>() < p_slow {
                    slow_ns
                } else {
                    fast_ns
                }
            }
        };
        // Heavy tails can exceed any horizon; clamp so event times never overflow.
        (x.round() as u64).clamp(1, MAX_DURATION_NS)
    }
}

impl FromStr for ServiceDist {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let bad = |why: &str| SpecError::Distribution {
            spec: spec.to_owned(),
            why: why.to_owned(),
        };
        let parts: Vec<&str> = spec.trim().split(':').collect();
        let duration = |i: usize| -> Result<f64, SpecError> {
            let text = parts.get(i).ok_or_else(|| bad("missing a parameter"))?;
            let ns = parse_duration_ns(text).map_err(|e| bad(&e.to_string()))?;
            if ns == 0 {
                return Err(bad("durations must be positive"));
            }
            Ok(ns as f64)
        };
        let number = |i: usize, name: &str| -> Result<f64, SpecError> {
            let text = parts
                .get(i)
                .ok_or_else(|| bad(&format!("missing {name}")))?;
            text.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| bad(&format!("{name} must be a number, got {text:?}")))
        };
        let arity = |n: usize| -> Result<(), SpecError> {
            if parts.len() == n {
                Ok(())
            } else {
                Err(bad(&format!(
                    "{} takes {} parameter(s), got {}",
                    parts[0],
                    n - 1,
                    parts.len() - 1
                )))
            }
        };
        match parts[0] {
            "const" | "constant" => {
                arity(2)?;
                Ok(ServiceDist::Constant {
                    mean_ns: duration(1)?,
                })
            }
            "exp" | "exponential" => {
                arity(2)?;
                Ok(ServiceDist::Exponential {
                    mean_ns: duration(1)?,
                })
            }
            "lognormal" => {
                arity(3)?;
                let sigma = number(2, "SIGMA")?;
                if !(0.0..=5.0).contains(&sigma) {
                    return Err(bad("SIGMA must be in 0..=5"));
                }
                Ok(ServiceDist::LogNormal {
                    mean_ns: duration(1)?,
                    sigma,
                })
            }
            "pareto" => {
                arity(3)?;
                let alpha = number(2, "ALPHA")?;
                if alpha <= 1.0 || alpha > 100.0 {
                    return Err(bad(
                        "ALPHA must be in (1, 100]: the mean is infinite for α ≤ 1",
                    ));
                }
                Ok(ServiceDist::Pareto {
                    mean_ns: duration(1)?,
                    alpha,
                })
            }
            "bimodal" => {
                arity(4)?;
                let p_slow = number(3, "P_SLOW")?;
                if !(0.0..=1.0).contains(&p_slow) {
                    return Err(bad("P_SLOW must be a probability in 0..=1"));
                }
                Ok(ServiceDist::Bimodal {
                    fast_ns: duration(1)?,
                    slow_ns: duration(2)?,
                    p_slow,
                })
            }
            other => Err(bad(&format!("unknown kind {other:?}"))),
        }
    }
}

impl fmt::Display for ServiceDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |ns: f64| format_duration_ns(ns.round() as u64);
        match *self {
            ServiceDist::Constant { mean_ns } => write!(f, "const:{}", d(mean_ns)),
            ServiceDist::Exponential { mean_ns } => write!(f, "exp:{}", d(mean_ns)),
            ServiceDist::LogNormal { mean_ns, sigma } => {
                write!(f, "lognormal:{}:{sigma}", d(mean_ns))
            }
            ServiceDist::Pareto { mean_ns, alpha } => write!(f, "pareto:{}:{alpha}", d(mean_ns)),
            ServiceDist::Bimodal {
                fast_ns,
                slow_ns,
                p_slow,
            } => write!(f, "bimodal:{}:{}:{p_slow}", d(fast_ns), d(slow_ns)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_ns("1ms").unwrap(), 1_000_000);
        assert_eq!(parse_duration_ns("250us").unwrap(), 250_000);
        assert_eq!(parse_duration_ns("1.5s").unwrap(), 1_500_000_000);
        assert_eq!(parse_duration_ns("7ns").unwrap(), 7);
        assert!(parse_duration_ns("1").is_err());
        assert!(parse_duration_ns("1h").is_err());
        assert!(parse_duration_ns("-1ms").is_err());
        assert!(parse_duration_ns("ms").is_err());
    }

    #[test]
    fn the_grammar_round_trips() {
        for spec in [
            "const:1ms",
            "exp:1ms",
            "lognormal:1ms:0.5",
            "pareto:2ms:1.5",
            "bimodal:500us:10ms:0.05",
        ] {
            let d: ServiceDist = spec.parse().unwrap();
            assert_eq!(d.to_string(), spec);
        }
        for bad in [
            "exp",
            "exp:1",
            "exp:1ms:2",
            "pareto:1ms:1",
            "bimodal:1ms:2ms:2",
            "x:1ms",
        ] {
            assert!(
                bad.parse::<ServiceDist>().is_err(),
                "{bad} should not parse"
            );
        }
    }

    #[test]
    fn sample_means_match_the_stated_mean() {
        // 200k draws: the standard error of the mean is ≤ 0.5% for σ ≤ 1 shapes; 3% is > 6σ.
        for spec in [
            "const:1ms",
            "exp:1ms",
            "lognormal:1ms:0.5",
            "bimodal:500us:5500us:0.1",
        ] {
            let d: ServiceDist = spec.parse().unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let n = 200_000;
            let sum: f64 = (0..n).map(|_| d.sample_ns(&mut rng) as f64).sum();
            let mean = sum / n as f64;
            assert!((mean / 1e6 - 1.0).abs() < 0.03, "{spec}: mean {mean}");
        }
    }
}
