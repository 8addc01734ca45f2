//! The largest record each of junction's topics takes: its own
//! `max.message.bytes`, which can be smaller than what the producer may send
//! and can change while junction runs. A record batch larger than it is
//! refused whole, so the producer never batches more than the smallest of
//! them ([`TopicLimits::batch_bytes`]), an outcome larger than the output
//! topic's limit is sent without its payloads (see
//! [`crate::kafka::refusals`]), and a refusal for size makes the limits be
//! read again ([`TopicLimits::is_stale`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// What a record batch of one record takes besides its key, value and
/// headers: the batch header (61 bytes) and the record's own framing, with
/// room to spare.
const BATCH_OVERHEAD: usize = 128;
/// What each header takes besides its name and value.
const HEADER_OVERHEAD: usize = 8;

/// Which of junction's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Output,
    DeadLetter,
    Changelog,
    Repartition,
}

pub struct TopicLimits {
    /// Output, dead letters, changelog, repartition.
    bytes: [AtomicUsize; 4],
    stale: AtomicBool,
}

impl TopicLimits {
    /// Every topic's limit, in [`Topic`] order.
    pub fn new(limits: [usize; 4]) -> TopicLimits {
        TopicLimits { bytes: limits.map(AtomicUsize::new), stale: AtomicBool::new(false) }
    }

    pub fn of(&self, topic: Topic) -> usize {
        self.bytes[topic as usize].load(Ordering::Relaxed)
    }

    /// Takes limits read again; whether any became smaller.
    pub fn update(&self, limits: [usize; 4]) -> bool {
        self.stale.store(false, Ordering::SeqCst);
        let mut smaller = false;
        for (now, new) in self.bytes.iter().zip(limits) {
            smaller |= now.swap(new, Ordering::Relaxed) > new;
        }
        smaller
    }

    /// The largest batch the producer may make: under the smallest limit.
    pub fn batch_bytes(&self) -> usize {
        self.bytes.iter().map(|b| b.load(Ordering::Relaxed)).min().unwrap_or(usize::MAX)
    }

    /// A topic refused a record for its size: the limits may have changed.
    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::SeqCst)
    }

    /// Whether a record of this key, value and headers fits `topic`, alone in its batch.
    pub fn fits(&self, topic: Topic, key: usize, value: usize, headers: &[(&str, &[u8])]) -> bool {
        let headers: usize = headers.iter().map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD).sum();
        BATCH_OVERHEAD + key + value + headers <= self.of(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_fits_a_topic_with_its_framing_and_the_batch_stays_under_the_smallest_limit() {
        let limits = TopicLimits::new([10_000, 20_000, 30_000, 40_000]);
        assert!(limits.fits(Topic::Output, 10, 9_000, &[("junction.outcome", b"completed")]));
        assert!(!limits.fits(Topic::Output, 10, 9_900, &[]));
        assert!(limits.fits(Topic::DeadLetter, 10, 9_900, &[]));
        assert_eq!(limits.batch_bytes(), 10_000);
        limits.mark_stale();
        assert!(limits.is_stale());
        assert!(limits.update([5_000, 20_000, 30_000, 40_000]), "the output's limit became smaller");
        assert!(!limits.is_stale());
        assert_eq!(limits.batch_bytes(), 5_000);
        assert!(!limits.update([6_000, 20_000, 30_000, 40_000]));
    }
}
