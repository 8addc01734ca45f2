//! An asynchronous offset commit whose answer comes back. rdkafka's own
//! asynchronous commit drops the coordinator's answer (it registers no
//! commit callback); this one asks librdkafka to post it on the consumer's
//! queue, where `poll` hands it to [`ConsumerContext::commit_callback`].
//! The answer says whether the coordinator still knew this member when the
//! commit reached it (see [`crate::commit::lease`]).

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

/// Commits `offsets` for the group without waiting; the coordinator's
/// answer reaches `consumer`'s context at a later `poll`.
pub fn commit<C: ConsumerContext>(consumer: &BaseConsumer<C>, offsets: &TopicPartitionList) -> KafkaResult<()> {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is a live consumer handle (borrowed from `consumer`);
    // the queue handle taken here is released before returning, and
    // librdkafka keeps its own reference to the queue for the reply; the
    // offsets list is only read, and copied by librdkafka.
    let error = unsafe {
        let queue = rdsys::rd_kafka_queue_get_consumer(rk);
        if queue.is_null() {
            return Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::UnknownGroup));
        }
        let error = rdsys::rd_kafka_commit_queue(rk, offsets.ptr(), queue, None, std::ptr::null_mut());
        rdsys::rd_kafka_queue_destroy(queue);
        error
    };
    if error == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        Err(KafkaError::ConsumerCommit(error.into()))
    }
}
