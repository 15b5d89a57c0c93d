//! The event queue: a binary heap ordered by (virtual time, sequence number), so ties replay.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use balancer_core::{RequestId, TryReport};

/// One request as the simulated world sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    /// The core's name for it.
    pub request: RequestId,
    /// When the client sent it.
    pub arrived_ns: u64,
    /// Service time drawn for it at dispatch (speed and spikes applied when service starts).
    pub service_ns: u64,
    /// The closed-loop client that sent it, or [`NO_CLIENT`].
    pub client: u32,
    /// Retries made so far (0 on the first try).
    pub retries: u32,
}

/// A job that fails without service, waiting for its `Failed` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailingJob {
    /// The job.
    pub job: Job,
    /// Sim backend index it had been sent to.
    pub backend: u32,
    /// How its try ends, as the driver reports it.
    pub report: TryReport,
}

/// `Job::client` of open-loop requests.
pub const NO_CLIENT: u32 = u32::MAX;

/// What happens at an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A request arrives from the open-loop process.
    Arrival,
    /// Closed-loop `client` has finished thinking and sends its next request.
    ClientWakes {
        /// The client.
        client: u32,
    },
    /// Server `server` of sim backend `backend` finishes its job, unless the backend's
    /// `epoch` moved on (a crash voided every service in progress).
    ServiceDone {
        /// Sim backend index.
        backend: u32,
        /// Server (concurrency slot) within it.
        server: u32,
        /// The backend's epoch when service started.
        epoch: u32,
    },
    /// A job answered with an error without being served (black hole, crashed backend);
    /// the job waits in the driver's slab at `slot`, which keeps events small.
    Failed {
        /// Index into the driver's slab of failing jobs.
        slot: u32,
    },
    /// A failed request's retry is due; the job waits in the driver's retry slab at `slot`.
    Retry {
        /// Index into the driver's slab of jobs waiting to be retried.
        slot: u32,
    },
    /// The simulated health checker probes sim backend `backend`.
    Probe {
        /// Sim backend index.
        backend: u32,
    },
    /// The core's `next_timeout()`: end the ejections that are over.
    CoreTimeout,
    /// Entry `index` of the fault schedule takes effect.
    Fault {
        /// Index into the sorted schedule.
        index: u32,
    },
}

/// An event at a point of virtual time.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// When, in virtual nanoseconds.
    pub time_ns: u64,
    /// Order of scheduling: breaks ties between equal times, first scheduled first.
    pub seq: u64,
    /// What.
    pub kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.time_ns, self.seq) == (other.time_ns, other.seq)
    }
}

impl Eq for Event {}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Event {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time_ns, other.seq).cmp(&(self.time_ns, self.seq))
    }
}

/// Pending events, earliest first; ties in time go in scheduling order.
///
/// Sequence numbers are unique, so the order is total and independent of the heap's
/// internals: the same pushes give the same pops on every machine.
///
/// The open-loop process has at most one arrival pending at a time; it waits in its own slot
/// instead of the heap, which halves heap traffic per request. It takes its sequence number
/// when scheduled like any other event, so the order is exactly that of one heap.
#[derive(Debug, Default)]
pub struct EventQueue {
    heap: BinaryHeap<Event>,
    /// The pending open-loop arrival: (time, seq).
    arrival: Option<(u64, u64)>,
    next_seq: u64,
}

impl EventQueue {
    /// An empty queue with room for `capacity` events before it allocates.
    pub fn with_capacity(capacity: usize) -> Self {
        EventQueue {
            heap: BinaryHeap::with_capacity(capacity),
            arrival: None,
            next_seq: 0,
        }
    }

    /// Schedules `kind` at `time_ns`. [`EventKind::Arrival`] goes to the arrival slot, which
    /// holds one: scheduling a second before the first is popped replaces it (a driver bug).
    #[inline]
    pub fn push(&mut self, time_ns: u64, kind: EventKind) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if kind == EventKind::Arrival {
            debug_assert!(self.arrival.is_none(), "one open-loop arrival at a time");
            self.arrival = Some((time_ns, seq));
        } else {
            self.heap.push(Event { time_ns, seq, kind });
        }
    }

    /// Takes the earliest event.
    #[inline]
    pub fn pop(&mut self) -> Option<Event> {
        if let Some((time_ns, seq)) = self.arrival {
            let arrival_first = match self.heap.peek() {
                Some(top) => (time_ns, seq) < (top.time_ns, top.seq),
                None => true,
            };
            if arrival_first {
                self.arrival = None;
                return Some(Event {
                    time_ns,
                    seq,
                    kind: EventKind::Arrival,
                });
            }
        }
        self.heap.pop()
    }

    /// Number of pending events.
    pub fn len(&self) -> usize {
        self.heap.len() + usize::from(self.arrival.is_some())
    }

    /// True when no event is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_ties_in_scheduling_order() {
        let mut q = EventQueue::with_capacity(4);
        q.push(20, EventKind::Fault { index: 0 });
        q.push(10, EventKind::Fault { index: 1 });
        q.push(20, EventKind::Fault { index: 2 });
        q.push(10, EventKind::Fault { index: 3 });
        let order: Vec<u32> = std::iter::from_fn(|| q.pop())
            .map(|e| match e.kind {
                EventKind::Fault { index } => index,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(order, vec![1, 3, 0, 2]);
    }

    #[test]
    fn the_arrival_slot_orders_like_the_heap() {
        let mut q = EventQueue::with_capacity(4);
        q.push(10, EventKind::Fault { index: 0 });
        q.push(10, EventKind::Arrival);
        q.push(10, EventKind::Fault { index: 1 });
        q.push(5, EventKind::Fault { index: 2 });
        assert_eq!(q.len(), 4);
        let order: Vec<String> = std::iter::from_fn(|| q.pop())
            .map(|e| format!("{:?}@{}", e.kind, e.time_ns))
            .collect();
        assert_eq!(
            order,
            [
                "Fault { index: 2 }@5",
                "Fault { index: 0 }@10",
                "Arrival@10",
                "Fault { index: 1 }@10"
            ]
        );
        assert!(q.is_empty());
    }
}
