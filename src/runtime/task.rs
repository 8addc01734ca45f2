//! One task per assigned home partition: it joins the events of the
//! workflows whose home it is, forwarded to it through the repartition
//! topic. For each it loads
//! the workflow's state through the record cache, asks the join, and keeps
//! the outcomes and dead letters until the commit takes them. It fires the
//! partition's timers (deadlines and purges) when the stream thread asks.
//! It knows nothing of Kafka clients or commits: the stream thread hands it
//! events and records and takes what it staged.

use std::borrow::Cow;
use std::sync::Arc;

use prometheus::IntGauge;
use tracing::{info, warn};

use crate::commit::{Decided, Outputs, Staged};
use crate::config::{Config, Guarantee, WorkflowSpec};
use crate::input::dead_letter::DeadLetter;
use crate::input::event::{self, BadInput, StepEvent, TypeRef};
pub use crate::input::record::InputRecord;
use crate::join::{self, Definition, DefinitionId, Definitions, EventResult, TimerResult, WorkflowState};
use crate::metrics::Metrics;
use crate::route::Forward;
use crate::runtime::source::Held;
use crate::state::{codec, CachedStore, Store, StoreBatch, StoreError, TimerOf};

/// The most timers one punctuation fires, so that a backlog cannot stall a commit.
const TIMERS_PER_PUNCTUATION: usize = 10_000;
/// Timers written per batch when they are re-armed.
const REARM_BATCH: usize = 100_000;

pub struct Task {
    pub partition: i32,
    pub store: Arc<Store>,
    /// The repartition topic, whose partition of this number the task reads.
    topic: Arc<str>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    states: CachedStore,
    /// The definitions the partition's states refer to by ID, and those
    /// added since the last commit staged, which it saves.
    definitions: Definitions,
    unsaved_definitions: Vec<(DefinitionId, Definition)>,
    outcomes: Vec<Decided>,
    dead_letters: Vec<DeadLetter>,
    /// About what the outcomes, dead letters and ticks not yet published take.
    outputs_bytes: usize,
    /// Ticks of the wall clock for this partition's own stream, to publish
    /// (under `at_least_once`; see [`Task::punctuate`]).
    ticks: Vec<Forward>,
    /// The time of the tick published and not yet read back, if any.
    tick_pending: Option<i64>,
    /// Whether the wall clock moves the clock through ticks (`at_least_once`).
    ticks_keep_time: bool,
    next_offset: Option<i64>,
    /// The partition's clock, in event time: the latest record timestamp
    /// joined, or the wall clock once the partition has caught up with its
    /// input, less the grace; it never goes back. Deadlines and retention
    /// are kept by it, so a backlog read late decides as it would have on
    /// time. (`i64::MIN`: nothing seen yet.)
    clock_ms: i64,
    /// The clock of the last commit staged, and of the last one finished
    /// (what a failed commit rewinds to).
    staged_clock_ms: i64,
    committed_clock_ms: i64,
    grace_ms: i64,
    /// Workflows waiting for a decision, as `junction_workflows_open` shows.
    open: IntGauge,
}

/// When a state's timer falls: its deadline while open, the end of its
/// retention once decided. The join's rule, applied to a stored state's
/// summary: what the restore gives each restored state.
pub fn stored_timer(config: Arc<Config>) -> TimerOf {
    let retention = config.state.retention.as_millis() as i64;
    Box::new(move |s| {
        let configured = config.workflow(&s.workflow_type);
        let deadline =
            join::definition::governing_deadline(configured, s.own_deadline_ms, config.state.default_deadline);
        join::timer_ms(s.started_at_ms, s.decision.as_ref(), deadline, retention)
    })
}

/// What the timers depend on in the configuration, written out: the
/// retention, the default deadline and each type's deadline.
fn timers_basis(config: &Config) -> String {
    let mut basis =
        format!("retention={:?};default_deadline={:?}", config.state.retention, config.state.default_deadline);
    for w in &config.workflows {
        basis.push_str(&format!(";{:?}={:?}", w.workflow_type, w.deadline));
    }
    basis
}

/// Gives every state stored in `store` (of `partition`) its timer by the
/// deadlines and retention configured now, when they changed since the
/// timers were written (a scan of the store, once per edit). The timers
/// they replace are stale and dropped when they come due. Returns how many
/// were written.
pub fn rearm_timers(store: &Store, config: &Arc<Config>, partition: i32) -> Result<usize, StoreError> {
    let basis = timers_basis(config);
    if store.timers_basis()?.as_deref() == Some(basis.as_bytes()) {
        return Ok(0);
    }
    let timer_of = stored_timer(Arc::clone(config));
    let mut batch = StoreBatch::default();
    let mut armed = 0;
    let mut failed = None;
    store.for_each_state(|id, bytes| {
        let Ok(summary) = codec::summary(bytes) else { return };
        if let Some(due) = timer_of(&summary) {
            batch.put_timer(&String::from_utf8_lossy(id), due);
            armed += 1;
        }
        if batch.len() >= REARM_BATCH {
            if let Err(e) = store.write(std::mem::take(&mut batch)) {
                failed.get_or_insert(e);
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    batch.set_timers_basis(&basis);
    store.write(batch)?;
    if armed > 0 {
        info!(partition, timers = armed, "deadlines or retention changed: timers re-armed");
    }
    Ok(armed)
}

/// The definition `state` is decided by (see [`join::definition`]).
fn governing<'c>(config: &'c Config, known: &Definitions, state: &WorkflowState) -> Cow<'c, WorkflowSpec> {
    join::governing(config.workflow(&state.workflow_type), state, known, config.state.default_deadline)
}

/// The dead letter of a bad record, logged and counted.
pub fn dead_letter(config: &Config, metrics: &Metrics, record: &InputRecord<'_>, error: BadInput) -> DeadLetter {
    warn!(
        topic = record.topic,
        partition = record.partition,
        offset = record.offset,
        reason = error.reason.code(),
        detail = %error.detail,
        "bad input sent to the dead-letter topic"
    );
    metrics.dead_letter(error.reason);
    DeadLetter::of(record, error, config.kafka.max_record_bytes())
}

impl Task {
    pub fn new(partition: i32, store: Arc<Store>, config: Arc<Config>, metrics: Arc<Metrics>) -> Task {
        let open = metrics.workflows_open(partition);
        let grace_ms = config.state.grace.as_millis() as i64;
        let ticks_keep_time = config.kafka.processing_guarantee == Guarantee::AtLeastOnce;
        Task {
            partition,
            topic: config.kafka.repartition_topic().into(),
            states: CachedStore::new(partition, Arc::clone(&store)),
            store,
            config,
            metrics,
            definitions: Definitions::default(),
            unsaved_definitions: Vec::new(),
            outcomes: Vec::new(),
            dead_letters: Vec::new(),
            outputs_bytes: 0,
            ticks: Vec::new(),
            tick_pending: None,
            ticks_keep_time,
            next_offset: None,
            clock_ms: i64::MIN,
            staged_clock_ms: i64::MIN,
            committed_clock_ms: i64::MIN,
            grace_ms,
            open,
        }
    }

    /// Counts the open workflows in the store: once restored, and after a
    /// failed commit discarded the changes the count had followed.
    pub fn recount_open(&self) -> Result<(), StoreError> {
        let mut open = 0;
        self.store.for_each_state(|_, bytes| open += i64::from(codec::is_open(bytes)))?;
        self.open.set(open);
        Ok(())
    }

    /// Takes the clock and the definitions saved with the store's last
    /// commit: once its store is up to date (opened or restored), before
    /// the first record.
    pub fn read_saved(&mut self) -> Result<(), StoreError> {
        let clock = self.store.clock()?.unwrap_or(i64::MIN);
        (self.clock_ms, self.staged_clock_ms, self.committed_clock_ms) = (clock, clock, clock);
        self.definitions = self.store.definitions()?;
        self.unsaved_definitions.clear();
        Ok(())
    }

    /// Sets the open-workflow count from a count already taken (when the store was opened).
    pub fn set_open(&self, open: i64) {
        self.open.set(open);
    }

    /// Whether anything waits for a commit.
    pub fn is_dirty(&self) -> bool {
        self.next_offset.is_some()
            || self.states.is_dirty()
            || !self.outcomes.is_empty()
            || !self.dead_letters.is_empty()
            || !self.ticks.is_empty()
            || !self.unsaved_definitions.is_empty()
    }

    /// About how much memory what waits for a commit takes: the states of
    /// the record cache and of the commit in flight, and the outputs not
    /// yet published.
    pub fn pending_bytes(&self) -> usize {
        self.states.approx_bytes() + self.outputs_bytes
    }

    /// Whether the next commit has an input offset for this partition.
    pub fn has_offset(&self) -> bool {
        self.next_offset.is_some()
    }

    /// Has the next commit commit `offset` (where the input was already
    /// committed up to) when no record was processed since the last one.
    pub fn cover_offset(&mut self, offset: i64) {
        self.next_offset.get_or_insert(offset);
    }

    /// Processes one record read back from the repartition topic at
    /// `offset`: `record` is the input record it was forwarded from, which
    /// that record's topic's mapping reads. On a store error the record counts
    /// as not processed: its offset is not committed.
    pub fn process_forwarded(&mut self, record: &InputRecord<'_>, offset: i64, now_ms: i64) -> Result<(), StoreError> {
        let config = Arc::clone(&self.config);
        let mapping = config.kafka.input(record.topic).and_then(|t| t.mapping.as_ref());
        match event::decode(&config, mapping, record.value, record.timestamp_ms.unwrap_or(now_ms)) {
            Ok(e) => self.join(&e, record, now_ms)?,
            Err(bad) => self.dead_letter(record, bad),
        }
        self.next_offset = Some(offset + 1);
        Ok(())
    }

    /// Joins a record held on its input partition ([`crate::runtime::source::Source::hold`]),
    /// read as `record`, which the marker at `offset` of this partition covers: decoded when it was read.
    pub fn join_held(
        &mut self,
        held: &Held,
        record: &InputRecord<'_>,
        offset: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.join(&held.event.as_event(), record, now_ms)?;
        self.next_offset = Some(offset + 1);
        Ok(())
    }

    /// Joins one event of a workflow whose home this is, by the definition
    /// the workflow started with (a new one: its type's as configured). On
    /// a store error the event counts as not joined.
    pub fn join(&mut self, event: &StepEvent<'_>, record: &InputRecord<'_>, now_ms: i64) -> Result<(), StoreError> {
        let config = Arc::clone(&self.config);
        let id = event.workflow_id.as_ref();
        let decided_at_ms = record.timestamp_ms.unwrap_or(now_ms);
        self.advance_clock(record.timestamp_ms.unwrap_or(event.occurred_at_ms));
        let (loaded, from) = self.states.load(id)?;
        let was_open = loaded.as_ref().is_some_and(WorkflowState::is_open);
        // What the partition's timers would have done by its clock comes
        // first, wherever its punctuations fell: a passed deadline times the
        // workflow out, a passed retention forgets it. A replay that meets
        // its punctuations elsewhere so decides the same.
        let (clock, retention) = (self.clock_ms, config.state.retention.as_millis() as i64);
        let mut outcomes = Vec::new();
        let mut forgotten = false;
        // With the definition it is decided by, which the timers do not change.
        let loaded = loaded.and_then(|mut s| {
            let spec = governing(&config, &self.definitions, &s);
            if let TimerResult::Decided(fired) = join::on_timer(Some(&spec), &mut s, id, clock, retention) {
                outcomes = fired;
            }
            forgotten = join::retention_passed(&s, clock, retention);
            (!forgotten).then_some((s, spec))
        });
        let named_type = match &event.workflow {
            TypeRef::Configured(i) => Some(config.workflows[*i].workflow_type.as_str()),
            TypeRef::Unresolved { named, .. } => named.as_deref(),
        };
        let existed = loaded.is_some();
        let (mut state, spec) = match loaded {
            Some((s, spec)) if named_type.is_none_or(|t| t == s.workflow_type) => (s, spec),
            Some((s, _)) => {
                let detail =
                    format!("workflow {id:?} is of type {:?}, not {:?}", s.workflow_type, named_type.unwrap_or(""));
                let mut bad = BadInput::new(crate::names::Reason::UnknownWorkflowType, detail);
                bad.workflow_id = Some(id.to_string());
                self.count_open(was_open, s.is_open());
                self.keep(id, Some(s), from, !outcomes.is_empty());
                self.dead_letter(record, bad);
                self.add_outcomes(outcomes, decided_at_ms);
                return Ok(());
            }
            None => match &event.workflow {
                TypeRef::Configured(i) => {
                    let spec = &config.workflows[*i];
                    let mut s = WorkflowState::new(&spec.workflow_type, event.occurred_at_ms);
                    let (started_with, added) = self.definitions.start(spec);
                    s.definition = Some(started_with);
                    self.unsaved_definitions.extend(added);
                    (s, Cow::Borrowed(spec))
                }
                TypeRef::Unresolved { error, .. } => {
                    self.count_open(was_open, false);
                    self.keep(id, None, from, forgotten);
                    self.dead_letter(record, error.clone());
                    self.add_outcomes(outcomes, decided_at_ms);
                    return Ok(());
                }
            },
        };
        if spec.step_index(&event.step).is_none() {
            let mut bad = event::unknown_step(&spec, &event.step);
            bad.workflow_id = Some(id.to_string());
            // A workflow it would have started is not started.
            self.count_open(was_open, existed && state.is_open());
            self.keep(id, existed.then_some(state), from, forgotten || !outcomes.is_empty());
            self.dead_letter(record, bad);
            self.add_outcomes(outcomes, decided_at_ms);
            return Ok(());
        }
        let (result, more) = join::apply_event(&spec, &mut state, id, event, clock);
        outcomes.extend(more);
        self.metrics.event(result);
        self.count_open(was_open, state.is_open());
        // A duplicate or late event leaves the state as it was: no changelog record for it.
        self.keep(id, Some(state), from, forgotten || result == EventResult::Accepted || !outcomes.is_empty());
        self.add_outcomes(outcomes, decided_at_ms);
        Ok(())
    }

    /// Returns a workflow's state to the record cache: for the next commit
    /// if it `changed`, else to where it was loaded from.
    fn keep(&mut self, id: &str, state: Option<WorkflowState>, from: crate::state::cache::Source, changed: bool) {
        if changed {
            self.states.put(id, from, state);
        } else {
            self.states.put_back(state, from);
        }
    }

    /// Follows a workflow from open or not to open or not in `junction_workflows_open`.
    fn count_open(&self, was_open: bool, is_open: bool) {
        match (was_open, is_open) {
            (false, true) => self.open.inc(),
            (true, false) => self.open.dec(),
            _ => {}
        }
    }

    /// Keeps outcomes for the next publish; `decided_at_ms` (wall clock) is for the latency metric.
    fn add_outcomes(&mut self, outcomes: Vec<join::outcome::OutcomeRecord>, decided_at_ms: i64) {
        self.outputs_bytes += outcomes.iter().map(join::outcome::OutcomeRecord::approx_bytes).sum::<usize>();
        self.outcomes.extend(outcomes.into_iter().map(|record| Decided { record, decided_at_ms }));
    }

    /// Reads a tick of the wall clock back from the repartition topic at
    /// `offset` ([`Forward::tick`]): the clock follows it.
    pub fn tick(&mut self, at_ms: i64, offset: i64) {
        self.advance_clock(at_ms);
        if self.tick_pending.is_some_and(|pending| pending <= at_ms) {
            self.tick_pending = None;
        }
        self.next_offset = Some(offset + 1);
    }

    /// Reads a record back from the repartition topic at `offset` that
    /// carries no event of its own (a marker, whose records are joined apart).
    pub fn passed(&mut self, offset: i64) {
        self.next_offset = Some(offset + 1);
    }

    /// Moves the clock on to `at_ms` less the grace, if that is later.
    fn advance_clock(&mut self, at_ms: i64) {
        self.clock_ms = self.clock_ms.max(at_ms.saturating_sub(self.grace_ms));
    }

    /// Fires the timers due by the partition's clock: deadlines and purges.
    /// A partition that has `caught_up` with its input keeps time by the
    /// wall clock (`now_ms`) from here: no unread record can still meet a
    /// deadline that passes (less the grace). Under `exactly_once` the clock
    /// moves at once (a replay is of a transaction nobody saw); under
    /// `at_least_once`, once a tick of it is read back, when a timer waits for it.
    pub fn punctuate(&mut self, now_ms: i64, caught_up: bool) -> Result<(), StoreError> {
        if caught_up && !self.ticks_keep_time {
            self.advance_clock(now_ms);
        }
        if caught_up && self.ticks_keep_time {
            self.request_tick(now_ms)?;
        }
        if self.clock_ms == i64::MIN {
            return Ok(());
        }
        let clock = self.clock_ms;
        let retention = self.config.state.retention.as_millis() as i64;
        let config = Arc::clone(&self.config);
        for timer in self.states.due_timers(clock, TIMERS_PER_PUNCTUATION)? {
            let id = timer.workflow_id.as_str();
            let (loaded, from) = self.states.load(id)?;
            let Some(mut state) = loaded else {
                self.states.put_back(None, from);
                self.states.spend_timer(timer);
                continue;
            };
            let spec = governing(&config, &self.definitions, &state);
            if state.timer_ms(Some(&spec), retention) != Some(timer.due_ms) {
                // Stale: the state moved on since this timer was written.
                self.states.put_back(Some(state), from);
                self.states.spend_timer(timer);
                continue;
            }
            match join::on_timer(Some(&spec), &mut state, id, clock, retention) {
                TimerResult::NotDue => self.states.put_back(Some(state), from),
                TimerResult::Decided(outcomes) => {
                    self.open.dec();
                    self.add_outcomes(outcomes, now_ms);
                    self.states.put(id, from, Some(state));
                    self.states.spend_timer(timer);
                }
                TimerResult::Purge => {
                    self.states.put(id, from, None);
                    self.states.spend_timer(timer);
                }
            }
        }
        Ok(())
    }

    /// Publishes a tick at `now_ms` when a timer is due by it that the clock
    /// has not reached, unless one is on its way.
    fn request_tick(&mut self, now_ms: i64) -> Result<(), StoreError> {
        let by_wall_clock = now_ms.saturating_sub(self.grace_ms);
        if self.tick_pending.is_some() || by_wall_clock <= self.clock_ms {
            return Ok(());
        }
        if self.states.due_timers(by_wall_clock, 1)?.is_empty() {
            return Ok(());
        }
        self.ticks.push(Forward::tick(self.partition, now_ms));
        self.tick_pending = Some(now_ms);
        Ok(())
    }

    fn dead_letter(&mut self, record: &InputRecord<'_>, error: BadInput) {
        let letter = dead_letter(&self.config, &self.metrics, record, error);
        self.outputs_bytes += letter.approx_bytes();
        self.dead_letters.push(letter);
    }

    /// The outcomes and dead letters decided and not yet published, for
    /// [`crate::commit::Strategy::publish`], which empties them.
    pub fn outputs(&mut self) -> Outputs<'_> {
        self.outputs_bytes = 0;
        Outputs { outcomes: &mut self.outcomes, dead_letters: &mut self.dead_letters, forwards: &mut self.ticks }
    }

    /// Takes everything the next commit must publish and save, leaving the
    /// task clean. The states stay readable until [`Task::committed`].
    pub fn stage(&mut self) -> Staged {
        self.outputs_bytes = 0;
        let retention = self.config.state.retention.as_millis() as i64;
        let config = Arc::clone(&self.config);
        let known = &self.definitions;
        let mut changes = self.states.stage(|state| state.timer_ms(Some(&governing(&config, known, state)), retention));
        if !self.unsaved_definitions.is_empty() {
            changes.save_definitions(&std::mem::take(&mut self.unsaved_definitions));
        }
        if self.clock_ms != self.staged_clock_ms {
            changes.save_clock(self.clock_ms);
            self.staged_clock_ms = self.clock_ms;
        }
        Staged {
            topic: Arc::clone(&self.topic),
            store: Some(Arc::clone(&self.store)),
            outcomes: std::mem::take(&mut self.outcomes),
            dead_letters: std::mem::take(&mut self.dead_letters),
            forwards: std::mem::take(&mut self.ticks),
            changelog: changes.changelog,
            batch: changes.batch,
            next_offset: self.next_offset.take(),
            // The slot keeps it (see `runtime::commits`).
            last_committed: None,
        }
    }

    /// The commit of what was staged is saved: the store has its states now.
    pub fn committed(&mut self) {
        self.states.committed();
        self.committed_clock_ms = self.staged_clock_ms;
    }

    /// Forgets everything since the last finished commit, after a commit failed.
    pub fn discard(&mut self) -> Result<(), StoreError> {
        self.outputs_bytes = 0;
        self.states.discard();
        self.outcomes.clear();
        self.dead_letters.clear();
        self.ticks.clear();
        self.tick_pending = None;
        self.next_offset = None;
        (self.clock_ms, self.staged_clock_ms) = (self.committed_clock_ms, self.committed_clock_ms);
        self.definitions = self.store.definitions()?;
        self.unsaved_definitions.clear();
        self.recount_open()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::ChangelogKey;
    use std::path::Path;

    /// A task under `exactly_once`, where the wall clock moves the clock at once.
    fn task(dir: &Path) -> Task {
        task_under(dir, "exactly_once")
    }

    fn task_under(dir: &Path, guarantee: &str) -> Task {
        let config = Arc::new(config_under(guarantee));
        let memory = crate::state::StoreMemory::new(16 << 20, 4 << 20);
        Task::new(0, Arc::new(Store::open(dir, &memory).unwrap()), config, Arc::new(Metrics::new()))
    }

    /// The smallest configuration: one workflow type of two steps, under `guarantee`.
    pub(crate) fn config_under(guarantee: &str) -> Config {
        let text = r#"
[kafka]
processing_guarantee = "GUARANTEE"
bootstrap_servers = "x:1"
input_topic = "in"
output_topic = "out"
dead_letter_topic = "dlq"
[[workflows]]
type = "order"
steps = ["payment", "inventory"]
"#;
        crate::config::parse(Path::new("t.toml"), &text.replace("GUARANTEE", guarantee), Vec::new()).unwrap()
    }

    /// The changelog records of workflow states, without the clock's and the definitions'.
    fn states(changelog: &[crate::state::ChangelogRecord]) -> Vec<&crate::state::ChangelogRecord> {
        changelog.iter().filter(|(key, _)| matches!(key, ChangelogKey::Workflow(_))).collect()
    }

    fn workflow(id: &str) -> ChangelogKey {
        ChangelogKey::Workflow(id.to_string())
    }

    fn record<'a>(value: &'a [u8], offset: i64) -> InputRecord<'a> {
        InputRecord { key: None, value: Some(value), timestamp_ms: Some(1_000), topic: "in", partition: 0, offset }
    }

    #[test]
    fn a_workflow_opened_and_finished_in_one_interval_writes_one_changelog_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = task(dir.path());
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"payment"}"#, 0), 0, 5_000).unwrap();
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"payment"}"#, 1), 1, 5_000).unwrap();
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"inventory"}"#, 2), 2, 5_000).unwrap();
        let staged = t.stage();
        assert_eq!(states(&staged.changelog).len(), 1);
        assert_eq!(staged.outcomes.len(), 1);
        assert_eq!(staged.next_offset, Some(3));
        assert!(!t.is_dirty());
    }

    #[test]
    fn the_next_interval_reads_the_states_of_the_commit_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = task(dir.path());
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"payment"}"#, 0), 0, 5_000).unwrap();
        let in_flight = t.stage();
        assert_eq!(states(&in_flight.changelog).len(), 1);
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"payment"}"#, 1), 1, 5_000).unwrap();
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"inventory"}"#, 2), 2, 5_000).unwrap();
        let next = t.stage();
        assert_eq!(next.outcomes.len(), 1, "the second step completes the workflow staged before it");
        t.store.write(in_flight.batch).unwrap();
        t.store.write(next.batch).unwrap();
        t.committed();
        let stored = codec::decode(&t.store.get_state("w").unwrap().unwrap()).unwrap();
        assert!(stored.is_final());
    }

    #[test]
    fn a_duplicate_of_committed_state_writes_nothing_and_bad_input_is_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = task(dir.path());
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"payment"}"#, 0), 0, 5_000).unwrap();
        let staged = t.stage();
        t.store.write(staged.batch).unwrap();
        t.committed();
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"payment"}"#, 1), 1, 5_000).unwrap();
        t.process_forwarded(&record(b"nope", 2), 2, 5_000).unwrap();
        let staged = t.stage();
        assert!(staged.changelog.is_empty(), "a duplicate changes no state");
        assert_eq!(staged.dead_letters.len(), 1);
        assert_eq!(staged.dead_letters[0].source_offset, 2);
        assert_eq!(staged.next_offset, Some(3));
    }

    #[test]
    fn a_dead_letter_never_copies_more_than_the_producer_can_send() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = task(dir.path());
        let large = vec![b'x'; 300_000];
        t.process_forwarded(&record(&large, 0), 0, 5_000).unwrap();
        let huge = vec![b'x'; 2_000_000];
        t.process_forwarded(&record(&huge, 1), 1, 5_000).unwrap();
        let staged = t.stage().dead_letters;
        assert_eq!(staged.len(), 2);
        assert!(staged.iter().all(|d| d.error.reason == crate::names::Reason::TooLarge));
        assert_eq!(staged[0].value.as_deref(), Some(&large[..]), "what the producer can send is copied");
        assert!(staged[1].value.is_none(), "the rest is left at its source offset");
        assert!(staged[1].error.detail.contains("2000000 bytes"), "{}", staged[1].error.detail);
    }

    #[test]
    fn the_retention_purges_a_decided_workflow_with_a_tombstone() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = task(dir.path());
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"payment"}"#, 0), 0, 5_000).unwrap();
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"inventory"}"#, 1), 1, 5_000).unwrap();
        let staged = t.stage();
        t.store.write(staged.batch).unwrap();
        t.committed();
        // Decided at the partition's clock: the record's timestamp (1 s) less the grace (1 s).
        let (retention, grace) = (86_400_000, 1_000);
        t.punctuate(retention - 1 + grace, true).unwrap();
        assert!(states(&t.stage().changelog).is_empty());
        t.punctuate(retention + grace, false).unwrap();
        assert!(states(&t.stage().changelog).is_empty(), "a partition that has not caught up keeps its clock");
        t.punctuate(retention + grace, true).unwrap();
        let staged = t.stage();
        assert_eq!(states(&staged.changelog), vec![&(workflow("w"), None)]);
        t.store.write(staged.batch).unwrap();
        t.committed();
        assert!(t.store.get_state("w").unwrap().is_none());
        assert!(t.store.due_timers(i64::MAX, 10).unwrap().is_empty());
    }

    #[test]
    fn the_clock_is_saved_with_the_commit_and_a_failed_commit_rewinds_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = task(dir.path());
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"payment"}"#, 0), 0, 5_000).unwrap();
        let staged = t.stage();
        let clock: i64 = 1_000 - 1_000;
        assert_eq!(staged.changelog.last(), Some(&(ChangelogKey::Clock, Some(clock.to_be_bytes().to_vec()))));
        t.store.write(staged.batch).unwrap();
        t.committed();
        // Later records move the clock on; their commit fails, and the clock goes back with them.
        let mut later = record(br#"{"workflow_id":"v","step":"payment"}"#, 1);
        later.timestamp_ms = Some(90_000);
        t.process_forwarded(&later, 1, 5_000).unwrap();
        assert_eq!(t.clock_ms, 89_000);
        drop(t.stage());
        t.discard().unwrap();
        assert_eq!(t.clock_ms, clock);
        // Nothing new: a stage saves no clock again.
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"payment"}"#, 1), 1, 5_000).unwrap();
        assert!(t.stage().changelog.is_empty());
        // A task opened on the store starts from the clock saved.
        let store = Arc::clone(&t.store);
        let mut again = Task::new(0, store, Arc::clone(&t.config), Arc::new(Metrics::new()));
        again.read_saved().unwrap();
        assert_eq!(again.clock_ms, clock);
    }

    #[test]
    fn under_at_least_once_the_wall_clock_enters_the_stream_as_a_tick() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = task_under(dir.path(), "at_least_once");
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"payment"}"#, 0), 0, 5_000).unwrap();
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"inventory"}"#, 1), 1, 5_000).unwrap();
        let staged = t.stage();
        t.store.write(staged.batch).unwrap();
        t.committed();
        let (retention, grace) = (86_400_000, 1_000);
        t.punctuate(retention - 1 + grace, true).unwrap();
        assert!(t.outputs().forwards.is_empty(), "no timer waits for the wall clock: no tick");
        t.punctuate(retention + grace, true).unwrap();
        let ticks = std::mem::take(t.outputs().forwards);
        assert_eq!(ticks, vec![Forward::tick(0, retention + grace)]);
        t.punctuate(retention + grace + 50, true).unwrap();
        assert!(t.outputs().forwards.is_empty(), "one tick at a time");
        assert!(states(&t.stage().changelog).is_empty(), "the clock waits for the tick to be read back");
        t.tick(retention + grace, 2);
        t.punctuate(retention + grace + 100, false).unwrap();
        let staged = t.stage();
        assert_eq!(states(&staged.changelog), vec![&(workflow("w"), None)]);
        assert_eq!(staged.next_offset, Some(3), "the tick's offset is committed");
    }

    fn task_with(store: Arc<Store>, workflows: &str) -> Task {
        let text = format!(
            "[kafka]\nprocessing_guarantee = \"exactly_once\"\nbootstrap_servers = \"x:1\"\ninput_topic = \"in\"\n\
             output_topic = \"out\"\ndead_letter_topic = \"dlq\"\n{workflows}"
        );
        let config = Arc::new(crate::config::parse(Path::new("t.toml"), &text, Vec::new()).unwrap());
        rearm_timers(&store, &config, 0).unwrap();
        let mut task = Task::new(0, store, config, Arc::new(Metrics::new()));
        task.read_saved().unwrap();
        task
    }

    fn commit(t: &mut Task) -> Staged {
        let mut staged = t.stage();
        t.store.write(std::mem::take(&mut staged.batch)).unwrap();
        t.committed();
        staged
    }

    fn reasons(staged: &Staged) -> Vec<&str> {
        staged.dead_letters.iter().map(|d| d.error.reason.code()).collect()
    }

    #[test]
    fn an_edit_leaves_open_workflows_their_steps_and_quorum_and_re_arms_their_timers() {
        let dir = tempfile::tempdir().unwrap();
        let memory = crate::state::StoreMemory::new(16 << 20, 4 << 20);
        let store = Arc::new(Store::open(dir.path(), &memory).unwrap());
        let before =
            "[[workflows]]\ntype = \"order\"\nsteps = [\"payment\", \"inventory\", \"fraud\"]\ndeadline = \"1h\"\n";
        let mut t = task_with(Arc::clone(&store), before);
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"payment"}"#, 0), 0, 0).unwrap();
        commit(&mut t);
        assert_eq!(t.store.due_timers(i64::MAX, 10).unwrap()[0].due_ms, 1_000 + 3_600_000);
        drop(t);

        // fraud removed, the quorum lowered to 1, the deadline shortened.
        let after =
            "[[workflows]]\ntype = \"order\"\nsteps = [\"payment\", \"inventory\"]\nquorum = 1\ndeadline = \"10s\"\n";
        let mut t = task_with(store, after);
        let due: Vec<i64> = t.store.due_timers(i64::MAX, 10).unwrap().iter().map(|t| t.due_ms).collect();
        assert!(due.contains(&11_000), "the shortened deadline is armed: {due:?}");
        assert_eq!(rearm_timers(&t.store, &t.config, 0).unwrap(), 0, "once per edit");
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"fraud"}"#, 1), 1, 0).unwrap();
        let staged = commit(&mut t);
        assert!(staged.dead_letters.is_empty(), "a removed step still counts for a workflow that started with it");
        assert!(staged.outcomes.is_empty(), "w keeps its quorum of 3");
        t.process_forwarded(&record(br#"{"workflow_id":"w","step":"inventory"}"#, 2), 2, 0).unwrap();
        t.process_forwarded(&record(br#"{"workflow_id":"v","step":"payment"}"#, 3), 3, 0).unwrap();
        t.process_forwarded(&record(br#"{"workflow_id":"u","step":"fraud"}"#, 4), 4, 0).unwrap();
        let staged = commit(&mut t);
        let decided: Vec<(&str, Vec<String>)> =
            staged.outcomes.iter().map(|d| (d.record.workflow_id.as_str(), d.record.missing.clone())).collect();
        assert_eq!(decided, [("w", vec![]), ("v", vec!["inventory".to_string()])], "v starts with the new quorum");
        assert_eq!(reasons(&staged), ["unknown_step"], "a new workflow does not take a removed step");
        assert!(t.store.get_state("u").unwrap().is_none(), "nor is it started by one");
    }

    #[test]
    fn a_removed_types_workflows_finish_by_their_own_definition() {
        let dir = tempfile::tempdir().unwrap();
        let memory = crate::state::StoreMemory::new(16 << 20, 4 << 20);
        let store = Arc::new(Store::open(dir.path(), &memory).unwrap());
        let order = "[[workflows]]\ntype = \"order\"\nsteps = [\"payment\", \"inventory\"]\n";
        let refund = "[[workflows]]\ntype = \"refund\"\nsteps = [\"ask\", \"pay\"]\ndeadline = \"5s\"\n";
        let mut t = task_with(Arc::clone(&store), order);
        // The only type: events need not name it. A second one is added.
        t.process_forwarded(&record(br#"{"workflow_id":"o","step":"payment"}"#, 0), 0, 0).unwrap();
        commit(&mut t);
        drop(t);
        let mut t = task_with(Arc::clone(&store), &format!("{order}{refund}"));
        t.process_forwarded(&record(br#"{"workflow_id":"o","step":"inventory"}"#, 1), 1, 0).unwrap();
        t.process_forwarded(&record(br#"{"workflow_id":"n","step":"payment"}"#, 2), 2, 0).unwrap();
        for (i, id) in ["r", "s"].iter().enumerate() {
            let v = format!(r#"{{"workflow_id":"{id}","workflow_type":"refund","step":"ask"}}"#);
            t.process_forwarded(&record(v.as_bytes(), 3 + i as i64), 3 + i as i64, 0).unwrap();
        }
        let staged = commit(&mut t);
        assert_eq!(staged.outcomes.iter().map(|d| d.record.workflow_id.as_str()).collect::<Vec<_>>(), ["o"]);
        assert_eq!(reasons(&staged), ["missing_field"], "a new workflow must name its type among two");
        drop(t);

        // refund removed: r finishes when its last step comes, s by its own 5 s deadline.
        let mut t = task_with(store, order);
        t.process_forwarded(&record(br#"{"workflow_id":"r","workflow_type":"refund","step":"pay"}"#, 5), 5, 0).unwrap();
        t.process_forwarded(&record(br#"{"workflow_id":"q","workflow_type":"refund","step":"pay"}"#, 6), 6, 0).unwrap();
        let staged = commit(&mut t);
        assert_eq!(staged.outcomes.iter().map(|d| d.record.workflow_id.as_str()).collect::<Vec<_>>(), ["r"]);
        assert_eq!(reasons(&staged), ["unknown_workflow_type"], "a removed type starts nothing new");
        t.punctuate(1_000 + 5_000 + 1_000, true).unwrap();
        let staged = commit(&mut t);
        let timed_out: Vec<_> =
            staged.outcomes.iter().map(|d| (d.record.workflow_id.as_str(), d.record.outcome)).collect();
        assert_eq!(timed_out, [("s", crate::join::outcome::Outcome::TimedOut)]);
    }

    #[test]
    fn a_definition_is_saved_once_ahead_of_the_first_state_that_refers_to_it_and_again_after_a_failed_commit() {
        let dir = tempfile::tempdir().unwrap();
        let memory = crate::state::StoreMemory::new(16 << 20, 4 << 20);
        let store = Arc::new(Store::open(dir.path(), &memory).unwrap());
        let order = "[[workflows]]\ntype = \"order\"\nsteps = [\"payment\", \"inventory\"]\n";
        let definitions = |staged: &Staged| -> Vec<usize> {
            let at = staged.changelog.iter().enumerate();
            at.filter(|(_, (key, _))| matches!(key, ChangelogKey::Definition(_))).map(|(i, _)| i).collect()
        };
        let mut t = task_with(Arc::clone(&store), order);
        t.process_forwarded(&record(br#"{"workflow_id":"a","step":"payment"}"#, 0), 0, 0).unwrap();
        let failed = t.stage();
        assert_eq!(definitions(&failed), [0], "ahead of the state");
        t.discard().unwrap();

        t.process_forwarded(&record(br#"{"workflow_id":"a","step":"payment"}"#, 0), 0, 0).unwrap();
        t.process_forwarded(&record(br#"{"workflow_id":"b","step":"payment"}"#, 1), 1, 0).unwrap();
        let staged = commit(&mut t);
        assert_eq!(definitions(&staged), [0], "saved again, once, after the failed commit");
        let state = codec::decode(&store.get_state("a").unwrap().unwrap()).unwrap();
        assert!(matches!(state.definition, Some(join::StartedWith::Id { .. })), "by ID: {state:?}");
        t.process_forwarded(&record(br#"{"workflow_id":"c","step":"payment"}"#, 2), 2, 0).unwrap();
        assert!(definitions(&commit(&mut t)).is_empty(), "saved once");
        drop(t);

        // A restart reads it back, and an edit leaves a, b and c their two steps.
        let mut t = task_with(store, "[[workflows]]\ntype = \"order\"\nsteps = [\"payment\"]\n");
        t.process_forwarded(&record(br#"{"workflow_id":"a","step":"inventory"}"#, 3), 3, 0).unwrap();
        let staged = commit(&mut t);
        assert_eq!(staged.outcomes.iter().map(|d| d.record.workflow_id.as_str()).collect::<Vec<_>>(), ["a"]);
        assert!(staged.dead_letters.is_empty());
    }
}
