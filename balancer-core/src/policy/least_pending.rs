//! Least-pending: the original heap, as a bucket queue, because pending only moves by one.

use crate::backend::BackendTable;

const NIL: u32 = u32::MAX;

/// The eligible backends kept in buckets by pending count, with the lowest non-empty bucket known.
///
/// The Go original kept workers in a binary heap ordered by pending requests. Pending only
/// ever changes by ±1, so a bucket per pending count with a doubly linked list in each makes
/// both work and done O(1): a dispatch moves the chosen backend from the lowest bucket to
/// the next one up, which is then non-empty, so the minimum moves by at most one step.
///
/// Ties: each bucket is FIFO, so among backends with equal pending the one that has held
/// that count longest wins. With idle backends this spreads requests in turn rather than
/// piling them onto the one that finished last.
#[derive(Clone, Debug, Default)]
pub struct LeastPending {
    /// Per slot: previous and next slot in its bucket, or `NIL`.
    prev: Vec<u32>,
    next: Vec<u32>,
    /// Per pending count: first and last slot of the bucket, or `NIL`.
    head: Vec<u32>,
    tail: Vec<u32>,
    /// The lowest non-empty bucket; meaningless when `len == 0`.
    min: usize,
    len: usize,
}

impl LeastPending {
    /// The slot with the fewest pending requests, the longest-waiting among ties.
    #[inline]
    pub fn pick(&self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        debug_assert!(self.head[self.min] != NIL, "min bucket must be non-empty");
        Some(self.head[self.min])
    }

    /// Appends the slot to the bucket of its pending count.
    #[inline]
    pub fn insert(&mut self, index: u32, pending: u32) {
        let (i, level) = (index as usize, pending as usize);
        if i >= self.prev.len() {
            self.prev.resize(i + 1, NIL);
            self.next.resize(i + 1, NIL);
        }
        if level >= self.head.len() {
            self.head.resize(level + 1, NIL);
            self.tail.resize(level + 1, NIL);
        }
        let old_tail = self.tail[level];
        self.prev[i] = old_tail;
        self.next[i] = NIL;
        if old_tail == NIL {
            self.head[level] = index;
        } else {
            self.next[old_tail as usize] = index;
        }
        self.tail[level] = index;
        if self.len == 0 || level < self.min {
            self.min = level;
        }
        self.len += 1;
    }

    /// Unlinks the slot from the bucket of its pending count.
    #[inline]
    pub fn remove(&mut self, index: u32, pending: u32) {
        let (i, level) = (index as usize, pending as usize);
        let (prev, next) = (self.prev[i], self.next[i]);
        if prev == NIL {
            self.head[level] = next;
        } else {
            self.next[prev as usize] = next;
        }
        if next == NIL {
            self.tail[level] = prev;
        } else {
            self.prev[next as usize] = prev;
        }
        self.prev[i] = NIL;
        self.next[i] = NIL;
        self.len -= 1;
        if self.len > 0 && level == self.min && self.head[level] == NIL {
            // On the hot path the backend was just moved up one bucket, so this loop runs
            // once; only taking a backend out of rotation can make it walk further.
            while self.head[self.min] == NIL {
                self.min += 1;
            }
        }
    }

    /// The slot that would be picked after `chosen`: next in its bucket, else the head of the
    /// next non-empty bucket. For explanations only: may walk empty buckets.
    pub fn runner_up(&self, chosen: u32) -> Option<u32> {
        let next = *self.next.get(chosen as usize)?;
        if next != NIL {
            return Some(next);
        }
        self.head
            .iter()
            .skip(self.min + 1)
            .copied()
            .find(|&head| head != NIL)
    }

    /// How many slots share the lowest pending count, counting at most `limit`.
    pub fn ties(&self, limit: u32) -> u32 {
        if self.len == 0 {
            return 0;
        }
        let mut count = 0;
        let mut cursor = self.head[self.min];
        while cursor != NIL && count < limit {
            count += 1;
            cursor = self.next[cursor as usize];
        }
        count
    }

    /// Checks that every eligible slot sits in the bucket of its pending count, once, and
    /// that `min` names the lowest non-empty bucket.
    pub fn check(&self, table: &BackendTable) -> Result<(), String> {
        let mut seen = 0usize;
        let mut lowest = None;
        for (level, &first) in self.head.iter().enumerate() {
            let mut cursor = first;
            let mut prev = NIL;
            while cursor != NIL {
                let slot = table
                    .slots
                    .get(cursor as usize)
                    .ok_or_else(|| format!("least-pending bucket {level} names unknown slot"))?;
                if !slot.eligible() {
                    return Err(format!(
                        "least-pending holds slot {cursor}, which is not eligible"
                    ));
                }
                if slot.pending as usize != level {
                    return Err(format!(
                        "slot {cursor} has {} pending but sits in bucket {level}",
                        slot.pending
                    ));
                }
                if self.prev[cursor as usize] != prev {
                    return Err(format!("slot {cursor} has a broken back link"));
                }
                lowest.get_or_insert(level);
                seen += 1;
                if seen > table.slots.len() {
                    return Err("least-pending buckets contain a cycle".into());
                }
                prev = cursor;
                cursor = self.next[cursor as usize];
            }
            if self.tail[level] != prev {
                return Err(format!("bucket {level} has a stale tail"));
            }
        }
        if seen != self.len || seen != table.eligible_len() {
            return Err(format!(
                "least-pending holds {seen} slots, counts {}, but {} are eligible",
                self.len,
                table.eligible_len()
            ));
        }
        if let Some(lowest) = lowest
            && lowest != self.min
        {
            return Err(format!(
                "least-pending minimum is {} but the lowest non-empty bucket is {lowest}",
                self.min
            ));
        }
        Ok(())
    }
}
