//! Bounded memory while a commit is slow. Processing goes on while a
//! commit is in flight (pipelined under `at_least_once`, a transaction on
//! its own thread under `exactly_once`; the next interval's states wait in
//! the record cache), and what waits for the commit grows with it: the
//! record cache, the states of the commit in flight, the outputs not yet
//! published. Past `state.max_pending_bytes` the stream thread pauses every
//! partition it reads and asks for a commit at once; once the commits have
//! taken what waited (below half the bound) it resumes them. (Under
//! `exactly_once` it first waits for the transaction under way, as a
//! commit made on the stream thread would: see `Engine::bound_memory`.)
//!
//! With this bound, a process takes at most about `state.memory_bytes`
//! (RocksDB) plus twice `state.max_pending_bytes` plus librdkafka's queues,
//! which junction bounds by default, plus what the README's "Memory" counts
//! for the rest (`tests/memory.rs` checks the sum).

use tracing::info;

use crate::metrics::Metrics;

pub struct Backpressure {
    limit: usize,
    held: bool,
}

/// What [`Backpressure::regulate`] wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Regulation {
    /// Nothing changes.
    Steady,
    /// Pause every partition read, and commit as soon as possible.
    Hold,
    /// Resume them.
    Release,
}

impl Backpressure {
    pub fn new(limit: u64) -> Backpressure {
        Backpressure { limit: usize::try_from(limit).unwrap_or(usize::MAX), held: false }
    }

    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Whether `pending` bytes are past the bound.
    pub fn is_over(&self, pending: usize) -> bool {
        pending > self.limit
    }

    /// What to do now that `pending` bytes wait for a commit.
    pub fn regulate(&mut self, pending: usize, metrics: &Metrics) -> Regulation {
        metrics.pending_bytes.set(pending as i64);
        if !self.held && self.is_over(pending) {
            self.held = true;
            metrics.backpressure_pauses.inc();
            info!(
                pending_bytes = pending,
                limit = self.limit,
                "what waits for a commit passed state.max_pending_bytes: pausing every partition until it is committed"
            );
            return Regulation::Hold;
        }
        if self.held && pending <= self.limit / 2 {
            self.held = false;
            info!(pending_bytes = pending, "committed: resuming the partitions");
            return Regulation::Release;
        }
        Regulation::Steady
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_bound_it_holds_and_it_releases_once_half_of_it_is_left() {
        let metrics = Metrics::new();
        let mut b = Backpressure::new(1_000);
        assert_eq!(b.regulate(900, &metrics), Regulation::Steady);
        assert_eq!(b.regulate(1_001, &metrics), Regulation::Hold);
        assert!(b.is_held());
        assert_eq!(b.regulate(2_000, &metrics), Regulation::Steady, "held once");
        assert_eq!(b.regulate(600, &metrics), Regulation::Steady, "not before half the bound is left");
        assert_eq!(b.regulate(500, &metrics), Regulation::Release);
        assert!(!b.is_held());
        assert_eq!(metrics.backpressure_pauses.get(), 1);
    }
}
