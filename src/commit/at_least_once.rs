//! The `at_least_once` commit, pipelined with the next interval:
//!
//! 1. outcomes, dead letters and forwarded records are produced as they are decided, in small
//!    batches ([`Strategy::publish`], every [`super::PUBLISH_INTERVAL`]), so
//!    that they do not wait for the commit; the commit waits until its
//!    interval's are delivered;
//! 2. then the changelog records, delivered: a changelog record is never
//!    visible before the outcome it implies, so a restored store never hides
//!    an outcome that was not published;
//! 3. then each store's batch, with the changelog offset as checkpoint;
//! 4. then the input offsets of the partitions whose stores took their
//!    batch. A crash anywhere repeats input, which the join absorbs as
//!    duplicates, or repeats an outcome with the same outcome ID.
//!
//! Steps 2 and 3 happen only while the membership lease holds
//! ([`super::lease`]): nothing fences this guarantee's changelog, so an
//! instance that may have lost its partitions writes neither its changelog
//! nor its stores until the coordinator has accepted a commit of its since.
//!
//! [`Strategy::begin`] closes the interval and returns, and the stream
//! thread goes on processing the next interval while [`Strategy::advance`]
//! moves the commit on between polls. Once the interval's outcomes are
//! delivered, the `junction-save` thread sends the changelog records,
//! waits for them and writes the stores (steps 2 and 3); the stream thread
//! then commits the offsets. Every record is sent tagged with its interval
//! (its epoch), so that a commit waits for its own records only. The tasks
//! keep the commit's states readable until the stores have them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::CommitMode;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer as _;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, warn};

use super::lease::Lease;
use super::{committed, count_commit, offsets, CommitError, Committed, Decided, InputGroup, Outputs, Tally};
use super::{Staged, Strategy, COMMIT_TIMEOUT};
use crate::config::Config;
use crate::input::dead_letter::DeadLetter;
use crate::kafka::limits::TopicLimits;
use crate::kafka::producer::{ChangelogSendError, Producer};
use crate::kafka::refusals::Unplaceable;
use crate::metrics::Metrics;
use crate::route::Forward;
use crate::state::{self, ChangelogRecord, Store, StoreBatch, StoreFailures};

/// How often a commit waited for looks at the save thread.
const WAIT_STEP: Duration = Duration::from_millis(5);
/// The pause before asking the coordinator again to confirm the membership.
const CONFIRM_RETRY: Duration = Duration::from_millis(500);
/// How long a commit waited for (a rebalance, shutdown) waits for the
/// lease at most; the stream thread is blocked meanwhile.
const WAIT_FOR_LEASE: Duration = Duration::from_secs(3);

pub struct AtLeastOnce {
    metrics: Arc<Metrics>,
    producer: Producer,
    lease: Arc<Lease>,
    saver: Saver,
    in_flight: Option<InFlight>,
    /// The interval that records sent now belong to.
    epoch: usize,
    /// The outcomes published in this interval: counted once its commit is.
    published: Tally,
}

/// A commit between its first and its last step.
struct InFlight {
    epoch: usize,
    staged: Vec<(i32, Staged)>,
    tally: Tally,
    /// Handed to the save thread, whose answer is awaited.
    saving: bool,
    /// Set to make the save thread stop where it is.
    cancel: Arc<AtomicBool>,
    started: Instant,
}

/// One task's part of a commit, for the thread that saves it.
struct SaveWork {
    partition: i32,
    changelog: Vec<ChangelogRecord>,
    store: Option<Arc<Store>>,
    batch: StoreBatch,
}

/// What the save thread is asked to do: one commit's steps 2 and 3.
struct SaveJob {
    epoch: usize,
    started: Instant,
    work: Vec<SaveWork>,
    cancel: Arc<AtomicBool>,
}

/// The one `junction-save` thread, which lives as long as the strategy.
struct Saver {
    jobs: Option<Sender<SaveJob>>,
    /// Each job's answer, with its epoch.
    done: Receiver<(usize, Result<StoreFailures, CommitError>)>,
    thread: Option<JoinHandle<()>>,
}

impl Saver {
    fn start(producer: Producer, lease: Arc<Lease>) -> Result<Saver, CommitError> {
        let (jobs, queue) = mpsc::channel::<SaveJob>();
        let (report, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("junction-save".into())
            .spawn(move || {
                for job in queue {
                    let epoch = job.epoch;
                    // No receiver: the strategy is gone, and this thread with it.
                    let _ = report.send((epoch, save(&producer, &lease, job)));
                }
            })
            .map_err(|e| CommitError::Thread(e.to_string()))?;
        Ok(Saver { jobs: Some(jobs), done, thread: Some(thread) })
    }

    fn is_gone(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn send(&self, job: SaveJob) -> Result<(), CommitError> {
        let jobs = self.jobs.as_ref().expect("the save thread runs while the strategy does");
        jobs.send(job).map_err(|_| CommitError::Thread("the save thread has stopped".into()))
    }

    /// The answer for `epoch`, if it came; answers of commits given up
    /// before are dropped.
    fn answer(&self, epoch: usize) -> Option<Result<StoreFailures, CommitError>> {
        loop {
            let (answered, result) = match self.done.try_recv() {
                Ok(answer) => answer,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return None,
            };
            if answered == epoch {
                return Some(result);
            }
        }
    }

    /// The answer for `epoch`, waited for. Meanwhile nothing else polls
    /// the consumer (a rebalance, shutdown), so the lease the save thread
    /// may wait for is renewed here: by committing again, and waiting for,
    /// the offsets the group holds.
    fn wait_answer(
        &self,
        epoch: usize,
        cancel: &AtomicBool,
        lease: &Lease,
        group: &dyn InputGroup,
    ) -> Result<StoreFailures, CommitError> {
        let mut confirm_failed_at: Option<Instant> = None;
        let mut wanted_since: Option<Instant> = None;
        loop {
            match self.done.recv_timeout(WAIT_STEP) {
                Ok((answered, result)) if answered == epoch => return result,
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(CommitError::Thread("the save thread has stopped".into()));
                }
            }
            if !lease.is_wanted() {
                wanted_since = None;
                continue;
            }
            // Nobody else can renew it meanwhile: past a short wait, the
            // commit is given up (what it did not write is redone by
            // whoever holds the partitions next).
            if wanted_since.get_or_insert_with(Instant::now).elapsed() >= WAIT_FOR_LEASE {
                cancel.store(true, Ordering::SeqCst);
                while self.answer(epoch).is_none() && !self.is_gone() {
                    std::thread::sleep(WAIT_STEP);
                }
                return Err(CommitError::Unconfirmed(lease.term()));
            }
            let retry = confirm_failed_at.is_none_or(|at| at.elapsed() >= CONFIRM_RETRY);
            if retry {
                let sent = Instant::now();
                match group.confirm_membership() {
                    Ok(()) => lease.renew(sent),
                    Err(e) => {
                        debug!(error = %e, "the group coordinator did not confirm the membership");
                        confirm_failed_at = Some(Instant::now());
                    }
                }
            }
        }
    }
}

impl Drop for Saver {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl AtLeastOnce {
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        transactional_id: &str,
        lease: Arc<Lease>,
        limits: Arc<TopicLimits>,
    ) -> Result<AtLeastOnce, CommitError> {
        let producer = Producer::new(&config.kafka, transactional_id, Some(lease.message_timeout()), limits)
            .map_err(CommitError::Producer)?;
        let saver = Saver::start(producer.clone(), Arc::clone(&lease))?;
        Ok(AtLeastOnce { metrics, producer, lease, saver, in_flight: None, epoch: 0, published: Tally::default() })
    }

    fn send_outputs(
        &self,
        outcomes: &[Decided],
        dead_letters: &[DeadLetter],
        forwards: &[Forward],
    ) -> Result<(), CommitError> {
        self.producer.send_outcomes(self.epoch, outcomes.iter().map(|d| &d.record)).map_err(CommitError::Delivery)?;
        self.producer.send_dead_letters(self.epoch, dead_letters).map_err(CommitError::Delivery)?;
        self.producer.send_forwards(self.epoch, forwards).map_err(CommitError::Delivery)
    }

    fn step(&mut self, group: &dyn InputGroup, wait: bool) -> Result<Option<Committed>, CommitError> {
        loop {
            let Some(f) = &self.in_flight else { return Ok(None) };
            if f.saving {
                let result = if wait {
                    Some(self.saver.wait_answer(f.epoch, &f.cancel, &self.lease, group))
                } else {
                    self.saver.answer(f.epoch)
                };
                let Some(result) = result else { return Ok(None) };
                // Answered: the save thread is done with this commit, whatever the answer.
                self.in_flight.as_mut().expect("in flight").saving = false;
                let failed = result?;
                let f = self.in_flight.take().expect("in flight");
                // A partition whose state was not saved keeps its offset where it was.
                let done = committed(&f.staged, failed);
                let offsets = offsets(&done)?;
                if offsets.count() > 0 {
                    // Waiting (at a rebalance or shutdown) the offsets must be in before the partitions go;
                    // otherwise a lost asynchronous commit is covered by the next one. Either way the
                    // coordinator's acceptance renews the lease.
                    let sent = Instant::now();
                    if wait {
                        group.commit_offsets(&offsets, CommitMode::Sync).map_err(CommitError::Offsets)?;
                        self.lease.renew(sent);
                    } else {
                        self.lease.commit_sent();
                        if let Err(e) = group.commit_offsets(&offsets, CommitMode::Async) {
                            self.lease.answered(false);
                            return Err(CommitError::Offsets(e));
                        }
                    }
                }
                f.tally.count(&self.metrics);
                count_commit(&self.metrics, f.started, true);
                debug!(epoch = f.epoch, "committed");
                return Ok(Some(done));
            }
            let (epoch, started) = (f.epoch, f.started);
            if !self.delivered(epoch, started, wait)? {
                return Ok(None);
            }
            self.start_saving()?;
        }
    }

    /// The interval's outcomes are delivered. The changelog records are
    /// sent, awaited and the stores written by the save thread while the
    /// stream thread goes on; the tasks keep these states readable until then.
    fn start_saving(&mut self) -> Result<(), CommitError> {
        let f = self.in_flight.as_mut().expect("in flight");
        let work: Vec<SaveWork> = f
            .staged
            .iter_mut()
            .map(|(partition, s)| SaveWork {
                partition: *partition,
                changelog: std::mem::take(&mut s.changelog),
                store: s.store.clone(),
                batch: std::mem::take(&mut s.batch),
            })
            .collect();
        let job = SaveJob { epoch: f.epoch, started: f.started, work, cancel: Arc::clone(&f.cancel) };
        f.saving = true;
        self.saver.send(job)
    }

    /// Whether the records of `epoch` are delivered; with `wait`, waits for
    /// everything in flight. An error for a failed delivery, or one that
    /// took longer than the commit timeout.
    fn delivered(&self, epoch: usize, started: Instant, wait: bool) -> Result<bool, CommitError> {
        if wait {
            self.producer.client().flush(COMMIT_TIMEOUT).map_err(CommitError::Delivery)?;
        } else if self.producer.tracker().in_flight(epoch) > 0 {
            if started.elapsed() > COMMIT_TIMEOUT {
                return Err(CommitError::Delivery(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)));
            }
            return Ok(false);
        }
        let never = AtomicBool::new(false);
        match self.producer.await_epoch(epoch, started + COMMIT_TIMEOUT, &never) {
            Some(Ok(_)) | None => Ok(true),
            Some(Err(e)) => Err(CommitError::Delivery(e)),
        }
    }

    /// `e`, or the producer's fatal error when it has one. An idempotent
    /// producer that hit a fatal error (its sequence numbers lost, say)
    /// fails every send from then on: it must be replaced, or no commit
    /// would ever succeed again.
    fn fatal_or(&self, e: CommitError) -> CommitError {
        match self.producer.client().client().fatal_error() {
            Some((code, reason)) if !e.needs_new_producer() => {
                warn!(error = %e, code = ?code, reason, "the producer hit a fatal error; it is replaced");
                CommitError::Fatal(KafkaError::MessageProduction(code))
            }
            _ => e,
        }
    }

    /// Drops the commit in flight after an error, and waits for what is still
    /// being delivered, so that the next commit counts only its own records.
    fn abandon(&mut self, e: CommitError) -> CommitError {
        let e = self.fatal_or(e);
        // The rewind that follows discards the interval being published too:
        // its outcomes are decided and published again, and counted then.
        self.published = Tally::default();
        if let Some(f) = self.in_flight.take() {
            let _ = self.producer.client().flush(COMMIT_TIMEOUT);
            // A later commit's write must never land before this one's: the
            // save thread stops at its next step, and is waited for.
            if f.saving {
                f.cancel.store(true, Ordering::SeqCst);
                while self.saver.answer(f.epoch).is_none() && !self.saver.is_gone() {
                    std::thread::sleep(WAIT_STEP);
                }
            }
            count_commit(&self.metrics, f.started, false);
        }
        e
    }
}

impl Strategy for AtLeastOnce {
    fn publish(&mut self, mut outputs: Outputs<'_>) -> Result<(), CommitError> {
        let sent = self.send_outputs(outputs.outcomes, outputs.dead_letters, outputs.forwards);
        self.published.add(outputs.outcomes);
        outputs.clear();
        sent.map_err(|e| self.fatal_or(e))
    }

    fn is_committing(&self) -> bool {
        self.in_flight.is_some()
    }

    fn producer_reaches_a_broker(&self) -> bool {
        self.producer.tracker().reaches_a_broker()
    }

    fn begin(&mut self, staged: Vec<(i32, Staged)>, group: &dyn InputGroup) -> Result<Option<Committed>, CommitError> {
        assert!(self.in_flight.is_none(), "a commit is already in flight");
        let started = Instant::now();
        // What was not yet published (outcomes of timers fired for this commit) goes now.
        let sent = staged.iter().try_for_each(|(_, s)| self.send_outputs(&s.outcomes, &s.dead_letters, &s.forwards));
        let mut tally = std::mem::take(&mut self.published);
        staged.iter().for_each(|(_, s)| tally.add(&s.outcomes));
        let epoch = self.epoch;
        self.epoch += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        self.in_flight = Some(InFlight { epoch, staged, tally, saving: false, cancel, started });
        if let Err(e) = sent {
            return Err(self.abandon(e));
        }
        self.advance(group, false)
    }

    fn advance(&mut self, group: &dyn InputGroup, wait: bool) -> Result<Option<Committed>, CommitError> {
        match self.step(group, wait) {
            Err(e) => Err(self.abandon(e)),
            ok => ok,
        }
    }

    fn take_unplaceable(&mut self) -> Vec<Unplaceable> {
        self.producer.refusals().take_unplaceable()
    }

    fn drop_lost(&mut self, _: &dyn InputGroup) -> Result<Option<Committed>, CommitError> {
        self.lease.end();
        self.published = Tally::default();
        if let Some(f) = self.in_flight.take() {
            // The save thread stops before its next changelog record or store
            // write; what librdkafka still holds is never sent.
            f.cancel.store(true, Ordering::SeqCst);
            self.producer.purge_queued();
            count_commit(&self.metrics, f.started, false);
        }
        // The interval being published is given up too: its records are not awaited.
        self.producer.tracker().forget_through(self.epoch);
        self.epoch += 1;
        Ok(None)
    }
}

/// The end of a commit, on the save thread: sends the changelog records,
/// waits for their delivery, and writes each store with the changelog
/// offset it reaches as checkpoint, each step only while the membership
/// lease holds. Returns the stores that failed their write.
fn save(producer: &Producer, lease: &Lease, job: SaveJob) -> Result<StoreFailures, CommitError> {
    let deadline = job.started + COMMIT_TIMEOUT;
    let allowed = || lease.wait(&job.cancel, deadline);
    let stopped = |cancel: &AtomicBool| {
        if cancel.load(Ordering::SeqCst) {
            CommitError::Abandoned
        } else {
            CommitError::Unconfirmed(lease.term())
        }
    };
    for w in &job.work {
        producer.send_changelog(job.epoch, w.partition, &w.changelog, allowed).map_err(|e| match e {
            ChangelogSendError::Kafka(e) => CommitError::Delivery(e),
            ChangelogSendError::Stopped(_) => stopped(&job.cancel),
        })?;
    }
    let changelog_last = match producer.await_epoch(job.epoch, deadline, &job.cancel) {
        None => return Err(CommitError::Abandoned),
        Some(delivered) => delivered.map_err(CommitError::Delivery)?,
    };
    let writes = job.work.iter().any(|w| w.store.is_some() && (!w.batch.is_empty() || !w.changelog.is_empty()));
    if writes && !allowed() {
        return Err(stopped(&job.cancel));
    }
    let batches = job.work.into_iter().filter_map(|w| Some((w.partition, w.store?, w.batch)));
    Ok(state::write_batches(batches, &changelog_last))
}
