//! What a bad record becomes: a copy of it, key, value and timestamp byte
//! for byte, with why it is bad and where it came from. The producer
//! ([`crate::kafka::producer`]) writes it to the dead-letter topic with the
//! headers that say so, keyed by the workflow ID when the record gave one.
//! It is committed with the offset that consumed it, so it is neither lost
//! nor (under exactly-once) repeated.

use crate::input::event::BadInput;
use crate::input::record::InputRecord;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    pub error: BadInput,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
}

impl DeadLetter {
    /// About how many bytes it takes until it is sent.
    pub fn approx_bytes(&self) -> usize {
        256 + self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len) + self.error.detail.len()
    }

    /// The dead letter of `record`. A key or value larger than `limit` (what
    /// the producer can send) is not copied, and the detail says so: a dead
    /// letter that can never be delivered would fail every commit.
    pub fn of(record: &InputRecord<'_>, mut error: BadInput, limit: usize) -> DeadLetter {
        let copy = |bytes: Option<&[u8]>, what: &str, error: &mut BadInput| match bytes {
            Some(b) if b.len() > limit => {
                error.detail.push_str(&format!(
                    "; the {what} ({} bytes) is not copied here: it stays at the source offset",
                    b.len()
                ));
                None
            }
            other => other.map(<[u8]>::to_vec),
        };
        let key = copy(record.key, "key", &mut error);
        let value = copy(record.value, "value", &mut error);
        DeadLetter {
            key,
            value,
            timestamp_ms: record.timestamp_ms,
            error,
            source_topic: record.topic.to_string(),
            source_partition: record.partition,
            source_offset: record.offset,
        }
    }
}
