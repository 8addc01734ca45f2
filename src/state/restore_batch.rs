//! One store write of a restore: the changelog's states as read, written
//! to the store in key order. A memtable inserts keys that come in order
//! near where it inserted the last one, where keys in the changelog's order
//! (by commit) each take a search from the top of its skip list: most of a
//! restore's CPU. The stream thread only copies the records in
//! ([`RestoreBatch::put_state`], [`RestoreBatch::delete_state`]); a writer
//! thread sorts them ([`RestoreBatch::into_store_batch`]).

use std::ops::Range;

use crate::join::DefinitionId;
use crate::state::store::StoreBatch;

/// One changelog record of a state: its workflow ID, and its value and
/// timer (none for a deletion), as ranges of [`RestoreBatch::bytes`].
struct Entry {
    workflow_id: Range<usize>,
    value: Option<(Range<usize>, Option<i64>)>,
}

/// Restored records for one store write.
#[derive(Default)]
pub struct RestoreBatch {
    /// The workflow IDs and values of `entries`, back to back.
    bytes: Vec<u8>,
    /// The state records, in the changelog's order.
    entries: Vec<Entry>,
    /// The other records: definitions, and the last clock.
    definitions: Vec<(DefinitionId, Vec<u8>)>,
    clock_ms: Option<i64>,
    checkpoint: Option<i64>,
    synced_at_ms: Option<i64>,
}

/// About what one state record's ID and value take.
const BYTES_PER_STATE: usize = 160;

impl RestoreBatch {
    /// A batch with room for about `states` state records.
    pub fn for_states(states: usize) -> RestoreBatch {
        RestoreBatch {
            bytes: Vec::with_capacity(states * BYTES_PER_STATE),
            entries: Vec::with_capacity(states),
            ..RestoreBatch::default()
        }
    }

    /// The state and definition records in it.
    pub fn len(&self) -> usize {
        self.entries.len() + self.definitions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn put_state(&mut self, workflow_id: &str, encoded: &[u8], timer_ms: Option<i64>) {
        let workflow_id = self.copy(workflow_id.as_bytes());
        let value = self.copy(encoded);
        self.entries.push(Entry { workflow_id, value: Some((value, timer_ms)) });
    }

    pub fn delete_state(&mut self, workflow_id: &str) {
        let workflow_id = self.copy(workflow_id.as_bytes());
        self.entries.push(Entry { workflow_id, value: None });
    }

    pub fn put_definition(&mut self, id: DefinitionId, encoded: &[u8]) {
        self.definitions.push((id, encoded.to_vec()));
    }

    pub fn set_clock(&mut self, clock_ms: i64) {
        self.clock_ms = Some(clock_ms);
    }

    pub fn set_checkpoint(&mut self, changelog_offset: i64) {
        self.checkpoint = Some(changelog_offset);
    }

    pub fn set_synced_at(&mut self, now_ms: i64) {
        self.synced_at_ms = Some(now_ms);
    }

    fn copy(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }

    /// The store batch to write: each workflow's last record in the batch
    /// (the state it had after the batch; the timers of its earlier records
    /// were stale by then and are not written), states in key order, then
    /// their timers in key order.
    pub fn into_store_batch(self) -> StoreBatch {
        let RestoreBatch { bytes, mut entries, definitions, clock_ms, checkpoint, synced_at_ms } = self;
        let mut batch = StoreBatch::for_states(entries.len(), 0);
        for (id, encoded) in definitions {
            batch.put_definition(id, &encoded);
        }
        if let Some(clock_ms) = clock_ms {
            batch.set_clock(clock_ms);
        }
        if let Some(offset) = checkpoint {
            batch.set_checkpoint(offset);
        }
        if let Some(now_ms) = synced_at_ms {
            batch.set_synced_at(now_ms);
        }
        // The IDs were copied in from `&str`s.
        let text = |range: &Range<usize>| std::str::from_utf8(&bytes[range.clone()]).expect("copied from a str");
        // Stable: a workflow's records keep their changelog order.
        entries.sort_by(|a, b| bytes[a.workflow_id.clone()].cmp(&bytes[b.workflow_id.clone()]));
        let mut timers = Vec::new();
        let same_workflow = |a: &Entry, b: &Entry| bytes[a.workflow_id.clone()] == bytes[b.workflow_id.clone()];
        for e in entries.chunk_by(same_workflow).filter_map(<[Entry]>::last) {
            match &e.value {
                Some((value, timer)) => {
                    batch.put_state(text(&e.workflow_id), &bytes[value.clone()], None);
                    if let Some(due) = timer {
                        timers.push((*due, e.workflow_id.clone()));
                    }
                }
                None => batch.delete_state(text(&e.workflow_id)),
            }
        }
        // In their keys' order (where a negative due time counts as 0: those
        // come first either way).
        timers.sort_unstable_by(|(a_due, a), (b_due, b)| {
            a_due.cmp(b_due).then_with(|| bytes[a.clone()].cmp(&bytes[b.clone()]))
        });
        for (due, workflow_id) in &timers {
            batch.put_timer(text(workflow_id), *due);
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::store::{Store, StoreMemory};

    #[test]
    fn a_restored_batch_writes_each_workflows_last_record_with_its_timer_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreMemory::new(8 << 20, 2 << 20)).unwrap();
        let mut batch = RestoreBatch::for_states(4);
        batch.put_state("b", b"b1", Some(100));
        batch.put_state("a", b"a1", Some(50));
        batch.put_state("c", b"c1", Some(70));
        batch.delete_state("a");
        batch.put_state("b", b"b2", Some(200));
        batch.put_state("c", b"c2", None);
        batch.delete_state("d");
        batch.put_state("d", b"d1", Some(10));
        batch.set_clock(5);
        batch.set_clock(7);
        batch.set_checkpoint(8);
        assert_eq!(batch.len(), 8, "the state records");
        store.write(batch.into_store_batch()).unwrap();
        assert_eq!(store.get_state("a").unwrap(), None);
        assert_eq!(store.get_state("b").unwrap().as_deref(), Some(&b"b2"[..]));
        assert_eq!(store.get_state("c").unwrap().as_deref(), Some(&b"c2"[..]));
        assert_eq!(store.get_state("d").unwrap().as_deref(), Some(&b"d1"[..]));
        let due: Vec<(i64, String)> =
            store.due_timers(i64::MAX, 10).unwrap().into_iter().map(|t| (t.due_ms, t.workflow_id)).collect();
        assert_eq!(due, [(10, "d".to_string()), (200, "b".to_string())]);
        assert_eq!(store.checkpoint().unwrap(), Some(8));
        assert_eq!(store.clock().unwrap(), Some(7), "the last clock");
    }
}
