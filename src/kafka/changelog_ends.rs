//! Where a changelog partition starts and ends, as the restore sees it:
//! its committed records (what a `read_committed` reader, and so the
//! restore, reads up to) and every record, those of transactions still open
//! included. A store counts as restored only once the two meet: a
//! transaction open on its changelog may yet commit (see
//! [`crate::state::restore`]).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use crate::config::KafkaConfig;
use crate::kafka::clients;

/// How long one watermark request may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(30);

/// A changelog partition's offsets, as [`ChangelogEnds::of`] reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    /// The first offset still in the log.
    pub low: i64,
    /// The end of the committed records (the last stable offset).
    pub committed: i64,
    /// The end of every record, open transactions' included.
    pub all: i64,
}

/// Two clients, one for each end; shared by the threads that open stores.
pub struct ChangelogEnds {
    topic: String,
    committed: BaseConsumer,
    all: BaseConsumer,
}

impl ChangelogEnds {
    pub fn new(config: &KafkaConfig) -> Result<ChangelogEnds, KafkaError> {
        Ok(ChangelogEnds {
            topic: config.changelog_topic(),
            committed: clients::restore_consumer_config(config).create()?,
            all: clients::changelog_ends_config(config).create()?,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Both ends of `partition`, asked of its leader.
    pub fn of(&self, partition: i32) -> Result<Ends, KafkaError> {
        let (low, committed) = self.committed.fetch_watermarks(&self.topic, partition, WATERMARK_TIMEOUT)?;
        let all = self.all_end(partition)?;
        Ok(Ends { low, committed, all })
    }

    /// The end of every record of `partition`, open transactions' included.
    pub fn all_end(&self, partition: i32) -> Result<i64, KafkaError> {
        Ok(self.all.fetch_watermarks(&self.topic, partition, WATERMARK_TIMEOUT)?.1)
    }
}
