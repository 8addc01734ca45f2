//! The partition lifecycle. Each assigned home partition (a partition of
//! the repartition topic) is restoring (its store catching up from the
//! changelog, its repartition partition paused), active (its task
//! processing), or stopped (its store failed). Each assigned input
//! partition is a [`Source`], which forwards its records to their homes.
//! This owns the tasks and
//! the sources, opens and closes the stores, pauses, resumes and seeks what
//! they read, and publishes what it holds to the operations view.
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, info_span, warn};

use crate::config::{Config, Guarantee};
use crate::input::event;
use crate::kafka::caught_up;
use crate::kafka::changelog_ends::ChangelogEnds;
use crate::ops::view::View;
use crate::route;
use crate::runtime::opener::{Opener, Request};
use crate::runtime::source::Source;
use crate::runtime::task::{stored_timer, InputRecord, Task};
use crate::state::{Prepared, Restorer, StoreMemory};

const SEEK_TIMEOUT: Duration = Duration::from_secs(10);
/// The pauses before a stopped partition's store is opened again: doubling up to the maximum.
pub const PARK_RETRY_FIRST: Duration = Duration::from_secs(1);
pub const PARK_RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Restoring,
    Active,
}

pub struct Slot {
    pub task: Task,
    pub phase: Phase,
    /// The first record that arrived while the store was restoring: processing starts there.
    resume_from: Option<i64>,
    /// Where to rewind to when a commit fails: the offset after the last commit.
    pub replay_from: Option<i64>,
    /// Opened again after its store failed: it must prove it can write before it resumes.
    reopened: bool,
    /// Sought back to a marker whose records were not read yet.
    refetch: Option<Refetch>,
}

/// A task's partition sought back to a marker whose held records its input
/// partition had not read yet (after a crash or a move, the marker's
/// records are read again from their last commit): it waits, paused, until
/// they are read, and then skips what it had fetched before the seek, up
/// to the marker again.
struct Refetch {
    /// The marker's offset.
    from: i64,
    /// The input partition (index into `input_topics`, partition) and the
    /// offset it must have read; `None` once it has, and the partition is
    /// resumed.
    waits_for: Option<(usize, i32, i64)>,
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

/// A partition assigned, waiting until no transaction holds its offsets
/// before its store is opened ([`crate::kafka::stable_offsets`]). It is
/// paused, and counts as restoring.
struct Awaiting {
    /// The request whose answer it waits for.
    ticket: u64,
    /// Where its input resumes (as [`Parked::from`]).
    from: Option<i64>,
    /// Opened again after it stopped.
    reopened: bool,
    /// Set to give the opening up.
    cancel: Arc<AtomicBool>,
}

pub struct Partitions {
    config: Arc<Config>,
    view: Arc<View>,
    /// N, the home partitions.
    home_partitions: usize,
    /// The repartition topic, whose partitions are the tasks'.
    repartition_topic: Arc<str>,
    /// The input topics, in configuration order.
    input_topics: Vec<Arc<str>>,
    /// Their partition counts, as last seen.
    input_counts: Vec<usize>,
    slots: BTreeMap<i32, Slot>,
    /// The assigned input partitions, by (index into `input_topics`, partition).
    sources: BTreeMap<(usize, i32), Source>,
    parked: BTreeMap<i32, Parked>,
    /// Each partition's last stop and the pause it got, so that a partition
    /// that fails again soon after it resumed waits longer.
    stops: HashMap<i32, (Instant, Duration)>,
    restorer: Restorer,
    /// The clients that read the changelog's ends, shared with the opener and the restorer.
    ends: Arc<ChangelogEnds>,
    /// Whether an input record read on its workflow's home partition is
    /// joined there directly instead of forwarded: under `exactly_once`
    /// only. Under `at_least_once` a crash replays what it had published,
    /// and a replay may interleave the direct and the forwarded records of
    /// one workflow otherwise than the first time, so that an outcome
    /// repeated could differ from the one published. Through the
    /// repartition topic alone, a workflow's events reach its task in one
    /// order, the same on every replay. (Under `exactly_once` nothing of an
    /// interval is visible before its transaction commits, and a replay
    /// redoes it from the start.) Under `at_least_once` such a record is
    /// held where it was read until a marker in the repartition partition
    /// joins it ([`route::Forward::marker`]): the order is the log's, at the
    /// cost of a marker per poll instead of a copy per record. While the
    /// home partition is not active, its input partitions are frozen
    /// ([`Source::freeze`]) and read again from their last commit once it
    /// is, so that a replay meets every record at its marker; see also
    /// [`Partitions::bound_held`].
    joins_directly: bool,
    /// Home partitions stopped since the last commit began, whose input
    /// partitions of the same number must be read again from their last
    /// commit: what they joined directly was lost with the task.
    stopped_homes: BTreeSet<i32>,
    /// The partitions whose seek failed, and where they must be read from.
    unsought: Vec<(Arc<str>, i32, i64)>,
    awaiting: BTreeMap<i32, Awaiting>,
    opener: Opener,
    /// Each partition's committed offset when it was assigned: where it
    /// starts, for [`Partitions::caught_up_homes`] until it delivers a record.
    starts: HashMap<(String, i32), i64>,
    /// The homes this instance forwarded records to since the last commit
    /// began, and before the commit in flight began: records not yet
    /// readable there (under `exactly_once`, not before their transaction
    /// commits; under `at_least_once`, perhaps not yet delivered), so those
    /// homes have not caught up.
    forwarded_to: BTreeSet<i32>,
    forwarded_in_commit: BTreeSet<i32>,
    /// Forwarded to in the last commit that finished, whose end the
    /// consumer may not have fetched yet.
    forwarded_committed: BTreeSet<i32>,
    tickets: u64,
    /// Every partition read is paused until what waits for a commit is committed.
    held: bool,
}

impl Partitions {
    /// `input_counts`: each input topic's partition count, in configuration order.
    /// `delete_retention`: the changelog's `delete.retention.ms`, when known.
    pub fn new(
        config: Arc<Config>,
        view: Arc<View>,
        home_partitions: usize,
        input_counts: Vec<usize>,
        delete_retention: Option<Duration>,
    ) -> anyhow::Result<Partitions> {
        let timers = stored_timer(Arc::clone(&config));
        let ends = Arc::new(
            ChangelogEnds::new(&config.kafka)
                .map_err(|e| anyhow!(e).context("creating the clients that read the changelog's ends"))?,
        );
        let memory = StoreMemory::new(config.state.memory_bytes as usize, config.state.write_buffer_bytes as usize);
        let opener = Opener::new(Arc::clone(&config), Arc::clone(&ends), memory, delete_retention);
        let restorer = Restorer::new(&config.kafka, Arc::clone(&ends), Arc::clone(&view.metrics), timers)?;
        let joins_directly = config.kafka.processing_guarantee == Guarantee::ExactlyOnce;
        Ok(Partitions {
            home_partitions,
            repartition_topic: config.kafka.repartition_topic().into(),
            input_topics: config.kafka.input_topics.iter().map(|t| Arc::from(t.name.as_str())).collect(),
            input_counts,
            config,
            view,
            slots: BTreeMap::new(),
            sources: BTreeMap::new(),
            parked: BTreeMap::new(),
            stops: HashMap::new(),
            restorer,
            ends,
            joins_directly,
            stopped_homes: BTreeSet::new(),
            unsought: Vec::new(),
            awaiting: BTreeMap::new(),
            opener,
            starts: HashMap::new(),
            forwarded_to: BTreeSet::new(),
            forwarded_in_commit: BTreeSet::new(),
            forwarded_committed: BTreeSet::new(),
            tickets: 0,
            held: false,
        })
    }

    /// The active partitions, with their tasks.
    pub fn active(&mut self) -> impl Iterator<Item = (i32, &mut Slot)> {
        self.slots.iter_mut().filter(|(_, s)| s.phase == Phase::Active).map(|(p, s)| (*p, s))
    }

    /// The assigned input partitions.
    pub fn sources(&mut self) -> impl Iterator<Item = &mut Source> {
        self.sources.values_mut()
    }

    /// The source of `partition` of `topic`, if it is assigned here.
    pub fn source_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Source> {
        let index = self.topic_index(topic)?;
        self.sources.get_mut(&(index, partition))
    }

    /// Where `topic` is in `input_topics`, if it is an input topic.
    fn topic_index(&self, topic: &str) -> Option<usize> {
        self.input_topics.iter().position(|t| **t == *topic)
    }

    /// N, the home partitions.
    pub fn home_partitions(&self) -> usize {
        self.home_partitions
    }

    pub fn repartition_topic(&self) -> &str {
        &self.repartition_topic
    }

    /// The input partitions that go with `homes` (see [`route::input_partitions_of`]).
    pub fn inputs_of(&self, homes: &[i32]) -> Vec<(String, i32)> {
        let mut inputs = Vec::new();
        for (topic, &count) in self.input_topics.iter().zip(&self.input_counts) {
            inputs.extend(self.partitions_of_homes(topic, count, 0, homes.iter().copied()));
        }
        inputs
    }

    /// The partitions of `topic` (with `count` partitions), from `first` on, that go with `homes`.
    fn partitions_of_homes<'a>(
        &self,
        topic: &'a str,
        count: usize,
        first: usize,
        homes: impl Iterator<Item = i32> + 'a,
    ) -> impl Iterator<Item = (String, i32)> + 'a {
        let n = self.home_partitions;
        homes.flat_map(move |home| {
            route::input_partitions_of(home, n, count)
                .filter(move |&p| p as usize >= first)
                .map(move |p| (topic.to_string(), p))
        })
    }

    /// Takes in the input topics' partition counts as they are now, and
    /// returns the new input partitions that go with the home partitions
    /// held here, which this instance must now read. (A topic never loses
    /// partitions; a smaller count is ignored.)
    pub fn grow_inputs(&mut self, counts: &[Option<usize>]) -> Vec<(String, i32)> {
        let homes = self.assigned_homes();
        let mut new = Vec::new();
        for (index, count) in counts.iter().enumerate().take(self.input_topics.len()) {
            let (known, Some(count)) = (self.input_counts[index], *count) else { continue };
            if count <= known {
                continue;
            }
            self.input_counts[index] = count;
            let topic = &self.input_topics[index];
            info!(topic = &**topic, from = known, to = count, "an input topic gained partitions");
            new.extend(self.partitions_of_homes(topic, count, known, homes.iter().copied()));
        }
        new
    }

    /// The home partitions assigned here: active, restoring, stopped, or
    /// waiting for their offsets.
    fn assigned_homes(&self) -> BTreeSet<i32> {
        self.slots.keys().chain(self.parked.keys()).chain(self.awaiting.keys()).copied().collect()
    }

    /// Starts reading input partitions, each from its committed offset.
    pub fn add_sources<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        assigned: &[(String, i32)],
    ) -> KafkaResult<()> {
        if assigned.is_empty() {
            return Ok(());
        }
        consumer.incremental_assign(&partition_list(assigned))?;
        for (topic, partition) in assigned {
            let Some(index) = self.topic_index(topic) else { continue };
            let topic = Arc::clone(&self.input_topics[index]);
            let freeze = !self.joins_directly && !self.is_active(self.home_of(*partition));
            let source = self
                .sources
                .entry((index, *partition))
                .or_insert_with(|| Source::new(topic, *partition, &self.view.metrics));
            if freeze {
                source.freeze();
            }
        }
        Ok(())
    }

    /// Under `at_least_once`, freezes the input partitions of `home`'s
    /// number ([`Source::freeze`]): it is not active.
    fn freeze_inputs(&mut self, home: i32) {
        if self.joins_directly {
            return;
        }
        let n = self.home_partitions.max(1) as i32;
        for source in self.sources.values_mut().filter(|s| home_of(s.partition, n) == home) {
            source.freeze();
        }
    }

    /// Under `at_least_once`, reads again from their last commit the input
    /// partitions of `home`'s number that were frozen: it is active.
    fn thaw_inputs<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, home: i32) {
        let n = self.home_partitions.max(1) as i32;
        let mut thawed = BTreeSet::new();
        for source in self.sources.values_mut().filter(|s| home_of(s.partition, n) == home) {
            if source.thaw() {
                thawed.insert((Arc::clone(&source.topic), source.partition));
            }
        }
        if !thawed.is_empty() {
            self.rewind_sources_where(consumer, |s| thawed.contains(&(Arc::clone(&s.topic), s.partition)));
        }
    }

    fn is_active(&self, home: i32) -> bool {
        self.slots.get(&home).is_some_and(|s| s.phase == Phase::Active)
    }

    fn active_mut(&mut self, home: i32) -> Option<&mut Slot> {
        self.slots.get_mut(&home).filter(|s| s.phase == Phase::Active)
    }

    /// The home partition whose number an input partition has.
    fn home_of(&self, input_partition: i32) -> i32 {
        home_of(input_partition, self.home_partitions.max(1) as i32)
    }

    /// Gives up revoked input partitions (their work is committed), those
    /// of `revoked` that are read here.
    pub fn remove_sources<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, revoked: &[(String, i32)]) {
        let mut read = Vec::new();
        for (topic, partition) in revoked {
            self.forget_seek(topic, *partition);
            let Some(index) = self.topic_index(topic) else { continue };
            if self.sources.remove(&(index, *partition)).is_some() {
                self.view.metrics.forget_lag(topic, *partition);
                read.push((topic.clone(), *partition));
            }
        }
        let revoked = read;
        if revoked.is_empty() {
            return;
        }
        if let Err(e) = consumer.incremental_unassign(&partition_list(&revoked)) {
            warn!(error = %e, inputs = ?revoked, "cannot stop reading revoked input partitions");
        }
    }

    /// The input partitions held, as (topic, partition).
    pub fn held_sources(&self) -> Vec<(String, i32)> {
        self.sources.values().map(|s| (s.topic.to_string(), s.partition)).collect()
    }

    /// Calls `f` with every task, restoring ones included.
    pub fn for_each_task(&mut self, mut f: impl FnMut(&mut Task)) {
        self.slots.values_mut().for_each(|s| f(&mut s.task));
    }

    pub fn get_mut(&mut self, partition: i32) -> Option<&mut Slot> {
        self.slots.get_mut(&partition)
    }

    pub fn held(&self) -> Vec<i32> {
        self.assigned_homes().into_iter().collect()
    }

    pub fn has_active(&self) -> bool {
        self.slots.values().any(|s| s.phase == Phase::Active)
    }

    /// Replaces the clients that read the changelog (its ends, the
    /// restore's consumer): the input consumer was found stranded, and
    /// these, made before the same broker restart, may be too.
    pub fn renew_clients(&mut self) {
        self.ends.renew();
        self.restorer.renew_consumer();
    }

    pub fn is_restoring(&self) -> bool {
        self.restorer.is_restoring()
    }

    pub fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Takes a partition assigned: paused, it waits until its store is
    /// opened and checked, off the stream thread ([`crate::runtime::opener`];
    /// [`Partitions::take_opened`] then restores or activates it).
    pub fn open<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, partition: i32) {
        self.await_opening(consumer, partition, None, false)
    }

    fn await_opening<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partition: i32,
        from: Option<i64>,
        reopened: bool,
    ) {
        self.pause(consumer, partition, true);
        self.freeze_inputs(partition);
        let mut offsets = vec![(self.repartition_topic.to_string(), partition)];
        offsets.extend(self.inputs_of(&[partition]));
        self.tickets += 1;
        let ticket = self.tickets;
        match self.opener.open(Request { home: partition, ticket, offsets }) {
            Ok(cancel) => {
                self.awaiting.insert(partition, Awaiting { ticket, from, reopened, cancel });
            }
            Err(e) => self.park(consumer, partition, &e, from),
        }
    }

    /// Restores or activates the partitions whose stores are open and
    /// checked; stops those whose opening failed (tried again after a pause).
    pub fn take_opened<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let mut changed = false;
        for answer in self.opener.answered() {
            let home = answer.home;
            if self.awaiting.get(&home).is_none_or(|a| a.ticket != answer.ticket) {
                continue; // revoked since: dropping the answer closes its store
            }
            let awaiting = self.awaiting.remove(&home).expect("awaiting");
            changed = true;
            let ready = match answer.result {
                Ok(ready) => ready,
                Err(e) => {
                    self.park(consumer, home, &format!("cannot open its state store: {e}"), awaiting.from);
                    continue;
                }
            };
            for e in ready.committed.elements() {
                if let Offset::Offset(o) = e.offset() {
                    self.starts.insert((e.topic().to_string(), e.partition()), o);
                }
            }
            self.take_store(consumer, home, ready.prepared, awaiting.from, awaiting.reopened);
        }
        if changed {
            self.publish_health(true);
        }
    }

    /// Makes the task of a partition whose store is open: active at once
    /// when the store is up to date, restoring otherwise (paused
    /// meanwhile). A stopped partition opened again (`reopened`) processes
    /// from where it stopped (`from`), once its store has proved it can write.
    fn take_store<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partition: i32,
        prepared: Prepared,
        from: Option<i64>,
        reopened: bool,
    ) {
        let store = prepared.store;
        let task = Task::new(partition, Arc::clone(&store), Arc::clone(&self.config), Arc::clone(&self.view.metrics));
        let phase = if prepared.open.is_some() { Phase::Active } else { Phase::Restoring };
        if let Some(open) = prepared.open {
            task.set_open(open);
        }
        self.slots
            .insert(partition, Slot { task, phase, resume_from: from, replay_from: from, reopened, refetch: None });
        match phase {
            Phase::Restoring => {
                if let Err(e) = self.restorer.start(partition, store, prepared.from) {
                    self.park(consumer, partition, &e, from);
                }
            }
            // Paused while it was opened (and, opened again, since it
            // stopped: it resumes once its store proves it can write).
            Phase::Active => self.activate(consumer, partition, None),
        }
    }

    /// Stops a partition whose store failed: pauses its input, drops its
    /// task and closes its store (what it decided since its last saved
    /// commit is replayed; a commit in flight that carries its work moves
    /// where it resumes once it has finished, see
    /// [`Partitions::committed_while_stopped`]), and tries it again after a
    /// pause.
    pub fn park<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partition: i32,
        error: &dyn std::fmt::Display,
        from: Option<i64>,
    ) {
        self.pause(consumer, partition, true);
        self.freeze_inputs(partition);
        self.restorer.cancel(partition);
        let awaiting_from = self.awaiting.remove(&partition).and_then(|awaiting| {
            awaiting.cancel.store(true, Ordering::SeqCst);
            awaiting.from
        });
        self.view.hide_store(partition);
        // What its input partitions joined into it directly (under
        // `exactly_once`), or held for it (under `at_least_once`), is lost
        // with the task: they are read again from their last commit.
        self.stopped_homes.insert(partition);
        let from = match self.slots.remove(&partition) {
            Some(slot) => slot.replay_from.or(slot.resume_from).or(from),
            // Stopped or opening already: where it was to resume stays.
            None => self.parked.get(&partition).and_then(|p| p.from).or(awaiting_from).or(from),
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
            "partition stopped; its offsets stay at the last saved commit, and the other partitions go on"
        );
        self.view.metrics.partition_stopped();
        self.parked.insert(
            partition,
            Parked { error: format!("partition {partition} stopped: {error}"), from, retry_at: now + backoff },
        );
        self.publish_health(true);
    }

    /// Opens the stopped partitions whose pause is over.
    pub fn retry_parked<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let now = Instant::now();
        // Not before the input partitions of its number are read again from
        // their last commit (at the next commit): what they held or joined
        // for the stopped task must meet its replay.
        let due: Vec<i32> = self
            .parked
            .iter()
            .filter(|(p, parked)| parked.retry_at <= now && !self.stopped_homes.contains(p))
            .map(|(p, _)| *p)
            .collect();
        for partition in due {
            let parked = self.parked.remove(&partition).expect("parked");
            info!(partition, "opening a stopped partition's state store again");
            self.await_opening(consumer, partition, parked.from, true);
            self.publish_health(true);
        }
    }

    /// Gives up revoked partitions: drops their tasks and closes their
    /// stores, flushed (their work is committed).
    pub fn close(&mut self, revoked: &[i32]) {
        self.stopped_homes.retain(|h| !revoked.contains(h));
        let now_ms = crate::time::now_ms();
        for slot in self.forget(revoked) {
            if let Err(e) = slot.task.store.close_in_step(now_ms) {
                warn!(partition = slot.task.partition, error = %e, "cannot flush a revoked partition's store");
            }
            // Dropping the last handle closes the store and releases its lock.
        }
    }

    /// Gives up lost partitions: drops their tasks and what they did since
    /// their last commit, and closes their stores without writing to them.
    pub fn close_lost(&mut self, lost: &[i32]) {
        drop(self.forget(lost));
        self.stopped_homes.retain(|h| !lost.contains(h));
        self.forwarded_to.retain(|h| !lost.contains(h));
        self.forwarded_in_commit.retain(|h| !lost.contains(h));
        self.forwarded_committed.retain(|h| !lost.contains(h));
    }

    /// Stops everything about `partitions`, and returns the tasks they had.
    fn forget(&mut self, partitions: &[i32]) -> Vec<Slot> {
        let mut slots = Vec::new();
        for &partition in partitions {
            let repartition = Arc::clone(&self.repartition_topic);
            self.forget_seek(&repartition, partition);
            self.parked.remove(&partition);
            if let Some(awaiting) = self.awaiting.remove(&partition) {
                awaiting.cancel.store(true, Ordering::SeqCst);
            }
            self.stops.remove(&partition);
            self.restorer.cancel(partition);
            self.view.metrics.forget_partition(partition);
            self.view.metrics.forget_lag(&self.repartition_topic, partition);
            self.view.hide_store(partition);
            slots.extend(self.slots.remove(&partition));
        }
        slots
    }

    /// Where each partition read (home and input) resumes after its last
    /// commit, where that is known: committed again, it confirms that this
    /// instance is still a member of the group without moving any offset.
    pub fn last_committed(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (partition, slot) in &self.slots {
            if let Some(offset) = slot.replay_from {
                let _ = tpl.add_partition_offset(&self.repartition_topic, *partition, Offset::Offset(offset));
            }
        }
        for source in self.sources.values() {
            if let Some(offset) = source.replay_from {
                let _ = tpl.add_partition_offset(&source.topic, source.partition, Offset::Offset(offset));
            }
        }
        tpl
    }

    /// Flushes and closes every store, at shutdown.
    pub fn close_all(&mut self) {
        let now_ms = crate::time::now_ms();
        for awaiting in std::mem::take(&mut self.awaiting).into_values() {
            awaiting.cancel.store(true, Ordering::SeqCst);
        }
        for (partition, slot) in std::mem::take(&mut self.slots) {
            // A restoring store is not in step: it only flushes.
            let closed = match slot.phase {
                Phase::Active => slot.task.store.close_in_step(now_ms),
                Phase::Restoring => slot.task.store.flush(),
            };
            if let Err(err) = closed {
                warn!(partition, error = %err, "cannot flush a store at shutdown");
            }
        }
        self.view.hide_all_stores();
    }

    /// Pauses or resumes a task's partition of the repartition topic.
    fn pause<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, partition: i32, pause: bool) {
        pause_partition(consumer, &self.repartition_topic, partition, pause);
    }

    /// Restores for up to `budget`, and activates the partitions whose stores are restored.
    pub fn restore_step<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, budget: Duration) {
        let restored = self.restorer.step(budget);
        for (partition, e) in restored.failed {
            self.park(consumer, partition, &e, None);
        }
        for (partition, open) in restored.done {
            self.activate(consumer, partition, Some(open));
        }
    }

    /// Starts processing a partition whose store is up to date: restored
    /// (with `restored_open` workflows open), or opened so.
    fn activate<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, partition: i32, restored_open: Option<i64>) {
        let Some(slot) = self.slots.get_mut(&partition) else { return };
        slot.phase = Phase::Active;
        if let Some(open) = restored_open {
            slot.task.set_open(open);
        }
        let resume_from = slot.resume_from.take();
        let reopened = std::mem::take(&mut slot.reopened);
        let ready = slot.task.read_saved().and_then(|()| {
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
        self.view.show_store(partition, Arc::clone(&slot.task.store));
        if let Some(offset) = resume_from {
            let topic = Arc::clone(&self.repartition_topic);
            if !self.seek(consumer, &topic, partition, offset) {
                return; // stopped again
            }
        }
        // While the others are held, it waits with them.
        if !self.held {
            self.pause(consumer, partition, false);
        }
        self.thaw_inputs(consumer, partition);
        if reopened {
            info!(partition, resume_from, "stopped partition resumed");
        }
        self.publish_health(true);
    }

    /// Moves where `partition` of `topic` is read to `offset`; whether it
    /// could. When the consumer cannot, what the partition's records follow
    /// was discarded, so its home partition stops ([`Partitions::park`]),
    /// as one whose store fails does, and processes nothing (no record, no
    /// timer, no commit) until it is opened again, from `offset`. An input
    /// partition's records wait meanwhile, and its seek is tried again at
    /// every turn ([`Partitions::retry_seeks`]).
    fn seek<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        topic: &Arc<str>,
        partition: i32,
        offset: i64,
    ) -> bool {
        self.forget_seek(topic, partition);
        let Err(e) = consumer.seek(topic, partition, Offset::Offset(offset), SEEK_TIMEOUT) else { return true };
        let why =
            format!("cannot seek {topic} partition {partition} back to offset {offset} after a failed commit: {e}");
        error!(
            topic = &**topic,
            partition,
            offset,
            error = %e,
            "cannot seek a partition back; its home partition stops until it can read from there again"
        );
        if **topic == *self.repartition_topic {
            // Opened again, it reads from `offset` (see `activate`).
            self.park(consumer, partition, &why, Some(offset));
        } else {
            self.unsought.push((Arc::clone(topic), partition, offset));
            let home = self.home_of(partition);
            if self.slots.contains_key(&home) {
                self.park(consumer, home, &why, None);
            }
            self.view.update_health(|h| h.seeking = Some(why));
        }
        false
    }

    /// Seeks again the partitions whose seek failed.
    pub fn retry_seeks<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if self.unsought.is_empty() {
            return;
        }
        for (topic, partition, offset) in std::mem::take(&mut self.unsought) {
            let capped =
                self.topic_index(&topic).and_then(|i| self.sources.get(&(i, partition))).is_some_and(Source::is_capped);
            if self.seek(consumer, &topic, partition, offset) && !self.held && !capped {
                // A hold released meanwhile left it paused.
                pause_partition(consumer, &topic, partition, false);
            }
        }
        if self.unsought.is_empty() {
            info!("every partition that could not seek has now: they read from their last commit again");
            self.view.update_health(|h| h.seeking = None);
        }
    }

    /// Whether `partition` of `topic` waits for a seek: its records are not processed.
    fn waits_for_seek(&self, topic: &str, partition: i32) -> bool {
        self.unsought.iter().any(|(t, p, _)| **t == *topic && *p == partition)
    }

    /// Drops a failed seek of `partition` of `topic`: sought since, or given up.
    fn forget_seek(&mut self, topic: &str, partition: i32) {
        let before = self.unsought.len();
        self.unsought.retain(|(t, p, _)| !(**t == *topic && *p == partition));
        if before > 0 && self.unsought.is_empty() {
            self.view.update_health(|h| h.seeking = None);
        }
    }

    /// Forgets what the sources read since the last commit, and seeks them back there.
    fn rewind_sources<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        self.stopped_homes.clear();
        self.rewind_sources_where(consumer, |_| true);
    }

    /// Reads again, from their last commit, the input partitions that
    /// joined directly into a task stopped since (under `exactly_once`), or
    /// held records for it (under `at_least_once`). Called before a commit stages the sources, with no
    /// commit in flight, so that the offsets of what the stopped task lost
    /// are not committed.
    pub fn rewind_stopped_homes_sources<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if self.stopped_homes.is_empty() {
            return;
        }
        let homes = std::mem::take(&mut self.stopped_homes);
        self.rewind_sources_where(consumer, |source| homes.contains(&source.partition));
    }

    fn rewind_sources_where<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        which: impl Fn(&Source) -> bool,
    ) {
        let mut seeks = Vec::new();
        for source in self.sources.values_mut().filter(|s| which(s)) {
            source.discard();
            if let Some(offset) = source.replay_from {
                seeks.push((Arc::clone(&source.topic), source.partition, offset));
            }
        }
        for (topic, partition, offset) in seeks {
            self.seek(consumer, &topic, partition, offset);
        }
        // What they held is gone: those paused for it read again.
        self.bound_held(consumer);
    }

    /// Hands each record read back from the repartition topic to its task,
    /// and routes each input record.
    pub fn process<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        messages: &[BorrowedMessage<'_>],
        now: i64,
    ) {
        let _span = info_span!("poll_batch", records = messages.len()).entered();
        for m in messages {
            let topic = m.topic();
            if !self.unsought.is_empty() && self.waits_for_seek(topic, m.partition()) {
                continue;
            }
            if topic == &*self.repartition_topic {
                self.process_forwarded(consumer, m, now);
            } else if let Some(index) = self.topic_index(topic) {
                self.process_input(consumer, index, m, now);
            }
        }
        if !self.joins_directly {
            self.mark_held();
        }
        self.resume_refetched(consumer);
        self.bound_held(consumer);
    }

    /// Whether a marker's records, read up to `through` on `source`, were
    /// read since its last commit, or will not be read again: before its
    /// last commit (joined and committed: the marker is a repeat, written
    /// after a replay read them again), or before where the consumer reads
    /// it from (deleted by the retention, or skipped by `auto.offset.reset`).
    fn marker_read<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        index: usize,
        partition: i32,
        through: i64,
    ) -> bool {
        let Some(source) = self.sources.get(&(index, partition)) else { return true };
        if source.has_read(through) {
            return true;
        }
        let start = source.replay_from.or_else(|| self.starts.get(&(source.topic.to_string(), partition)).copied());
        if start.is_some_and(|start| through < start) {
            return true;
        }
        let positions = consumer.position().ok();
        position_in(positions.as_ref(), &source.topic, partition).is_some_and(|next| through < next)
    }

    /// Bounds the records held for their markers: an input partition whose
    /// held records pass its share of half `state.max_pending_bytes` (its
    /// home partition restoring, stopped, or behind) is paused until they
    /// are under half of it, unless a marker waits for its records. Held
    /// records are not counted in [`Partitions::pending_bytes`]: the hold it
    /// triggers pauses the repartition partitions whose markers would
    /// release them. The share is among the input partitions that have
    /// delivered a record since they were assigned ([`Source::is_reading`]):
    /// an idle one holds nothing and needs no room, and a pause drops what
    /// librdkafka had fetched of the partition, to fetch it again. As more
    /// partitions start reading, the share shrinks under what the others
    /// already hold, so their total is bounded too: past half
    /// `state.max_pending_bytes` every partition is paused (but one a
    /// marker waits for) until the total is back under it. (A share among only
    /// the partitions holding records at the moment, or read since the last
    /// commit, paused less still, but let a batch of markers release more
    /// at once than `tests/memory.rs` allows to wait.)
    fn bound_held<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if self.joins_directly || self.sources.is_empty() {
            return;
        }
        let room = self.config.state.max_pending_bytes as usize / 2;
        let reading = self.sources.values().filter(|s| s.is_reading()).count().max(1);
        let share = room / reading;
        let total: usize = self.sources.values().map(Source::held_bytes).sum();
        let over = total > room;
        let awaited: BTreeSet<(usize, i32)> = self
            .slots
            .values()
            .filter_map(|s| s.refetch.as_ref()?.waits_for.map(|(index, partition, _)| (index, partition)))
            .collect();
        let (mut pause, mut resume) = (TopicPartitionList::new(), TopicPartitionList::new());
        for (key, source) in &mut self.sources {
            let awaited = awaited.contains(key);
            if !source.is_capped() && !awaited && (source.held_bytes() > share || over) {
                source.set_capped(true);
                pause.add_partition(&source.topic, source.partition);
            } else if source.is_capped() && (awaited || (source.held_bytes() <= share / 2 && !over)) {
                source.set_capped(false);
                if !self.held {
                    resume.add_partition(&source.topic, source.partition);
                }
            }
        }
        for (tpl, pause) in [(pause, true), (resume, false)] {
            if tpl.count() == 0 {
                continue;
            }
            let result = if pause { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
            if let Err(e) = result {
                warn!(error = %e, pause, "cannot pause or resume input partitions whose held records wait");
            }
        }
    }

    /// Sends a marker for what each source held since its last one.
    fn mark_held(&mut self) {
        for source in self.sources.values_mut() {
            if source.mark() {
                self.forwarded_to.insert(source.partition);
            }
        }
    }

    /// Resumes the partitions waiting for their input to read a marker's records, once it has.
    fn resume_refetched<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let ready: Vec<i32> = self
            .slots
            .iter()
            .filter_map(|(partition, slot)| Some((*partition, slot.refetch.as_ref()?.waits_for?)))
            .filter(|&(_, (index, input, through))| self.marker_read(consumer, index, input, through))
            .map(|(partition, _)| partition)
            .collect();
        for partition in ready {
            if let Some(refetch) = self.slots.get_mut(&partition).and_then(|s| s.refetch.as_mut()) {
                refetch.waits_for = None;
            }
            if !self.held {
                self.pause(consumer, partition, false);
            }
        }
    }

    fn process_forwarded<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, m: &BorrowedMessage<'_>, now: i64) {
        let partition = m.partition();
        let Some(slot) = self.slots.get_mut(&partition) else {
            // Fetched before a stopped partition's pause took hold: processed when it resumes, from here.
            if let Some(parked) = self.parked.get_mut(&partition) {
                parked.from.get_or_insert(m.offset());
            } else if let Some(awaiting) = self.awaiting.get_mut(&partition) {
                awaiting.from.get_or_insert(m.offset());
            }
            return;
        };
        if slot.phase != Phase::Active {
            // Fetched before the pause took hold: processed after the restore, from here.
            if slot.resume_from.is_none() {
                slot.resume_from = Some(m.offset());
            }
            return;
        }
        if let Some(refetch) = &slot.refetch {
            if refetch.waits_for.is_some() || m.offset() != refetch.from {
                return; // fetched before the seek back to the marker
            }
            slot.refetch = None;
        }
        slot.replay_from.get_or_insert(m.offset());
        if route::is_tick(m) {
            slot.task.tick(m.timestamp().to_millis().unwrap_or(i64::MIN), m.offset());
            return;
        }
        if let Some(marker) = route::marker_of(m) {
            self.process_marker(consumer, partition, m.offset(), &marker, now);
            return;
        }
        // The record it was forwarded from: where it came from is in its headers.
        let record = match route::forwarded_origin(m) {
            Some(o) => InputRecord {
                key: o.key,
                value: m.payload(),
                timestamp_ms: m.timestamp().to_millis(),
                topic: o.topic,
                partition: o.partition,
                offset: o.offset,
            },
            None => InputRecord {
                key: m.key(),
                value: m.payload(),
                timestamp_ms: m.timestamp().to_millis(),
                topic: &self.repartition_topic,
                partition,
                offset: m.offset(),
            },
        };
        if let Err(e) = slot.task.process_forwarded(&record, m.offset(), now) {
            self.park(consumer, partition, &e, None);
        }
    }

    /// Joins the records a marker read back at `offset` of `partition`
    /// covers, held by its input partition. One that has not read them yet
    /// (it reads them again after a crash or a move) is waited for: the
    /// partition is sought back to the marker and paused until it has.
    fn process_marker<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partition: i32,
        offset: i64,
        marker: &route::Marker<'_>,
        now: i64,
    ) {
        let index = self.topic_index(marker.topic).filter(|i| self.sources.contains_key(&(*i, marker.partition)));
        let Some(index) = index else {
            // Its input is not read here any more (a topic no longer configured): nothing to join.
            warn!(
                partition,
                offset,
                topic = marker.topic,
                input = marker.partition,
                "a marker for an input partition not read here; skipped"
            );
            if let Some(slot) = self.slots.get_mut(&partition) {
                slot.task.passed(offset);
            }
            return;
        };
        if !self.marker_read(consumer, index, marker.partition, marker.through) {
            info!(
                partition,
                offset,
                input = marker.partition,
                through = marker.through,
                "a marker's records are being read again: its partition waits for them"
            );
            let slot = self.slots.get_mut(&partition).expect("the slot of a record processed");
            slot.refetch = Some(Refetch { from: offset, waits_for: Some((index, marker.partition, marker.through)) });
            self.pause(consumer, partition, true);
            let topic = Arc::clone(&self.repartition_topic);
            self.seek(consumer, &topic, partition, offset);
            return;
        }
        let source = self.sources.get_mut(&(index, marker.partition)).expect("a source found above");
        let slot = self.slots.get_mut(&partition).expect("the slot of a record processed");
        slot.task.passed(offset);
        let (topic, from) = (Arc::clone(&source.topic), source.partition);
        let failed = source
            .release(marker.through)
            .find_map(|held| slot.task.join_held(&held, &held.record(&topic, from), offset, now).err());
        if let Some(e) = failed {
            self.park(consumer, partition, &e, None);
        }
    }

    /// Decodes an input record, and joins it when it was read on its
    /// workflow's home partition and may be (see [`Partitions::joins_directly`]);
    /// holds it for its marker when it may not; otherwise forwards it there.
    fn process_input<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        index: usize,
        m: &BorrowedMessage<'_>,
        now: i64,
    ) {
        let partition = m.partition();
        let topic = Arc::clone(&self.input_topics[index]);
        let Some(source) = self.sources.get_mut(&(index, partition)) else { return };
        let record = InputRecord {
            key: m.key(),
            value: m.payload(),
            timestamp_ms: m.timestamp().to_millis(),
            topic: &topic,
            partition,
            offset: m.offset(),
        };
        let mapping = self.config.kafka.input_topics[index].mapping.as_ref();
        let event = match event::decode(&self.config, mapping, record.value, record.timestamp_ms.unwrap_or(now)) {
            Ok(event) => event,
            Err(bad) => {
                source.dead_letter(&self.config, &self.view.metrics, &record, bad);
                source.read(record.offset);
                return;
            }
        };
        source.read(record.offset);
        let home = route::home(&event.workflow_id, self.home_partitions);
        if home == partition && !self.joins_directly {
            source.hold(home, &event, &record);
            return;
        }
        if home == partition && self.joins_directly {
            if let Some(slot) = self.active_mut(home) {
                match slot.task.join(&event, &record, now) {
                    Ok(()) => return,
                    // Not joined: the partition stops, and the record waits for it in the repartition topic.
                    Err(e) => self.park(consumer, home, &e, None),
                }
            }
        }
        let source = self.sources.get_mut(&(index, partition)).expect("the source read above");
        source.forward(home, &event, &record);
        self.forwarded_to.insert(home);
    }

    /// Forgets every task's work since the last finished commit, and seeks
    /// each partition back there: a commit failed.
    pub fn rewind<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let mut seeks = Vec::new();
        let mut failed = Vec::new();
        let mut waiting = Vec::new();
        for (partition, slot) in &mut self.slots {
            if slot.refetch.take().is_some_and(|r| r.waits_for.is_some()) {
                waiting.push(*partition);
            }
            match slot.task.discard() {
                Err(e) => failed.push((*partition, e)),
                Ok(()) => seeks.extend(slot.replay_from.map(|offset| (*partition, offset))),
            }
        }
        for (partition, e) in failed {
            self.park(consumer, partition, &e, None);
        }
        let topic = Arc::clone(&self.repartition_topic);
        for (partition, offset) in seeks {
            self.seek(consumer, &topic, partition, offset);
        }
        self.rewind_sources(consumer);
        for partition in waiting {
            if !self.held && self.is_active(partition) {
                self.pause(consumer, partition, false);
            }
        }
    }

    /// About how much memory what waits for a commit takes, in every task and source.
    pub fn pending_bytes(&self) -> usize {
        self.slots.values().map(|s| s.task.pending_bytes()).sum::<usize>()
            + self.sources.values().map(Source::pending_bytes).sum::<usize>()
    }

    /// Pauses every partition read (see [`crate::runtime::backpressure`]),
    /// or, with `false`, resumes those that are active: the home partitions
    /// processing and the input partitions not waiting for a seek.
    pub fn hold<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, hold: bool) {
        self.held = hold;
        let mut tpl = TopicPartitionList::new();
        for (partition, slot) in &self.slots {
            let waits = slot.refetch.as_ref().is_some_and(|r| r.waits_for.is_some());
            if slot.phase == Phase::Active && (hold || !waits) {
                tpl.add_partition(&self.repartition_topic, *partition);
            }
        }
        for source in self.sources.values() {
            let waits = self.waits_for_seek(&source.topic, source.partition) || source.is_capped();
            if hold || !waits {
                tpl.add_partition(&source.topic, source.partition);
            }
        }
        let result = if hold { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
        if let Err(e) = result {
            warn!(error = %e, hold, "cannot pause or resume the partitions read");
        }
    }

    /// Refreshes `junction_state_bytes` from RocksDB's estimates.
    pub fn report_state_sizes(&self) {
        for (partition, slot) in self.slots.iter().filter(|(_, s)| s.phase == Phase::Active) {
            self.view.metrics.set_state_bytes(*partition, slot.task.store.estimated_bytes());
        }
    }

    /// The active home partitions that have caught up with their input:
    /// their repartition partition and the input partitions of their number
    /// are read to their ends, and nothing this instance forwarded to them
    /// waits for a commit. Their clocks may follow the wall clock.
    pub fn caught_up_homes<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> BTreeSet<i32> {
        let positions = consumer.position().ok();
        let read_to_end = |topic: &str, partition: i32| {
            let start = self.starts.get(&(topic.to_string(), partition)).copied();
            caught_up::has_caught_up(
                position_in(positions.as_ref(), topic, partition),
                start,
                caught_up::cached_ends(consumer, topic, partition),
            )
        };
        self.slots
            .iter()
            .filter(|(_, s)| s.phase == Phase::Active)
            .map(|(home, _)| *home)
            .filter(|&home| {
                // An input partition of its number waiting for a seek has records it has not read.
                !self.unsought.iter().any(|(_, p, _)| self.home_of(*p) == home)
                    && !self.forwarded_to.contains(&home)
                    && !self.forwarded_in_commit.contains(&home)
                    && !self.forwarded_committed.contains(&home)
                    && read_to_end(&self.repartition_topic, home)
                    && self.inputs_of(&[home]).iter().all(|(topic, partition)| read_to_end(topic, *partition))
            })
            .collect()
    }

    /// A commit begins: it carries (or waits for) what was forwarded so far.
    pub fn forwards_staged(&mut self) {
        self.forwarded_committed.clear();
        self.forwarded_in_commit.append(&mut self.forwarded_to);
    }

    /// A commit finished: what was forwarded before it began is readable at
    /// its homes once the consumer has fetched past the transaction's end,
    /// so they count as caught up from the commit after the next one on.
    pub fn forwards_committed(&mut self) {
        self.forwarded_committed.append(&mut self.forwarded_in_commit);
    }

    /// A commit finished with `partition`'s offset at `next` while the
    /// partition was stopped or opening: it resumes there (its store
    /// has, or catches up to, what the commit wrote).
    pub fn committed_while_stopped(&mut self, partition: i32, next: i64) {
        if let Some(parked) = self.parked.get_mut(&partition) {
            parked.from = Some(next);
        }
        if let Some(awaiting) = self.awaiting.get_mut(&partition) {
            awaiting.from = Some(next);
        }
    }

    /// Shows what this instance holds on `/readyz` and in the metrics.
    pub fn publish_health(&self, in_group: bool) {
        let restoring: BTreeSet<i32> = self
            .slots
            .iter()
            .filter(|(_, s)| s.phase == Phase::Restoring)
            .map(|(p, _)| *p)
            .chain(self.awaiting.keys().copied())
            .collect();
        let active = self.slots.values().filter(|s| s.phase == Phase::Active).count();
        self.view.metrics.set_partitions(active, restoring.len(), self.parked.len());
        self.view.update_health(|h| {
            h.in_group = in_group;
            h.assigned = self.held();
            h.restoring = restoring.into_iter().collect();
            h.stopped = self.parked.iter().map(|(p, parked)| (*p, parked.error.clone())).collect();
        });
    }
}

/// A list of (topic, partition), each read from its committed offset.
fn partition_list(partitions: &[(String, i32)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    tpl
}

/// The home partition whose number `input_partition` has, of `home_partitions`.
fn home_of(input_partition: i32, home_partitions: i32) -> i32 {
    input_partition.rem_euclid(home_partitions)
}

/// Where `consumer` reads `partition` of `topic` from, in `positions`.
fn position_in(positions: Option<&TopicPartitionList>, topic: &str, partition: i32) -> Option<i64> {
    match positions?.find_partition(topic, partition)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// Pauses or resumes one partition.
fn pause_partition<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str, partition: i32, pause: bool) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let result = if pause { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
    if let Err(e) = result {
        warn!(topic, partition, error = %e, pause, "cannot pause or resume a partition");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rdkafka::consumer::{BaseConsumer, Consumer};

    use super::*;
    use crate::kafka::clients;
    use crate::metrics::Metrics;

    const CONFIG: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:1"
input_topic = "steps"
output_topic = "outcomes"
dead_letter_topic = "dead"

[[workflows]]
type = "order"
steps = ["payment", "inventory"]
"#;

    /// librdkafka refuses at once to seek a partition whose fetcher has not
    /// started: here its consumer has no broker to give the partition's
    /// committed offset from. The input partition waits, is not processed,
    /// and `/readyz` says why, until a seek succeeds (once assigned again
    /// from an offset of its own, its fetcher starts); given up meanwhile,
    /// it is forgotten, and `/readyz` says ready again.
    #[test]
    fn an_input_partition_that_cannot_seek_back_waits_and_says_so_until_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{CONFIG}\n[state]\ndir = {:?}\n", dir.path());
        let config = Arc::new(crate::config::parse(Path::new("junction.toml"), &text, []).unwrap());
        let view = Arc::new(View::new(Arc::new(Metrics::new())));
        let mut partitions = Partitions::new(Arc::clone(&config), Arc::clone(&view), 1, vec![1], None).unwrap();
        let consumer: BaseConsumer = clients::consumer_config(&config.kafka, None).create().unwrap();
        let input = vec![("steps".to_string(), 0)];
        let refused = |partitions: &mut Partitions| {
            partitions.add_sources(&consumer, &input).unwrap();
            partitions.source_mut("steps", 0).unwrap().replay_from = Some(5);
            partitions.rewind(&consumer);
            let seeking = view.health().seeking.expect("/readyz says a partition cannot seek back");
            assert!(seeking.contains("cannot seek steps partition 0 back to offset 5"), "{seeking}");
            assert!(partitions.waits_for_seek("steps", 0));
            partitions.retry_seeks(&consumer);
            assert!(partitions.waits_for_seek("steps", 0), "still refused");
        };

        // Given up meanwhile (a rebalance): forgotten.
        refused(&mut partitions);
        partitions.remove_sources(&consumer, &input);
        assert_eq!(view.health().seeking, None, "a partition given up no longer waits for its seek");

        // Read again from an offset of its own, its fetcher starts, and the seek succeeds.
        refused(&mut partitions);
        consumer.incremental_unassign(&partition_list(&input)).unwrap();
        let mut from = TopicPartitionList::new();
        from.add_partition_offset("steps", 0, Offset::Offset(5)).unwrap();
        consumer.incremental_assign(&from).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while partitions.waits_for_seek("steps", 0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            partitions.retry_seeks(&consumer);
        }
        assert!(!partitions.waits_for_seek("steps", 0), "the seek succeeds once librdkafka reads the partition");
        assert_eq!(view.health().seeking, None, "/readyz no longer says so");
    }
}
