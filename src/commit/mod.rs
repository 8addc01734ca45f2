//! The commit protocol: what makes an interval's work durable, in an order
//! that keeps the guarantees whatever crashes in between. Each guarantee is
//! one [`Strategy`], in a file of its own:
//!
//! - [`at_least_once`]: outcomes, dead letters and forwarded records first,
//!   then the changelog, then the stores, then the input offsets, pipelined
//!   with the next interval;
//! - [`exactly_once`]: outcomes, dead letters, forwarded records, changelog
//!   records and input offsets in one Kafka transaction; the stores once it
//!   has committed.
//!
//! The stream thread stages what its tasks and input partitions produced
//! ([`Staged`]) and hands it
//! to the strategy; the strategy says which input offsets it committed and
//! which stores failed to take their batch ([`Committed`]). A store that
//! fails its write fails only its own partition, which the stream thread
//! then stops. A strategy sends through [`crate::kafka::producer`], saves
//! through [`crate::state::write_batches`], and knows nothing of tasks,
//! partitions' lifecycles or rebalances.

pub mod at_least_once;
pub mod exactly_once;
pub mod lease;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use crate::config::{Config, Guarantee};
use crate::input::dead_letter::DeadLetter;
use crate::join::outcome::OutcomeRecord;
use crate::kafka::group_state;
use crate::kafka::limits::TopicLimits;
use crate::kafka::refusals::Unplaceable;
use crate::metrics::Metrics;
use crate::route::Forward;
use crate::state::{ChangelogRecord, Store, StoreBatch, StoreFailures};
use crate::time::now_ms;

/// How long one flush or transaction step may take before the commit fails.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a commit that is waited for (a rebalance, shutdown) asks the
/// coordinator to confirm the membership, at most.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);

/// Under `at_least_once`, how often decided outcomes are sent, at most:
/// often enough that an outcome does not wait for the commit interval, and
/// seldom enough that each produce request carries a batch.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(20);

/// A guarantee's commit protocol. One commit is in flight at a time.
pub trait Strategy: Send {
    /// Sends the outcomes, dead letters and forwards decided so far, if the guarantee
    /// publishes before the commit (`at_least_once`), and empties the lists;
    /// otherwise leaves them for the commit.
    fn publish(&mut self, outputs: Outputs<'_>) -> Result<(), CommitError>;

    /// Whether a commit is in flight: [`Strategy::advance`] must finish it
    /// before the next one begins.
    fn is_committing(&self) -> bool;

    /// Whether the producer reaches a broker, as its last statistics or
    /// error said (see [`crate::kafka::delivery::DeliveryTracker`]).
    fn producer_reaches_a_broker(&self) -> bool;

    /// Starts committing `staged`, which is not empty. Returns what was
    /// committed when the commit is already finished, `None` while it is
    /// in flight. On error, the caller discards what the tasks staged and
    /// rewinds their partitions to the last commit.
    fn begin(&mut self, staged: Vec<(i32, Staged)>, group: &dyn InputGroup) -> Result<Option<Committed>, CommitError>;

    /// Moves the commit in flight on as far as its deliveries allow; with
    /// `wait`, to its end. Returns what was committed once it is finished.
    fn advance(&mut self, group: &dyn InputGroup, wait: bool) -> Result<Option<Committed>, CommitError>;

    /// The assignment was lost: the commit in flight is given up where it
    /// is, without waiting, and without writing anything more (no changelog
    /// record, no store batch, no offset); what waits in the producer's
    /// queue is dropped. Another instance owns the partitions now. A
    /// strategy whose commit in flight the broker decides (a transaction)
    /// sees it to its end instead, and returns what it committed.
    fn drop_lost(&mut self, group: &dyn InputGroup) -> Result<Option<Committed>, CommitError>;

    /// The outcomes that no topic takes (see [`crate::kafka::refusals`]),
    /// since the last call: their partitions must stop.
    fn take_unplaceable(&mut self) -> Vec<Unplaceable>;
}

/// The strategy of the configured guarantee, with its producer. Under
/// exactly-once this initialises its transactions, which fences any older
/// producer with the same transactional ID and aborts what it left open.
/// `stopping` is set once junction stops: an abort then waits no more.
pub fn strategy(
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    transactional_id: &str,
    lease: &Arc<lease::Lease>,
    limits: &Arc<TopicLimits>,
    stopping: &Arc<AtomicBool>,
) -> Result<Box<dyn Strategy>, CommitError> {
    let limits = Arc::clone(limits);
    Ok(match config.kafka.processing_guarantee {
        Guarantee::AtLeastOnce => {
            Box::new(at_least_once::AtLeastOnce::new(config, metrics, transactional_id, Arc::clone(lease), limits)?)
        }
        Guarantee::ExactlyOnce => {
            Box::new(exactly_once::ExactlyOnce::new(config, metrics, transactional_id, limits, Arc::clone(stopping))?)
        }
    })
}

/// What a commit needs of the input consumer.
pub trait InputGroup {
    fn commit_offsets(&self, offsets: &TopicPartitionList, mode: CommitMode) -> KafkaResult<()>;
    /// The group membership that a transaction's offsets are committed as;
    /// `None` while this consumer is no member.
    fn group_metadata(&self) -> Option<ConsumerGroupMetadata>;
    /// Commits again, and waits for, the offsets the group has committed
    /// for the partitions assigned here: the coordinator accepts them only
    /// from a member of the current generation (see [`lease`]). For when
    /// the caller waits anyway (a rebalance, shutdown) and nothing else polls.
    fn confirm_membership(&self) -> KafkaResult<()>;
    /// The group's committed offsets of `partitions`, once no open
    /// transaction holds them (under `read_committed`, librdkafka asks
    /// with `require_stable`); an error when the group answered one of
    /// them with an error.
    fn stable_offsets(&self, partitions: TopicPartitionList) -> KafkaResult<TopicPartitionList>;
}

/// The input consumer as the group member its partitions were assigned
/// to. A commit is sent only while the consumer's member ID, read afresh
/// for each, is still that one: one that joined its group again under a
/// new ID would have its commits accepted by the coordinator, for
/// partitions the group may have given to another member meanwhile (see
/// [`crate::runtime::membership`]). Refused here, a commit fails as one the
/// coordinator refuses as from an unknown member.
pub struct Member<'a, C: ConsumerContext> {
    pub consumer: &'a BaseConsumer<C>,
    /// The member ID the partitions held were assigned to; `None` when
    /// no ID was recorded.
    pub assigned_to: Option<&'a str>,
}

/// Whether partitions assigned to the member ID `assigned_to` are still
/// this consumer's, whose member ID is `now` (a new ID, or none while
/// librdkafka joins again, is not): read by `now` only when an ID was
/// recorded. Nothing recorded: any.
pub fn still_assigned<S: AsRef<str>>(assigned_to: Option<&str>, now: impl FnOnce() -> Option<S>) -> bool {
    assigned_to.is_none_or(|assigned| now().is_some_and(|id| id.as_ref() == assigned))
}

impl<C: ConsumerContext> Member<'_, C> {
    /// An error, without asking the coordinator, when the consumer's member
    /// ID is no longer the one the partitions were assigned to.
    fn check(&self) -> KafkaResult<()> {
        if still_assigned(self.assigned_to, || group_state::member_id(self.consumer)) {
            return Ok(());
        }
        warn!("not committing: this instance's member ID changed since its partitions were assigned");
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::UnknownMemberId))
    }
}

impl<C: ConsumerContext> InputGroup for Member<'_, C> {
    /// An asynchronous commit's answer reaches the consumer's context (and
    /// the lease) at a later poll: see [`crate::kafka::answered_commit`].
    fn commit_offsets(&self, offsets: &TopicPartitionList, mode: CommitMode) -> KafkaResult<()> {
        self.check()?;
        match mode {
            CommitMode::Async => crate::kafka::answered_commit::commit(self.consumer, offsets),
            CommitMode::Sync => self.consumer.commit(offsets, mode),
        }
    }

    /// Taken before the member ID is looked at: librdkafka resets both when
    /// the session runs out, and a transaction's offsets sent with no member
    /// ID and no generation are accepted by the coordinator as from outside
    /// the group (unless a `group.instance.id` names a member), which would
    /// let an instance that lost its partitions commit for them. Metadata
    /// taken while the ID was still valid is checked by the coordinator.
    /// A member ID is never given again, so one read after the metadata
    /// that is still the assigned one was the metadata's too.
    fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        let metadata = Consumer::group_metadata(self.consumer)?;
        let now = group_state::member_id(self.consumer)?;
        still_assigned(self.assigned_to, || Some(now)).then_some(metadata)
    }

    fn confirm_membership(&self) -> KafkaResult<()> {
        self.check()?;
        // A coordinator that does not answer this within the second would not take the commit either.
        let committed = self.consumer.committed(CONFIRM_TIMEOUT)?;
        let mut again = TopicPartitionList::new();
        for e in committed.elements() {
            if let Offset::Offset(o) = e.offset() {
                again.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))?;
            }
        }
        if again.count() == 0 {
            return Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset));
        }
        self.consumer.commit(&again, CommitMode::Sync)
    }

    fn stable_offsets(&self, partitions: TopicPartitionList) -> KafkaResult<TopicPartitionList> {
        let offsets = Consumer::committed_offsets(self.consumer, partitions, COMMIT_TIMEOUT)?;
        offsets.elements().iter().try_for_each(|p| p.error())?;
        Ok(offsets)
    }
}

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
    #[error(
        "the consumer is not in its group, or not as the member its partitions were assigned to, so its offsets \
         cannot join the transaction"
    )]
    NotInGroup,
    #[error("cannot create the producer: {0}")]
    Producer(KafkaError),
    #[error("cannot start a thread: {0}")]
    Thread(String),
    /// Under `at_least_once`: no offset commit was accepted within the
    /// commit timeout, so the changelog was not written (see [`lease`]).
    #[error(
        "this instance could not show that it still holds its partitions (no offset commit accepted in the last \
         {}s): nothing more was written to the changelog or the stores",
        .0.as_secs_f64()
    )]
    Unconfirmed(Duration),
    /// The assignment was lost while the commit was in flight.
    #[error("the partitions were lost to another instance; the commit was given up")]
    Abandoned,
    /// Under `exactly_once`: a transaction's commit failed and may have
    /// committed all the same, and it moved no input offset that would
    /// tell (it only fired deadlines): the stores of `homes` must be caught
    /// up from the changelog, which holds their state either way.
    #[error("a transaction that only fired deadlines may have committed: partitions {homes:?} are opened again")]
    Undecided { homes: Vec<i32> },
    /// Under `exactly_once`: a transaction's commit failed and may have
    /// committed all the same, and junction could not learn which: where
    /// each partition's last commit is, is unknown here.
    #[error("cannot tell whether a transaction committed: {0}")]
    Unsettled(String),
}

impl CommitError {
    /// Whether the producer must be replaced before the next commit.
    pub fn needs_new_producer(&self) -> bool {
        matches!(self, CommitError::Fatal(_) | CommitError::Fenced { .. })
    }

    /// Whether records were not delivered within the message timeout.
    pub fn timed_out(&self) -> bool {
        matches!(self, CommitError::Delivery(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut))
    }

    /// Whether the group coordinator refused the commit's offsets as from
    /// a member it no longer knows, or [`Member`] did, or there was no
    /// member ID to send a transaction's offsets as (see
    /// [`crate::runtime::membership`]): the partitions may be someone
    /// else's now.
    pub fn refused_membership(&self) -> bool {
        let e = match self {
            CommitError::NotInGroup => return true,
            CommitError::Aborted(e) | CommitError::Fatal(e) | CommitError::Offsets(e) => e,
            _ => return false,
        };
        matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::UnknownMemberId | RDKafkaErrorCode::FencedInstanceId))
    }
}

/// An outcome record and when the input that decided it was written (or the
/// timer fired), for the outcome latency.
pub struct Decided {
    pub record: OutcomeRecord,
    pub decided_at_ms: i64,
}

/// What is waiting to be published, emptied by [`Strategy::publish`].
pub struct Outputs<'a> {
    pub outcomes: &'a mut Vec<Decided>,
    pub dead_letters: &'a mut Vec<DeadLetter>,
    pub forwards: &'a mut Vec<Forward>,
}

impl Outputs<'_> {
    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty() && self.dead_letters.is_empty() && self.forwards.is_empty()
    }

    fn clear(&mut self) {
        self.outcomes.clear();
        self.dead_letters.clear();
        self.forwards.clear();
    }
}

/// What a commit must publish and save for one partition read: a home
/// partition's task (the repartition topic's partition, and a store), or
/// an input partition (no store).
pub struct Staged {
    /// The topic read; with the partition beside it in the commit's list,
    /// where `next_offset` is committed.
    pub topic: Arc<str>,
    /// Where `batch` goes: the task's store.
    pub store: Option<Arc<Store>>,
    pub outcomes: Vec<Decided>,
    pub dead_letters: Vec<DeadLetter>,
    pub forwards: Vec<Forward>,
    /// Changelog records: workflow ID → encoded state, or `None` for a tombstone.
    pub changelog: Vec<ChangelogRecord>,
    /// The store batch (data and timers; the checkpoint is added by the commit).
    pub batch: StoreBatch,
    /// The next input offset to commit, if any record was processed.
    pub next_offset: Option<i64>,
    /// The offset after the last commit, where a replay would start: set
    /// by the stream thread, which keeps it. Equal to `next_offset` when the
    /// partition read nothing since (its offset is in a transaction all the same).
    pub last_committed: Option<i64>,
}

impl Staged {
    /// Whether there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.next_offset.is_none()
            && self.outcomes.is_empty()
            && self.dead_letters.is_empty()
            && self.forwards.is_empty()
            && self.changelog.is_empty()
            && self.batch.is_empty()
    }
}

/// What a finished commit did.
#[derive(Debug, Default)]
pub struct Committed {
    /// The offsets committed: (topic, partition, next offset).
    pub offsets: Vec<(Arc<str>, i32, i64)>,
    /// The partitions whose stores failed to take their batch, and why.
    /// Under `at_least_once` their offsets were not committed.
    pub failed: StoreFailures,
}

/// What a commit of `staged` did: the offsets it covers, but for the tasks
/// whose store `failed`, whose offsets it did not commit under
/// `at_least_once`, and which it reports. (An input partition has no store:
/// one numbered like a failed store is committed all the same.)
fn committed(staged: &[(i32, Staged)], failed: StoreFailures) -> Committed {
    let offsets = staged
        .iter()
        .filter(|(p, s)| s.store.is_none() || failed.iter().all(|(f, _)| f != p))
        .filter_map(|(p, s)| Some((Arc::clone(&s.topic), *p, s.next_offset?)))
        .collect();
    Committed { offsets, failed }
}

/// The offsets of `committed`, to commit to the group.
fn offsets(committed: &Committed) -> Result<TopicPartitionList, CommitError> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, next) in &committed.offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)).map_err(CommitError::Offsets)?;
    }
    Ok(tpl)
}

/// The batches of `staged`, taken for the stores.
fn batches(staged: &mut [(i32, Staged)]) -> impl Iterator<Item = (i32, Arc<Store>, StoreBatch)> + '_ {
    staged.iter_mut().filter_map(|(p, s)| Some((*p, Arc::clone(s.store.as_ref()?), std::mem::take(&mut s.batch))))
}

/// Counts committed outcomes, and how long each waited since it was decided.
fn count_outcomes(metrics: &Metrics, outcomes: &[Decided]) {
    let mut tally = Tally::default();
    tally.add(outcomes);
    tally.count(metrics);
}

/// Outcomes sent and not yet committed: `junction_outcomes_total` counts
/// an outcome once the commit that carries it is done, and a commit that
/// fails counts none (its outcomes are decided again, and counted then).
#[derive(Default)]
pub struct Tally(Vec<Counted>);

struct Counted {
    workflow_type: String,
    outcome: crate::join::outcome::Outcome,
    duration_s: f64,
    decided_at_ms: i64,
}

impl Tally {
    pub fn add(&mut self, outcomes: &[Decided]) {
        self.0.extend(outcomes.iter().map(|d| Counted {
            workflow_type: d.record.workflow_type.clone(),
            outcome: d.record.outcome,
            duration_s: (d.record.finished_at_ms - d.record.started_at_ms).max(0) as f64 / 1000.0,
            decided_at_ms: d.decided_at_ms,
        }));
    }

    /// The commit is done: counts every outcome, and its latency until now.
    pub fn count(self, metrics: &Metrics) {
        let now_ms = now_ms();
        for c in self.0 {
            metrics.outcome(&c.workflow_type, c.outcome, c.duration_s);
            metrics.outcome_latency.observe((now_ms - c.decided_at_ms).max(0) as f64 / 1000.0);
        }
    }
}

/// Counts a finished commit, and how long it took.
fn count_commit(metrics: &Metrics, started: Instant, ok: bool) {
    metrics.commit_duration.observe(started.elapsed().as_secs_f64());
    metrics.commit(ok);
}

#[cfg(test)]
mod tests {
    use rdkafka::config::ClientConfig;

    use super::*;

    /// A real librdkafka consumer of a group, with no broker to join it through.
    fn consumer() -> BaseConsumer {
        ClientConfig::new().set("bootstrap.servers", "127.0.0.1:1").set("group.id", "g").create().unwrap()
    }

    #[test]
    fn a_consumer_that_is_no_member_gives_no_group_metadata_for_a_transaction() {
        let consumer = consumer();
        assert!(Consumer::group_metadata(&consumer).is_some(), "librdkafka gives metadata without a member ID");
        assert!(
            Member { consumer: &consumer, assigned_to: None }.group_metadata().is_none(),
            "offsets would join a transaction as from outside the group"
        );
    }

    #[test]
    fn a_consumer_no_longer_the_member_its_partitions_were_assigned_to_commits_nothing() {
        let consumer = consumer();
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset("t", 0, Offset::Offset(5)).unwrap();
        // The partitions were assigned to "a"; the consumer has no member ID now (it would be joining again).
        let member = Member { consumer: &consumer, assigned_to: Some("a") };
        for mode in [CommitMode::Async, CommitMode::Sync] {
            let refused = member.commit_offsets(&offsets, mode).expect_err("committed as another member");
            assert!(CommitError::Offsets(refused).refused_membership(), "{mode:?}");
        }
        let refused = member.confirm_membership().expect_err("confirmed as another member");
        assert!(CommitError::Offsets(refused).refused_membership());
        assert!(member.group_metadata().is_none(), "a transaction's offsets as another member");
        assert!(CommitError::NotInGroup.refused_membership());
    }

    #[test]
    fn only_the_member_id_the_partitions_were_assigned_to_commits_for_them() {
        assert!(still_assigned(Some("a"), || Some("a")));
        assert!(!still_assigned(Some("a"), || Some("b")), "joined again under a new ID");
        assert!(!still_assigned(Some("a"), || None::<&str>), "the ID reset while joining again");
        assert!(still_assigned(None, || -> Option<&str> { panic!("read with nothing recorded") }), "nothing recorded");
    }
}
