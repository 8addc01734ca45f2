//! The record cache in front of one partition's store: the states changed
//! since the last commit, and those of the commit in flight until the store
//! has them.
//!
//! It is why a workflow opened and finished within one commit interval
//! writes one changelog record: only the last state of each workflow is
//! staged at the commit. While that commit is in flight its states stay
//! readable in `pending`, so that processing goes on meanwhile: a state is
//! read from the cache, else from `pending`, else from the store.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::warn;

use crate::join::{Definition, DefinitionId, WorkflowState};
use crate::names;
use crate::state::codec;
use crate::state::store::{Store, StoreBatch, StoreError, Timer};

/// Workflow ID → state (`None`: purged).
type States = HashMap<String, Option<WorkflowState>, foldhash::fast::RandomState>;

/// One changelog record: its key, and its value or `None` for a tombstone.
pub type ChangelogRecord = (ChangelogKey, Option<Vec<u8>>);

/// What a changelog record is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangelogKey {
    /// A workflow's encoded state, under its ID.
    Workflow(String),
    /// The partition's clock, under [`names::CLOCK_RECORD_KEY`].
    Clock,
    /// A definition states refer to, under [`names::DEFINITION_RECORD_PREFIX`] and its ID.
    Definition(DefinitionId),
}

impl ChangelogKey {
    /// The record's key; `buf` holds it when it is not a workflow ID.
    pub fn bytes<'a>(&'a self, buf: &'a mut Vec<u8>) -> &'a [u8] {
        match self {
            ChangelogKey::Workflow(id) => id.as_bytes(),
            ChangelogKey::Clock => names::CLOCK_RECORD_KEY,
            ChangelogKey::Definition(id) => {
                buf.clear();
                buf.extend_from_slice(names::DEFINITION_RECORD_PREFIX);
                buf.extend_from_slice(&id.0.to_be_bytes());
                buf
            }
        }
    }

    /// What a record read from the changelog under `key` is of, when that
    /// is not a workflow (whose ID the key is).
    pub fn reserved(key: &[u8]) -> Option<ChangelogKey> {
        if key == names::CLOCK_RECORD_KEY {
            return Some(ChangelogKey::Clock);
        }
        let id = <[u8; 8]>::try_from(key.strip_prefix(names::DEFINITION_RECORD_PREFIX)?).ok()?;
        Some(ChangelogKey::Definition(DefinitionId(u64::from_be_bytes(id))))
    }
}

pub struct CachedStore {
    partition: i32,
    store: Arc<Store>,
    /// Workflow ID → its state as changed since the last commit (`None`: purged).
    cache: States,
    /// The cache of the commit in flight, until the store has it.
    pending: States,
    /// Stale or fired timers to delete at the commit.
    spent_timers: Vec<Timer>,
    /// About what a state takes in memory, from the sizes of those staged
    /// so far (see [`CachedStore::approx_bytes`]).
    state_bytes: usize,
}

/// What a state takes before any was staged, and besides its encoding
/// (its map entry, its decoded form's allocations).
const STATE_BYTES_GUESS: usize = 768;
const STATE_OVERHEAD_BYTES: usize = 400;

/// What a commit saves of one store: its changelog records, and the batch
/// that writes the same states (and their timers) to the store once the
/// changelog has them (the commit adds the checkpoint).
pub struct StateChanges {
    pub changelog: Vec<ChangelogRecord>,
    pub batch: StoreBatch,
}

impl StateChanges {
    /// Saves the partition's clock with these changes, in the store and in the changelog.
    pub fn save_clock(&mut self, clock_ms: i64) {
        self.batch.set_clock(clock_ms);
        self.changelog.push((ChangelogKey::Clock, Some(clock_ms.to_be_bytes().to_vec())));
    }

    /// Saves definitions that states refer to with these changes, ahead of
    /// the states in the changelog, so that a state is never read before
    /// the definition it refers to.
    pub fn save_definitions(&mut self, definitions: &[(DefinitionId, Definition)]) {
        let records = definitions.iter().map(|(id, definition)| {
            let encoded = codec::encode_definition(definition);
            self.batch.put_definition(*id, &encoded);
            (ChangelogKey::Definition(*id), Some(encoded))
        });
        let records: Vec<ChangelogRecord> = records.collect();
        self.changelog.splice(0..0, records);
    }
}

/// Where [`CachedStore::load`] found a state, with its key when it was a
/// map's (reused rather than allocated again).
pub enum Source {
    Cache(String),
    Pending(String),
    Store,
}

impl Source {
    fn into_key(self, workflow_id: &str) -> String {
        match self {
            Source::Cache(key) | Source::Pending(key) => key,
            Source::Store => workflow_id.to_string(),
        }
    }
}

impl CachedStore {
    pub fn new(partition: i32, store: Arc<Store>) -> CachedStore {
        CachedStore {
            partition,
            store,
            cache: States::default(),
            pending: States::default(),
            spent_timers: Vec::new(),
            state_bytes: STATE_BYTES_GUESS,
        }
    }

    /// About how much memory the states waiting for a commit (changed, or
    /// in the commit in flight) take: their count times the size of the
    /// states staged lately. Cheap: it bounds memory, not to the byte.
    pub fn approx_bytes(&self) -> usize {
        (self.cache.len() + self.pending.len()) * self.state_bytes
    }

    /// Whether a state or a spent timer waits for a commit.
    pub fn is_dirty(&self) -> bool {
        !self.cache.is_empty() || !self.spent_timers.is_empty()
    }

    /// Takes a workflow's state: from the record cache, else from the commit
    /// in flight, else from the store. What is taken unchanged goes back with
    /// [`CachedStore::put_back`], what changed with [`CachedStore::put`].
    pub fn load(&mut self, workflow_id: &str) -> Result<(Option<WorkflowState>, Source), StoreError> {
        if let Some((key, cached)) = self.cache.remove_entry(workflow_id) {
            return Ok((cached, Source::Cache(key)));
        }
        if let Some((key, pending)) = self.pending.remove_entry(workflow_id) {
            return Ok((pending, Source::Pending(key)));
        }
        let Some(bytes) = self.store.get_state(workflow_id)? else { return Ok((None, Source::Store)) };
        match codec::decode(&bytes) {
            Ok(s) => Ok((Some(s), Source::Store)),
            Err(e) => {
                warn!(partition = self.partition, workflow_id, error = %e, "unreadable state in the store; starting the workflow afresh");
                Ok((None, Source::Store))
            }
        }
    }

    /// Returns an unchanged state to where `load` took it from.
    pub fn put_back(&mut self, state: Option<WorkflowState>, from: Source) {
        match from {
            Source::Cache(key) => self.cache.insert(key, state),
            Source::Pending(key) => self.pending.insert(key, state),
            Source::Store => None,
        };
    }

    /// Keeps a changed state (`None`: purge the workflow) for the next commit.
    pub fn put(&mut self, workflow_id: &str, from: Source, state: Option<WorkflowState>) {
        self.cache.insert(from.into_key(workflow_id), state);
    }

    /// Up to `limit` timers due at `now_ms`, earliest first.
    pub fn due_timers(&self, now_ms: i64, limit: usize) -> Result<Vec<Timer>, StoreError> {
        self.store.due_timers(now_ms, limit)
    }

    /// Deletes a timer that fired or went stale, at the next commit.
    pub fn spend_timer(&mut self, timer: Timer) {
        self.spent_timers.push(timer);
    }

    /// Takes the changes for the next commit, each state with the timer
    /// `timer_of` gives it. The states stay readable until [`CachedStore::committed`].
    pub fn stage(&mut self, timer_of: impl Fn(&WorkflowState) -> Option<i64>) -> StateChanges {
        let mut changes = StateChanges {
            changelog: Vec::with_capacity(self.cache.len()),
            batch: StoreBatch::for_states(self.cache.len(), self.spent_timers.len()),
        };
        for timer in self.spent_timers.drain(..) {
            changes.batch.delete_timer(&timer);
        }
        let (mut encoded_bytes, staged) = (0, self.cache.len());
        for (id, state) in self.cache.drain() {
            match &state {
                Some(state) => {
                    let encoded = codec::encode(state);
                    encoded_bytes += encoded.len();
                    changes.batch.put_state(&id, &encoded, timer_of(state));
                    changes.changelog.push((ChangelogKey::Workflow(id.clone()), Some(encoded)));
                }
                None => {
                    changes.batch.delete_state(&id);
                    changes.changelog.push((ChangelogKey::Workflow(id.clone()), None));
                }
            }
            self.pending.insert(id, state);
        }
        // Decoded, a state takes about three times its encoding (its map
        // entry, strings and vectors, measured); the staged copy, one more.
        if let Some(each) = (4 * encoded_bytes).checked_div(staged) {
            self.state_bytes = (3 * self.state_bytes + each + STATE_OVERHEAD_BYTES) / 4;
        }
        changes
    }

    /// The commit of what was staged is saved: the store has its states now.
    pub fn committed(&mut self) {
        self.pending.clear();
    }

    /// Forgets every change since the last finished commit, after a commit failed.
    pub fn discard(&mut self) {
        self.cache.clear();
        self.pending.clear();
        self.spent_timers.clear();
    }
}
