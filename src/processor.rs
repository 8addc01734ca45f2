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
//! - librdkafka's own threads (network, delivery reports), RocksDB's
//!   (flushes; compactions at the lowest priority);
//! - the tokio runtime, which serves HTTP and signals and never blocks on
//!   Kafka or RocksDB.

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
use crate::config::Config;
use crate::kafka;
use crate::metrics::Metrics;
use crate::restore::Restorer;
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
}

struct Engine {
    config: Arc<Config>,
    shared: Arc<Shared>,
    slots: BTreeMap<i32, Slot>,
    committer: Committer,
    restorer: Restorer,
    failure: Option<anyhow::Error>,
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
            let partition = element.partition();
            let dir = self.config.state.dir.join(&self.config.kafka.application_id).join(partition.to_string());
            let (store, open) = match self.restorer.open(partition, &dir) {
                Ok(opened) => opened,
                Err(e) => {
                    self.fail(anyhow!(e).context(format!("cannot open the state of partition {partition}")));
                    return;
                }
            };
            let task =
                Task::new(partition, Arc::clone(&store), Arc::clone(&self.config), Arc::clone(&self.shared.metrics));
            let ready = open.is_some();
            let phase = if ready { Phase::Active } else { Phase::Restoring };
            if let Some(open) = open {
                task.set_open(open);
                self.shared.stores.write().expect("stores lock").insert(partition, store);
            }
            self.slots.insert(partition, Slot { task, phase, resume_from: None, replay_from: None });
            if !ready {
                self.pause(consumer, partition, true);
            }
        }
        info!(partitions = ?self.slots.keys().collect::<Vec<_>>(), "partitions assigned");
        self.publish_health(true);
    }

    fn on_revoke(&mut self, consumer: &BaseConsumer<Callbacks>, tpl: &TopicPartitionList) {
        // Finish the interval's work before the partitions are given up (not
        // after a failure: what failed must not be committed).
        if self.failure.is_none() {
            self.commit(consumer, true);
        }
        for element in tpl.elements_for_topic(&self.config.kafka.input_topic) {
            let partition = element.partition();
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
        match self.restorer.step(budget) {
            Ok(done) => {
                for partition in done {
                    self.activate(consumer, partition);
                }
            }
            Err(e) => self.fail(anyhow!(e).context("restoring state from the changelog")),
        }
    }

    fn activate(&mut self, consumer: &BaseConsumer<Callbacks>, partition: i32) {
        let Some(slot) = self.slots.get_mut(&partition) else { return };
        slot.phase = Phase::Active;
        let resume_from = slot.resume_from.take();
        if let Err(e) = slot.task.recount_open() {
            self.fail(anyhow!(e).context(format!("reading the restored state of partition {partition}")));
            return;
        }
        self.shared.stores.write().expect("stores lock").insert(partition, Arc::clone(&slot.task.store));
        if let Some(offset) = resume_from {
            self.seek(consumer, partition, offset);
        }
        self.pause(consumer, partition, false);
        self.publish_health(true);
    }

    fn seek(&self, consumer: &BaseConsumer<Callbacks>, partition: i32, offset: i64) {
        if let Err(e) = consumer.seek(&self.config.kafka.input_topic, partition, Offset::Offset(offset), SEEK_TIMEOUT) {
            self.shared.health.lock().expect("health lock").failure =
                Some(format!("cannot seek partition {partition}: {e}"));
            error!(partition, offset, error = %e, "cannot seek the input partition");
        }
    }

    fn process(&mut self, messages: &[BorrowedMessage<'_>]) {
        let _span = info_span!("poll_batch", records = messages.len()).entered();
        let now = now_ms();
        for m in messages {
            let partition = m.partition();
            let Some(slot) = self.slots.get_mut(&partition) else { continue };
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
                topic: m.topic(),
                offset: m.offset(),
            };
            if let Err(e) = slot.task.process(&record, now) {
                self.fail(anyhow!(e).context(format!("processing partition {partition}")));
                return;
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
        for slot in self.slots.values_mut().filter(|s| s.phase == Phase::Active) {
            if let Err(e) = slot.task.punctuate(now) {
                self.failure.get_or_insert(anyhow!(e).context("firing timers"));
                return false;
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
            Ok(Some(committed)) => self.committed(committed),
            Ok(None) if wait => self.advance_commit(consumer, true),
            Ok(None) => {}
            Err(e) => self.commit_failed(consumer, e),
        }
        true
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
            Ok(Some(committed)) => self.committed(committed),
            Ok(None) => {}
            Err(e) => self.commit_failed(consumer, e),
        }
    }

    fn committed(&mut self, committed: Committed) {
        for (partition, next) in committed {
            if let Some(slot) = self.slots.get_mut(&partition) {
                slot.replay_from = Some(next);
            }
        }
        for slot in self.slots.values_mut() {
            slot.task.committed();
        }
    }

    fn commit_failed(&mut self, consumer: &BaseConsumer<Callbacks>, e: CommitError) {
        warn!(error = %e, "commit failed; discarding the work since the last commit and resuming from there");
        if let CommitError::Store(_) = e {
            self.fail(anyhow!(e).context("saving state"));
            return;
        }
        if e.needs_new_producer() {
            match Committer::new(Arc::clone(&self.config), Arc::clone(&self.shared.metrics)) {
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
        let mut failure = None;
        for (partition, slot) in &mut self.slots {
            if let Err(e) = slot.task.discard() {
                failure.get_or_insert(anyhow!(e).context(format!("re-reading the state of partition {partition}")));
            }
            if let Some(offset) = slot.replay_from {
                seeks.push((*partition, offset));
            }
        }
        if let Some(e) = failure {
            self.fail(e);
            return;
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
        error!(error = format!("{e:#}"), "the stream thread cannot go on");
        self.shared.health.lock().expect("health lock").failure = Some(format!("{e:#}"));
        self.failure.get_or_insert(e);
    }

    fn publish_health(&self, in_group: bool) {
        let mut h = self.shared.health.lock().expect("health lock");
        h.in_group = in_group;
        h.assigned = self.slots.keys().copied().collect();
        h.restoring = self.slots.iter().filter(|(_, s)| s.phase == Phase::Restoring).map(|(p, _)| *p).collect();
        self.shared.metrics.set_partitions(self.slots.len() - h.restoring.len(), h.restoring.len());
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
    let Some(partitions) = prepare_topics(&config, &shared, &runtime)? else { return Ok(()) };
    shared.health.lock().expect("health lock").input_partitions = partitions;
    let metrics = Arc::clone(&shared.metrics);
    metrics.register_workflow_types(config.workflows.iter().map(|w| w.workflow_type.as_str()));
    let committer = Committer::new(Arc::clone(&config), Arc::clone(&metrics))?;
    let restorer = Restorer::new(Arc::clone(&config), metrics).context("creating the changelog consumer")?;
    let engine = Arc::new(Mutex::new(Engine {
        config: Arc::clone(&config),
        shared: Arc::clone(&shared),
        slots: BTreeMap::new(),
        committer,
        restorer,
        failure: None,
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
            lock(&engine).process(&messages);
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
