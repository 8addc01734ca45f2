//! The repartition topic keeps its records without a time limit (a forward
//! is never lost to retention, however long junction is down), so junction
//! deletes what it has committed: every [`PURGE_INTERVAL`], the records of
//! each home partition before its committed offset, as Kafka Streams does
//! with its repartition topics. A failed purge is tried again next time,
//! with a new admin client (librdkafka may have stranded the old one,
//! [`crate::kafka::stranded`]); it costs only disk.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use crate::config::KafkaConfig;
use crate::kafka::clients::base;

/// How often committed records of the repartition topic are deleted.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(30);

pub struct Purger {
    topic: String,
    config: ClientConfig,
    admin: Option<AdminClient<DefaultClientContext>>,
    /// The last purge failed: the next one makes a new admin client.
    failed: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
    /// Home partition → the offset committed, not yet purged up to.
    committed: BTreeMap<i32, i64>,
    next: Instant,
}

impl Purger {
    pub fn new(kafka: &KafkaConfig, runtime: tokio::runtime::Handle) -> Purger {
        let config = base(kafka, "purge");
        Purger {
            topic: kafka.repartition_topic(),
            admin: admin(&config),
            config,
            failed: Arc::new(AtomicBool::new(false)),
            runtime,
            committed: BTreeMap::new(),
            next: Instant::now() + PURGE_INTERVAL,
        }
    }

    /// Notes an offset committed on a home partition of the repartition topic.
    pub fn committed(&mut self, partition: i32, next: i64) {
        self.committed.insert(partition, next);
    }

    /// Deletes what was committed, when the interval is up; without waiting.
    pub fn maybe_purge(&mut self) {
        if Instant::now() < self.next || self.committed.is_empty() {
            return;
        }
        self.next = Instant::now() + PURGE_INTERVAL;
        if self.admin.is_none() || self.failed.swap(false, Ordering::SeqCst) {
            self.admin = admin(&self.config);
        }
        let Some(admin) = &self.admin else { return };
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in std::mem::take(&mut self.committed) {
            if tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset)).is_err() {
                return;
            }
        }
        let request = admin.delete_records(&tpl, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))));
        let failed = Arc::clone(&self.failed);
        self.runtime.spawn(async move {
            match request.await {
                Ok(result) => {
                    for e in result.elements() {
                        if let Err(error) = e.error() {
                            debug!(partition = e.partition(), error = %error, "cannot purge a repartition partition");
                            failed.store(true, Ordering::SeqCst);
                        }
                    }
                }
                Err(e) => {
                    debug!(error = %e, "cannot purge the repartition topic; tried again later");
                    failed.store(true, Ordering::SeqCst);
                }
            }
        });
    }
}

fn admin(config: &ClientConfig) -> Option<AdminClient<DefaultClientContext>> {
    config
        .create()
        .map_err(|e| warn!(error = %e, "cannot create the admin client that purges the repartition topic"))
        .ok()
}
