//! Records a topic refuses for good, and what is sent in their place. A
//! delivery can fail for a while (a leader moving, a broker away) or for
//! good: the record is larger than the topic's own `max.message.bytes`, or
//! the topic refuses this client (its ACLs, a policy). One such record
//! never blocks the others:
//!
//! - size is checked before sending, against each topic's limit
//!   ([`crate::kafka::limits`]): an outcome too large for the output topic
//!   goes without its steps' payloads, with the header `junction.truncated`;
//!   one too large even so goes to the dead-letter topic (reason
//!   `outcome_refused`); a dead letter too large for the dead-letter topic
//!   goes without the bad record's value, and its detail says so. A refusal
//!   for size all the same (a limit lowered while junction runs) has the
//!   limits read again before the commit is redone;
//! - an outcome the output topic refuses for another lasting reason goes,
//!   when the commit is redone (under `at_least_once` the commit failed), to
//!   the dead-letter topic, reason `outcome_refused`. Under `exactly_once`
//!   the transaction coordinator refuses the whole topic before any record
//!   reaches it (its ACLs): every outcome goes to the dead-letter topic for
//!   a minute, and the output topic is tried again after it;
//! - an outcome that no topic takes has nowhere to go: its workflow's home
//!   partition stops ([`Refusals::take_unplaceable`]), as a failing store
//!   stops its partition, and is tried again after a pause.
//!
//! The delivery callback records refusals ([`Refusals::refused`]); the
//! producer asks for remedies as it sends ([`Refusals::remedy`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use tracing::{error, warn};

use crate::kafka::limits::TopicLimits;
use crate::names;

/// How long outcomes go to the dead-letter topic after the output topic
/// was refused as a whole, before it is tried again.
const OUTPUT_RETRY: Duration = Duration::from_secs(60);

/// What is sent instead of an outcome refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remedy {
    /// The outcome, to the dead-letter topic.
    DeadLetter { detail: String },
}

/// An outcome that no topic takes: its workflow's home partition must stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaceable {
    pub workflow_id: String,
    pub why: String,
}

pub struct Refusals {
    output_topic: String,
    dead_letter_topic: String,
    /// By outcome ID (`junction.outcome.id`).
    remedies: Mutex<HashMap<String, Remedy>>,
    /// Topics a transaction coordinator refused to add to a transaction
    /// (no right to write them), since when, and its words.
    refused_topics: Mutex<HashMap<String, (Instant, String)>>,
    /// Whether `remedies` has any: checked first, so that the usual record costs no lock.
    any: AtomicBool,
    unplaceable: Mutex<Vec<Unplaceable>>,
}

/// Whether a delivery error is the record's own and lasting: trying the
/// same record again fails the same way.
pub fn is_lasting(e: &KafkaError) -> bool {
    too_large(e)
        || matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::PolicyViolation
                    | RDKafkaErrorCode::InvalidRecord
                    | RDKafkaErrorCode::InvalidTimestamp
            )
        )
}

/// Whether a topic refused a record (or its batch) for its size.
pub fn too_large(e: &KafkaError) -> bool {
    matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize))
        || e.to_string().contains("RECORD_LIST_TOO_LARGE")
}

impl Refusals {
    pub fn new(output_topic: &str, dead_letter_topic: &str) -> Refusals {
        Refusals {
            output_topic: output_topic.to_string(),
            dead_letter_topic: dead_letter_topic.to_string(),
            remedies: Mutex::new(HashMap::new()),
            refused_topics: Mutex::new(HashMap::new()),
            any: AtomicBool::new(false),
            unplaceable: Mutex::new(Vec::new()),
        }
    }

    /// What to send instead of the outcome `outcome_id`, if it was refused for good before.
    pub fn remedy(&self, outcome_id: &str) -> Option<Remedy> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        self.remedies.lock().expect("refusals lock").get(outcome_id).cloned()
    }

    /// A remedied record was delivered: its remedy is no longer needed.
    pub fn delivered(&self, m: &BorrowedMessage<'_>) {
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        let Some(id) = self.outcome_of(m) else { return };
        let mut remedies = self.remedies.lock().expect("refusals lock");
        remedies.remove(&id);
        let topics = !self.refused_topics.lock().expect("refusals lock").is_empty();
        self.any.store(!remedies.is_empty() || topics, Ordering::Relaxed);
    }

    /// The broker refused `m` with `e`. When that is lasting, the record's
    /// remedy is kept for the redo; a refusal for size has the limits read
    /// again instead (the records batched with the one too large were
    /// refused with it, and are sent again as they are).
    pub fn refused(&self, m: &BorrowedMessage<'_>, e: &KafkaError, limits: &TopicLimits) {
        if too_large(e) {
            limits.mark_stale();
            return;
        }
        if !is_lasting(e) {
            return;
        }
        let Some(id) = self.outcome_of(m) else {
            if m.topic() == self.dead_letter_topic {
                error!(
                    topic = m.topic(),
                    error = %e,
                    "the dead-letter topic refuses a dead letter: commits fail until it takes it (check the topic's \
                     ACLs and settings)"
                );
            }
            return;
        };
        let topic = m.topic();
        if topic == self.output_topic {
            let remedy = Remedy::DeadLetter {
                detail: format!("the output topic {topic} refused the outcome record ({e}); here it is"),
            };
            warn!(outcome_id = id, remedy = ?remedy, "an outcome was refused for good; the commit is redone with it on the dead-letter topic");
            self.remedies.lock().expect("refusals lock").insert(id, remedy);
            self.any.store(true, Ordering::Relaxed);
            return;
        }
        let workflow_id = m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
        self.unplaceable(
            workflow_id,
            format!("outcome {id} is refused by the output topic and by the dead-letter topic {topic} ({e})"),
        );
    }

    /// A transaction coordinator refused to add `topic` to a transaction:
    /// junction may not write it. Under `exactly_once` that is all that is
    /// said of it (the records are purged with the transaction, not
    /// refused), so outcomes go to the dead-letter topic as a whole for a
    /// while ([`Refusals::output_refused`]), and the output topic is tried
    /// again after it.
    pub fn topic_refused(&self, topic: &str, why: &str) {
        if topic != self.output_topic {
            return;
        }
        let mut refused = self.refused_topics.lock().expect("refusals lock");
        if refused.insert(topic.to_string(), (Instant::now(), why.to_string())).is_none() {
            warn!(
                topic,
                retry_in_s = OUTPUT_RETRY.as_secs(),
                "the output topic refuses junction's writes (its ACLs): outcomes go to the dead-letter topic \
                 (outcome_refused) until it takes them again"
            );
        }
        self.any.store(true, Ordering::Relaxed);
    }

    /// Why the output topic refuses junction's writes as a whole, while it
    /// does: outcomes go to the dead-letter topic meanwhile.
    pub fn output_refused(&self) -> Option<String> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let mut refused = self.refused_topics.lock().expect("refusals lock");
        let (since, why) = refused.get(&self.output_topic)?;
        if since.elapsed() > OUTPUT_RETRY {
            refused.remove(&self.output_topic);
            return None;
        }
        Some(why.clone())
    }

    /// An outcome no topic takes: its partition must stop.
    pub fn unplaceable(&self, workflow_id: String, why: String) {
        error!(workflow_id, why, "an outcome cannot be published anywhere; its partition stops");
        self.unplaceable.lock().expect("refusals lock").push(Unplaceable { workflow_id, why });
    }

    /// The outcomes no topic takes, since the last call.
    pub fn take_unplaceable(&self) -> Vec<Unplaceable> {
        std::mem::take(&mut *self.unplaceable.lock().expect("refusals lock"))
    }

    /// Which outcome `m` is (on the output topic, or redirected to the
    /// dead-letter topic), if it is one.
    fn outcome_of(&self, m: &BorrowedMessage<'_>) -> Option<String> {
        let topic = m.topic();
        if topic != self.output_topic && topic != self.dead_letter_topic {
            return None;
        }
        let id = m.headers()?.iter().find(|h| h.key == names::HEADER_OUTCOME_ID)?.value?;
        Some(String::from_utf8_lossy(id).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lasting_refusals_are_told_from_passing_ones() {
        let refused = |code| KafkaError::MessageProduction(code);
        assert!(is_lasting(&refused(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(is_lasting(&refused(RDKafkaErrorCode::TopicAuthorizationFailed)));
        assert!(is_lasting(&refused(RDKafkaErrorCode::PolicyViolation)));
        assert!(!is_lasting(&refused(RDKafkaErrorCode::NotLeaderForPartition)));
        assert!(!is_lasting(&refused(RDKafkaErrorCode::MessageTimedOut)));
        assert!(!is_lasting(&refused(RDKafkaErrorCode::NotEnoughReplicas)));
        assert!(!is_lasting(&refused(RDKafkaErrorCode::UnknownTopicOrPartition)));
    }
}
