//! Routing: every workflow has one home partition, `murmur2(workflow_id)
//! mod N`, where N is the partition count of junction's own topics (the
//! changelog and `<application_id>-repartition`); the task of that
//! partition joins all of its events. An input record read off its
//! workflow's home partition, whatever its key, its producer's partitioner
//! or its topic, is forwarded: re-keyed by workflow ID to its home
//! partition of the repartition topic, with its value, its timestamp and
//! where it came from, and joined when it is read back. One read on its
//! home partition is joined there: under `exactly_once` at once; under
//! `at_least_once` where a *marker* in the repartition partition says
//! ("the records of input partition p read so far"), so that the
//! repartition partition's log orders every event of its workflows, and
//! each replay after a crash meets them in the same order.
//!
//! - [`partitioner`]: Kafka's default partitioner, murmur2;
//! - [`Forward`]: a record on its way home, a tick of the wall clock or a
//!   marker; [`forwarded_origin`], where a record read back from the
//!   repartition topic came from, and [`marker_of`], what a marker read
//!   back covers.
//!
//! Pure: no Kafka client, no store.

pub mod partitioner;

use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::names;

/// The home partition of `workflow_id` among `home_partitions`.
pub fn home(workflow_id: &str, home_partitions: usize) -> i32 {
    partitioner::murmur2_partition(workflow_id.as_bytes(), home_partitions)
}

/// The input partitions of a topic with `topic_partitions` that the holder
/// of home partition `home` reads: the one of its number, and, of a topic
/// with more partitions than N, each whose number is `home` modulo N. The
/// group assigns only the home partitions; each input partition so has one
/// reader, the instance that holds the home partition of its number (where,
/// under `exactly_once`, a record read on its home partition is joined
/// directly).
pub fn input_partitions_of(home: i32, home_partitions: usize, topic_partitions: usize) -> impl Iterator<Item = i32> {
    (home as usize..topic_partitions).step_by(home_partitions.max(1)).map(|p| p as i32)
}

/// A record read off its workflow's home partition, to send there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub home: i32,
    pub workflow_id: String,
    /// The source record's key, value and timestamp, unchanged.
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub timestamp_ms: Option<i64>,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
}

impl Forward {
    /// About how many bytes it takes until it is sent.
    pub fn approx_bytes(&self) -> usize {
        128 + self.workflow_id.len()
            + self.key.as_ref().map_or(0, Vec::len)
            + self.value.len()
            + self.source_topic.len()
    }

    /// A tick of the wall clock for `home`'s stream, at `at_ms`: once read
    /// back, the partition's clock may follow the wall clock to there.
    /// Under `at_least_once` the wall clock moves a partition's clock only
    /// through ticks, so that a replay of its log meets it at the same
    /// place. A tick has no workflow: its ID is empty.
    pub fn tick(home: i32, at_ms: i64) -> Forward {
        Forward {
            home,
            workflow_id: String::new(),
            key: None,
            value: Vec::new(),
            timestamp_ms: Some(at_ms),
            source_topic: String::new(),
            source_partition: -1,
            source_offset: -1,
        }
    }

    /// A marker for `home`'s stream: the records of `source_partition` of
    /// `source_topic` that are `home`'s, read up to `through` and held
    /// where they were read, are joined where the marker is read back.
    /// Under `at_least_once` a record read on its workflow's home partition
    /// waits for its marker instead of being forwarded: the marker orders
    /// it among the records forwarded to its home, as its own copy would
    /// have, at the cost of a few bytes for a whole poll's records.
    pub fn marker(home: i32, source_topic: &str, source_partition: i32, through: i64) -> Forward {
        Forward {
            home,
            workflow_id: String::new(),
            key: None,
            value: Vec::new(),
            timestamp_ms: None,
            source_topic: source_topic.to_string(),
            source_partition,
            source_offset: through,
        }
    }

    pub fn is_tick(&self) -> bool {
        self.workflow_id.is_empty() && self.source_partition < 0
    }

    pub fn is_marker(&self) -> bool {
        self.workflow_id.is_empty() && self.source_partition >= 0
    }
}

/// What a marker read back from the repartition topic covers ([`Forward::marker`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker<'a> {
    pub topic: &'a str,
    pub partition: i32,
    /// The last offset it covers.
    pub through: i64,
}

/// The marker a record read from the repartition topic is, if it is one.
pub fn marker_of<'a>(m: &'a BorrowedMessage<'_>) -> Option<Marker<'a>> {
    if m.key().is_some() {
        return None;
    }
    let headers = m.headers()?;
    if !headers.iter().any(|h| h.key == names::HEADER_MARKER) {
        return None;
    }
    let origin = forwarded_origin(m)?;
    Some(Marker { topic: origin.topic, partition: origin.partition, through: origin.offset })
}

/// Whether a record read from the repartition topic is a tick ([`Forward::tick`]).
/// A forwarded event always has a key (its workflow ID), so its headers
/// are not searched.
pub fn is_tick(m: &BorrowedMessage<'_>) -> bool {
    m.key().is_none() && m.headers().is_some_and(|headers| headers.iter().any(|h| h.key == names::HEADER_TICK))
}

/// Where a record read from the repartition topic came from: the source
/// topic (whose mapping reads it), partition, offset and key, from the
/// headers the forward wrote. `None` for a record without them.
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
}

pub fn forwarded_origin<'a>(m: &'a BorrowedMessage<'_>) -> Option<Origin<'a>> {
    let headers = m.headers()?;
    let (mut topic, mut partition, mut offset, mut key) = (None, None, None, None);
    for h in headers.iter() {
        let value = h.value.unwrap_or_default();
        match h.key {
            names::HEADER_SOURCE_TOPIC => topic = std::str::from_utf8(value).ok(),
            names::HEADER_SOURCE_PARTITION => partition = std::str::from_utf8(value).ok()?.parse().ok(),
            names::HEADER_SOURCE_OFFSET => offset = std::str::from_utf8(value).ok()?.parse().ok(),
            names::HEADER_SOURCE_KEY => key = Some(value),
            _ => {}
        }
    }
    Some(Origin { topic: topic?, partition: partition?, offset: offset?, key })
}

#[cfg(test)]
mod tests {
    use super::input_partitions_of;

    #[test]
    fn every_input_partition_has_one_home_whatever_the_topics_partition_count() {
        for n in 1..=8usize {
            for count in 1..=20usize {
                let mut seen = vec![0; count];
                for home in 0..n as i32 {
                    for p in input_partitions_of(home, n, count) {
                        assert_eq!(
                            p as usize % n,
                            home as usize,
                            "partition {p} of {count} read by home {home} of {n}"
                        );
                        seen[p as usize] += 1;
                    }
                }
                assert!(seen.iter().all(|&s| s == 1), "{n} homes, {count} partitions: {seen:?}");
            }
        }
    }
}
