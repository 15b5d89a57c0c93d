//! Consistent hashing with bounded load: a key keeps its backend while that backend is
//! eligible and under its share of the load; otherwise it walks the ring to the next one.
//!
//! The ring holds [`POINTS_PER_WEIGHT`] points per unit of weight for every live backend
//! (eligible or not, so that a drained backend's keys come back to it on undrain), up to
//! [`MAX_POINTS_PER_BACKEND`]. A point's position depends only on its backend's slot index and
//! its number, so adding or removing one backend moves only the keys whose nearest point
//! appears or disappears: about 1/N of them. The bound is Mirrokni, Thorup and
//! Zadimoghaddam's: a backend of weight w takes at most
//! ⌈load_factor × (in flight + 1) × w ÷ eligible weight⌉ requests at once; since those caps sum
//! to more than what is in flight, some eligible backend is always under its cap.

use crate::backend::BackendTable;

/// Ring points per unit of weight: about 10% spread in ownership between equal backends.
pub const POINTS_PER_WEIGHT: u32 = 100;
/// Points of one backend at most: weight ratios beyond 16:1 place no more keys on the ring
/// (the load bound still uses the exact weights).
pub const MAX_POINTS_PER_BACKEND: u32 = 16 * POINTS_PER_WEIGHT;

/// Most buckets of the ring's lookup index (4 MiB of `u32`).
const MAX_BUCKETS: usize = 1 << 20;

/// The 64-bit hash of a request's key, as the core and every driver compute it: FNV-1a over
/// the bytes, then the splitmix64 finalizer (FNV alone places similar keys close together).
/// Fixed by this definition, so the simulator, the proxy and later versions agree on where a
/// key lands.
pub fn hash_key(bytes: &[u8]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    mix(hash)
}

/// splitmix64's finalizer: a bijection that spreads every input bit over the output.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The position of point `point` of the backend in slot `index`.
fn position(index: u32, point: u32) -> u64 {
    mix((u64::from(index) << 32) | u64::from(point))
}

/// What the ring decided for one key, for decision records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HashChoice {
    /// The key's hash ([`hash_key`]); the key itself is never kept.
    pub(crate) key_hash: u64,
    /// The slot owning the key: the first point at or after the hash.
    pub(crate) owner: u32,
    /// Ring points walked past before the chosen backend's: points of backends that were
    /// ineligible or at their cap (0: the owner took it).
    pub(crate) passed: u32,
    /// The load cap of the chosen backend at that moment (`u32::MAX`: unbounded).
    pub(crate) cap: u32,
}

/// The ring, rebuilt lazily when the set of backends or a weight changed.
#[derive(Clone, Debug)]
pub(crate) struct ConsistentHash {
    /// `load_factor` × 1000; `None`: no bound.
    load_factor_milli: Option<u32>,
    positions: Vec<u64>,
    owners: Vec<u32>,
    /// `starts[b]`: the first point whose position's top `bucket_bits` bits are ≥ b, so a
    /// lookup is one index and a search over a few points instead of a binary search over a
    /// ring of up to millions (cache misses at every level).
    starts: Vec<u32>,
    bucket_bits: u32,
    /// The table's membership version the ring was built at.
    built_at: Option<u64>,
}

impl ConsistentHash {
    /// A ring bounding each backend at `load_factor` times its share (`None`: unbounded).
    pub(crate) fn new(load_factor: Option<f64>) -> Self {
        ConsistentHash {
            load_factor_milli: load_factor.map(|f| (f.max(1.0) * 1000.0).round() as u32),
            positions: Vec::new(),
            owners: Vec::new(),
            starts: Vec::new(),
            bucket_bits: 0,
            built_at: None,
        }
    }

    fn rebuild(&mut self, table: &BackendTable) {
        let mut points: Vec<(u64, u32)> = Vec::new();
        for index in table.live_indices() {
            let weight = table.slots[index as usize].weight;
            let count = weight
                .saturating_mul(POINTS_PER_WEIGHT)
                .clamp(1, MAX_POINTS_PER_BACKEND);
            points.extend((0..count).map(|point| (position(index, point), index)));
        }
        // Ties of position (astronomically rare) are broken by slot index, so the ring is the
        // same whatever order backends were added in.
        points.sort_unstable();
        self.positions = points.iter().map(|p| p.0).collect();
        self.owners = points.iter().map(|p| p.1).collect();
        // About four points per bucket.
        let buckets = (points.len() / 4).next_power_of_two().clamp(1, MAX_BUCKETS);
        self.bucket_bits = buckets.trailing_zeros();
        self.starts = (0..=buckets as u64)
            .map(|b| {
                if b == buckets as u64 {
                    self.positions.len() as u32
                } else {
                    let lowest = b.checked_shl(64 - self.bucket_bits).unwrap_or(0);
                    self.positions.partition_point(|&p| p < lowest) as u32
                }
            })
            .collect();
        self.built_at = Some(table.membership_version);
    }

    /// The index of the first point at or after `key_hash` (wrapping to 0).
    fn first_at_or_after(&self, key_hash: u64) -> usize {
        let bucket = key_hash.checked_shr(64 - self.bucket_bits).unwrap_or(0) as usize;
        let (lo, hi) = (
            self.starts[bucket] as usize,
            self.starts[bucket + 1] as usize,
        );
        let found = lo + self.positions[lo..hi].partition_point(|&p| p < key_hash);
        debug_assert_eq!(found, self.positions.partition_point(|&p| p < key_hash));
        found % self.positions.len()
    }

    /// The cap of a backend of `weight`, with `in_flight` requests in the pool.
    fn cap(&self, table: &BackendTable, in_flight: u32, weight: u32) -> u32 {
        let Some(factor) = self.load_factor_milli else {
            return u32::MAX;
        };
        let total_weight = table.eligible_weight_sum.max(1);
        let numerator = u128::from(factor) * u128::from(in_flight + 1) * u128::from(weight);
        let denominator = 1000 * u128::from(total_weight);
        u32::try_from(numerator.div_ceil(denominator)).unwrap_or(u32::MAX)
    }

    /// The backend for `key_hash`: its owner if eligible and under its cap, else the next
    /// such backend clockwise. `None` only when no backend is eligible.
    pub(crate) fn pick(
        &mut self,
        table: &BackendTable,
        in_flight: u32,
        key_hash: u64,
    ) -> Option<(u32, HashChoice)> {
        if table.eligible.is_empty() {
            return None;
        }
        if self.built_at != Some(table.membership_version) {
            self.rebuild(table);
        }
        let len = self.positions.len();
        debug_assert!(len > 0, "an eligible backend is live, so it has points");
        let start = self.first_at_or_after(key_hash);
        let owner = self.owners[start];
        for step in 0..len {
            let index = self.owners[(start + step) % len];
            let slot = &table.slots[index as usize];
            if slot.eligible() {
                let cap = self.cap(table, in_flight, slot.weight);
                if slot.pending < cap {
                    let choice = HashChoice {
                        key_hash,
                        owner,
                        passed: step as u32,
                        cap,
                    };
                    return Some((index, choice));
                }
            }
        }
        // The caps sum to more than is in flight, so a full turn always finds a backend.
        debug_assert!(false, "bounded load left no eligible backend under its cap");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hash_key(b"user-42")`, computed independently (Python, from the definition).
    const PINNED_USER_42: u64 = 8_797_103_408_588_478_355;

    #[test]
    fn the_key_hash_is_fixed_by_its_definition() {
        // Values written down once: a change here moves every key of every deployment.
        assert_eq!(hash_key(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash_key(b"user-42"), hash_key(b"user-42"));
        assert_ne!(hash_key(b"user-42"), hash_key(b"user-43"));
        assert_eq!(hash_key(b"user-42"), PINNED_USER_42);
    }
}
