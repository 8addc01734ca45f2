//! Restoring stores from the changelog. On assignment a task's store is
//! opened and checked off the stream thread ([`prepare`]; what can be
//! trusted is [`crate::state::trust`]'s to say), then caught up from its
//! checkpoint to the changelog's end in batched writes. The stream thread
//! steps the restorer between polls, so partitions that are already active
//! keep processing meanwhile; the writes themselves are made by two threads
//! of the restorer's own ([`crate::state::restore_writer`]), so that reading
//! the changelog and writing the stores go on at the same time. It copies
//! bytes: which timer a restored state gets is the runtime's rule, given to
//! it as [`TimerOf`].
//!
//! The restore's consumer lives as long as its stream thread. When it has
//! given nothing for [`RESTORE_SILENCE`] (no record, no end of partition)
//! while some partition under restore is short of its committed end, it is
//! replaced with a fresh one, which goes on from each partition's next
//! offset. (A stranded client gives no partition anything; a partition
//! waiting by right for an open transaction hears nothing, and does not
//! count.) A librdkafka client told of no broker (a
//! restarting broker, or one its controller has fenced, answers so) forgets
//! every broker it knew and asks for metadata no more (librdkafka issue
//! 5301): without the replacement its restores would never end.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};

use crate::config::KafkaConfig;
use crate::kafka::changelog_ends::{ChangelogEnds, Ends};
use crate::kafka::clients;
use crate::metrics::Metrics;
use crate::state::codec;
use crate::state::restore_batch::RestoreBatch;
use crate::state::restore_writer::{Write, Writer, Written};
use crate::state::store::{Store, StoreError, StoreMemory};
use crate::state::trust::{self, Found, Verdict};
use crate::state::ChangelogKey;
use crate::state::TimerOf;

/// Changelog records per store write while restoring.
const RESTORE_BATCH: usize = 5_000;
/// Records taken in a row while they are ready, between readings of the clock.
const READY_AT_ONCE: usize = 256;
/// How often a partition waiting for a transaction on its changelog looks again.
const WAITING_RECHECK: Duration = Duration::from_millis(500);
/// Threads writing restored batches (each partition's on one of them).
const WRITER_THREADS: usize = 2;
/// How long a restore may hear nothing from its consumer before the
/// consumer is replaced (see the module).
pub const RESTORE_SILENCE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("changelog {topic} partition {partition}: {source}")]
    Kafka { topic: String, partition: i32, source: KafkaError },
    #[error("creating the changelog consumer: {0}")]
    Consumer(KafkaError),
    #[error("starting the restore writer thread: {0}")]
    Thread(std::io::Error),
}

struct Restoring {
    /// Tells this restore's writes apart from an earlier one's of the same partition.
    generation: u64,
    store: Arc<Store>,
    batch: RestoreBatch,
    /// The offset after the last record applied.
    next: i64,
    records: u64,
    started: Instant,
    /// Since when it has been at the end of the committed records while a
    /// transaction is still open beyond them, and when that was last checked.
    waiting: Option<(Instant, Instant)>,
    /// Read to the committed end, while a transaction is open beyond it:
    /// nothing comes for it until the transaction ends.
    waits_by_right: bool,
}

/// A partition whose last write is with a writer thread.
struct Finishing {
    generation: u64,
    records: u64,
    checkpoint: i64,
    started: Instant,
}

pub struct Restorer {
    metrics: Arc<Metrics>,
    /// The timer each restored state gets in its store.
    timer_of: TimerOf,
    topic: String,
    /// The consumer's configuration, for a fresh one.
    config: ClientConfig,
    consumer: BaseConsumer,
    /// When the consumer last gave a record or an end of partition (or a
    /// restore began with none under way, or the consumer was replaced).
    heard: Instant,
    /// Reads the changelog's ends, open transactions included.
    ends: Arc<ChangelogEnds>,
    active: HashMap<i32, Restoring>,
    finishing: HashMap<i32, Finishing>,
    writer: Writer,
    generations: u64,
}

impl Restorer {
    /// A restorer of `kafka`'s changelog, whose ends `ends` reads; `timer_of`
    /// says when each restored state's timer falls.
    pub fn new(
        kafka: &KafkaConfig,
        ends: Arc<ChangelogEnds>,
        metrics: Arc<Metrics>,
        timer_of: TimerOf,
    ) -> Result<Restorer, RestoreError> {
        let config = clients::restore_consumer_config(kafka);
        let consumer: BaseConsumer = config.create().map_err(RestoreError::Consumer)?;
        let topic = kafka.changelog_topic();
        let writer = Writer::start(WRITER_THREADS).map_err(RestoreError::Thread)?;
        Ok(Restorer {
            metrics,
            timer_of,
            topic,
            config,
            consumer,
            heard: Instant::now(),
            ends,
            active: HashMap::new(),
            finishing: HashMap::new(),
            writer,
            generations: 0,
        })
    }

    pub fn is_restoring(&self) -> bool {
        !self.active.is_empty() || !self.finishing.is_empty()
    }

    fn kafka_error(&self, partition: i32) -> impl Fn(KafkaError) -> RestoreError + '_ {
        move |source| RestoreError::Kafka { topic: self.topic.clone(), partition, source }
    }

    /// Starts catching `store` up from the changelog, from `from` (see
    /// [`prepare`], which opened it).
    pub fn start(&mut self, partition: i32, store: Arc<Store>, from: i64) -> Result<(), RestoreError> {
        info!(partition, from, "restoring state store from the changelog");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(from)).map_err(self.kafka_error(partition))?;
        self.consumer.incremental_assign(&tpl).map_err(self.kafka_error(partition))?;
        // Silence counts from now when nothing was expected before.
        if self.active.values().all(|r| r.waits_by_right) {
            self.heard = Instant::now();
        }
        self.generations += 1;
        self.active.insert(
            partition,
            Restoring {
                generation: self.generations,
                store,
                batch: RestoreBatch::for_states(RESTORE_BATCH),
                next: from,
                records: 0,
                started: Instant::now(),
                waiting: None,
                waits_by_right: false,
            },
        );
        Ok(())
    }

    /// Stops restoring a partition that was revoked.
    pub fn cancel(&mut self, partition: i32) {
        self.finishing.remove(&partition);
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
        self.collect_written(&mut restored, Duration::ZERO);
        // A partition waiting for a transaction to end learns of it from
        // the next end of partition; this looks again in case none comes.
        let recheck: Vec<i32> = self
            .active
            .iter()
            .filter(|(_, r)| r.waiting.is_some_and(|(_, checked)| checked.elapsed() >= WAITING_RECHECK))
            .map(|(p, _)| *p)
            .collect();
        for partition in recheck {
            self.at_committed_end(partition);
        }
        // Waits for a record, then takes up to READY_AT_ONCE more that are
        // ready without reading the clock: one record costs about as much as
        // a few readings of it.
        while !self.active.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(polled) = self.consumer.poll(left) else { break };
            let (timer_of, metrics, writer) = (&self.timer_of, &self.metrics, &self.writer);
            let mut taken = take_polled(&mut self.active, timer_of, metrics, writer, polled);
            let mut heard = taken != Taken::Error;
            for _ in 0..READY_AT_ONCE {
                if matches!(taken, Taken::End(_)) {
                    break;
                }
                let Some(polled) = self.consumer.poll(Duration::ZERO) else { break };
                taken = take_polled(&mut self.active, timer_of, metrics, writer, polled);
                heard |= taken != Taken::Error;
            }
            // An error is no sign of life: a stranded client reports them.
            if heard {
                self.heard = Instant::now();
            }
            if let Taken::End(partition) = taken {
                self.at_committed_end(partition);
            }
        }
        let expecting = self.active.values().any(|r| !r.waits_by_right);
        if expecting && self.heard.elapsed() >= RESTORE_SILENCE {
            self.replace_consumer("the changelog consumer gave nothing for 10 s while restoring");
        }
        if self.active.is_empty() && !self.finishing.is_empty() {
            self.collect_written(&mut restored, deadline.saturating_duration_since(Instant::now()));
        }
        restored
    }

    /// Replaces the consumer now, another client of this process having
    /// been found stranded (see [`crate::kafka::stranded`]).
    pub fn renew_consumer(&mut self) {
        self.replace_consumer("another client of this process was stranded");
    }

    /// Replaces the consumer with a fresh one, which starts from
    /// `bootstrap.servers` again and reads each partition under restore
    /// from the offset after its last record applied.
    fn replace_consumer(&mut self, why: &str) {
        self.heard = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for (partition, r) in &self.active {
            if let Err(e) = tpl.add_partition_offset(&self.topic, *partition, Offset::Offset(r.next)) {
                warn!(partition, error = %e, "cannot give a fresh changelog consumer its partition");
                return;
            }
        }
        let fresh = self.config.create::<BaseConsumer>().and_then(|c| c.assign(&tpl).map(|()| c));
        match fresh {
            Ok(consumer) => {
                warn!(
                    partitions = ?self.active.keys().collect::<Vec<_>>(),
                    why,
                    "replacing the changelog consumer, to start again from bootstrap.servers (a client told of no \
                     broker asks for none again, librdkafka issue 5301)"
                );
                self.consumer = consumer;
            }
            Err(e) => warn!(error = %e, "cannot create a fresh changelog consumer; trying again"),
        }
    }

    /// The ends of a changelog partition that a restore at `end` needs:
    /// none when it is at the end of every record (one request, the usual
    /// case), else its committed records' too (a second).
    fn ends(&self, partition: i32, end: i64) -> Result<Option<Ends>, RestoreError> {
        let all = self.ends.all_end(partition).map_err(self.kafka_error(partition))?;
        if end >= all {
            return Ok(None);
        }
        self.ends.with_all(partition, all).map(Some).map_err(self.kafka_error(partition))
    }

    /// The restore consumer has read every committed record of `partition`
    /// (its position is past the last one and its markers). The store is
    /// restored if no transaction is open beyond them: an open one may yet
    /// commit (its instance was only paused), and its records and input
    /// offsets with it. Until it commits or aborts, the partition waits, and
    /// the consumer's silence is no sign that it is stranded.
    fn at_committed_end(&mut self, partition: i32) {
        let position = self.consumer.position().ok().and_then(|p| {
            match p.find_partition(&self.topic, partition).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            }
        });
        let Some(next) = self.active.get(&partition).map(|r| r.next) else { return };
        let end = position.unwrap_or(next).max(next);
        let ends = self.ends(partition, end);
        let Some(r) = self.active.get_mut(&partition) else { return };
        let now = Instant::now();
        match ends {
            Ok(None) => {}
            Ok(Some(ends)) => {
                // Read to the committed end: nothing more to hear until the transaction ends.
                r.waits_by_right = end >= ends.committed;
                if r.waiting.is_none() {
                    info!(
                        partition,
                        committed_end = end,
                        end = ends.all,
                        "a transaction is open on the changelog partition; the store counts as restored once it \
                         commits or aborts"
                    );
                }
                r.waiting = Some((r.waiting.map_or(now, |(since, _)| since), now));
                return;
            }
            Err(e) => {
                r.waits_by_right = false;
                warn!(partition, error = %e, "cannot read the changelog's end; trying again");
                r.waiting = Some((r.waiting.map_or(now, |(since, _)| since), now));
                return;
            }
        }
        let Some(r) = self.active.remove(&partition) else { return };
        if let Some((since, _)) = r.waiting {
            info!(
                partition,
                waited_s = since.elapsed().as_secs_f64(),
                "the transaction on the changelog partition ended"
            );
        }
        let mut batch = r.batch;
        // The end may lie past the last record (a transaction marker): the next restore starts there.
        batch.set_checkpoint(end);
        batch.set_synced_at(crate::time::now_ms());
        self.unassign(partition);
        self.writer.write(Write { partition, generation: r.generation, store: r.store, batch, last: true });
        let finishing = Finishing { generation: r.generation, records: r.records, checkpoint: end, started: r.started };
        self.finishing.insert(partition, finishing);
    }

    /// Takes the writer threads' reports, waiting up to `wait` for the first.
    fn collect_written(&mut self, restored: &mut Restored, wait: Duration) {
        let mut next = self.writer.written.recv_timeout(wait).ok();
        while let Some(w) = next {
            self.report(w, restored);
            next = self.writer.written.try_recv().ok();
        }
    }

    fn report(&mut self, w: Written, restored: &mut Restored) {
        let partition = w.partition;
        let current = |generation: Option<u64>| generation == Some(w.generation);
        if let Err(e) = w.result {
            if current(self.active.get(&partition).map(|r| r.generation)) {
                self.active.remove(&partition);
                self.unassign(partition);
            } else if current(self.finishing.get(&partition).map(|f| f.generation)) {
                self.finishing.remove(&partition);
            } else {
                return; // a cancelled restore's
            }
            restored.failed.push((partition, e));
            return;
        }
        if !current(self.finishing.get(&partition).map(|f| f.generation)) {
            return;
        }
        let f = self.finishing.remove(&partition).expect("finishing");
        self.metrics.restore_duration.observe(f.started.elapsed().as_secs_f64());
        info!(
            partition,
            records = f.records,
            checkpoint = f.checkpoint,
            seconds = f.started.elapsed().as_secs_f64(),
            "state store restored"
        );
        restored.done.push((partition, w.open));
    }
}

/// A store opened and judged ([`prepare`]).
pub struct Prepared {
    pub store: Arc<Store>,
    /// The changelog offset to restore from.
    pub from: i64,
    /// Its open workflows when it is already up to date (nothing to restore).
    pub open: Option<i64>,
}

/// Opens a partition's store at `dir` and checks it: every entry is read
/// (damage shows up now, not while processing), and its checkpoint is
/// judged against the changelog's `ends` ([`trust::judge`]). A store that
/// cannot be trusted is rebuilt: deleted, or, when it may hold what the
/// changelog lost, set aside. Slow for a large store: for a thread of its
/// own, never the stream thread.
pub fn prepare(
    partition: i32,
    dir: &Path,
    memory: &StoreMemory,
    ends: Ends,
    delete_retention: Option<Duration>,
) -> Result<Prepared, StoreError> {
    // The verifying read counts the open workflows on the way.
    let mut open = 0;
    let opened =
        Store::open(dir, memory).and_then(|s| s.verify(|state| open += i64::from(codec::is_open(state))).map(|()| s));
    let mut store = match opened {
        Ok(store) => store,
        Err(e) if e.is_damage() => {
            warn!(partition, path = %dir.display(), error = %e, "state store is damaged; rebuilding it from the changelog");
            Store::destroy(dir)?;
            open = 0;
            Store::open(dir, memory)?
        }
        Err(e) => return Err(e),
    };
    let found =
        Found { checkpoint: store.checkpoint()?, has_state: store.has_state(), synced_at_ms: store.synced_at()? };
    match trust::judge(found, ends, delete_retention, crate::time::now_ms()) {
        Verdict::Trusted => {}
        Verdict::Rebuild(why) => {
            warn!(partition, path = %dir.display(), why, "state store cannot be trusted; rebuilding it from the changelog");
            drop(store);
            Store::destroy(dir)?;
            open = 0;
            store = Store::open(dir, memory)?;
        }
        Verdict::SetAside(why) => {
            drop(store);
            let aside = Store::set_aside(dir, crate::time::now_ms())?;
            error!(
                partition,
                why,
                kept_at = %aside.display(),
                "state store set aside, not deleted: it may be the only copy of states the changelog lost. The \
                 partition is rebuilt from the changelog; see the README (\"A store set aside\") for what to do with \
                 the copy"
            );
            open = 0;
            store = Store::open(dir, memory)?;
        }
    }
    let from = store.checkpoint()?.unwrap_or(ends.low);
    let store = Arc::new(store);
    if from >= ends.all {
        info!(partition, checkpoint = from, "state store is up to date");
        return Ok(Prepared { store, from, open: Some(open) });
    }
    Ok(Prepared { store, from, open: None })
}

/// What the restore consumer gave.
#[derive(Debug, PartialEq, Eq)]
enum Taken {
    Record,
    /// The end of a partition's committed records.
    End(i32),
    Error,
}

/// Applies what the restore consumer gave.
fn take_polled(
    active: &mut HashMap<i32, Restoring>,
    timer_of: &TimerOf,
    metrics: &Metrics,
    writer: &Writer,
    polled: Result<BorrowedMessage<'_>, KafkaError>,
) -> Taken {
    match polled {
        Ok(m) => {
            apply(active, timer_of, metrics, writer, &m);
            Taken::Record
        }
        Err(KafkaError::PartitionEOF(partition)) => Taken::End(partition),
        Err(e) => {
            warn!(error = %e, "changelog consumer error while restoring");
            Taken::Error
        }
    }
}

/// Adds one changelog record to its partition's batch, and hands the
/// batch to a writer thread once it is full. (A free function: the
/// message borrows the restore consumer.)
fn apply(
    active: &mut HashMap<i32, Restoring>,
    timer_of: &TimerOf,
    metrics: &Metrics,
    writer: &Writer,
    m: &BorrowedMessage<'_>,
) {
    let partition = m.partition();
    let Some(r) = active.get_mut(&partition) else { return };
    let key = m.key().unwrap_or_default();
    match (ChangelogKey::reserved(key), m.payload()) {
        (Some(ChangelogKey::Clock), value) => match value.and_then(|v| <[u8; 8]>::try_from(v).ok()) {
            Some(clock) => r.batch.set_clock(i64::from_be_bytes(clock)),
            None => warn!(partition, offset = m.offset(), "garbage clock record in the changelog; skipped"),
        },
        (Some(ChangelogKey::Definition(id)), Some(bytes)) if codec::decode_definition(bytes).is_ok() => {
            r.batch.put_definition(id, bytes)
        }
        (Some(_), _) => warn!(partition, offset = m.offset(), "garbage definition record in the changelog; skipped"),
        (None, None) => r.batch.delete_state(&String::from_utf8_lossy(key)),
        (None, Some(bytes)) => match codec::summary(bytes) {
            Ok(state) => r.batch.put_state(&String::from_utf8_lossy(key), bytes, timer_of(&state)),
            Err(e) => warn!(
                partition,
                offset = m.offset(),
                workflow_id = %String::from_utf8_lossy(key),
                error = %e,
                "garbage record in the changelog; skipped"
            ),
        },
    }
    r.next = m.offset() + 1;
    r.records += 1;
    metrics.restore_records.inc();
    if r.batch.len() >= RESTORE_BATCH {
        let mut batch = std::mem::replace(&mut r.batch, RestoreBatch::for_states(RESTORE_BATCH));
        batch.set_checkpoint(r.next);
        let write = Write { partition, generation: r.generation, store: Arc::clone(&r.store), batch, last: false };
        writer.write(write);
    }
}

/// What one [`Restorer::step`] finished.
#[derive(Debug, Default)]
pub struct Restored {
    /// Partitions whose stores reached the changelog's end, with their open workflows.
    pub done: Vec<(i32, i64)>,
    /// Partitions whose stores failed a write, and why.
    pub failed: Vec<(i32, StoreError)>,
}
