//! The stream thread: one thread that polls the input topic, hands each
//! record to its partition's task, steps the restorer, publishes outcomes
//! every [`PUBLISH_INTERVAL`], and starts a commit every `commit_interval`.
//! It owns every task; the rebalance callbacks, which librdkafka runs inside
//! `poll`, reach the same state through one mutex that the loop never holds
//! while polling.
//!
//! The threads of a junction process, and who may block:
//! - this stream thread: librdkafka and RocksDB calls, never for long
//!   (a commit in flight is moved on between polls, not waited for);
//! - one `junction-save` thread per commit (see [`crate::commit`]): sends the
//!   changelog, waits for it and writes the stores, at a lower priority;
//! - two `junction-restore` threads that write restored batches to the
//!   stores (see [`crate::restore`]);
//! - librdkafka's own threads (network, delivery reports), RocksDB's
//!   (flushes; compactions at the lowest priority);
//! - the tokio runtime, which serves HTTP and signals and never blocks on
//!   Kafka or RocksDB.
//!
//! A partition whose store fails (a write refused for lack of space, an I/O
//! error, a store that cannot be opened) is stopped alone: it is paused, its
//! offsets stay at the last commit whose state was saved, `/readyz` names it,
//! and the other partitions go on. It is opened again after a pause that
//! doubles while it keeps failing ([`PARK_RETRY_FIRST`] up to
//! [`PARK_RETRY_MAX`]), through the same path as an assignment: the store is
//! checked and caught up from the changelog; then it is flushed, which proves
//! that it can write to disk again, and its input is replayed from the last
//! commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use serde::Serialize;
use tracing::{error, info, info_span, warn};

use crate::commit::{CommitError, Committed, Committer, PUBLISH_INTERVAL};
use crate::config::{Config, Guarantee};
use crate::instance::Instance;
use crate::kafka;
use crate::metrics::Metrics;
use crate::restore::{RestoreError, Restorer};
use crate::store::Store;
use crate::task::{InputRecord, Task};

/// Records handed to the tasks per poll batch.
const MAX_BATCH: usize = 2_000;
/// The longest the loop waits in one poll, so that shutdown is prompt.
const MAX_POLL_WAIT: Duration = Duration::from_millis(100);
/// Time given to restoring per loop turn while other partitions are active.
const RESTORE_SLICE: Duration = Duration::from_millis(20);
/// How often the loop looks at a commit in flight.
const COMMIT_CHECK: Duration = Duration::from_millis(1);
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);
/// The pauses between attempts to reach the cluster at start-up: doubling up to the maximum.
const STARTUP_RETRY_FIRST: Duration = Duration::from_millis(500);
const STARTUP_RETRY_MAX: Duration = Duration::from_secs(10);
/// How often `junction_state_bytes` is refreshed.
const STATE_SIZE_REPORT: Duration = Duration::from_secs(5);
/// The pauses before a stopped partition's store is opened again: doubling up to the maximum.
pub const PARK_RETRY_FIRST: Duration = Duration::from_secs(1);
pub const PARK_RETRY_MAX: Duration = Duration::from_secs(60);

/// What the HTTP side may see of the stream thread.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub shutdown: AtomicBool,
    pub health: Mutex<Health>,
    /// The stores of the active partitions, for `GET /workflows/{id}`.
    pub stores: RwLock<HashMap<i32, Arc<Store>>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    pub in_group: bool,
    pub input_partitions: usize,
    pub assigned: Vec<i32>,
    pub restoring: Vec<i32>,
    /// Partitions stopped because their state store failed, and why.
    pub stopped: BTreeMap<i32, String>,
    pub failure: Option<String>,
    /// Set while the Kafka cluster cannot be reached: why.
    pub unreachable: Option<String>,
}

impl Shared {
    pub fn new(metrics: Arc<Metrics>) -> Shared {
        Shared {
            metrics,
            shutdown: AtomicBool::new(false),
            health: Mutex::new(Health::default()),
            stores: RwLock::new(HashMap::new()),
        }
    }

    pub fn health(&self) -> Health {
        self.health.lock().expect("health lock").clone()
    }

    fn set_unreachable(&self, why: Option<String>) {
        let mut h = self.health.lock().expect("health lock");
        if h.unreachable.is_some() != why.is_some() {
            match &why {
                Some(why) => warn!(reason = %why, "the Kafka cluster is unreachable; librdkafka keeps retrying"),
                None => info!("the Kafka cluster is reachable again"),
            }
        }
        h.unreachable = why;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Restoring,
    Active,
}

struct Slot {
    task: Task,
    phase: Phase,
    /// The first record that arrived while the store was restoring: processing starts there.
    resume_from: Option<i64>,
    /// Where to rewind to when a commit fails: the offset after the last commit.
    replay_from: Option<i64>,
    /// Opened again after its store failed: it must prove it can write before it resumes.
    reopened: bool,
}

/// A partition stopped because its store failed: assigned, paused, and
/// waiting to be opened again.
struct Parked {
    error: String,
    /// Where its input resumes: the offset after its last commit, or the
    /// first record that arrived since (`None`: the committed offset).
    from: Option<i64>,
    retry_at: Instant,
}

struct Engine {
    config: Arc<Config>,
    shared: Arc<Shared>,
    slots: BTreeMap<i32, Slot>,
    parked: BTreeMap<i32, Parked>,
    /// Each partition's last stop and the pause it got, so that a partition
    /// that fails again soon after it resumed waits longer.
    stops: HashMap<i32, (Instant, Duration)>,
    committer: Committer,
    /// The producer's transactional ID, for a producer made anew.
    transactional_id: String,
    restorer: Restorer,
    failure: Option<anyhow::Error>,
    /// Set once the stream thread cannot go on: nothing is committed after that.
    stopping_on_error: bool,
}

/// The consumer context: librdkafka calls it inside `poll` on a rebalance,
/// with its statistics and with client-wide errors.
struct Callbacks {
    engine: Arc<Mutex<Engine>>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    input_topic: String,
}

impl ClientContext for Callbacks {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.shared.set_unreachable(Some(reason.to_string()));
        } else {
            warn!(error = %error, reason, "Kafka client error");
        }
    }

    fn stats(&self, statistics: Statistics) {
        if statistics.brokers.values().any(|b| b.state == "UP") {
            self.shared.set_unreachable(None);
        }
        let Some(topic) = statistics.topics.get(&self.input_topic) else { return };
        for (partition, p) in &topic.partitions {
            // Partition -1 is librdkafka's internal unassigned queue; a lag of -1 is unknown.
            if *partition >= 0 && p.consumer_lag >= 0 && p.fetch_state == "active" {
                self.metrics.set_consumer_lag(*partition, p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for Callbacks {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            lock(&self.engine).on_revoke(consumer, tpl);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => lock(&self.engine).on_assign(consumer, tpl),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    // A panic while holding the lock already ends the process; the guard is still usable to shut down.
    engine.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Engine {
    fn on_assign(&mut self, consumer: &BaseConsumer<Callbacks>, tpl: &TopicPartitionList) {
        let topic = self.config.kafka.input_topic.clone();
        for element in tpl.elements_for_topic(&topic) {
            if let Err(e) = self.open(consumer, element.partition(), None) {
                self.fail(e);
                return;
            }
        }
        info!(partitions = ?self.slots.keys().collect::<Vec<_>>(), "partitions assigned");
        self.publish_health(true);
    }

    /// Opens a partition's store and makes its task: active at once when
    /// the store is up to date, restoring otherwise (paused meanwhile). A
    /// stopped partition opened again (`reopen`) processes from where it
    /// stopped, once its store has proved it can write. A store that fails
    /// stops the partition; an error only for what stops the whole processor.
    fn open(
        &mut self,
        consumer: &BaseConsumer<Callbacks>,
        partition: i32,
        reopen: Option<&Parked>,
    ) -> anyhow::Result<()> {
        let from = reopen.and_then(|p| p.from);
        let dir = self.config.state.dir.join(&self.config.kafka.application_id).join(partition.to_string());
        let (store, open) = match self.restorer.open(partition, &dir) {
            Ok(opened) => opened,
            Err(RestoreError::Store(e)) => {
                self.park(consumer, partition, &e, from);
                return Ok(());
            }
            Err(e) => return Err(anyhow!(e).context(format!("cannot open the state of partition {partition}"))),
        };
        let task = Task::new(partition, Arc::clone(&store), Arc::clone(&self.config), Arc::clone(&self.shared.metrics));
        let phase = if open.is_some() { Phase::Active } else { Phase::Restoring };
        if let Some(open) = open {
            task.set_open(open);
        }
        let reopened = reopen.is_some();
        self.slots.insert(partition, Slot { task, phase, resume_from: from, replay_from: from, reopened });
        match phase {
            Phase::Restoring => self.pause(consumer, partition, true),
            // Paused since it stopped: resumes once its store proves it can write.
            Phase::Active if reopened => self.activate(consumer, partition),
            Phase::Active => {
                self.shared.stores.write().expect("stores lock").insert(partition, store);
            }
        }
        Ok(())
    }

    /// Stops a partition whose store failed: pauses its input, drops its
    /// task and closes its store (what it decided since its last saved
    /// commit is replayed), and tries it again after a pause.
    fn park(
        &mut self,
        consumer: &BaseConsumer<Callbacks>,
        partition: i32,
        error: &dyn std::fmt::Display,
        from: Option<i64>,
    ) {
        self.pause(consumer, partition, true);
        self.restorer.cancel(partition);
        self.shared.stores.write().expect("stores lock").remove(&partition);
        let from = match self.slots.remove(&partition) {
            Some(slot) => slot.replay_from.or(slot.resume_from).or(from),
            None => from,
        };
        let now = Instant::now();
        let backoff = match self.stops.get(&partition) {
            // Failed again soon after its last attempt: wait longer.
            Some((at, last)) if now.duration_since(*at) < *last + PARK_RETRY_MAX => (*last * 2).min(PARK_RETRY_MAX),
            _ => PARK_RETRY_FIRST,
        };
        self.stops.insert(partition, (now, backoff));
        error!(
            partition,
            error = %error,
            resume_from = from,
            retry_in_s = backoff.as_secs(),
            "partition stopped: its state store failed; its offsets stay at the last saved commit, and the other partitions go on"
        );
        self.shared.metrics.partition_stopped();
        self.parked.insert(
            partition,
            Parked { error: format!("partition {partition} stopped: {error}"), from, retry_at: now + backoff },
        );
        self.publish_health(true);
    }

    /// Opens the stopped partitions whose pause is over.
    fn retry_parked(&mut self, consumer: &BaseConsumer<Callbacks>) {
        let now = Instant::now();
        let due: Vec<i32> = self.parked.iter().filter(|(_, p)| p.retry_at <= now).map(|(p, _)| *p).collect();
        for partition in due {
            let parked = self.parked.remove(&partition).expect("parked");
            info!(partition, "opening a stopped partition's state store again");
            if let Err(e) = self.open(consumer, partition, Some(&parked)) {
                self.fail(e);
                return;
            }
            self.publish_health(true);
        }
    }

    fn on_revoke(&mut self, consumer: &BaseConsumer<Callbacks>, tpl: &TopicPartitionList) {
        // Finish the interval's work before the partitions are given up (not
        // after a failure: what failed must not be committed).
        if !self.stopping_on_error {
            self.commit(consumer, true);
        }
        for element in tpl.elements_for_topic(&self.config.kafka.input_topic) {
            let partition = element.partition();
            self.parked.remove(&partition);
            self.stops.remove(&partition);
            self.restorer.cancel(partition);
            self.shared.metrics.forget_partition(partition);
            self.shared.stores.write().expect("stores lock").remove(&partition);
            if let Some(slot) = self.slots.remove(&partition) {
                if let Err(e) = slot.task.store.flush() {
                    warn!(partition, error = %e, "cannot flush a revoked partition's store");
                }
                // Dropping the last handle closes the store and releases its lock.
            }
        }
        let revoked: Vec<i32> =
            tpl.elements_for_topic(&self.config.kafka.input_topic).iter().map(|e| e.partition()).collect();
        info!(?revoked, keeping = ?self.slots.keys().collect::<Vec<_>>(), "partitions revoked");
        self.publish_health(false);
    }

    fn pause(&self, consumer: &BaseConsumer<Callbacks>, partition: i32, pause: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.kafka.input_topic, partition);
        let result = if pause { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
        if let Err(e) = result {
            warn!(partition, error = %e, pause, "cannot pause or resume a partition");
        }
    }

    fn restore_step(&mut self, consumer: &BaseConsumer<Callbacks>, budget: Duration) {
        let restored = self.restorer.step(budget);
        for (partition, e) in restored.failed {
            self.park(consumer, partition, &e, None);
        }
        for partition in restored.done {
            self.activate(consumer, partition);
        }
    }

    /// Starts processing a partition whose store is up to date: restored,
    /// or opened again after it stopped.
    fn activate(&mut self, consumer: &BaseConsumer<Callbacks>, partition: i32) {
        let Some(slot) = self.slots.get_mut(&partition) else { return };
        // A store opened up to date was counted as it was verified; a restored one is counted now.
        let restored = slot.phase == Phase::Restoring;
        slot.phase = Phase::Active;
        let resume_from = slot.resume_from.take();
        let reopened = std::mem::take(&mut slot.reopened);
        let ready = (if restored { slot.task.recount_open() } else { Ok(()) }).and_then(|()| {
            // A store that failed proves it can write to disk again before its partition resumes.
            if reopened {
                slot.task.store.flush()?;
            }
            Ok(())
        });
        if let Err(e) = ready {
            self.park(consumer, partition, &e, resume_from);
            return;
        }
        self.shared.stores.write().expect("stores lock").insert(partition, Arc::clone(&slot.task.store));
        if let Some(offset) = resume_from {
            self.seek(consumer, partition, offset);
        }
        self.pause(consumer, partition, false);
        if reopened {
            info!(partition, resume_from, "stopped partition resumed");
        }
        self.publish_health(true);
    }

    fn seek(&self, consumer: &BaseConsumer<Callbacks>, partition: i32, offset: i64) {
        if let Err(e) = consumer.seek(&self.config.kafka.input_topic, partition, Offset::Offset(offset), SEEK_TIMEOUT) {
            self.shared.health.lock().expect("health lock").failure =
                Some(format!("cannot seek partition {partition}: {e}"));
            error!(partition, offset, error = %e, "cannot seek the input partition");
        }
    }

    fn process(&mut self, consumer: &BaseConsumer<Callbacks>, messages: &[BorrowedMessage<'_>]) {
        let _span = info_span!("poll_batch", records = messages.len()).entered();
        let now = now_ms();
        // The only topic subscribed: not asked of librdkafka record by record.
        let config = Arc::clone(&self.config);
        let topic = config.kafka.input_topic.as_str();
        for m in messages {
            let partition = m.partition();
            let Some(slot) = self.slots.get_mut(&partition) else {
                // Fetched before a stopped partition's pause took hold: processed when it resumes, from here.
                if let Some(parked) = self.parked.get_mut(&partition) {
                    parked.from.get_or_insert(m.offset());
                }
                continue;
            };
            if slot.phase != Phase::Active {
                // Fetched before the pause took hold: processed after the restore, from here.
                if slot.resume_from.is_none() {
                    slot.resume_from = Some(m.offset());
                }
                continue;
            }
            slot.replay_from.get_or_insert(m.offset());
            let record = InputRecord {
                key: m.key(),
                value: m.payload(),
                timestamp_ms: m.timestamp().to_millis(),
                topic,
                offset: m.offset(),
            };
            if let Err(e) = slot.task.process(&record, now) {
                self.park(consumer, partition, &e, None);
            }
        }
    }

    /// Fires due timers and starts committing the active tasks' work, after
    /// finishing the commit still in flight. With `wait` (at a rebalance and
    /// at shutdown) it returns only once the commit is finished. A failed
    /// commit discards the work since the last finished one and rewinds there.
    /// Without `wait`, a commit still in flight is left to finish and this
    /// returns `false`: the next one starts as soon as it has (processing
    /// goes on meanwhile, so a slow broker stretches the interval instead of
    /// stopping the stream thread).
    fn commit(&mut self, consumer: &BaseConsumer<Callbacks>, wait: bool) -> bool {
        if self.committer.is_committing() {
            self.advance_commit(consumer, wait);
            if self.failure.is_some() || self.committer.is_committing() {
                return false;
            }
        }
        let now = now_ms();
        let mut failed = Vec::new();
        for slot in self.slots.values_mut().filter(|s| s.phase == Phase::Active) {
            if let Err(e) = slot.task.punctuate(now) {
                failed.push((slot.task.partition, e));
            }
        }
        for (partition, e) in failed {
            self.park(consumer, partition, &e, None);
        }
        if self.config.kafka.processing_guarantee == Guarantee::ExactlyOnce {
            if let Err(e) = self.cover_offsets(consumer) {
                self.commit_failed(consumer, e);
                return true;
            }
        }
        let mut tasks: Vec<&mut Task> = self
            .slots
            .values_mut()
            .filter(|s| s.phase == Phase::Active && s.task.is_dirty())
            .map(|s| &mut s.task)
            .collect();
        if tasks.is_empty() {
            return true;
        }
        match self.committer.begin(&mut tasks, consumer) {
            Ok(Some(committed)) => self.committed(consumer, committed),
            Ok(None) if wait => self.advance_commit(consumer, true),
            Ok(None) => {}
            Err(e) => self.commit_failed(consumer, e),
        }
        true
    }

    /// Gives every task that the next transaction carries an input offset to
    /// commit in it, even one that read nothing since the last commit (a
    /// deadline fired): its last committed offset again. The transaction's
    /// offsets are what the group coordinator checks, so a transaction
    /// without them would commit even from an instance that has lost its
    /// partitions to another.
    fn cover_offsets(&mut self, consumer: &BaseConsumer<Callbacks>) -> Result<(), CommitError> {
        for (partition, slot) in self.slots.iter_mut() {
            if slot.phase != Phase::Active || !slot.task.is_dirty() || slot.task.has_offset() {
                continue;
            }
            let offset = match slot.replay_from {
                Some(offset) => offset,
                None => {
                    let offset = kafka::committed_offset(&self.config.kafka, consumer, *partition)
                        .map_err(CommitError::Offsets)?;
                    slot.replay_from = Some(offset);
                    offset
                }
            };
            slot.task.cover_offset(offset);
        }
        Ok(())
    }

    /// Sends what the active tasks decided since the last time (under
    /// `at_least_once`; under `exactly_once` it waits for the commit).
    fn publish(&mut self, consumer: &BaseConsumer<Callbacks>) {
        for slot in self.slots.values_mut().filter(|s| s.phase == Phase::Active) {
            let (outcomes, dead_letters) = slot.task.outputs();
            if outcomes.is_empty() && dead_letters.is_empty() {
                continue;
            }
            if let Err(e) = self.committer.publish(outcomes, dead_letters) {
                self.commit_failed(consumer, e);
                return;
            }
        }
    }

    /// Moves the commit in flight on; with `wait`, to its end.
    fn advance_commit(&mut self, consumer: &BaseConsumer<Callbacks>, wait: bool) {
        match self.committer.advance(consumer, wait) {
            Ok(Some(committed)) => self.committed(consumer, committed),
            Ok(None) => {}
            Err(e) => self.commit_failed(consumer, e),
        }
    }

    fn committed(&mut self, consumer: &BaseConsumer<Callbacks>, committed: Committed) {
        for (partition, next) in committed.offsets {
            if let Some(slot) = self.slots.get_mut(&partition) {
                slot.replay_from = Some(next);
            }
        }
        for (partition, e) in committed.failed {
            self.park(consumer, partition, &e, None);
        }
        for slot in self.slots.values_mut() {
            slot.task.committed();
        }
    }

    fn commit_failed(&mut self, consumer: &BaseConsumer<Callbacks>, e: CommitError) {
        if self.stopping_on_error {
            return;
        }
        warn!(error = %e, "commit failed; discarding the work since the last commit and resuming from there");
        if let CommitError::Fenced { transaction_age, .. } = &e {
            let timeout = kafka::transaction_timeout(&self.config.kafka);
            if *transaction_age < timeout {
                // A producer fenced in a young transaction was fenced by a
                // newer one with its transactional ID: another live process.
                // Making a producer again would fence that one in turn, and
                // the two would take turns for ever.
                self.fail(anyhow!(
                    "this instance's producer was fenced by another process using the same transactional ID \
                     {id:?}: two instances were given the same kafka.instance_id. Give each instance its own, or \
                     leave kafka.instance_id unset (each state directory then keeps an ID of its own)",
                    id = self.transactional_id
                ));
                return;
            }
            warn!(
                transaction_age_s = transaction_age.as_secs_f64(),
                transaction_timeout_s = timeout.as_secs_f64(),
                "this instance was fenced: its transaction outlived transaction.timeout.ms (the process was paused \
                 or stalled) and the broker aborted it; its partitions may have moved. Nothing of it was committed: \
                 the work since the last commit is redone with a new producer, for the partitions it still holds"
            );
        }
        if e.needs_new_producer() {
            match Committer::new(Arc::clone(&self.config), Arc::clone(&self.shared.metrics), &self.transactional_id) {
                Ok(c) => self.committer = c,
                Err(e) => {
                    self.fail(anyhow!(e).context("replacing the producer after a fatal error"));
                    return;
                }
            }
        }
        self.rewind(consumer);
    }

    fn rewind(&mut self, consumer: &BaseConsumer<Callbacks>) {
        let mut seeks = Vec::new();
        let mut failed = Vec::new();
        for (partition, slot) in &mut self.slots {
            match slot.task.discard() {
                Err(e) => failed.push((*partition, e)),
                Ok(()) => seeks.extend(slot.replay_from.map(|offset| (*partition, offset))),
            }
        }
        for (partition, e) in failed {
            self.park(consumer, partition, &e, None);
        }
        for (partition, offset) in seeks {
            self.seek(consumer, partition, offset);
        }
    }

    /// Refreshes `junction_state_bytes` from RocksDB's estimates.
    fn report_state_sizes(&self) {
        for (partition, slot) in self.slots.iter().filter(|(_, s)| s.phase == Phase::Active) {
            self.shared.metrics.set_state_bytes(*partition, slot.task.store.estimated_bytes());
        }
    }

    fn fail(&mut self, e: anyhow::Error) {
        self.stopping_on_error = true;
        error!(error = format!("{e:#}"), "the stream thread cannot go on");
        self.shared.health.lock().expect("health lock").failure = Some(format!("{e:#}"));
        self.failure.get_or_insert(e);
    }

    fn publish_health(&self, in_group: bool) {
        let mut h = self.shared.health.lock().expect("health lock");
        h.in_group = in_group;
        h.assigned = self.slots.keys().copied().collect();
        h.assigned.extend(self.parked.keys());
        h.assigned.sort_unstable();
        h.restoring = self.slots.iter().filter(|(_, s)| s.phase == Phase::Restoring).map(|(p, _)| *p).collect();
        h.stopped = self.parked.iter().map(|(p, parked)| (*p, parked.error.clone())).collect();
        self.shared.metrics.set_partitions(self.slots.len() - h.restoring.len(), h.restoring.len(), self.parked.len());
    }
}

/// Checks and creates the topics, trying again with a growing pause while
/// the cluster cannot be reached (`/readyz` says so meanwhile). `None`: shut
/// down before the cluster answered.
fn prepare_topics(
    config: &Config,
    shared: &Shared,
    runtime: &tokio::runtime::Handle,
) -> Result<Option<usize>, kafka::TopicError> {
    let mut pause = STARTUP_RETRY_FIRST;
    loop {
        match kafka::prepare_topics(&config.kafka, runtime) {
            Ok(partitions) => {
                shared.set_unreachable(None);
                return Ok(Some(partitions));
            }
            Err(e) if e.is_transient() => {
                warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "cannot reach the Kafka cluster at start-up");
                shared.set_unreachable(Some(e.to_string()));
            }
            Err(e) => return Err(e),
        }
        let until = Instant::now() + pause;
        while Instant::now() < until {
            if shared.shutdown.load(Ordering::SeqCst) {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        pause = (pause * 2).min(STARTUP_RETRY_MAX);
    }
}

/// Runs the processor until `shared.shutdown` is set, then commits, closes
/// the stores and leaves the group. Returns an error when it cannot go on.
pub fn run(config: Arc<Config>, shared: Arc<Shared>, runtime: tokio::runtime::Handle) -> anyhow::Result<()> {
    // Held until the process ends: no other process uses this state directory, nor its instance ID.
    let instance = Instance::claim(&config)?;
    let transactional_id = kafka::transactional_id(&config.kafka, &instance.id);
    let Some(partitions) = prepare_topics(&config, &shared, &runtime)? else { return Ok(()) };
    shared.health.lock().expect("health lock").input_partitions = partitions;
    let metrics = Arc::clone(&shared.metrics);
    metrics.register_workflow_types(config.workflows.iter().map(|w| w.workflow_type.as_str()));
    let committer = Committer::new(Arc::clone(&config), Arc::clone(&metrics), &transactional_id)?;
    let restorer = Restorer::new(Arc::clone(&config), metrics)?;
    let engine = Arc::new(Mutex::new(Engine {
        config: Arc::clone(&config),
        shared: Arc::clone(&shared),
        slots: BTreeMap::new(),
        parked: BTreeMap::new(),
        stops: HashMap::new(),
        committer,
        transactional_id: transactional_id.clone(),
        restorer,
        failure: None,
        stopping_on_error: false,
    }));
    let consumer: BaseConsumer<Callbacks> = kafka::consumer_config(&config.kafka)
        .create_with_context(Callbacks {
            engine: Arc::clone(&engine),
            shared: Arc::clone(&shared),
            metrics: Arc::clone(&shared.metrics),
            input_topic: config.kafka.input_topic.clone(),
        })
        .context("creating the input consumer")?;
    consumer.subscribe(&[&config.kafka.input_topic]).context("subscribing to the input topic")?;
    info!(
        input = %config.kafka.input_topic,
        partitions,
        guarantee = config.kafka.processing_guarantee.as_str(),
        instance_id = %instance.id,
        transactional_id = if config.kafka.processing_guarantee == Guarantee::ExactlyOnce { transactional_id.as_str() } else { "" },
        "junction is running"
    );

    let interval = config.kafka.commit_interval;
    let mut next_commit = Instant::now() + interval;
    let mut next_publish = Instant::now() + PUBLISH_INTERVAL;
    let mut next_size_report = Instant::now();
    let result = loop {
        if shared.shutdown.load(Ordering::SeqCst) {
            break Ok(());
        }
        let restoring = {
            let mut e = lock(&engine);
            if let Some(f) = e.failure.take() {
                break Err(f);
            }
            if !e.parked.is_empty() {
                e.retry_parked(&consumer);
            }
            if e.restorer.is_restoring() {
                let active = e.slots.values().any(|s| s.phase == Phase::Active);
                e.restore_step(&consumer, if active { RESTORE_SLICE } else { MAX_POLL_WAIT });
            }
            e.restorer.is_restoring()
        };
        let committing = lock(&engine).committer.is_committing();
        let wait = if restoring {
            Duration::ZERO
        } else if committing {
            // Come back soon to move the commit on as its deliveries arrive.
            COMMIT_CHECK
        } else {
            next_commit.min(next_publish).saturating_duration_since(Instant::now()).min(MAX_POLL_WAIT)
        };
        let mut messages = Vec::new();
        let mut polled = consumer.poll(wait);
        while let Some(result) = polled {
            match result {
                Ok(m) => messages.push(m),
                Err(e) => warn!(error = %e, "input consumer error"),
            }
            if messages.len() >= MAX_BATCH {
                break;
            }
            polled = consumer.poll(Duration::ZERO);
        }
        if !messages.is_empty() {
            shared.set_unreachable(None);
            lock(&engine).process(&consumer, &messages);
        }
        drop(messages);
        if committing {
            lock(&engine).advance_commit(&consumer, false);
        }
        if Instant::now() >= next_publish {
            lock(&engine).publish(&consumer);
            next_publish = Instant::now() + PUBLISH_INTERVAL;
        }
        if Instant::now() >= next_commit && lock(&engine).commit(&consumer, false) {
            // A fixed rate: the time a commit takes does not stretch the
            // interval, which bounds how long an outcome waits for it.
            next_commit += interval;
            if next_commit < Instant::now() {
                next_commit = Instant::now() + interval;
            }
        }
        if Instant::now() >= next_size_report {
            lock(&engine).report_state_sizes();
            next_size_report = Instant::now() + STATE_SIZE_REPORT;
        }
    };

    info!("shutting down: committing, closing stores, leaving the group");
    if result.is_ok() {
        lock(&engine).commit(&consumer, true);
    }
    // Leaving the group runs the revoke callback, which closes the stores.
    drop(consumer);
    let mut e = lock(&engine);
    for (partition, slot) in std::mem::take(&mut e.slots) {
        if let Err(err) = slot.task.store.flush() {
            warn!(partition, error = %err, "cannot flush a store at shutdown");
        }
    }
    shared.stores.write().expect("stores lock").clear();
    result.and(e.failure.take().map_or(Ok(()), Err))
}
