//! Commit scheduling: when the stream thread fires timers, publishes and
//! commits, and what it does with the result. The protocol of each
//! guarantee is the commit strategy's ([`crate::commit`]); this decides
//! what a failure means: rewind and redo the interval, replace the
//! producer, or stop, when the producer was fenced by a live twin.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::anyhow;
use rdkafka::consumer::{BaseConsumer, CommitMode, ConsumerContext};
use tracing::warn;

use crate::commit::lease::Lease;
use crate::commit::{self, CommitError, Committed, InputGroup, Member, Outputs, Staged, Strategy};
use crate::config::{Config, Guarantee};
use crate::kafka::limits::TopicLimits;
use crate::kafka::purge::Purger;
use crate::kafka::stranded::{self, Reachability};
use crate::kafka::{clients, topics};
use crate::metrics::Metrics;
use crate::runtime::partitions::Partitions;
use crate::time::now_ms;

pub struct Commits {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    strategy: Box<dyn Strategy>,
    /// The producer's transactional ID, for a producer made anew.
    transactional_id: String,
    /// Set once the stream thread cannot go on: nothing is committed after that.
    halted: bool,
    /// The producer could not be replaced after it or the input consumer
    /// was found stranded ([`Commits::renew_producer`]): the next commit makes one
    /// first. (Under `exactly_once` the old one may already be fenced by the
    /// attempt, and its fence must not be read as a twin instance's.)
    renew_pending: bool,
    /// Whether the producer reaches a broker, followed to tell when
    /// librdkafka stranded it (see [`Commits::replace_stranded_producer`]).
    producer_reach: Reachability,
    /// Set when the group coordinator refused a commit as from a member it
    /// does not know (see [`crate::runtime::membership`]).
    refused_membership: bool,
    /// Deletes the repartition topic's committed records.
    purger: Purger,
    /// How long the changelog may still be written under `at_least_once`.
    lease: Arc<Lease>,
    /// What each of junction's topics takes.
    limits: Arc<TopicLimits>,
    runtime: tokio::runtime::Handle,
    /// Set once junction stops: no producer is made any more (under
    /// `exactly_once` its initialisation waits for a coordinator, which
    /// the shutdown cannot afford; what is left open is ended by the next
    /// producer with this transactional ID, or the transaction timeout).
    stopping: Arc<AtomicBool>,
}

impl Commits {
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        transactional_id: String,
        runtime: tokio::runtime::Handle,
        lease: Arc<Lease>,
        limits: Arc<TopicLimits>,
        stopping: Arc<AtomicBool>,
    ) -> Result<Commits, CommitError> {
        let strategy =
            commit::strategy(Arc::clone(&config), Arc::clone(&metrics), &transactional_id, &lease, &limits, &stopping)?;
        let purger = Purger::new(&config.kafka, runtime.clone());
        Ok(Commits {
            config,
            metrics,
            strategy,
            transactional_id,
            halted: false,
            renew_pending: false,
            producer_reach: Reachability::default(),
            refused_membership: false,
            purger,
            lease,
            limits,
            runtime,
            stopping,
        })
    }

    /// The partitions were lost: the commit in flight is given up without
    /// writing anything more (under `exactly_once`, seen to its end: the
    /// coordinator decides it), and so is the work since the last commit.
    pub fn drop_lost<C: ConsumerContext>(
        &mut self,
        partitions: &mut Partitions,
        member: &Member<'_, C>,
    ) -> anyhow::Result<()> {
        let consumer = member.consumer;
        match self.strategy.drop_lost(member) {
            Ok(Some(committed)) => self.committed(partitions, consumer, committed),
            Ok(None) => {}
            Err(e) => self.failed(partitions, consumer, e)?,
        }
        Ok(())
    }

    /// Replaces the producer, every partition having been given up (no
    /// commit or transaction is under way): the input consumer was found
    /// stranded, and the producer, made before the same broker restart, may
    /// be too. (Under `exactly_once` the new one fences the old.) Kept when
    /// a new one cannot be made: a commit that fails replaces it again.
    pub fn renew_producer(&mut self) {
        match self.new_strategy() {
            Ok(strategy) => self.strategy = strategy,
            Err(e) => {
                warn!(error = %e, "cannot replace the producer; the next commit makes a new one first");
                self.renew_pending = true;
            }
        }
    }

    /// Under `exactly_once`, replaces a producer that librdkafka stranded
    /// (issue 5301: see [`crate::kafka::stranded`]), between two
    /// transactions (none is open then, and the new producer fences the old):
    /// one that still reaches no broker while fresh clients have reached
    /// the cluster for [`stranded::STRANDED_AFTER`]. Its commits wait
    /// meanwhile (see [`Commits::commit`]). Called every few seconds.
    /// (Under `at_least_once` a commit whose records time out replaces it.)
    pub fn replace_stranded_producer(&mut self) {
        // A transaction under way ends first (its thread holds the producer until then).
        if self.config.kafka.processing_guarantee != Guarantee::ExactlyOnce || self.strategy.is_committing() {
            return;
        }
        if !self.producer_reach.stranded(self.strategy.producer_reaches_a_broker(), &self.config.kafka) {
            return;
        }
        warn!(
            "the producer reaches no broker while new clients have reached the cluster for {} s: librdkafka \
             stranded it (issue 5301). Replacing it",
            stranded::STRANDED_AFTER.as_secs()
        );
        self.producer_reach = Reachability::default();
        self.renew_producer();
    }

    fn new_strategy(&self) -> Result<Box<dyn Strategy>, CommitError> {
        commit::strategy(
            Arc::clone(&self.config),
            Arc::clone(&self.metrics),
            &self.transactional_id,
            &self.lease,
            &self.limits,
            &self.stopping,
        )
    }

    /// Whether a producer must not be made now: junction is stopping under
    /// `exactly_once` (see the field `stopping`).
    fn stopping_exactly_once(&self) -> bool {
        self.config.kafka.processing_guarantee == Guarantee::ExactlyOnce && self.stopping.load(Ordering::SeqCst)
    }

    /// Asks the group coordinator whether this instance is still a member,
    /// when a writer waits for the lease and no commit is on its way: it
    /// commits again offsets already committed, which the coordinator
    /// accepts only from a member of the current generation; the answer
    /// comes at a later poll. Nothing is sent while no partition has read
    /// anything since its assignment (the assignment itself renewed the
    /// lease then). Never blocks.
    pub fn confirm_membership<C: ConsumerContext>(&mut self, partitions: &mut Partitions, member: &Member<'_, C>) {
        if !self.lease.is_wanted() || self.lease.is_renewing() {
            return;
        }
        let offsets = partitions.last_committed();
        if offsets.count() == 0 {
            return;
        }
        self.lease.commit_sent();
        if let Err(e) = member.commit_offsets(&offsets, CommitMode::Async) {
            warn!(error = %e, "cannot send the offset commit that confirms the group membership");
            self.lease.answered(false);
            self.refused_membership |= CommitError::Offsets(e).refused_membership();
        }
    }

    pub fn is_committing(&self) -> bool {
        self.strategy.is_committing()
    }

    /// Whether an `exactly_once` transaction is under way (on its thread).
    pub fn is_transaction_in_flight(&self) -> bool {
        self.config.kafka.processing_guarantee == Guarantee::ExactlyOnce && self.strategy.is_committing()
    }

    /// Commits nothing more: the stream thread is stopping on an error.
    pub fn halt(&mut self) {
        self.halted = true;
    }

    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// Whether a commit was refused as from an unknown member since the last time asked.
    pub fn take_refused_membership(&mut self) -> bool {
        std::mem::take(&mut self.refused_membership)
    }

    /// Fires due timers and starts committing the active tasks' work, after
    /// finishing the commit still in flight. With `wait` (at a rebalance and
    /// at shutdown) it returns only once the commit is finished. A failed
    /// commit discards the work since the last finished one and rewinds there.
    /// Without `wait`, a commit still in flight is left to finish and this
    /// returns `false`: the next one starts as soon as it has (processing
    /// goes on meanwhile, so a slow broker stretches the interval instead of
    /// stopping the stream thread). An error: the stream thread cannot go on.
    pub fn commit<C: ConsumerContext>(
        &mut self,
        partitions: &mut Partitions,
        member: &Member<'_, C>,
        wait: bool,
    ) -> anyhow::Result<bool> {
        let consumer = member.consumer;
        if self.strategy.is_committing() {
            self.advance(partitions, member, wait)?;
            if self.strategy.is_committing() {
                return Ok(false);
            }
        }
        if self.renew_pending {
            if self.stopping_exactly_once() {
                // Nothing can be committed without a producer; the work is redone after the restart.
                return Ok(true);
            }
            self.strategy = self
                .new_strategy()
                .map_err(|e| anyhow!(e).context("replacing a producer that librdkafka may have stranded"))?;
            self.renew_pending = false;
        }
        if !wait
            && self.config.kafka.processing_guarantee == Guarantee::ExactlyOnce
            && !self.strategy.producer_reaches_a_broker()
        {
            // A transaction begun now would wait for a broker up to the
            // commit timeout (a minute), and the next commit with it: one stranded
            // never reaches one. The work waits for the next interval, and
            // the producer is replaced if stranded.
            return Ok(true);
        }
        let now = now_ms();
        let caught_up = partitions.caught_up_homes(consumer);
        let mut failed = Vec::new();
        for (partition, slot) in partitions.active() {
            if let Err(e) = slot.task.punctuate(now, caught_up.contains(&partition)) {
                failed.push((partition, e));
            }
        }
        for (partition, e) in failed {
            partitions.park(consumer, partition, &e, None);
        }
        partitions.rewind_stopped_homes_sources(consumer);
        if self.config.kafka.processing_guarantee == Guarantee::ExactlyOnce {
            if let Err(e) = self.cover_offsets(partitions, consumer) {
                self.failed(partitions, consumer, e)?;
                return Ok(true);
            }
        }
        let mut staged: Vec<(i32, Staged)> = partitions
            .active()
            .filter(|(_, s)| s.task.is_dirty())
            .map(|(partition, s)| (partition, Staged { last_committed: s.replay_from, ..s.task.stage() }))
            .collect();
        staged.extend(partitions.sources().filter(|s| s.is_dirty()).map(|s| (s.partition, s.stage())));
        partitions.forwards_staged();
        if staged.is_empty() {
            return Ok(true);
        }
        if staged.iter().all(|(_, s)| s.is_empty()) {
            self.committed(partitions, consumer, Committed::default());
            return Ok(true);
        }
        match self.strategy.begin(staged, member) {
            Ok(Some(committed)) => self.committed(partitions, consumer, committed),
            Ok(None) if wait => self.advance(partitions, member, true)?,
            Ok(None) => {}
            Err(e) => self.failed(partitions, consumer, e)?,
        }
        Ok(true)
    }

    /// Gives every task that the next transaction carries an input offset to
    /// commit in it, even one that read nothing since the last commit (a
    /// deadline fired): its last committed offset again. The transaction's
    /// offsets are what the group coordinator checks, so a transaction
    /// without them would commit even from an instance that has lost its
    /// partitions to another.
    fn cover_offsets<C: ConsumerContext>(
        &self,
        partitions: &mut Partitions,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), CommitError> {
        let topic = self.config.kafka.repartition_topic();
        for (partition, slot) in partitions.active() {
            if !slot.task.is_dirty() || slot.task.has_offset() {
                continue;
            }
            let offset = match slot.replay_from {
                Some(offset) => offset,
                None => {
                    let offset = clients::committed_offset(&self.config.kafka, consumer, &topic, partition)
                        .map_err(CommitError::Offsets)?;
                    slot.replay_from = Some(offset);
                    offset
                }
            };
            slot.task.cover_offset(offset);
        }
        Ok(())
    }

    /// Sends what the active tasks and the sources produced since the last time (under
    /// `at_least_once`; under `exactly_once` it waits for the commit).
    pub fn publish<C: ConsumerContext>(
        &mut self,
        partitions: &mut Partitions,
        consumer: &BaseConsumer<C>,
    ) -> anyhow::Result<()> {
        let strategy = &mut self.strategy;
        let mut publish = |outputs: Outputs<'_>| if outputs.is_empty() { Ok(()) } else { strategy.publish(outputs) };
        let mut result = partitions.active().try_for_each(|(_, slot)| publish(slot.task.outputs()));
        if result.is_ok() {
            result = partitions.sources().try_for_each(|source| publish(source.outputs()));
        }
        match result {
            Ok(()) => Ok(()),
            Err(e) => self.failed(partitions, consumer, e),
        }
    }

    /// Moves the commit in flight on; with `wait`, to its end.
    pub fn advance<C: ConsumerContext>(
        &mut self,
        partitions: &mut Partitions,
        member: &Member<'_, C>,
        wait: bool,
    ) -> anyhow::Result<()> {
        let consumer = member.consumer;
        match self.strategy.advance(member, wait) {
            Ok(Some(committed)) => self.committed(partitions, consumer, committed),
            Ok(None) => {}
            Err(e) => self.failed(partitions, consumer, e)?,
        }
        Ok(())
    }

    fn committed<C: ConsumerContext>(
        &mut self,
        partitions: &mut Partitions,
        consumer: &BaseConsumer<C>,
        committed: Committed,
    ) {
        for (topic, partition, next) in committed.offsets {
            if *topic == *partitions.repartition_topic() {
                self.purger.committed(partition, next);
                match partitions.get_mut(partition) {
                    Some(slot) => slot.replay_from = Some(next),
                    None => partitions.committed_while_stopped(partition, next),
                }
            } else if let Some(source) = partitions.source_mut(&topic, partition) {
                source.replay_from = Some(next);
            }
        }
        for (partition, e) in committed.failed {
            partitions.park(consumer, partition, &e, None);
        }
        partitions.for_each_task(|task| task.committed());
        partitions.forwards_committed();
        self.purger.maybe_purge();
    }

    /// A commit failed: nothing of it counts. Rewinds to the last commit,
    /// with a new producer when the old one cannot go on.
    fn failed<C: ConsumerContext>(
        &mut self,
        partitions: &mut Partitions,
        consumer: &BaseConsumer<C>,
        e: CommitError,
    ) -> anyhow::Result<()> {
        if self.halted {
            return Ok(());
        }
        if let CommitError::Unsettled(_) = &e {
            // Resuming from the last commit known here could redo a committed interval.
            return Err(anyhow!(e).context("the stream thread stops: a restart reads the group's offsets again"));
        }
        warn!(error = %e, "commit failed; discarding the work since the last commit and resuming from there");
        let unplaceable = self.strategy.take_unplaceable();
        self.refused_membership |= e.refused_membership();
        if let CommitError::Fenced { transaction_age, .. } = &e {
            self.fenced(*transaction_age)?;
        }
        // A topic refused a record for its size: its limit may have been
        // lowered. The producer then batches no more than the new limits.
        let mut limits_lowered = false;
        if self.limits.is_stale() {
            if let Some(limits) = topics::read_limits_again(&self.config.kafka, &self.runtime) {
                limits_lowered = self.limits.update(limits);
                warn!(?limits, "a topic refused a record for its size: its limits are read again");
            }
        }
        // A producer whose records time out may know no broker any more:
        // one that met a broker its controller had fenced forgets them all
        // (librdkafka issue 5301), and would time out for ever. Under
        // at_least_once a new one costs only its connections.
        let stuck = e.timed_out() && self.config.kafka.processing_guarantee == Guarantee::AtLeastOnce;
        if e.needs_new_producer() || limits_lowered || stuck {
            if self.stopping_exactly_once() {
                self.renew_pending = true;
            } else {
                self.strategy = self.new_strategy().map_err(|e| anyhow!(e).context("replacing the producer"))?;
            }
        }
        partitions.rewind(consumer);
        // Their changelog holds their state, with or without the transaction's.
        if let CommitError::Undecided { homes } = &e {
            for &home in homes {
                // (One the rewind stopped already is opened again anyway.)
                if partitions.get_mut(home).is_some() {
                    partitions.park(consumer, home, &e, None);
                }
            }
        }
        // An outcome no topic takes stops its workflow's home partition, alone.
        for u in unplaceable {
            let home = crate::route::home(&u.workflow_id, partitions.home_partitions());
            partitions.park(consumer, home, &u.why, None);
        }
        Ok(())
    }

    /// Tells the two fences apart. A producer fenced in a young transaction
    /// was fenced by a newer one with its transactional ID: another live
    /// process. Making a producer again would fence that one in turn, and
    /// the two would take turns for ever: an error.
    fn fenced(&self, transaction_age: std::time::Duration) -> anyhow::Result<()> {
        let timeout = clients::transaction_timeout(&self.config.kafka);
        if transaction_age < timeout {
            return Err(anyhow!(
                "this instance's producer was fenced by another process using the same transactional ID \
                 {id:?}: two instances were given the same kafka.instance_id. Give each instance its own, or \
                 leave kafka.instance_id unset (each state directory then keeps an ID of its own)",
                id = self.transactional_id
            ));
        }
        warn!(
            transaction_age_s = transaction_age.as_secs_f64(),
            transaction_timeout_s = timeout.as_secs_f64(),
            "this instance was fenced: its transaction outlived transaction.timeout.ms (the process was paused \
             or stalled) and the broker aborted it; its partitions may have moved. Nothing of it was committed: \
             the work since the last commit is redone with a new producer, for the partitions it still holds"
        );
        Ok(())
    }
}
