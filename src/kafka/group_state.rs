//! What the group coordinator says of a classic consumer group: its state,
//! and which partitions each member is assigned (DescribeGroups, with the
//! consumer protocol's assignment decoded), and which member this consumer
//! is. For [`crate::runtime::group_watch`].

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;

/// A group as its coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty` or `Dead`.
    pub state: String,
    /// Each member's ID.
    pub members: Vec<String>,
    /// The partitions of the topic asked about that some member is assigned.
    pub assigned: BTreeSet<i32>,
}

/// Describes `group`, with the partitions of `topic` its members are assigned.
pub fn describe(client: &BaseConsumer, group: &str, topic: &str, timeout: Duration) -> KafkaResult<Option<GroupState>> {
    let list = client.fetch_group_list(Some(group), timeout)?;
    let Some(info) = list.groups().iter().find(|g| g.name() == group) else { return Ok(None) };
    let mut assigned = BTreeSet::new();
    for member in info.members() {
        for (t, partitions) in member.assignment().and_then(decode_assignment).unwrap_or_default() {
            if t == topic {
                assigned.extend(partitions);
            }
        }
    }
    let members = info.members().iter().map(|m| m.id().to_string()).collect();
    Ok(Some(GroupState { state: info.state().to_string(), members, assigned }))
}

/// This consumer's member ID in its group, once it has one.
pub fn member_id<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<String> {
    // SAFETY: the handle is live (borrowed from `consumer`); librdkafka
    // returns a string of its own allocation, or null, which is freed here.
    unsafe {
        let id = rdsys::rd_kafka_memberid(consumer.client().native_ptr());
        if id.is_null() {
            return None;
        }
        let text = CStr::from_ptr(id).to_string_lossy().into_owned();
        rdsys::rd_kafka_mem_free(consumer.client().native_ptr(), id.cast());
        (!text.is_empty()).then_some(text)
    }
}

/// The consumer protocol's assignment (version, then topics with their
/// partitions, then user data): each topic and its partitions.
fn decode_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    let mut r = Reader(bytes);
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = usize::try_from(r.i16()?).ok()?;
        let topic = String::from_utf8(r.take(len)?.to_vec()).ok()?;
        let count = r.i32()?;
        let partitions = (0..count.max(0)).map(|_| r.i32()).collect::<Option<Vec<i32>>>()?;
        out.push((topic, partitions));
    }
    Some(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        (self.0.len() >= n).then(|| {
            let (head, tail) = self.0.split_at(n);
            self.0 = tail;
            head
        })
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_protocol_assignment_decodes_to_its_topics_and_partitions() {
        let mut bytes = vec![0, 1, 0, 0, 0, 2];
        for (topic, partitions) in [("app-repartition", vec![0i32, 3]), ("other", vec![7])] {
            bytes.extend((topic.len() as i16).to_be_bytes());
            bytes.extend(topic.as_bytes());
            bytes.extend((partitions.len() as i32).to_be_bytes());
            for p in partitions {
                bytes.extend(p.to_be_bytes());
            }
        }
        bytes.extend((-1i32).to_be_bytes()); // no user data
        let decoded = decode_assignment(&bytes).unwrap();
        assert_eq!(decoded, vec![("app-repartition".to_string(), vec![0, 3]), ("other".to_string(), vec![7])]);
        assert_eq!(decode_assignment(&bytes[..9]), None, "a truncated assignment is not read");
    }
}
