//! The checks that span several settings, or that a value's type alone
//! does not make: what librdkafka or the broker would refuse later, refused
//! at start-up with the key to change.

use std::collections::BTreeMap;

use super::read::Reader;
use super::{KafkaConfig, WorkflowSpec};
use crate::names;

impl Reader {
    /// Under the consumer group protocol of KIP-848 the broker, not the
    /// client, sets the session, the heartbeat and the assignor: librdkafka
    /// refuses these properties then, so they are refused here, at start-up.
    pub(super) fn group_protocol_fits(&mut self, properties: &BTreeMap<String, String>) {
        if properties.get("group.protocol").map(String::as_str) != Some("consumer") {
            return;
        }
        let broker_side = [
            ("session.timeout.ms", "the broker's group.consumer.session.timeout.ms"),
            ("heartbeat.interval.ms", "the broker's group.consumer.heartbeat.interval.ms"),
            ("partition.assignment.strategy", "group.remote.assignor"),
        ];
        for (name, instead) in broker_side.into_iter().filter(|(name, _)| properties.contains_key(*name)) {
            self.error(
                &format!("kafka.properties.{name}"),
                format!("not supported with \"group.protocol\" = \"consumer\": remove it and use {instead}"),
            );
        }
    }

    /// Every outcome record must fit in what the producer can send: a type's
    /// steps, each with a payload of up to `max_payload_bytes`, bound its size.
    pub(super) fn outcomes_fit(&mut self, workflows: &[WorkflowSpec], kafka: &KafkaConfig, max_payload_bytes: usize) {
        let limit = kafka.max_record_bytes();
        for (i, w) in workflows.iter().enumerate() {
            let largest = names::OUTCOME_OVERHEAD_BYTES.saturating_add(
                w.steps.len().saturating_mul(max_payload_bytes.saturating_add(names::OUTCOME_STEP_OVERHEAD_BYTES)),
            );
            if largest > limit {
                self.error(
                    &format!("workflows[{i}].steps"),
                    format!(
                        "{} steps with payloads of up to state.max_payload_bytes ({max_payload_bytes}) make outcome \
                         records of up to {largest} bytes, more than the producer can send ({limit}: \
                         message.max.bytes less 64 KiB); use fewer steps, a smaller state.max_payload_bytes or a \
                         larger kafka.properties.\"message.max.bytes\"",
                        w.steps.len()
                    ),
                );
            }
        }
    }

    /// The client properties junction reads itself must be numbers:
    /// `message.max.bytes` bounds what a dead letter copies and what an
    /// outcome may take; `topic.metadata.refresh.interval.ms` is also how
    /// often the input topics are checked for new partitions (-1: never).
    pub(super) fn read_properties_are_numbers(&mut self, properties: &BTreeMap<String, String>) {
        if let Some(v) = properties.get("message.max.bytes").filter(|v| v.trim().parse::<usize>().is_err()) {
            self.error("kafka.properties.message.max.bytes", format!("expected a number of bytes, got {v:?}"));
        }
        let refresh = "topic.metadata.refresh.interval.ms";
        if let Some(v) = properties.get(refresh).filter(|v| v.trim().parse::<i64>().is_err()) {
            self.error(&format!("kafka.properties.{refresh}"), format!("expected a number of milliseconds, got {v:?}"));
        }
    }

    /// A Kafka topic name, as the broker accepts it.
    pub(super) fn topic_name(&mut self, key: &str, name: &str) {
        let valid = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name.is_empty() && (!valid || name.len() > 200) {
            self.error(
                key,
                format!("{name:?} is not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 200)"),
            );
        }
    }
}
