//! Waiting, off the stream thread, until no transaction holds the group's
//! offsets of a home partition's topics: until the transaction of the
//! instance that held them before, which may have been paused in the middle
//! of one, has committed or been aborted. Such a transaction can have sent
//! its offsets before its changelog records reached the broker, so a store
//! counted as up to date before then would miss what those offsets stand
//! for once it commits. (The group coordinator answers an offset request
//! with `require_stable`, which librdkafka sends under `read_committed`,
//! only once the offsets are stable; librdkafka asks again meanwhile.) The
//! wait can last the transaction timeout and the broker's sweep of timed-out
//! transactions, so it runs on the thread that opens the partition's store
//! ([`crate::runtime::opener`]), never on the stream thread. Each wait
//! has a client of its own, so that one librdkafka stranded
//! ([`crate::kafka::stranded`]) stops no later opening.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::TopicPartitionList;

use crate::config::KafkaConfig;
use crate::kafka::clients;

/// How much longer than `transaction.timeout.ms` a transaction may stay
/// open: the broker aborts the transactions past their timeout in a sweep,
/// every 10 s by default (`transaction.abort.timed.out.transaction.cleanup.interval.ms`).
const TRANSACTION_SWEEP: Duration = Duration::from_secs(20);
/// The pause before asking again after an error.
const RETRY: Duration = Duration::from_millis(100);
/// How long one request for the offsets may wait for them to be stable.
const ASK_TURN: Duration = Duration::from_secs(1);

/// The configuration of the client that asks the group coordinator, and how long it waits.
pub struct StableOffsets {
    client: ClientConfig,
    /// The longest wait, after which the answer is the last error.
    timeout: Duration,
}

impl StableOffsets {
    pub fn new(config: &KafkaConfig) -> StableOffsets {
        let client = clients::offsets_client_config(config);
        let timeout = clients::transaction_timeout(config) + TRANSACTION_SWEEP;
        StableOffsets { client, timeout }
    }

    /// Waits until the group's offsets of `partitions` are stable, and
    /// returns them; or gives up when `cancelled` is set (`None`). Blocks:
    /// for a thread of its own.
    pub fn wait(
        &self,
        partitions: &[(String, i32)],
        cancelled: &AtomicBool,
    ) -> Option<Result<TopicPartitionList, KafkaError>> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in partitions {
            tpl.add_partition(topic, *partition);
        }
        let client: BaseConsumer = match self.client.create() {
            Ok(client) => client,
            Err(e) => return Some(Err(e)),
        };
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Asked in short turns, so that a cancelled wait (the partition
            // revoked, shutdown) ends within one.
            let error = match client.committed_offsets(tpl.clone(), left.min(ASK_TURN).max(RETRY)) {
                Ok(committed) => match committed.elements().iter().find_map(|e| e.error().err()) {
                    None => return Some(Ok(committed)),
                    Some(e) => e,
                },
                Err(e) => e,
            };
            if cancelled.load(Ordering::SeqCst) {
                return None;
            }
            if Instant::now() + RETRY >= deadline {
                return Some(Err(error));
            }
            std::thread::sleep(RETRY);
        }
    }
}
