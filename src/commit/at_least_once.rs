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
//! [`Strategy::begin`] closes the interval and returns, and the stream
//! thread goes on processing the next interval while [`Strategy::advance`]
//! moves the commit on between polls. Once the interval's outcomes are
//! delivered, a `junction-save` thread sends the changelog records, waits
//! for them and writes the stores (steps 2 and 3); the stream thread then
//! commits the offsets. Every record is sent tagged with its interval (its
//! epoch), so that a commit waits for its own records only. The tasks keep
//! the commit's states readable until the stores have them.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use rdkafka::consumer::CommitMode;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer as _;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, warn};

use super::{committed, count_commit, count_outcomes, offsets, CommitError, Committed, Decided, InputGroup, Outputs};
use super::{Staged, Strategy, COMMIT_TIMEOUT};
use crate::config::Config;
use crate::input::dead_letter::DeadLetter;
use crate::kafka::producer::Producer;
use crate::metrics::Metrics;
use crate::route::Forward;
use crate::state::{self, ChangelogRecord, Store, StoreBatch, StoreFailures};

/// The commit thread's nice value: under contention the stream thread,
/// which publishes outcomes, goes first; a commit only takes longer.
const SAVE_NICE: libc::c_int = 10;

pub struct AtLeastOnce {
    metrics: Arc<Metrics>,
    producer: Producer,
    in_flight: Option<InFlight>,
    /// The interval that records sent now belong to.
    epoch: usize,
}

/// A commit between its first and its last step.
struct InFlight {
    epoch: usize,
    staged: Vec<(i32, Staged)>,
    changelog_records: usize,
    /// The store writes, once the changelog is delivered.
    saving: Option<JoinHandle<Result<StoreFailures, CommitError>>>,
    started: Instant,
}

/// One task's part of a commit, for the thread that saves it.
struct SaveWork {
    partition: i32,
    changelog: Vec<ChangelogRecord>,
    store: Option<Arc<Store>>,
    batch: StoreBatch,
}

impl AtLeastOnce {
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>, transactional_id: &str) -> Result<AtLeastOnce, CommitError> {
        let producer = Producer::new(&config.kafka, transactional_id).map_err(CommitError::Producer)?;
        Ok(AtLeastOnce { metrics, producer, in_flight: None, epoch: 0 })
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
                let offsets = offsets(&done)?;
                if offsets.count() > 0 {
                    // Waiting (at a rebalance or shutdown) the offsets must be in before the partitions go;
                    // otherwise a lost asynchronous commit is covered by the next one.
                    let mode = if wait { CommitMode::Sync } else { CommitMode::Async };
                    group.commit_offsets(&offsets, mode).map_err(CommitError::Offsets)?;
                }
                count_commit(&self.metrics, f.started, true);
                debug!(changelog = f.changelog_records, "committed");
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
    /// sent, awaited and the stores written on a thread of their own while
    /// the stream thread goes on; the tasks keep these states readable until then.
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
        f.changelog_records = work.iter().map(|w| w.changelog.len()).sum();
        let producer = self.producer.clone();
        let (epoch, started) = (f.epoch, f.started);
        f.saving = Some(
            std::thread::Builder::new()
                .name("junction-save".into())
                .spawn(move || save(&producer, epoch, started, work))
                .map_err(|e| CommitError::Thread(e.to_string()))?,
        );
        Ok(())
    }

    /// Whether the records of `epoch` are delivered; with `wait`, waits for
    /// everything in flight. An error for a failed delivery, or one that
    /// took longer than the commit timeout.
    fn delivered(&self, epoch: usize, started: Instant, wait: bool) -> Result<bool, CommitError> {
        if wait {
            return self.producer.flush(COMMIT_TIMEOUT).map(|_| true).map_err(CommitError::Delivery);
        }
        let tracker = self.producer.tracker();
        if tracker.in_flight(epoch) > 0 {
            if started.elapsed() > COMMIT_TIMEOUT {
                return Err(CommitError::Delivery(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)));
            }
            return Ok(false);
        }
        self.producer.drain_deliveries(COMMIT_TIMEOUT).map(|_| true).map_err(CommitError::Delivery)
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
        if let Some(f) = self.in_flight.take() {
            let _ = self.producer.flush(COMMIT_TIMEOUT);
            // A later commit's write must never land before this one's.
            if let Some(saving) = f.saving {
                let _ = saving.join();
            }
            count_commit(&self.metrics, f.started, false);
        }
        e
    }
}

impl Strategy for AtLeastOnce {
    fn publish(&mut self, mut outputs: Outputs<'_>) -> Result<(), CommitError> {
        let sent = self.send_outputs(outputs.outcomes, outputs.dead_letters, outputs.forwards);
        count_outcomes(&self.metrics, outputs.outcomes);
        outputs.clear();
        sent.map_err(|e| self.fatal_or(e))
    }

    fn is_committing(&self) -> bool {
        self.in_flight.is_some()
    }

    fn begin(&mut self, staged: Vec<(i32, Staged)>, group: &dyn InputGroup) -> Result<Option<Committed>, CommitError> {
        assert!(self.in_flight.is_none(), "a commit is already in flight");
        let started = Instant::now();
        // What was not yet published (outcomes of timers fired for this commit) goes now.
        let sent = staged.iter().try_for_each(|(_, s)| self.send_outputs(&s.outcomes, &s.dead_letters, &s.forwards));
        staged.iter().for_each(|(_, s)| count_outcomes(&self.metrics, &s.outcomes));
        let epoch = self.epoch;
        self.epoch += 1;
        self.in_flight = Some(InFlight { epoch, staged, changelog_records: 0, saving: None, started });
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
}

/// The end of a commit, on its own thread: sends the changelog records,
/// waits for their delivery, and writes each store with the changelog
/// offset it reaches as checkpoint. Returns the stores that failed their write.
fn save(
    producer: &Producer,
    epoch: usize,
    started: Instant,
    work: Vec<SaveWork>,
) -> Result<StoreFailures, CommitError> {
    lower_priority();
    for w in &work {
        producer.send_changelog(epoch, w.partition, &w.changelog).map_err(CommitError::Delivery)?;
    }
    let tracker = producer.tracker();
    let changelog_last = producer
        .await_deliveries(|| tracker.in_flight(epoch), started + COMMIT_TIMEOUT)
        .map_err(CommitError::Delivery)?;
    let batches = work.into_iter().filter_map(|w| Some((w.partition, w.store?, w.batch)));
    Ok(state::write_batches(batches, &changelog_last))
}

/// Lowers the calling thread's CPU priority (Linux's nice is per thread).
fn lower_priority() {
    // SAFETY: setpriority takes plain integers; `who` 0 is the calling thread.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, SAVE_NICE) };
    if result != 0 {
        debug!(error = %std::io::Error::last_os_error(), "cannot lower the commit thread's priority");
    }
}
