//! Request keys for the consistent-hash policy: none, uniform over N keys, or Zipf-distributed
//! (a few hot keys, a long tail), drawn per request from their own RNG stream.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use rand_distr::{Distribution, Zipf};

/// Most distinct keys a run may draw from.
pub const MAX_KEYS: u64 = 1 << 40;

/// Which key each request carries.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum KeySpec {
    /// No key (consistent-hash falls back to p2c).
    #[default]
    None,
    /// `uniform:N`: each of N keys equally likely.
    Uniform {
        /// Distinct keys.
        keys: u64,
    },
    /// `zipf:S:N`: key k (1-based) with probability ∝ 1 / k^S.
    Zipf {
        /// The exponent S (> 0; 1.1 is a typical cache workload).
        exponent: f64,
        /// Distinct keys.
        keys: u64,
    },
}

/// A key specification that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad key spec {0:?}: write none, uniform:N or zipf:S:N (N from 1 to 2^40, S > 0), e.g. zipf:1.1:10000"
)]
pub struct KeySpecError(pub String);

impl FromStr for KeySpec {
    type Err = KeySpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || KeySpecError(text.to_owned());
        let keys = |n: &str| -> Result<u64, KeySpecError> {
            n.parse::<u64>()
                .ok()
                .filter(|n| (1..=MAX_KEYS).contains(n))
                .ok_or_else(bad)
        };
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            ["none"] => Ok(KeySpec::None),
            ["uniform", n] => Ok(KeySpec::Uniform { keys: keys(n)? }),
            ["zipf", s, n] => {
                let exponent: f64 = s.parse().map_err(|_| bad())?;
                if !(exponent > 0.0 && exponent.is_finite()) {
                    return Err(bad());
                }
                Ok(KeySpec::Zipf {
                    exponent,
                    keys: keys(n)?,
                })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::None => f.write_str("none"),
            KeySpec::Uniform { keys } => write!(f, "uniform:{keys}"),
            KeySpec::Zipf { exponent, keys } => write!(f, "zipf:{exponent}:{keys}"),
        }
    }
}

/// Draws keys as a spec says.
#[derive(Clone, Debug)]
pub struct KeyDraw {
    spec: KeySpec,
    zipf: Option<Zipf<f64>>,
}

impl KeyDraw {
    /// A drawer for `spec`.
    pub fn new(spec: KeySpec) -> Result<KeyDraw, KeySpecError> {
        let zipf = match spec {
            KeySpec::Zipf { exponent, keys } => {
                Some(Zipf::new(keys as f64, exponent).map_err(|_| KeySpecError(spec.to_string()))?)
            }
            _ => None,
        };
        Ok(KeyDraw { spec, zipf })
    }

    /// The next request's key hash (`balancer_core::hash_key` of the key number's 8
    /// little-endian bytes), or `None` without keys. Draws nothing without keys, so a run
    /// without them is unchanged.
    pub fn next<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<u64> {
        let key = match (self.spec, &self.zipf) {
            (KeySpec::None, _) => return None,
            (KeySpec::Uniform { keys }, _) => rng.random_range(0..keys),
            (KeySpec::Zipf { .. }, Some(zipf)) => (zipf.sample(rng) as u64).saturating_sub(1),
            (KeySpec::Zipf { .. }, None) => return None,
        };
        Some(balancer_core::hash_key(&key.to_le_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn specs_parse_and_print_back() {
        for text in ["none", "uniform:100", "zipf:1.1:10000"] {
            let spec: KeySpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        for bad in ["uniform", "uniform:0", "zipf:0:10", "zipf:x:10", "gauss:1"] {
            assert!(bad.parse::<KeySpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn zipf_keys_are_skewed_and_uniform_ones_are_not() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let count_top = |spec: &str, rng: &mut rand_chacha::ChaCha8Rng| {
            let draw = KeyDraw::new(spec.parse().unwrap()).unwrap();
            let top = balancer_core::hash_key(&0u64.to_le_bytes());
            (0..10_000).filter(|_| draw.next(rng) == Some(top)).count()
        };
        // Zipf 1.1 over 1,000 keys: the top key is about 1/H(1000, 1.1) ≈ 18% of draws.
        let zipf = count_top("zipf:1.1:1000", &mut rng);
        assert!((1_200..2_500).contains(&zipf), "{zipf}");
        let uniform = count_top("uniform:1000", &mut rng);
        assert!(uniform < 40, "{uniform}");
    }
}
