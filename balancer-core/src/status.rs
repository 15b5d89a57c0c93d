//! Sets of HTTP status codes: which answers count as backend failures, which are retried.

use std::fmt;

/// Lowest status a set can hold (RFC 9110 §15: three digits, first digit 1–5).
pub const MIN_STATUS: u16 = 100;
/// Highest status a set can hold.
pub const MAX_STATUS: u16 = 599;

const WORDS: usize = ((MAX_STATUS - MIN_STATUS) as usize).div_ceil(64) + 1;

/// A set of status codes in `100..=599`, one bit each: `Copy`, and a membership test is a shift.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StatusSet {
    bits: [u64; WORDS],
}

/// A status outside `100..=599`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("status {0} is not an HTTP status; write a number from 100 to 599")]
pub struct InvalidStatus(pub u16);

impl StatusSet {
    /// No status.
    pub const EMPTY: StatusSet = StatusSet { bits: [0; WORDS] };

    /// Every status of a class: `class(5)` is 500..=599.
    pub fn class(first_digit: u16) -> StatusSet {
        let mut set = StatusSet::EMPTY;
        let low = first_digit.saturating_mul(100).max(MIN_STATUS);
        for status in low..=(low + 99).min(MAX_STATUS) {
            set.bits[Self::word(status)] |= Self::bit(status);
        }
        set
    }

    /// The set of the listed statuses, or the first that is not one.
    pub fn from_codes(codes: &[u16]) -> Result<StatusSet, InvalidStatus> {
        let mut set = StatusSet::EMPTY;
        for &status in codes {
            set.insert(status)?;
        }
        Ok(set)
    }

    /// Adds `status`.
    pub fn insert(&mut self, status: u16) -> Result<(), InvalidStatus> {
        if !(MIN_STATUS..=MAX_STATUS).contains(&status) {
            return Err(InvalidStatus(status));
        }
        self.bits[Self::word(status)] |= Self::bit(status);
        Ok(())
    }

    /// Both sets' statuses.
    pub fn union(mut self, other: StatusSet) -> StatusSet {
        for (word, other) in self.bits.iter_mut().zip(other.bits) {
            *word |= other;
        }
        self
    }

    /// Whether `status` is in the set (statuses outside `100..=599` never are).
    #[inline]
    pub fn contains(&self, status: u16) -> bool {
        (MIN_STATUS..=MAX_STATUS).contains(&status)
            && self.bits[Self::word(status)] & Self::bit(status) != 0
    }

    /// Whether the set holds no status.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    /// The statuses, in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (MIN_STATUS..=MAX_STATUS).filter(|s| self.contains(*s))
    }

    #[inline]
    fn word(status: u16) -> usize {
        usize::from(status - MIN_STATUS) / 64
    }

    #[inline]
    fn bit(status: u16) -> u64 {
        1 << (u32::from(status - MIN_STATUS) % 64)
    }
}

/// Lists the statuses, whole classes as `5xx`: `[5xx]`, `[502, 503, 504]`.
impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        let mut first = true;
        let mut status = MIN_STATUS;
        while status <= MAX_STATUS {
            let class = StatusSet::class(status / 100);
            let whole = status % 100 == 0 && class.iter().all(|s| self.contains(s));
            let shown = if whole {
                Some(format!("{}xx", status / 100))
            } else if self.contains(status) {
                Some(status.to_string())
            } else {
                None
            };
            if let Some(shown) = shown {
                if !first {
                    f.write_str(", ")?;
                }
                f.write_str(&shown)?;
                first = false;
            }
            status += if whole { 100 } else { 1 };
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_codes_and_bounds() {
        let five = StatusSet::class(5);
        assert!(five.contains(500) && five.contains(599) && !five.contains(499));
        assert!(!five.contains(600) && !five.contains(0));
        let set = StatusSet::from_codes(&[502, 503, 504]).unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![502, 503, 504]);
        assert_eq!(StatusSet::from_codes(&[99]), Err(InvalidStatus(99)));
        assert_eq!(StatusSet::from_codes(&[600]), Err(InvalidStatus(600)));
        assert_eq!(format!("{five:?}"), "[5xx]");
        assert_eq!(
            format!("{:?}", set.union(StatusSet::class(1))),
            "[1xx, 502, 503, 504]"
        );
        assert!(StatusSet::EMPTY.is_empty() && !set.is_empty());
    }
}
