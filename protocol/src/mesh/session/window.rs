//! Sync flow control towards one peer: a window of bytes sent and not yet acknowledged,
//! and a bounded queue of messages waiting behind it.

use std::collections::{BTreeMap, VecDeque};

/// The identity of one message sent on a session, for its acknowledgement or failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SendId(pub u64);

/// What happened to a message handed to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// It waits (or was sent at once).
    Waiting,
    /// The queue was full: it is dropped, left to the sync engine's repair.
    Dropped,
}

/// Sync bytes in flight and waiting for one peer. A [`Session`](super::Session) keeps
/// one; a driver that keeps its own per-peer state may use one directly: [`Window::push`]
/// each message, send what [`Window::next`] gives under an id, and report each id's
/// acknowledgement or failure to [`Window::done`].
#[derive(Debug)]
pub struct Window {
    max_in_flight: usize,
    max_waiting: usize,
    in_flight: usize,
    pending: BTreeMap<SendId, usize>,
    waiting: VecDeque<Vec<u8>>,
    waiting_bytes: usize,
}

impl Window {
    /// A window of `max_in_flight` unacknowledged bytes with a queue of at most
    /// `max_waiting` bytes behind it.
    pub fn new(max_in_flight: usize, max_waiting: usize) -> Self {
        Self {
            max_in_flight,
            max_waiting,
            in_flight: 0,
            pending: BTreeMap::new(),
            waiting: VecDeque::new(),
            waiting_bytes: 0,
        }
    }

    /// Queues a message: refused when others wait and it would take the queue past its
    /// bound (one larger message may wait alone).
    pub fn push(&mut self, bytes: Vec<u8>) -> Queued {
        if !self.waiting.is_empty()
            && self.waiting_bytes.saturating_add(bytes.len()) > self.max_waiting
        {
            return Queued::Dropped;
        }
        self.waiting_bytes = self.waiting_bytes.saturating_add(bytes.len());
        self.waiting.push_back(bytes);
        Queued::Waiting
    }

    /// The next message the window has room for, recorded as in flight under `id`.
    /// One message larger than the window goes when nothing else is in flight.
    pub fn next(&mut self, id: SendId) -> Option<Vec<u8>> {
        let len = self.waiting.front()?.len();
        if self.in_flight > 0 && self.in_flight.saturating_add(len) > self.max_in_flight {
            return None;
        }
        let bytes = self.waiting.pop_front()?;
        self.waiting_bytes = self.waiting_bytes.saturating_sub(len);
        self.in_flight = self.in_flight.saturating_add(len);
        self.pending.insert(id, len);
        Some(bytes)
    }

    /// A message was acknowledged or failed: its bytes leave the window. False when
    /// `id` was not in flight here.
    pub fn done(&mut self, id: SendId) -> bool {
        match self.pending.remove(&id) {
            Some(len) => {
                self.in_flight = self.in_flight.saturating_sub(len);
                true
            }
            None => false,
        }
    }

    /// Bytes sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Bytes waiting behind the window.
    pub fn waiting_bytes(&self) -> usize {
        self.waiting_bytes
    }

    /// Forgets everything: a new session starts afresh.
    pub fn clear(&mut self) {
        self.in_flight = 0;
        self.pending.clear();
        self.waiting.clear();
        self.waiting_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 256,
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(7),
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Any sequence of pushes, sends, acknowledgements and failures: the window and
        /// the queue stay within their limits (but for one message alone), every byte is
        /// accounted for, and acknowledging everything drains both.
        #[test]
        fn the_window_keeps_its_bounds(
            steps in proptest::collection::vec((0u8..3, 1usize..400), 0..200),
        ) {
            let (max_in_flight, max_waiting) = (1_000, 1_500);
            let mut window = Window::new(max_in_flight, max_waiting);
            let mut sent: Vec<(SendId, usize)> = Vec::new();
            let mut next = 0u64;
            let mut accepted = 0usize;
            let mut finished = 0usize;
            for (kind, n) in steps {
                match kind {
                    0 => {
                        if window.push(vec![0; n]) == Queued::Waiting {
                            accepted += n;
                        }
                    }
                    1 => {
                        next += 1;
                        if let Some(bytes) = window.next(SendId(next)) {
                            sent.push((SendId(next), bytes.len()));
                        }
                    }
                    _ => {
                        if !sent.is_empty() {
                            let (id, len) = sent.remove(n % sent.len());
                            proptest::prop_assert!(window.done(id));
                            proptest::prop_assert!(!window.done(id));
                            finished += len;
                        }
                    }
                }
                let flying: usize = sent.iter().map(|(_, len)| len).sum();
                proptest::prop_assert_eq!(window.in_flight(), flying);
                proptest::prop_assert!(flying <= max_in_flight || sent.len() == 1);
                proptest::prop_assert!(window.waiting_bytes() <= max_waiting.max(400));
                proptest::prop_assert_eq!(accepted, finished + flying + window.waiting_bytes());
            }
            loop {
                next += 1;
                if let Some(bytes) = window.next(SendId(next)) {
                    sent.push((SendId(next), bytes.len()));
                } else if let Some((id, _)) = sent.pop() {
                    window.done(id);
                } else {
                    break;
                }
            }
            proptest::prop_assert_eq!(window.in_flight(), 0);
            proptest::prop_assert_eq!(window.waiting_bytes(), 0);
        }
    }
}
