//! The producer's context: it counts the records in flight by the commit
//! interval they belong to, and remembers failed deliveries and the
//! changelog offsets delivered, which become the stores' checkpoints.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};

/// What the producer has delivered since the last `take`.
#[derive(Debug, Default)]
pub struct Deliveries {
    pub failures: Vec<KafkaError>,
    /// Changelog partition → the highest offset delivered to it.
    pub changelog_last: HashMap<i32, i64>,
}

/// The producer context: counts the records in flight by epoch (the commit
/// interval they belong to), and remembers failures and changelog offsets,
/// which become the stores' checkpoints.
pub struct DeliveryTracker {
    changelog_topic: String,
    /// Records in flight, by epoch modulo the slots: at most two epochs,
    /// the interval being committed and the current one, have records in flight.
    in_flight: [AtomicUsize; EPOCH_SLOTS],
    deliveries: Mutex<Deliveries>,
}

const EPOCH_SLOTS: usize = 4;

impl DeliveryTracker {
    pub fn new(changelog_topic: String) -> DeliveryTracker {
        DeliveryTracker {
            changelog_topic,
            in_flight: std::array::from_fn(|_| AtomicUsize::new(0)),
            deliveries: Mutex::new(Deliveries::default()),
        }
    }

    /// Counts a record of `epoch` about to be sent.
    pub fn sent(&self, epoch: usize) {
        self.in_flight[epoch % EPOCH_SLOTS].fetch_add(1, Ordering::SeqCst);
    }

    /// Takes back a `sent` whose record the producer refused.
    pub fn unsent(&self, epoch: usize) {
        self.in_flight[epoch % EPOCH_SLOTS].fetch_sub(1, Ordering::SeqCst);
    }

    pub fn in_flight(&self, epoch: usize) -> usize {
        self.in_flight[epoch % EPOCH_SLOTS].load(Ordering::SeqCst)
    }

    pub fn in_flight_total(&self) -> usize {
        self.in_flight.iter().map(|n| n.load(Ordering::SeqCst)).sum()
    }

    /// The first delivery that failed since the last `take`, if any.
    pub fn first_failure(&self) -> Option<KafkaError> {
        self.deliveries.lock().expect("tracker lock").failures.first().cloned()
    }

    /// Takes the failures and changelog offsets recorded so far.
    pub fn take(&self) -> Deliveries {
        std::mem::take(&mut *self.deliveries.lock().expect("tracker lock"))
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, epoch: usize) {
        match result {
            Ok(m) if m.topic() == self.changelog_topic => {
                let mut d = self.deliveries.lock().expect("tracker lock");
                let last = d.changelog_last.entry(m.partition()).or_insert(m.offset());
                *last = (*last).max(m.offset());
            }
            Ok(_) => {}
            Err((e, _)) => self.deliveries.lock().expect("tracker lock").failures.push(e.clone()),
        }
        // Last: once nothing is in flight, everything delivered is recorded.
        self.in_flight[epoch % EPOCH_SLOTS].fetch_sub(1, Ordering::SeqCst);
    }
}
