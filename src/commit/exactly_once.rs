//! The `exactly_once` commit: outcomes, dead letters, forwarded records,
//! changelog records and input offsets go in one Kafka transaction; the stores are written once
//! it has committed. A store that fails its write then is behind a changelog
//! that holds its state: the partition is stopped, and its store is caught
//! up from the changelog when it is opened again.
//!
//! Nothing is published before the commit. [`Strategy::begin`] hands the
//! interval's work to the `junction-commit` thread, which begins the
//! transaction, sends its records and offsets, waits for the deliveries,
//! commits and writes the stores, while the stream thread goes on with the
//! next interval (whose records wait for the next transaction; the tasks
//! keep the commit's states readable until the stores have them). One
//! transaction is under way at a time. [`Strategy::advance`] takes its
//! end: committed, or aborted when it failed before asking for its commit.
//! A transaction whose commit failed without being aborted may have
//! committed: a new producer ends it, and the group's offsets, which it
//! carried, say whether it did (see `settle`). Whatever this instance
//! does, the coordinator decides a transaction under way, so partitions
//! lost meanwhile do not drop it: it is seen to its end first
//! ([`Strategy::drop_lost`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer as _;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use super::{batches, committed, count_commit, count_outcomes, offsets, CommitError, Committed, InputGroup, Outputs};
use super::{Staged, Strategy, COMMIT_TIMEOUT};
use crate::config::Config;
use crate::kafka::limits::TopicLimits;
use crate::kafka::producer::{ChangelogSendError, Producer};
use crate::kafka::refusals::Unplaceable;
use crate::metrics::Metrics;
use crate::state::{self, StoreFailures};

/// Every record goes in the transaction of the commit: one epoch for all.
const EPOCH: usize = 0;

/// How long an abort waits for the coordinator at a time, between looks at
/// whether junction is stopping.
const ABORT_STEP: Duration = Duration::from_millis(100);

pub struct ExactlyOnce {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    transactional_id: String,
    limits: Arc<TopicLimits>,
    producer: Producer,
    committer: Committer,
    /// When the transaction under way on the `junction-commit` thread began.
    in_flight: Option<Instant>,
    /// Set when junction is stopping: an abort waits no more (see [`ExactlyOnce::abort`]).
    stopping: Arc<AtomicBool>,
}

/// What the `junction-commit` thread is asked to do: one transaction.
struct Job {
    producer: Producer,
    staged: Vec<(i32, Staged)>,
    offsets: TopicPartitionList,
    group: Option<ConsumerGroupMetadata>,
    began: Instant,
}

/// The one `junction-commit` thread, which lives as long as the strategy,
/// and hands each job's work back with how it ended.
struct Committer {
    jobs: Option<Sender<Job>>,
    ended: Receiver<(Vec<(i32, Staged)>, End)>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    fn start() -> Result<Committer, CommitError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (report, ended) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("junction-commit".into())
            .spawn(move || {
                for mut job in queue {
                    let end = transact(&job.producer, &mut job.staged, &job.offsets, job.group.as_ref(), job.began);
                    // No receiver: the strategy is gone, and this thread with it.
                    if report.send((job.staged, end)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| CommitError::Thread(format!("cannot start the commit thread: {e}")))?;
        Ok(Committer { jobs: Some(jobs), ended, thread: Some(thread) })
    }

    fn send(&self, job: Job) -> Result<(), CommitError> {
        let jobs = self.jobs.as_ref().expect("the commit thread runs while the strategy does");
        jobs.send(job).map_err(|_| CommitError::Thread("the commit thread has stopped".into()))
    }

    /// The job's work and how it ended, once it has; with `wait`, waited for.
    fn ended(&mut self, wait: bool) -> Option<(Vec<(i32, Staged)>, End)> {
        let ended =
            if wait { self.ended.recv().map_err(|_| TryRecvError::Disconnected) } else { self.ended.try_recv() };
        match ended {
            Ok(ended) => Some(ended),
            Err(TryRecvError::Empty) => None,
            // It panicked, a bug: the process goes down with it, as with one on the stream thread.
            Err(TryRecvError::Disconnected) => match self.thread.take().map(JoinHandle::join) {
                Some(Err(panic)) => std::panic::resume_unwind(panic),
                _ => panic!("the commit thread stopped with a transaction under way"),
            },
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How a transaction went, on the `junction-commit` thread.
enum End {
    /// Committed, and the stores written: those that failed their write.
    Committed(StoreFailures),
    /// Not begun: there is nothing to abort.
    NotBegun(CommitError),
    /// Failed before its commit was asked for: nothing of it committed.
    Failed(CommitError),
    /// Its commit failed: it may have committed all the same (see
    /// `settle`); the last changelog offset of each partition.
    CommitFailed(CommitError, HashMap<i32, i64>),
}

impl ExactlyOnce {
    /// Creates the producer and initialises its transactions, which fences
    /// any older producer with the same transactional ID and aborts what it
    /// left open.
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        transactional_id: &str,
        limits: Arc<TopicLimits>,
        stopping: Arc<AtomicBool>,
    ) -> Result<ExactlyOnce, CommitError> {
        let producer = transactional_producer(&config, transactional_id, &limits)?;
        Ok(ExactlyOnce {
            config,
            metrics,
            transactional_id: transactional_id.to_string(),
            limits,
            producer,
            committer: Committer::start()?,
            in_flight: None,
            stopping,
        })
    }

    /// Hands the transaction of `staged` to the `junction-commit` thread.
    fn start(&mut self, staged: Vec<(i32, Staged)>, group: &dyn InputGroup, began: Instant) -> Result<(), CommitError> {
        // Every partition of the transaction has its offset in it (the
        // stream thread sees to it): the group coordinator refuses a
        // transaction's offsets from a member it no longer knows, which is
        // what keeps an instance that lost its partitions (a zombie) from
        // committing anything for them.
        let offsets = offsets(&committed(&staged, Vec::new()))?;
        let group = match offsets.count() {
            0 => None,
            _ => Some(group.group_metadata().ok_or(CommitError::NotInGroup)?),
        };
        self.committer.send(Job { producer: self.producer.clone(), staged, offsets, group, began })?;
        self.in_flight = Some(began);
        Ok(())
    }

    /// What a transaction's end means: committed, its stores written;
    /// aborted, or settled, when it failed.
    fn finish(
        &mut self,
        mut staged: Vec<(i32, Staged)>,
        end: End,
        group: &dyn InputGroup,
        began: Instant,
    ) -> Result<Committed, CommitError> {
        let failed = match end {
            End::Committed(failed) => failed,
            End::NotBegun(e) => return Err(e),
            End::Failed(e) => return Err(self.abort_for(e, began)),
            End::CommitFailed(e, changelog_last) => {
                self.settle(&staged, group, e, began)?;
                state::write_batches(batches(&mut staged), &changelog_last)
            }
        };
        staged.iter().for_each(|(_, s)| count_outcomes(&self.metrics, &s.outcomes));
        // Every offset counts, a failed store's too: the group has it, and
        // the store catches up from the changelog when it is opened again.
        Ok(Committed { failed, ..committed(&staged, Vec::new()) })
    }

    /// `e` (sorted already, see [`fatal_or`]), from a transaction that has
    /// not asked for its commit, after aborting it (or the abort's own
    /// error, when it fails). Without an abort when the producer must be
    /// replaced: the new one aborts it.
    fn abort_for(&self, e: CommitError, began: Instant) -> CommitError {
        if e.needs_new_producer() {
            return e;
        }
        match self.abort() {
            Ok(()) => e,
            Err(abort) => self.fatal_or(abort, began),
        }
    }

    /// A transaction whose commit failed may have committed all the same:
    /// the coordinator may have taken the commit before the error (its
    /// answer lost, the broker stalled past the timeout), and librdkafka
    /// goes on with it in the background. Redoing the interval then would
    /// publish its outcomes twice. Only a fence (the coordinator refused
    /// it) or an abort that goes through says that it did not commit.
    /// Otherwise a new producer ends the transaction (its initialisation
    /// returns once the coordinator has finished it, one way or the other),
    /// and the group's offsets, which the transaction carried, tell which
    /// way. `Ok`: it committed.
    ///
    /// A fence can come just after the commit's own error (the coordinator
    /// answered the commit with an error, then the newer producer's fence
    /// reached this one): the abort then fails with it. A new producer must
    /// not be made then, since it would fence the newer one in turn.
    fn settle(
        &mut self,
        staged: &[(i32, Staged)],
        group: &dyn InputGroup,
        e: CommitError,
        began: Instant,
    ) -> Result<(), CommitError> {
        if matches!(e, CommitError::Fenced { .. }) {
            return Err(e);
        }
        if !e.needs_new_producer() {
            match self.abort().map_err(|abort| self.fatal_or(abort, began)) {
                Ok(()) => return Err(e),
                Err(fenced @ CommitError::Fenced { .. }) => return Err(fenced),
                Err(_) => {}
            }
        }
        warn!(
            error = %e,
            "a transaction's commit failed, and the coordinator may have committed it all the same: a new \
             producer ends it, and the group's offsets tell which way"
        );
        self.producer = transactional_producer(&self.config, &self.transactional_id, &self.limits)
            .map_err(|new| CommitError::Unsettled(format!("{e}; then the new producer failed: {new}")))?;
        let offsets = offsets(&committed(staged, Vec::new()))?;
        let group_has = group.stable_offsets(offsets).map_err(|read| {
            CommitError::Unsettled(format!("{e}; then the group's offsets could not be read: {read}"))
        })?;
        match took(staged, &group_has) {
            Some(true) => {
                warn!("the transaction whose commit failed had committed: its interval is not redone");
                Ok(())
            }
            // Aborted: the new producer takes the next one.
            Some(false) => Err(match e {
                CommitError::Fatal(e) => CommitError::Aborted(e),
                e => e,
            }),
            None => Err(CommitError::Undecided {
                homes: staged.iter().filter(|(_, s)| s.store.is_some()).map(|(p, _)| *p).collect(),
            }),
        }
    }

    /// `e`, or the producer's fatal error when it has hit one, sorted like
    /// a transaction's error: a record refused because a newer producer with
    /// the same transactional ID fenced this one fails its delivery first,
    /// and the fence must still be told apart from other fatal errors (see
    /// [`crate::runtime::commits`]).
    fn fatal_or(&self, e: CommitError, began: Instant) -> CommitError {
        fatal_or(&self.producer, e, began.elapsed())
    }

    /// Aborts the open transaction, then waits for its delivery reports (its
    /// purged and failed records) and forgets them: they belong to no later
    /// transaction, which must not mistake them for its own failures. An
    /// abort that does not finish needs a new producer, whose initialisation
    /// aborts the transaction in its stead.
    ///
    /// It waits for the coordinator [`ABORT_STEP`] at a time (librdkafka
    /// takes the abort up again where a timed-out call left it), and no
    /// more once junction is stopping: the coordinator may be slow to come
    /// back (a broker restarted moments before), and the shutdown would
    /// overrun its budget waiting. Nothing of an unfinished abort is
    /// committed: the next producer with this transactional ID, or the
    /// transaction timeout, ends it.
    fn abort(&self) -> Result<(), CommitError> {
        let deadline = Instant::now() + COMMIT_TIMEOUT;
        loop {
            let step = ABORT_STEP.min(deadline.saturating_duration_since(Instant::now()));
            match self.producer.client().abort_transaction(step) {
                Ok(()) => break,
                Err(KafkaError::Transaction(e))
                    if e.is_retriable() && Instant::now() < deadline && !self.stopping.load(Ordering::SeqCst) => {}
                Err(abort) => {
                    warn!(error = %abort, "aborting the transaction failed; a new producer will abort it");
                    return Err(CommitError::Fatal(abort));
                }
            }
        }
        let tracker = self.producer.tracker();
        while tracker.in_flight_total() > 0 && Instant::now() < deadline && !self.stopping.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if tracker.in_flight_total() > 0 {
            return Err(CommitError::Fatal(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)));
        }
        drop(tracker.take());
        Ok(())
    }
}

impl Strategy for ExactlyOnce {
    /// Outcomes wait for the commit's transaction: nothing is sent here.
    fn publish(&mut self, _: Outputs<'_>) -> Result<(), CommitError> {
        Ok(())
    }

    fn is_committing(&self) -> bool {
        self.in_flight.is_some()
    }

    fn producer_reaches_a_broker(&self) -> bool {
        self.producer.tracker().reaches_a_broker()
    }

    fn begin(&mut self, staged: Vec<(i32, Staged)>, group: &dyn InputGroup) -> Result<Option<Committed>, CommitError> {
        assert!(self.in_flight.is_none(), "a transaction is already under way");
        let began = Instant::now();
        let started = self.start(staged, group, began);
        if started.is_err() {
            count_commit(&self.metrics, began, false);
        }
        started.map(|()| None)
    }

    fn advance(&mut self, group: &dyn InputGroup, wait: bool) -> Result<Option<Committed>, CommitError> {
        let Some(began) = self.in_flight else { return Ok(None) };
        let Some((staged, end)) = self.committer.ended(wait) else { return Ok(None) };
        self.in_flight = None;
        let result = self.finish(staged, end, group, began);
        count_commit(&self.metrics, began, result.is_ok());
        result.map(Some)
    }

    /// The coordinator decides a transaction in flight, whatever happens
    /// here: it is seen to its end, so that what it committed counts (the
    /// partitions kept go on from it) and what it did not is redone.
    fn drop_lost(&mut self, group: &dyn InputGroup) -> Result<Option<Committed>, CommitError> {
        self.advance(group, true)
    }

    fn take_unplaceable(&mut self) -> Vec<Unplaceable> {
        self.producer.refusals().take_unplaceable()
    }
}

impl Drop for ExactlyOnce {
    /// A transaction still under way (the stream thread stopped on an
    /// error) is not left open until its timeout, holding back the last
    /// stable offset of every partition it wrote: once its thread is done
    /// with it, it is aborted unless it asked for its commit.
    fn drop(&mut self) {
        if let Some(began) = self.in_flight.take() {
            if let Some((_, End::Failed(e))) = self.committer.ended(true) {
                let _ = self.abort_for(e, began);
            }
        }
    }
}

/// `e`, or `producer`'s fatal error when it has hit one (see
/// [`ExactlyOnce::fatal_or`]), in a transaction `age` old.
fn fatal_or(producer: &Producer, e: CommitError, age: Duration) -> CommitError {
    let Some((code, reason)) = producer.client().client().fatal_error() else { return e };
    warn!(error = %e, code = ?code, reason, "the producer hit a fatal error");
    let source = KafkaError::MessageProduction(code);
    if is_fence(code) {
        CommitError::Fenced { source, transaction_age: age }
    } else {
        CommitError::Fatal(source)
    }
}

/// Waits until every record of the transaction is delivered, and fails
/// at the first that is not: it has doomed the transaction. (rdkafka's
/// `commit_transaction` flushes first, for its whole timeout, even when
/// records can no longer be delivered until the transaction is aborted.)
fn await_transaction_deliveries(producer: &Producer, began: Instant) -> Result<(), CommitError> {
    let tracker = producer.tracker();
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

/// One transaction, on the `junction-commit` thread: its records, its
/// offsets (committed as `group`), its deliveries, its commit; then the
/// stores.
fn transact(
    producer: &Producer,
    staged: &mut [(i32, Staged)],
    offsets: &TopicPartitionList,
    group: Option<&ConsumerGroupMetadata>,
    began: Instant,
) -> End {
    // Sorted where it happens: a fence's age tells a live twin from a stall.
    let sort = |e: CommitError| fatal_or(producer, e, began.elapsed());
    let failed = |e: KafkaError| sort(transaction_error(e, began.elapsed()));
    if let Err(e) = producer.client().begin_transaction() {
        return End::NotBegun(failed(e));
    }
    if let Err(e) = send_records(producer, staged) {
        return End::Failed(sort(e));
    }
    if let Some(group) = group {
        if let Err(e) = producer.client().send_offsets_to_transaction(offsets, group, COMMIT_TIMEOUT) {
            return End::Failed(failed(e));
        }
    }
    if let Err(e) = await_transaction_deliveries(producer, began) {
        return End::Failed(sort(e));
    }
    let changelog_last = match producer.drain_deliveries(COMMIT_TIMEOUT) {
        Ok(changelog_last) => changelog_last,
        Err(e) => return End::Failed(sort(CommitError::Delivery(e))),
    };
    match producer.client().commit_transaction(COMMIT_TIMEOUT) {
        Ok(()) => End::Committed(state::write_batches(batches(staged), &changelog_last)),
        Err(e) => End::CommitFailed(failed(e), changelog_last),
    }
}

/// Sends every record of the transaction.
fn send_records(producer: &Producer, staged: &[(i32, Staged)]) -> Result<(), CommitError> {
    for (partition, s) in staged {
        producer.send_outcomes(EPOCH, s.outcomes.iter().map(|d| &d.record)).map_err(CommitError::Delivery)?;
        producer.send_dead_letters(EPOCH, &s.dead_letters).map_err(CommitError::Delivery)?;
        producer.send_forwards(EPOCH, &s.forwards).map_err(CommitError::Delivery)?;
        // The transaction fences what the lease guards under at_least_once.
        producer.send_changelog(EPOCH, *partition, &s.changelog, || true).map_err(|e| match e {
            ChangelogSendError::Kafka(e) => CommitError::Delivery(e),
            ChangelogSendError::Stopped(_) => unreachable!("always allowed"),
        })?;
    }
    Ok(())
}

/// A producer whose transactions are initialised, which fences any older
/// producer with the same transactional ID and ends what it left open:
/// aborted, or committed when its commit had reached the coordinator.
fn transactional_producer(
    config: &Config,
    transactional_id: &str,
    limits: &Arc<TopicLimits>,
) -> Result<Producer, CommitError> {
    let producer =
        Producer::new(&config.kafka, transactional_id, None, Arc::clone(limits)).map_err(CommitError::Producer)?;
    producer.client().init_transactions(COMMIT_TIMEOUT).map_err(|e| transaction_error(e, Duration::ZERO))?;
    Ok(producer)
}

/// Whether the transaction that carried `staged`'s offsets committed, as
/// the group's offsets after its end (`group_has`) say: yes when an offset
/// it moved is there; no when none is; `None` when it moved none (it only
/// fired deadlines of partitions that had read nothing since their last commit).
fn took(staged: &[(i32, Staged)], group_has: &TopicPartitionList) -> Option<bool> {
    let mut moved = false;
    for (partition, s) in staged {
        let Some(next) = s.next_offset.filter(|next| s.last_committed != Some(*next)) else { continue };
        moved = true;
        let has = group_has.find_partition(&s.topic, *partition).map(|e| e.offset());
        if has == Some(Offset::Offset(next)) {
            return Some(true);
        }
    }
    moved.then_some(false)
}

/// Sorts an error of a transaction `age` old into the ways of handling it.
fn transaction_error(e: KafkaError, transaction_age: Duration) -> CommitError {
    match &e {
        KafkaError::Transaction(rde) if is_fence(rde.code()) => CommitError::Fenced { source: e, transaction_age },
        KafkaError::Transaction(rde) if rde.is_fatal() => CommitError::Fatal(e),
        _ => CommitError::Aborted(e),
    }
}

/// Whether `code` says that a newer producer with the same transactional ID fenced this one.
fn is_fence(code: RDKafkaErrorCode) -> bool {
    matches!(code, RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StoreBatch;

    fn staged(topic: &str, last_committed: Option<i64>, next_offset: Option<i64>) -> Staged {
        Staged {
            topic: Arc::from(topic),
            store: None,
            outcomes: Vec::new(),
            dead_letters: Vec::new(),
            forwards: Vec::new(),
            changelog: Vec::new(),
            batch: StoreBatch::default(),
            next_offset,
            last_committed,
        }
    }

    fn group_has(offsets: &[(&str, i32, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)).unwrap();
        }
        tpl
    }

    #[test]
    fn the_groups_offsets_tell_whether_a_transaction_whose_commit_failed_committed() {
        // Partition 0 of "r" read nothing (its offset is only covered); "in" 1 read up to 20.
        let both = [(0, staged("r", Some(5), Some(5))), (1, staged("in", Some(10), Some(20)))];
        assert_eq!(took(&both, &group_has(&[("r", 0, 5), ("in", 1, 20)])), Some(true));
        assert_eq!(took(&both, &group_has(&[("r", 0, 5), ("in", 1, 10)])), Some(false));
        // Another owner committed past it since: not this transaction's offset.
        assert_eq!(took(&both, &group_has(&[("r", 0, 5), ("in", 1, 30)])), Some(false));
        // Only covered offsets: the group's offsets are the same either way.
        let covered = [(0, staged("r", Some(5), Some(5)))];
        assert_eq!(took(&covered, &group_has(&[("r", 0, 5)])), None);
    }
}
