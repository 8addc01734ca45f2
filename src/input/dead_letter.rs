//! What a bad record becomes: a copy of it, key, value and timestamp byte
//! for byte, with why it is bad and where it came from. The producer
//! ([`crate::kafka::producer`]) writes it to the dead-letter topic with five
//! headers that say so. It is committed with the offset that consumed it,
//! so it is neither lost nor (under exactly-once) repeated.

use crate::input::event::BadInput;

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
