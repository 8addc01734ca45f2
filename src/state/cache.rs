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

use crate::join::WorkflowState;
use crate::state::codec;
use crate::state::store::{Store, StoreBatch, StoreError, Timer};

/// Workflow ID → state (`None`: purged).
type States = HashMap<String, Option<WorkflowState>, foldhash::fast::RandomState>;

/// One changelog record: workflow ID → encoded state, or `None` for a
/// tombstone. The empty ID (never a workflow's) carries the partition's
/// clock, sent under [`crate::names::CLOCK_RECORD_KEY`].
pub type ChangelogRecord = (String, Option<Vec<u8>>);

pub struct CachedStore {
    partition: i32,
    store: Arc<Store>,
    /// Workflow ID → its state as changed since the last commit (`None`: purged).
    cache: States,
    /// The cache of the commit in flight, until the store has it.
    pending: States,
    /// Stale or fired timers to delete at the commit.
    spent_timers: Vec<Timer>,
}

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
        self.changelog.push((String::new(), Some(clock_ms.to_be_bytes().to_vec())));
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
        CachedStore { partition, store, cache: States::default(), pending: States::default(), spent_timers: Vec::new() }
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
        for (id, state) in self.cache.drain() {
            match &state {
                Some(state) => {
                    let encoded = codec::encode(state);
                    changes.batch.put_state(&id, &encoded, timer_of(state));
                    changes.changelog.push((id.clone(), Some(encoded)));
                }
                None => {
                    changes.batch.delete_state(&id);
                    changes.changelog.push((id.clone(), None));
                }
            }
            self.pending.insert(id, state);
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
