//! Restoring stores from the changelog. On assignment a task's store is
//! checked (a store with data but no checkpoint, or a checkpoint beyond the
//! changelog's end, cannot be trusted and is rebuilt), then caught up from
//! its checkpoint to the changelog's end in batched writes. The stream thread
//! steps the restorer between polls, so partitions that are already active
//! keep processing meanwhile.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::codec;
use crate::config::Config;
use crate::join;
use crate::kafka;
use crate::metrics::Metrics;
use crate::store::{Store, StoreBatch, StoreError, StoreMemory};

const WATERMARK_TIMEOUT: Duration = Duration::from_secs(30);
/// Records per store write while restoring.
const RESTORE_BATCH: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("changelog {topic} partition {partition}: {source}")]
    Kafka { topic: String, partition: i32, source: KafkaError },
}

struct Restoring {
    store: Arc<Store>,
    batch: StoreBatch,
    /// The offset after the last record applied.
    next: i64,
    records: u64,
    started: Instant,
}

pub struct Restorer {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    topic: String,
    consumer: BaseConsumer,
    active: HashMap<i32, Restoring>,
    /// Shared by every store this process opens.
    memory: StoreMemory,
}

impl Restorer {
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Restorer, KafkaError> {
        let consumer: BaseConsumer = kafka::restore_consumer_config(&config.kafka).create()?;
        let topic = config.kafka.changelog_topic();
        let memory = StoreMemory::new(config.state.memory_bytes as usize, config.state.write_buffer_bytes as usize);
        Ok(Restorer { config, metrics, topic, consumer, active: HashMap::new(), memory })
    }

    pub fn is_restoring(&self) -> bool {
        !self.active.is_empty()
    }

    fn kafka_error(&self, partition: i32) -> impl Fn(KafkaError) -> RestoreError + '_ {
        move |source| RestoreError::Kafka { topic: self.topic.clone(), partition, source }
    }

    /// Opens a partition's store, rebuilding it when it cannot be trusted,
    /// and starts restoring it. Returns the store and, when it is already up
    /// to date (nothing to restore), its number of open workflows.
    pub fn open(&mut self, partition: i32, dir: &Path) -> Result<(Arc<Store>, Option<i64>), RestoreError> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(&self.topic, partition, WATERMARK_TIMEOUT)
            .map_err(self.kafka_error(partition))?;
        // The verifying read counts the open workflows on the way.
        let mut open = 0;
        let opened = Store::open(dir, &self.memory)
            .and_then(|s| s.verify(|state| open += i64::from(codec::is_open(state))).map(|()| s));
        let mut store = match opened {
            Ok(store) => store,
            Err(e) if e.is_damage() => {
                warn!(partition, path = %dir.display(), error = %e, "state store is damaged; rebuilding it from the changelog");
                Store::destroy(dir)?;
                open = 0;
                Store::open(dir, &self.memory)?
            }
            Err(e) => return Err(e.into()),
        };
        let checkpoint = store.checkpoint()?;
        let untrusted = match checkpoint {
            None => store.has_state().then(|| "it holds state but no checkpoint".to_string()),
            Some(c) if c > high => Some(format!("its checkpoint {c} is beyond the changelog's end {high}")),
            Some(c) if c < low => Some(format!("its checkpoint {c} is before the changelog's start {low}")),
            Some(_) => None,
        };
        if let Some(why) = untrusted {
            warn!(partition, path = %dir.display(), why, "state store cannot be trusted; rebuilding it from the changelog");
            drop(store);
            Store::destroy(dir)?;
            open = 0;
            store = Store::open(dir, &self.memory)?;
        }
        let from = store.checkpoint()?.unwrap_or(low);
        let store = Arc::new(store);
        if from >= high {
            info!(partition, checkpoint = from, "state store is up to date");
            return Ok((store, Some(open)));
        }
        info!(partition, from, to = high, "restoring state store from the changelog");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(from)).map_err(self.kafka_error(partition))?;
        self.consumer.incremental_assign(&tpl).map_err(self.kafka_error(partition))?;
        self.active.insert(
            partition,
            Restoring {
                store: Arc::clone(&store),
                batch: StoreBatch::default(),
                next: from,
                records: 0,
                started: Instant::now(),
            },
        );
        Ok((store, None))
    }

    /// Stops restoring a partition that was revoked.
    pub fn cancel(&mut self, partition: i32) {
        if self.active.remove(&partition).is_some() {
            self.unassign(partition);
        }
    }

    fn unassign(&self, partition: i32) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        if let Err(e) = self.consumer.incremental_unassign(&tpl) {
            warn!(partition, error = %e, "cannot unassign a restored changelog partition");
        }
    }

    /// Applies changelog records for up to `budget`. Returns the partitions
    /// whose stores reached the changelog's end, and those whose stores
    /// failed a write: they are no longer restored.
    pub fn step(&mut self, budget: Duration) -> Restored {
        let deadline = Instant::now() + budget;
        let mut restored = Restored::default();
        while !self.active.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(polled) = self.consumer.poll(left) else { break };
            match polled {
                Ok(m) => {
                    let partition = m.partition();
                    let Some(r) = self.active.get_mut(&partition) else { continue };
                    let id = String::from_utf8_lossy(m.key().unwrap_or_default());
                    match m.payload() {
                        None => r.batch.delete_state(&id),
                        Some(bytes) => match codec::summary(bytes) {
                            Ok(state) => {
                                let timer = join::timer_ms(
                                    state.started_at_ms,
                                    state.decision.as_ref(),
                                    self.config.workflow(&state.workflow_type),
                                    self.config.state.retention.as_millis() as i64,
                                );
                                r.batch.put_state(&id, bytes, timer);
                            }
                            Err(e) => warn!(
                                partition,
                                offset = m.offset(),
                                workflow_id = %id,
                                error = %e,
                                "garbage record in the changelog; skipped"
                            ),
                        },
                    }
                    r.next = m.offset() + 1;
                    r.records += 1;
                    self.metrics.restore_records.inc();
                    if r.batch.len() >= RESTORE_BATCH {
                        let mut batch = std::mem::take(&mut r.batch);
                        batch.set_checkpoint(r.next);
                        if let Err(e) = r.store.write(batch) {
                            self.active.remove(&partition);
                            self.unassign(partition);
                            restored.failed.push((partition, e));
                        }
                    }
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    let Some(mut r) = self.active.remove(&partition) else { continue };
                    let mut batch = std::mem::take(&mut r.batch);
                    // The end may lie past the last record (a transaction marker): restart from the end.
                    let position = self.consumer.position().ok();
                    let end = match position
                        .as_ref()
                        .and_then(|p| p.find_partition(&self.topic, partition))
                        .map(|e| e.offset())
                    {
                        Some(Offset::Offset(o)) => o.max(r.next),
                        _ => r.next,
                    };
                    batch.set_checkpoint(end);
                    self.unassign(partition);
                    if let Err(e) = r.store.write(batch) {
                        restored.failed.push((partition, e));
                        continue;
                    }
                    self.metrics.restore_duration.observe(r.started.elapsed().as_secs_f64());
                    info!(
                        partition,
                        records = r.records,
                        checkpoint = end,
                        seconds = r.started.elapsed().as_secs_f64(),
                        "state store restored"
                    );
                    restored.done.push(partition);
                }
                Err(e) => warn!(error = %e, "changelog consumer error while restoring"),
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        restored
    }
}

/// What one [`Restorer::step`] finished.
#[derive(Debug, Default)]
pub struct Restored {
    /// Partitions whose stores reached the changelog's end.
    pub done: Vec<i32>,
    /// Partitions whose stores failed a write, and why.
    pub failed: Vec<(i32, StoreError)>,
}
