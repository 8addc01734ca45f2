//! The commit protocol: what makes an interval's work durable, in an order
//! that keeps the guarantees whatever crashes in between.
//!
//! `at_least_once`:
//! 1. outcomes and dead letters are produced as they are decided, in small
//!    batches ([`Committer::publish`], every [`PUBLISH_INTERVAL`]), so that
//!    they do not wait for the commit; the commit waits until its
//!    interval's are delivered;
//! 2. then the changelog records, delivered: a changelog record is never
//!    visible before the outcome it implies, so a restored store never hides
//!    an outcome that was not published;
//! 3. then each store's batch, with the changelog offset as checkpoint;
//! 4. then the input offsets of the partitions whose stores took their
//!    batch. A crash anywhere repeats input, which the join absorbs as
//!    duplicates, or repeats an outcome with the same outcome ID.
//!
//! A store that fails its write (disk full, an I/O error) fails only its own
//! partition: that partition's offsets are not committed, and the commit
//! reports it ([`Committed::failed`]) so that the processor stops the
//! partition. The other partitions' commits go through.
//!
//! Under `at_least_once` a commit is pipelined: [`Committer::begin`] closes
//! the interval and returns, and the stream thread goes on processing the
//! next interval while [`Committer::advance`] moves the commit on between
//! polls. Once the interval's outcomes are delivered, a `junction-save`
//! thread sends the changelog records, waits for them and writes the stores
//! (steps 2 and 3); the stream thread then commits the offsets. Every record
//! is sent tagged with its interval (its epoch), so that a commit waits for
//! its own records only. One commit is in flight at a time; the tasks keep
//! its states readable until the stores have them.
//!
//! `exactly_once`: outcomes, dead letters, changelog records and input offsets
//! go in one transaction; the stores are written once it has committed. A
//! store that fails its write then is behind a changelog that holds its
//! state: the partition is stopped, and its store is caught up from the
//! changelog when it is opened again.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use crate::config::{Config, Guarantee};
use crate::dead_letter::DeadLetter;
use crate::kafka::{self, DeliveryTracker};
use crate::metrics::Metrics;
use crate::names;
use crate::store::{Store, StoreBatch, StoreError};
use crate::task::{Decided, Staged, Task};

/// How long one flush or transaction step may take before the commit fails.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Under `at_least_once`, how often decided outcomes are sent, at most:
/// often enough that an outcome does not wait for the commit interval, and
/// seldom enough that each produce request carries a batch.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("records were not delivered: {0}")]
    Delivery(KafkaError),
    #[error("the transaction was aborted: {0}")]
    Aborted(KafkaError),
    #[error("the producer hit a fatal error: {0}")]
    Fatal(KafkaError),
    /// The broker fenced this producer: either a newer producer took its
    /// transactional ID, or the broker aborted its transaction for being
    /// older than `transaction.timeout.ms` (the process was paused or
    /// stalled), which the age tells apart.
    #[error("the producer was fenced, in a transaction {}s old: {source}", transaction_age.as_secs())]
    Fenced { source: KafkaError, transaction_age: Duration },
    #[error("cannot commit input offsets: {0}")]
    Offsets(KafkaError),
    #[error("the consumer is not in its group, so its offsets cannot join the transaction")]
    NotInGroup,
    #[error("cannot create the producer: {0}")]
    Producer(KafkaError),
    #[error("cannot start a thread: {0}")]
    Thread(String),
}

impl CommitError {
    /// Whether the producer must be replaced before the next commit.
    pub fn needs_new_producer(&self) -> bool {
        matches!(self, CommitError::Fatal(_) | CommitError::Fenced { .. })
    }
}

/// What a finished commit did.
#[derive(Debug, Default)]
pub struct Committed {
    /// The input offsets committed: (partition, next offset).
    pub offsets: Vec<(i32, i64)>,
    /// The partitions whose stores failed to take their batch, and why.
    /// Under `at_least_once` their offsets were not committed.
    pub failed: StoreFailures,
}

/// The stores that failed to take their batch: (partition, why).
type StoreFailures = Vec<(i32, StoreError)>;

/// An `at_least_once` commit between its first and its last step.
struct InFlight {
    epoch: usize,
    staged: Vec<(i32, Staged)>,
    changelog_records: usize,
    /// The store writes, once the changelog is delivered.
    saving: Option<JoinHandle<Result<StoreFailures, CommitError>>>,
    started: Instant,
}

pub struct Committer {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// Delivery reports are served on the producer's own thread, which
    /// `flush`, `commit_transaction` and `abort_transaction` rely on, and
    /// which lets a pipelined commit see its deliveries without polling.
    producer: Arc<ThreadedProducer<DeliveryTracker>>,
    in_flight: Option<InFlight>,
    /// The interval that records sent now belong to.
    epoch: usize,
}

impl Committer {
    /// Creates the producer; under exactly-once, initialises its transactions,
    /// which fences any older producer with the same transactional ID and
    /// aborts what it left open.
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>, transactional_id: &str) -> Result<Committer, CommitError> {
        let tracker = DeliveryTracker::new(config.kafka.changelog_topic());
        let producer: ThreadedProducer<DeliveryTracker> = kafka::producer_config(&config.kafka, transactional_id)
            .create_with_context(tracker)
            .map_err(CommitError::Producer)?;
        if config.kafka.processing_guarantee == Guarantee::ExactlyOnce {
            producer.init_transactions(COMMIT_TIMEOUT).map_err(|e| transaction_error(e, Duration::ZERO))?;
        }
        Ok(Committer { config, metrics, producer: Arc::new(producer), in_flight: None, epoch: 0 })
    }

    /// Under `at_least_once`, sends the outcomes and dead letters decided so
    /// far; the commit of their interval waits for their delivery. Under
    /// `exactly_once` they wait for the commit's transaction: this does nothing.
    pub fn publish(
        &mut self,
        outcomes: &mut Vec<Decided>,
        dead_letters: &mut Vec<DeadLetter>,
    ) -> Result<(), CommitError> {
        if self.config.kafka.processing_guarantee == Guarantee::ExactlyOnce {
            return Ok(());
        }
        let sent = self.send_outputs(outcomes, dead_letters);
        self.count_outcomes(outcomes);
        outcomes.clear();
        dead_letters.clear();
        sent
    }

    /// Whether a commit is in flight: [`Committer::advance`] must finish it
    /// before the next one begins.
    pub fn is_committing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Starts committing every task's staged work. Returns the offsets
    /// committed when the commit is already finished (always under
    /// exactly-once), `None` while it is in flight. On error, the caller
    /// discards what the tasks staged and rewinds their partitions to the
    /// last commit.
    pub fn begin<C: ConsumerContext>(
        &mut self,
        tasks: &mut [&mut Task],
        consumer: &BaseConsumer<C>,
    ) -> Result<Option<Committed>, CommitError> {
        assert!(self.in_flight.is_none(), "a commit is already in flight");
        let staged: Vec<(i32, Staged)> = tasks.iter_mut().map(|t| (t.partition, t.stage())).collect();
        let nothing = staged.iter().all(|(_, s)| {
            s.next_offset.is_none() && s.outcomes.is_empty() && s.changelog.is_empty() && s.batch.is_empty()
        });
        if nothing {
            return Ok(Some(Committed::default()));
        }
        let started = Instant::now();
        match self.config.kafka.processing_guarantee {
            Guarantee::ExactlyOnce => {
                let result = self.commit_exactly_once(staged, consumer);
                self.finished(started, result.is_ok());
                result.map(Some)
            }
            Guarantee::AtLeastOnce => {
                // What was not yet published (outcomes of timers fired for this commit) goes now.
                let sent = staged.iter().try_for_each(|(_, s)| self.send_outputs(&s.outcomes, &s.dead_letters));
                staged.iter().for_each(|(_, s)| self.count_outcomes(&s.outcomes));
                let epoch = self.epoch;
                self.epoch += 1;
                self.in_flight = Some(InFlight { epoch, staged, changelog_records: 0, saving: None, started });
                if let Err(e) = sent {
                    return Err(self.abandon(e));
                }
                self.advance(consumer, false)
            }
        }
    }

    /// Moves the commit in flight on as far as its deliveries allow; with
    /// `wait`, to its end. Returns the offsets committed once it is finished.
    pub fn advance<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        wait: bool,
    ) -> Result<Option<Committed>, CommitError> {
        let result = self.step(consumer, wait);
        match result {
            Err(e) => Err(self.abandon(e)),
            ok => ok,
        }
    }

    fn step<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        wait: bool,
    ) -> Result<Option<Committed>, CommitError> {
        loop {
            let Some(f) = &mut self.in_flight else { return Ok(None) };
            if let Some(saving) = &f.saving {
                if !wait && !saving.is_finished() {
                    return Ok(None);
                }
                let saving = f.saving.take().expect("saving");
                let failed = saving.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
                let f = self.in_flight.take().expect("in flight");
                // A partition whose state was not saved keeps its offset where it was.
                let done = committed(&f.staged, failed);
                let offsets = self.offsets(&done)?;
                if offsets.count() > 0 {
                    // Waiting (at a rebalance or shutdown) the offsets must be in before the partitions go;
                    // otherwise a lost asynchronous commit is covered by the next one.
                    let mode = if wait { CommitMode::Sync } else { CommitMode::Async };
                    consumer.commit(&offsets, mode).map_err(CommitError::Offsets)?;
                }
                self.finished(f.started, true);
                debug!(changelog = f.changelog_records, "committed");
                return Ok(Some(done));
            }
            let (epoch, started) = (f.epoch, f.started);
            if !self.delivered(epoch, started, wait)? {
                return Ok(None);
            }
            // The interval's outcomes are delivered. The changelog records
            // are sent, awaited and the stores written on a thread of their
            // own while the stream thread goes on; the tasks keep these
            // states readable until then.
            let f = self.in_flight.as_mut().expect("in flight");
            let work: Vec<SaveWork> = f
                .staged
                .iter_mut()
                .map(|(partition, s)| SaveWork {
                    partition: *partition,
                    changelog: std::mem::take(&mut s.changelog),
                    store: Arc::clone(&s.store),
                    batch: std::mem::take(&mut s.batch),
                })
                .collect();
            f.changelog_records = work.iter().map(|w| w.changelog.len()).sum();
            let producer = Arc::clone(&self.producer);
            let topic = self.config.kafka.changelog_topic();
            f.saving = Some(
                std::thread::Builder::new()
                    .name("junction-save".into())
                    .spawn(move || save(&producer, &topic, epoch, started, work))
                    .map_err(|e| CommitError::Thread(e.to_string()))?,
            );
        }
    }

    /// Whether the records of `epoch` are delivered; with `wait`, waits for
    /// everything in flight. An error for a failed delivery, or one that
    /// took longer than the commit timeout.
    fn delivered(&self, epoch: usize, started: Instant, wait: bool) -> Result<bool, CommitError> {
        if wait {
            return self.flush().map(|_| true);
        }
        if self.producer.context().in_flight(epoch) > 0 {
            if started.elapsed() > COMMIT_TIMEOUT {
                return Err(CommitError::Delivery(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)));
            }
            return Ok(false);
        }
        self.drain_deliveries().map(|_| true)
    }

    /// Drops the commit in flight after an error, and waits for what is still
    /// being delivered, so that the next commit counts only its own records.
    fn abandon(&mut self, e: CommitError) -> CommitError {
        if let Some(f) = self.in_flight.take() {
            let _ = self.flush();
            // A later commit's write must never land before this one's.
            if let Some(saving) = f.saving {
                let _ = saving.join();
            }
            self.finished(f.started, false);
        }
        e
    }

    fn finished(&self, started: Instant, ok: bool) {
        self.metrics.commit_duration.observe(started.elapsed().as_secs_f64());
        self.metrics.commit(ok);
    }

    fn commit_exactly_once<C: ConsumerContext>(
        &mut self,
        mut staged: Vec<(i32, Staged)>,
        consumer: &BaseConsumer<C>,
    ) -> Result<Committed, CommitError> {
        let began = Instant::now();
        let failed = |e: KafkaError| transaction_error(e, began.elapsed());
        self.producer.begin_transaction().map_err(failed)?;
        let sent = (|| {
            let topic = self.config.kafka.changelog_topic();
            for (partition, s) in &staged {
                self.send_outputs(&s.outcomes, &s.dead_letters)?;
                send_changelog(&topic, &self.producer, self.epoch, *partition, &s.changelog)?;
            }
            // Every partition of the transaction has its offset in it (the
            // processor sees to it): the group coordinator refuses a
            // transaction's offsets from a member it no longer knows, which
            // is what keeps an instance that lost its partitions (a zombie)
            // from committing anything for them.
            let offsets = self.offsets(&committed(&staged, Vec::new()))?;
            if offsets.count() > 0 {
                let group = consumer.group_metadata().ok_or(CommitError::NotInGroup)?;
                self.producer.send_offsets_to_transaction(&offsets, &group, COMMIT_TIMEOUT).map_err(failed)?;
            }
            self.await_transaction_deliveries(began)?;
            self.producer.commit_transaction(COMMIT_TIMEOUT).map_err(failed)
        })();
        if let Err(e) = sent {
            if !e.needs_new_producer() {
                self.abort()?;
            }
            return Err(e);
        }
        let changelog_last = self.drain_deliveries()?;
        let failed = self.save_stores(&mut staged, &changelog_last);
        staged.iter().for_each(|(_, s)| self.count_outcomes(&s.outcomes));
        Ok(committed(&staged, failed))
    }

    /// Waits until every record of the transaction is delivered, and fails
    /// at the first that is not: it has doomed the transaction. (rdkafka's
    /// `commit_transaction` flushes first, for its whole timeout, even when
    /// records can no longer be delivered until the transaction is aborted.)
    fn await_transaction_deliveries(&self, began: Instant) -> Result<(), CommitError> {
        let tracker = self.producer.context();
        while tracker.in_flight_total() > 0 {
            if tracker.first_failure().is_some() {
                break;
            }
            if began.elapsed() > COMMIT_TIMEOUT {
                return Err(CommitError::Delivery(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Left in the tracker: the abort that follows forgets them.
        match tracker.first_failure() {
            Some(e) => Err(CommitError::Delivery(e)),
            None => Ok(()),
        }
    }

    /// Aborts the open transaction, then waits for its delivery reports (its
    /// purged and failed records) and forgets them: they belong to no later
    /// transaction, which must not mistake them for its own failures. An
    /// abort that does not finish needs a new producer, whose initialisation
    /// aborts the transaction in its stead.
    fn abort(&self) -> Result<(), CommitError> {
        if let Err(abort) = self.producer.abort_transaction(COMMIT_TIMEOUT) {
            warn!(error = %abort, "aborting the transaction failed; a new producer will abort it");
            return Err(CommitError::Fatal(abort));
        }
        let tracker = self.producer.context();
        let deadline = Instant::now() + COMMIT_TIMEOUT;
        while tracker.in_flight_total() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if tracker.in_flight_total() > 0 {
            return Err(CommitError::Fatal(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)));
        }
        drop(tracker.take());
        Ok(())
    }

    fn send_outputs(&self, outcomes: &[Decided], dead_letters: &[DeadLetter]) -> Result<(), CommitError> {
        // One buffer for every record's JSON: the producer copies it.
        let mut value = Vec::with_capacity(1024);
        for o in outcomes.iter().map(|d| &d.record) {
            let id = o.id();
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header { key: names::HEADER_OUTCOME, value: Some(o.outcome.as_str()) })
                .insert(Header { key: names::HEADER_OUTCOME_ID, value: Some(id.as_str()) });
            value.clear();
            o.write_json(&mut value);
            self.send(
                BaseRecord::with_opaque_to(&self.config.kafka.output_topic, self.epoch)
                    .key(o.workflow_id.as_bytes())
                    .payload(&value)
                    .headers(headers),
            )?;
        }
        for d in dead_letters {
            let mut record: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(&self.config.kafka.dead_letter_topic, self.epoch).headers(d.headers());
            if let Some(k) = &d.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &d.value {
                record = record.payload(v.as_slice());
            }
            if let Some(ts) = d.timestamp_ms {
                record = record.timestamp(ts);
            }
            self.send(record)?;
        }
        Ok(())
    }

    fn send<K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(
        &self,
        record: BaseRecord<'_, K, P, usize>,
    ) -> Result<(), CommitError> {
        send(&self.producer, record)
    }

    /// Waits for every record in flight; fails if any was not delivered.
    fn flush(&self) -> Result<HashMap<i32, i64>, CommitError> {
        self.producer.flush(COMMIT_TIMEOUT).map_err(CommitError::Delivery)?;
        self.drain_deliveries()
    }

    fn drain_deliveries(&self) -> Result<HashMap<i32, i64>, CommitError> {
        let tracker = self.producer.context();
        await_deliveries(tracker, || tracker.in_flight_total(), Instant::now() + COMMIT_TIMEOUT)
    }

    fn save_stores(&self, staged: &mut [(i32, Staged)], changelog_last: &HashMap<i32, i64>) -> StoreFailures {
        let batches = staged.iter_mut().map(|(p, s)| (*p, Arc::clone(&s.store), std::mem::take(&mut s.batch)));
        write_stores(batches, changelog_last)
    }

    /// The offsets of `committed`, to commit to the group.
    fn offsets(&self, committed: &Committed) -> Result<TopicPartitionList, CommitError> {
        let mut tpl = TopicPartitionList::new();
        for (partition, next) in &committed.offsets {
            tpl.add_partition_offset(&self.config.kafka.input_topic, *partition, Offset::Offset(*next))
                .map_err(CommitError::Offsets)?;
        }
        Ok(tpl)
    }

    fn count_outcomes(&self, outcomes: &[Decided]) {
        let now_ms = crate::processor::now_ms();
        for d in outcomes {
            let o = &d.record;
            let duration = (o.finished_at_ms - o.started_at_ms).max(0) as f64 / 1000.0;
            self.metrics.outcome(&o.workflow_type, o.outcome, duration);
            self.metrics.outcome_latency.observe((now_ms - d.decided_at_ms).max(0) as f64 / 1000.0);
        }
    }
}

/// One task's part of a commit, for the thread that saves it.
struct SaveWork {
    partition: i32,
    changelog: Vec<(String, Option<Vec<u8>>)>,
    store: Arc<Store>,
    batch: StoreBatch,
}

/// The end of an `at_least_once` commit, on its own thread: sends the
/// changelog records, waits for their delivery, and writes each store with
/// the changelog offset it reaches as checkpoint. Returns the stores that
/// failed their write.
fn save(
    producer: &ThreadedProducer<DeliveryTracker>,
    topic: &str,
    epoch: usize,
    started: Instant,
    work: Vec<SaveWork>,
) -> Result<StoreFailures, CommitError> {
    lower_priority();
    for w in &work {
        send_changelog(topic, producer, epoch, w.partition, &w.changelog)?;
    }
    let tracker = producer.context();
    let changelog_last = await_deliveries(tracker, || tracker.in_flight(epoch), started + COMMIT_TIMEOUT)?;
    Ok(write_stores(work.into_iter().map(|w| (w.partition, w.store, w.batch)), &changelog_last))
}

/// Waits until `pending()` is zero or the deadline passes, then takes what
/// was delivered: the changelog offsets, or the first failure, or a timeout.
fn await_deliveries(
    tracker: &DeliveryTracker,
    pending: impl Fn() -> usize,
    deadline: Instant,
) -> Result<HashMap<i32, i64>, CommitError> {
    while pending() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let still_pending = pending();
    let d = tracker.take();
    if let Some(e) = d.failures.into_iter().next() {
        return Err(CommitError::Delivery(e));
    }
    if still_pending > 0 {
        return Err(CommitError::Delivery(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)));
    }
    Ok(d.changelog_last)
}

/// Writes each partition's store batch, with the changelog offset it
/// reaches as checkpoint. One store's failure does not stop the others';
/// returns the failures.
fn write_stores(
    batches: impl IntoIterator<Item = (i32, Arc<Store>, StoreBatch)>,
    changelog_last: &HashMap<i32, i64>,
) -> StoreFailures {
    let mut failed = Vec::new();
    for (partition, store, mut batch) in batches {
        if let Some(last) = changelog_last.get(&partition) {
            batch.set_checkpoint(last + 1);
        }
        if !batch.is_empty() {
            if let Err(e) = store.write(batch) {
                failed.push((partition, e));
            }
        }
    }
    failed
}

/// What a commit of `staged` did: the input offsets it covers, but for the
/// `failed` partitions, whose offsets it did not commit under
/// `at_least_once`, and which it reports.
fn committed(staged: &[(i32, Staged)], failed: StoreFailures) -> Committed {
    let offsets = staged
        .iter()
        .filter(|(p, _)| failed.iter().all(|(f, _)| f != p))
        .filter_map(|(p, s)| Some((*p, s.next_offset?)))
        .collect();
    Committed { offsets, failed }
}

/// Lowers the calling thread's CPU priority (Linux's nice is per thread):
/// under contention the stream thread, which publishes outcomes, goes
/// first; a commit only takes longer.
fn lower_priority() {
    // SAFETY: setpriority takes plain integers; `who` 0 is the calling thread.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, SAVE_NICE) };
    if result != 0 {
        debug!(error = %std::io::Error::last_os_error(), "cannot lower the commit thread's priority");
    }
}

/// The commit thread's nice value.
const SAVE_NICE: libc::c_int = 10;

fn send_changelog(
    topic: &str,
    producer: &ThreadedProducer<DeliveryTracker>,
    epoch: usize,
    partition: i32,
    changelog: &[(String, Option<Vec<u8>>)],
) -> Result<(), CommitError> {
    for (id, value) in changelog {
        let mut record: BaseRecord<'_, str, [u8], usize> =
            BaseRecord::with_opaque_to(topic, epoch).key(id.as_str()).partition(partition);
        if let Some(v) = value {
            record = record.payload(v.as_slice());
        }
        send(producer, record)?;
    }
    Ok(())
}

/// Sends one record, waiting while librdkafka's queue is full.
fn send<K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(
    producer: &ThreadedProducer<DeliveryTracker>,
    mut record: BaseRecord<'_, K, P, usize>,
) -> Result<(), CommitError> {
    let mut deadline = None;
    let epoch = record.delivery_opaque;
    loop {
        // Counted before the send: its delivery report may come before `send` returns.
        producer.context().sent(epoch);
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, r)) => {
                producer.context().unsent(epoch);
                match e {
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                        if *deadline.get_or_insert_with(|| Instant::now() + COMMIT_TIMEOUT) > Instant::now() =>
                    {
                        record = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    e => return Err(CommitError::Delivery(e)),
                }
            }
        }
    }
}

/// Sorts an error of a transaction `age` old into the ways of handling it.
fn transaction_error(e: KafkaError, transaction_age: Duration) -> CommitError {
    match &e {
        KafkaError::Transaction(rde)
            if matches!(
                rde.code(),
                RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch
            ) =>
        {
            CommitError::Fenced { source: e, transaction_age }
        }
        KafkaError::Transaction(rde) if rde.is_fatal() => CommitError::Fatal(e),
        _ => CommitError::Aborted(e),
    }
}
