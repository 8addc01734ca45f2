//! Whether the consumer has read a partition to its end, from what
//! librdkafka already knows: no request. Its cached end offset is updated by
//! every fetch response (under `read_committed`, the last stable offset), and
//! its position moves past transaction markers and aborted transactions
//! (probed against Apache Kafka 4.1). A partition that delivered nothing
//! since it was assigned has no position; where it starts reading stands in.

use std::ffi::CString;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

/// The partition's low and high offsets as librdkafka last saw them, if it has fetched from it.
pub fn cached_ends<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partition: i32) -> Option<(i64, i64)> {
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client outlives the call, `topic` is a valid C string, and
    // librdkafka only writes the two offsets, reading its own cache under its lock.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && low >= 0 && high >= 0)
        .then_some((low, high))
}

/// Whether a partition is read to its end: its `position` (the offset after
/// the last record delivered), or without one where it starts (`start`, its
/// committed offset; without one, its low offset), against its cached
/// `ends`. Unknown ends: not caught up.
pub fn has_caught_up(position: Option<i64>, start: Option<i64>, ends: Option<(i64, i64)>) -> bool {
    let Some((low, high)) = ends else { return false };
    position.or(start).unwrap_or(low) >= high
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_caught_up_once_its_next_offset_reaches_its_end() {
        assert!(has_caught_up(Some(11), None, Some((0, 11))));
        assert!(!has_caught_up(Some(10), Some(11), Some((0, 11))), "the position wins over the start");
        assert!(has_caught_up(None, Some(11), Some((0, 11))), "nothing delivered since the committed end");
        assert!(!has_caught_up(None, Some(4), Some((0, 11))));
        assert!(has_caught_up(None, None, Some((7, 7))), "an empty partition, read from its start");
        assert!(!has_caught_up(None, None, Some((0, 3))));
        assert!(!has_caught_up(Some(11), None, None), "ends not fetched yet");
    }
}
