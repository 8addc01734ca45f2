//! The producer's context: it counts the records in flight by the commit
//! interval they belong to (their epoch), and remembers, by epoch, failed
//! deliveries and the changelog offsets delivered, which become the
//! stores' checkpoints.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::statistics::Statistics;
use tracing::{debug, error, info, warn};

use crate::kafka::limits::TopicLimits;
use crate::kafka::refusals::Refusals;
use crate::kafka::stranded;

/// A record the producer could not deliver.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The commit interval it belonged to.
    pub epoch: usize,
    pub error: KafkaError,
    pub topic: String,
    pub partition: i32,
}

/// What the producer has delivered since the last `take`.
#[derive(Debug, Default)]
pub struct Deliveries {
    pub failures: Vec<Failure>,
    /// Changelog partition → the highest offset delivered to it.
    pub changelog_last: HashMap<i32, i64>,
}

/// The producer context: counts the records in flight by epoch (the commit
/// interval they belong to), and remembers failures and changelog offsets,
/// which become the stores' checkpoints.
pub struct DeliveryTracker {
    changelog_topic: String,
    /// Records refused for good, and their remedies.
    refusals: Arc<Refusals>,
    limits: Arc<TopicLimits>,
    /// Records in flight, by epoch modulo the slots: at most two epochs,
    /// the interval being committed and the current one, have records in flight.
    in_flight: [AtomicUsize; EPOCH_SLOTS],
    deliveries: Mutex<Deliveries>,
    /// Epochs before this one were given up: their failures are not recorded.
    forgotten: AtomicUsize,
    /// Whether the producer reaches a broker: set by its statistics (a
    /// broker is up), cleared by them (none is) and by librdkafka's "all
    /// brokers down". A producer stranded by librdkafka issue 5301 never
    /// reaches one again (see [`crate::kafka::stranded`]).
    reaches_a_broker: AtomicBool,
}

const EPOCH_SLOTS: usize = 4;

impl DeliveryTracker {
    pub fn new(changelog_topic: String, refusals: Arc<Refusals>, limits: Arc<TopicLimits>) -> DeliveryTracker {
        DeliveryTracker {
            changelog_topic,
            refusals,
            limits,
            in_flight: std::array::from_fn(|_| AtomicUsize::new(0)),
            deliveries: Mutex::new(Deliveries::default()),
            forgotten: AtomicUsize::new(0),
            reaches_a_broker: AtomicBool::new(true),
        }
    }

    /// Gives up `epoch` and those before it: their failures, recorded or
    /// to come, belong to no commit.
    pub fn forget_through(&self, epoch: usize) {
        self.forgotten.fetch_max(epoch + 1, Ordering::SeqCst);
        self.deliveries.lock().expect("tracker lock").failures.retain(|f| f.epoch > epoch);
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
        self.deliveries.lock().expect("tracker lock").failures.first().map(|f| f.error.clone())
    }

    pub fn reaches_a_broker(&self) -> bool {
        self.reaches_a_broker.load(Ordering::SeqCst)
    }

    /// Takes every failure and changelog offset recorded so far.
    pub fn take(&self) -> Deliveries {
        std::mem::take(&mut *self.deliveries.lock().expect("tracker lock"))
    }

    /// Takes the changelog offsets recorded so far and the failures of
    /// `epoch` and the epochs before it (a commit given up leaves its
    /// own behind); later epochs' failures stay for their commits.
    pub fn take_up_to(&self, epoch: usize) -> Deliveries {
        let mut d = self.deliveries.lock().expect("tracker lock");
        let (mine, later) = std::mem::take(&mut d.failures).into_iter().partition(|f| f.epoch <= epoch);
        d.failures = later;
        Deliveries { failures: mine, changelog_last: std::mem::take(&mut d.changelog_last) }
    }
}

impl ClientContext for DeliveryTracker {
    /// librdkafka's log, as every client's goes; besides, a transaction
    /// coordinator that refuses to add a topic's partitions to a transaction
    /// says which topic only here (the records themselves are then purged,
    /// not refused): see [`Refusals::topic_refused`].
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", "librdkafka: {fac} {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
        }
        if fac == "ADDPARTS" {
            if let Some(topic) = refused_by_coordinator(message) {
                self.refusals.topic_refused(topic, message);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.reaches_a_broker.store(false, Ordering::SeqCst);
        }
        error!(target: "librdkafka", "librdkafka: producer error: {error}: {reason}");
    }

    fn stats(&self, statistics: Statistics) {
        self.reaches_a_broker.store(stranded::reaches_a_broker(&statistics), Ordering::SeqCst);
    }
}

/// The topic of a transaction coordinator's refusal to add its partitions
/// to a transaction for lack of the right to write it, as librdkafka logs
/// it: `Failed to add partition "<topic>" [<n>] to transaction: Broker:
/// Topic authorization failed`.
fn refused_by_coordinator(message: &str) -> Option<&str> {
    if !message.contains("Topic authorization failed") {
        return None;
    }
    let rest = message.split("Failed to add partition \"").nth(1)?;
    rest.split('"').next()
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, epoch: usize) {
        match result {
            Ok(m) if m.topic() == self.changelog_topic => {
                let mut d = self.deliveries.lock().expect("tracker lock");
                let last = d.changelog_last.entry(m.partition()).or_insert(m.offset());
                *last = (*last).max(m.offset());
            }
            Ok(m) => self.refusals.delivered(m),
            Err((e, m)) if epoch < self.forgotten.load(Ordering::SeqCst) => self.refusals.refused(m, e, &self.limits),
            Err((e, m)) => {
                self.refusals.refused(m, e, &self.limits);
                let failure =
                    Failure { epoch, error: e.clone(), topic: m.topic().to_string(), partition: m.partition() };
                self.deliveries.lock().expect("tracker lock").failures.push(failure);
            }
        }
        // Last: once nothing is in flight, everything delivered is recorded.
        self.in_flight[epoch % EPOCH_SLOTS].fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_the_transaction_coordinator_refuses_is_read_from_its_log_line() {
        let line = "TxnCoordinator/1: Failed to add partition \"app-out\" [0] to transaction: Broker: Topic authorization failed";
        assert_eq!(refused_by_coordinator(line), Some("app-out"));
        let other =
            "TxnCoordinator/1: Failed to add partition \"app-dlq\" [0] to transaction: Broker: Operation not attempted";
        assert_eq!(refused_by_coordinator(other), None);
    }
}
