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
//! transactions, so each runs on a thread of its own, and the stream thread
//! takes the answers between polls.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// The answer for one home partition: its committed offsets, once they are stable.
pub struct Stable {
    pub home: i32,
    /// The request answered: a partition revoked and assigned again asks anew.
    pub ticket: u64,
    pub result: Result<TopicPartitionList, KafkaError>,
}

pub struct StableOffsets {
    client: Arc<BaseConsumer>,
    /// The longest wait, after which the answer is the last error.
    timeout: Duration,
    sender: Sender<Stable>,
    answers: Receiver<Stable>,
}

impl StableOffsets {
    pub fn new(config: &KafkaConfig) -> Result<StableOffsets, KafkaError> {
        let client = Arc::new(clients::offsets_client_config(config).create()?);
        let timeout = clients::transaction_timeout(config) + TRANSACTION_SWEEP;
        let (sender, answers) = mpsc::channel();
        Ok(StableOffsets { client, timeout, sender, answers })
    }

    /// Starts waiting until the offsets of `partitions` are stable, for
    /// `home`: the answer comes with [`StableOffsets::answered`].
    pub fn ask(&self, home: i32, ticket: u64, partitions: &[(String, i32)]) -> std::io::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in partitions {
            tpl.add_partition(topic, *partition);
        }
        let (client, sender, deadline) = (Arc::clone(&self.client), self.sender.clone(), Instant::now() + self.timeout);
        std::thread::Builder::new().name(format!("junction-stable-{home}")).spawn(move || {
            let result = wait_stable(&client, &tpl, deadline);
            // No receiver: the stream thread has stopped.
            let _ = sender.send(Stable { home, ticket, result });
        })?;
        Ok(())
    }

    /// The answers that came since the last call.
    pub fn answered(&self) -> Vec<Stable> {
        self.answers.try_iter().collect()
    }
}

fn wait_stable(
    client: &BaseConsumer,
    tpl: &TopicPartitionList,
    deadline: Instant,
) -> Result<TopicPartitionList, KafkaError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let error = match client.committed_offsets(tpl.clone(), left.max(RETRY)) {
            Ok(committed) => match committed.elements().iter().find_map(|e| e.error().err()) {
                None => return Ok(committed),
                Some(e) => e,
            },
            Err(e) => e,
        };
        if Instant::now() + RETRY >= deadline {
            return Err(error);
        }
        std::thread::sleep(RETRY);
    }
}
