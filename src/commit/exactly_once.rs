//! The `exactly_once` commit: outcomes, dead letters, forwarded records,
//! changelog records and input offsets go in one Kafka transaction; the stores are written once
//! it has committed. A store that fails its write then is behind a changelog
//! that holds its state: the partition is stopped, and its store is caught
//! up from the changelog when it is opened again.
//!
//! Nothing is published before the commit, so a commit is never in flight
//! between polls: [`Strategy::begin`] returns once the transaction is
//! committed or aborted. A transaction whose commit failed without being
//! aborted may have committed: a new producer ends it, and the group's
//! offsets, which it carried, say whether it did (see `settle`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use crate::state;

/// Every record goes in the transaction of the commit: one epoch for all.
const EPOCH: usize = 0;

pub struct ExactlyOnce {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    transactional_id: String,
    limits: Arc<TopicLimits>,
    producer: Producer,
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
    ) -> Result<ExactlyOnce, CommitError> {
        let producer = transactional_producer(&config, transactional_id, &limits)?;
        Ok(ExactlyOnce { config, metrics, transactional_id: transactional_id.to_string(), limits, producer })
    }

    fn commit(&mut self, mut staged: Vec<(i32, Staged)>, group: &dyn InputGroup) -> Result<Committed, CommitError> {
        let began = Instant::now();
        let failed = |e: KafkaError| transaction_error(e, began.elapsed());
        self.producer.client().begin_transaction().map_err(failed)?;
        let changelog_last = match self.send_transaction(&staged, group, began) {
            Ok(changelog_last) => changelog_last,
            Err(e) => {
                let e = self.fatal_or(e, began);
                if !e.needs_new_producer() {
                    self.abort().map_err(|e| self.fatal_or(e, began))?;
                }
                return Err(e);
            }
        };
        if let Err(e) = self.producer.client().commit_transaction(COMMIT_TIMEOUT) {
            let e = self.fatal_or(failed(e), began);
            self.settle(&staged, group, e, began)?;
        }
        let failed = state::write_batches(batches(&mut staged), &changelog_last);
        staged.iter().for_each(|(_, s)| count_outcomes(&self.metrics, &s.outcomes));
        Ok(committed(&staged, failed))
    }

    /// Sends every record and offset of the transaction, and waits for
    /// their delivery; returns the last changelog offset of each partition.
    fn send_transaction(
        &self,
        staged: &[(i32, Staged)],
        group: &dyn InputGroup,
        began: Instant,
    ) -> Result<HashMap<i32, i64>, CommitError> {
        let failed = |e: KafkaError| transaction_error(e, began.elapsed());
        for (partition, s) in staged {
            self.producer.send_outcomes(EPOCH, s.outcomes.iter().map(|d| &d.record)).map_err(CommitError::Delivery)?;
            self.producer.send_dead_letters(EPOCH, &s.dead_letters).map_err(CommitError::Delivery)?;
            self.producer.send_forwards(EPOCH, &s.forwards).map_err(CommitError::Delivery)?;
            // The transaction fences what the lease guards under at_least_once.
            self.producer.send_changelog(EPOCH, *partition, &s.changelog, || true).map_err(|e| match e {
                ChangelogSendError::Kafka(e) => CommitError::Delivery(e),
                ChangelogSendError::Stopped(_) => unreachable!("always allowed"),
            })?;
        }
        // Every partition of the transaction has its offset in it (the
        // stream thread sees to it): the group coordinator refuses a
        // transaction's offsets from a member it no longer knows, which is
        // what keeps an instance that lost its partitions (a zombie) from
        // committing anything for them.
        let offsets = offsets(&committed(staged, Vec::new()))?;
        if offsets.count() > 0 {
            let group = group.group_metadata().ok_or(CommitError::NotInGroup)?;
            self.producer.client().send_offsets_to_transaction(&offsets, &group, COMMIT_TIMEOUT).map_err(failed)?;
        }
        self.await_transaction_deliveries(began)?;
        self.producer.drain_deliveries(COMMIT_TIMEOUT).map_err(CommitError::Delivery)
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

    /// Waits until every record of the transaction is delivered, and fails
    /// at the first that is not: it has doomed the transaction. (rdkafka's
    /// `commit_transaction` flushes first, for its whole timeout, even when
    /// records can no longer be delivered until the transaction is aborted.)
    fn await_transaction_deliveries(&self, began: Instant) -> Result<(), CommitError> {
        let tracker = self.producer.tracker();
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

    /// `e`, or the producer's fatal error when it has hit one, sorted like
    /// a transaction's error: a record refused because a newer producer with
    /// the same transactional ID fenced this one fails its delivery first,
    /// and the fence must still be told apart from other fatal errors (see
    /// [`crate::runtime::commits`]).
    fn fatal_or(&self, e: CommitError, began: Instant) -> CommitError {
        let Some((code, reason)) = self.producer.client().client().fatal_error() else { return e };
        warn!(error = %e, code = ?code, reason, "the producer hit a fatal error");
        let source = KafkaError::MessageProduction(code);
        if is_fence(code) {
            CommitError::Fenced { source, transaction_age: began.elapsed() }
        } else {
            CommitError::Fatal(source)
        }
    }

    /// Aborts the open transaction, then waits for its delivery reports (its
    /// purged and failed records) and forgets them: they belong to no later
    /// transaction, which must not mistake them for its own failures. An
    /// abort that does not finish needs a new producer, whose initialisation
    /// aborts the transaction in its stead.
    fn abort(&self) -> Result<(), CommitError> {
        if let Err(abort) = self.producer.client().abort_transaction(COMMIT_TIMEOUT) {
            warn!(error = %abort, "aborting the transaction failed; a new producer will abort it");
            return Err(CommitError::Fatal(abort));
        }
        let tracker = self.producer.tracker();
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
}

impl Strategy for ExactlyOnce {
    /// Outcomes wait for the commit's transaction: nothing is sent here.
    fn publish(&mut self, _: Outputs<'_>) -> Result<(), CommitError> {
        Ok(())
    }

    fn is_committing(&self) -> bool {
        false
    }

    fn producer_reaches_a_broker(&self) -> bool {
        self.producer.tracker().reaches_a_broker()
    }

    fn begin(&mut self, staged: Vec<(i32, Staged)>, group: &dyn InputGroup) -> Result<Option<Committed>, CommitError> {
        let started = Instant::now();
        let result = self.commit(staged, group);
        count_commit(&self.metrics, started, result.is_ok());
        result.map(Some)
    }

    fn advance(&mut self, _: &dyn InputGroup, _: bool) -> Result<Option<Committed>, CommitError> {
        Ok(None)
    }

    fn take_unplaceable(&mut self) -> Vec<Unplaceable> {
        self.producer.refusals().take_unplaceable()
    }
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
