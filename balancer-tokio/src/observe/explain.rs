//! The latest scheduling decisions, kept for `GET /explain/{request-id}`: a bounded ring of the
//! core's `DecisionRecord`s (one per try), keyed by the `x-request-id` the client got back.
//!
//! One shard per traffic worker, each a pre-allocated `VecDeque` that drops its oldest entry
//! when full, so memory is fixed at start and a push allocates nothing and touches no shared
//! reference count: an entry is `Copy` (the id is copied inline, the pool is named by a hash of
//! its name, backends by the core's ids, resolved to addresses only when an explanation is
//! asked for). Every try of one request is served by one worker, so its tries land in one
//! shard, in order; a lookup scans every shard.
//!
//! Why per worker rather than by a hash of the id: a worker then writes its shard front to
//! back, which the CPU's prefetchers follow, where hashed shards wrote 408-byte entries at
//! random places in a ring larger than the cache (measured: docs/performance.md, "The explain ring").

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use balancer_core::DecisionRecord;

use crate::http::headers::MAX_REQUEST_ID_BYTES;

/// Smaller rings are one shard, so that eviction is exactly oldest-first (tests use tiny rings).
const SHARDED_FROM: usize = 256;

/// A request id as stored: inline bytes, so storing one allocates nothing.
#[derive(Clone, Copy)]
struct IdKey {
    len: u8,
    bytes: [u8; MAX_REQUEST_ID_BYTES],
}

impl Explained {
    /// The request id the try was stored under (the client's `x-request-id`).
    pub fn request_id(&self) -> &[u8] {
        self.id.as_bytes()
    }
}

impl IdKey {
    fn new(id: &[u8]) -> IdKey {
        // Ids longer than the header limit never reach here (`headers::request_id` replaces
        // them); truncating keeps this total anyway.
        let len = id.len().min(MAX_REQUEST_ID_BYTES);
        let mut bytes = [0; MAX_REQUEST_ID_BYTES];
        bytes[..len].copy_from_slice(&id[..len]);
        IdKey {
            len: len as u8,
            bytes,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// One try's decision as stored.
#[derive(Clone, Copy)]
pub struct Explained {
    id: IdKey,
    /// The pool that decided, as [`pool_key`] of its name.
    pub pool_key: u64,
    /// The core's record.
    pub record: DecisionRecord,
}

/// FNV-1a of `bytes`: names pools in entries. Not collision resistant, and need not be: two
/// pool names of one config colliding in 64 bits is not a practical concern.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The key a pool's entries carry (see [`Explained::pool_key`]).
pub fn pool_key(name: &str) -> u64 {
    fnv1a(name.as_bytes())
}

/// The ring. `size` entries at most (from 256 on, rounded up to a multiple of the workers).
pub struct ExplainRing {
    shards: Box<[Mutex<VecDeque<Explained>>]>,
    per_shard: usize,
    size: usize,
}

impl ExplainRing {
    /// A ring of `size` tries written by `workers` traffic workers; `None` for 0 (explanations
    /// off).
    pub fn new(size: usize, workers: usize) -> Option<Arc<ExplainRing>> {
        if size == 0 {
            return None;
        }
        let shards = if size >= SHARDED_FROM {
            workers.clamp(1, size)
        } else {
            1
        };
        let per_shard = size.div_ceil(shards);
        Some(Arc::new(ExplainRing {
            shards: (0..shards)
                .map(|_| Mutex::new(VecDeque::with_capacity(per_shard)))
                .collect(),
            per_shard,
            size,
        }))
    }

    /// The configured size.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The shard of the worker running this code.
    fn shard(&self) -> &Mutex<VecDeque<Explained>> {
        &self.shards[crate::runtime::worker::worker_index() % self.shards.len()]
    }

    /// Stores one try's decision under `request_id`, evicting the shard's oldest if full.
    pub fn push(&self, request_id: &[u8], pool_key: u64, record: DecisionRecord) {
        let entry = Explained {
            id: IdKey::new(request_id),
            pool_key,
            record,
        };
        let mut shard = self.shard().lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard {
            shard.pop_front();
        }
        shard.push_back(entry);
    }

    /// Every try stored under `request_id`, oldest first.
    pub fn find(&self, request_id: &[u8]) -> Vec<Explained> {
        let mut found = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            found.extend(
                shard
                    .iter()
                    .filter(|e| e.id.as_bytes() == request_id)
                    .copied(),
            );
        }
        // One request's tries are in one shard, in order; a client that reused an id on
        // requests served by other workers has entries in several, merged by time (stable, so
        // a shard's order stands between equal timestamps).
        found.sort_by_key(|e| e.record.at);
        found
    }
}

impl ExplainRing {
    /// The latest `count` tries over every shard, newest first.
    pub fn latest(&self, count: usize) -> Vec<Explained> {
        let mut found = Vec::with_capacity(count * self.shards.len());
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            found.extend(shard.iter().rev().take(count).copied());
        }
        found.sort_by_key(|e| std::cmp::Reverse(e.record.at));
        found.truncate(count);
        found
    }
}

/// Why an id asked for in `/explain/{id}` is not one a request could have had.
pub fn validate_id(id: &[u8]) -> Result<(), String> {
    if id.is_empty() {
        return Err("the request id is empty".into());
    }
    if id.len() > MAX_REQUEST_ID_BYTES {
        return Err(format!(
            "the request id is {} bytes long; ids are at most {MAX_REQUEST_ID_BYTES}",
            id.len()
        ));
    }
    if !id.iter().all(u8::is_ascii_graphic) {
        return Err(
            "the request id has a character that is not printable ASCII; ids never do".into(),
        );
    }
    Ok(())
}

/// Decodes `%XX` escapes in a path segment; `None` if one is malformed.
pub fn percent_decode(segment: &str) -> Option<Vec<u8>> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Encodes a request id for a URL path segment (the inverse of [`percent_decode`]).
pub fn percent_encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Replaces the core's backend names (`b2`, `b2.1`) in `sentence` by addresses, whole names
/// only (`b1` is not replaced inside `b12`).
pub fn name_backends(sentence: &str, names: &[(String, String)]) -> String {
    let mut out = String::with_capacity(sentence.len() + 64);
    let mut rest = sentence;
    'scan: while !rest.is_empty() {
        let starts_word = out.is_empty()
            || !out
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.');
        if starts_word {
            for (id, address) in names {
                if let Some(after) = rest.strip_prefix(id.as_str())
                    && !after.chars().next().is_some_and(|c| {
                        c.is_ascii_digit()
                            || (c == '.' && after[1..].starts_with(|d: char| d.is_ascii_digit()))
                    })
                {
                    out.push_str(address);
                    rest = after;
                    continue 'scan;
                }
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate_and_round_trip_through_percent_encoding() {
        assert!(validate_id(b"abc-1").is_ok());
        assert!(validate_id(b"").is_err());
        assert!(
            validate_id(&[b'a'; 129])
                .unwrap_err()
                .contains("at most 128")
        );
        assert!(validate_id(b"a b").is_err());
        let odd = "a/b%c?d";
        assert_eq!(
            percent_decode(&percent_encode(odd)).unwrap(),
            odd.as_bytes()
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }

    #[test]
    fn a_full_ring_drops_its_oldest_and_finds_oldest_first() {
        use balancer_core::{PolicyKind, Scheduler, SchedulerConfig, Timestamp};
        use rand::SeedableRng;
        let mut scheduler = Scheduler::new(SchedulerConfig::new(PolicyKind::RoundRobin));
        scheduler.add_backend(Timestamp::ZERO, 1).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut record = |n: u64| {
            let at = Timestamp::from_nanos(n);
            let mut record = balancer_core::DecisionRecord::empty(at, scheduler.policy());
            let _ = scheduler.handle_work(at, &mut rng, Default::default(), Some(&mut record));
            record.ties = n as u32;
            record
        };
        let ring = ExplainRing::new(3, 1).unwrap();
        let long_id = [b'x'; 40];
        ring.push(&long_id, 7, record(1));
        ring.push(b"a", 7, record(2));
        ring.push(b"b", 7, record(3));
        // Evicts the long id, then the oldest "a".
        ring.push(b"a", 8, record(4));
        ring.push(b"c", 7, record(5));
        assert!(ring.find(&long_id).is_empty());
        let a: Vec<(u64, u32)> = ring
            .find(b"a")
            .iter()
            .map(|e| (e.pool_key, e.record.ties))
            .collect();
        assert_eq!(a, [(8, 4)]);
        assert_eq!(ring.find(b"b").len(), 1);
        assert_eq!(ring.find(b"c")[0].record.ties, 5);
        ring.push(b"a", 9, record(6));
        let a: Vec<u32> = ring.find(b"a").iter().map(|e| e.record.ties).collect();
        assert_eq!(a, [4, 6]);
    }

    #[test]
    fn each_worker_has_its_shard_and_a_lookup_merges_them_by_time() {
        use balancer_core::{PolicyKind, Scheduler, SchedulerConfig, Timestamp};
        use rand::SeedableRng;
        let mut scheduler = Scheduler::new(SchedulerConfig::new(PolicyKind::RoundRobin));
        scheduler.add_backend(Timestamp::ZERO, 1).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut record = move |n: u64| {
            let at = Timestamp::from_nanos(n);
            let mut record = balancer_core::DecisionRecord::empty(at, scheduler.policy());
            let _ = scheduler.handle_work(at, &mut rng, Default::default(), Some(&mut record));
            record
        };
        let ring = ExplainRing::new(512, 2).unwrap();
        assert_eq!(ring.shards.len(), 2);
        let (first, second) = (record(1), record(2));
        ring.push(b"reused", 7, second);
        let other_worker = ring.clone();
        std::thread::spawn(move || {
            crate::runtime::worker::WORKER_INDEX.with(|w| w.set(1));
            other_worker.push(b"reused", 7, first);
        })
        .join()
        .unwrap();
        let at: Vec<u64> = ring
            .find(b"reused")
            .iter()
            .map(|e| e.record.at.as_nanos())
            .collect();
        assert_eq!(at, [1, 2], "both workers' entries, oldest first");
        // Worker 0 filling its shard evicts only its own entries.
        let filler = record(3);
        for _ in 0..256 {
            ring.push(b"filler", 7, filler);
        }
        let left: Vec<u64> = ring
            .find(b"reused")
            .iter()
            .map(|e| e.record.at.as_nanos())
            .collect();
        assert_eq!(left, [1]);
    }

    #[test]
    fn backend_names_are_replaced_whole() {
        let names = vec![
            ("b1".to_owned(), "10.0.0.1:80".to_owned()),
            ("b12".to_owned(), "10.0.0.12:80".to_owned()),
        ];
        assert_eq!(
            name_backends("chose b1 (1 pending) over b12; b1.3 gone", &names),
            "chose 10.0.0.1:80 (1 pending) over 10.0.0.12:80; b1.3 gone"
        );
        assert_eq!(name_backends("ab1 b1.", &names), "ab1 10.0.0.1:80.");
    }
}
