//! The dead-letter policy: a bad record is copied byte for byte, key, value
//! and timestamp, to the dead-letter topic with five headers that say why and
//! where it came from. It is committed with the offset that consumed it, so
//! it is neither lost nor (under exactly-once) repeated.

use rdkafka::message::{Header, OwnedHeaders};

use crate::event::BadInput;
use crate::names;

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
    pub fn headers(&self) -> OwnedHeaders {
        let partition = self.source_partition.to_string();
        let offset = self.source_offset.to_string();
        OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: names::HEADER_ERROR, value: Some(self.error.reason.code()) })
            .insert(Header { key: names::HEADER_ERROR_DETAIL, value: Some(self.error.detail.as_str()) })
            .insert(Header { key: names::HEADER_SOURCE_TOPIC, value: Some(self.source_topic.as_str()) })
            .insert(Header { key: names::HEADER_SOURCE_PARTITION, value: Some(partition.as_str()) })
            .insert(Header { key: names::HEADER_SOURCE_OFFSET, value: Some(offset.as_str()) })
    }
}
