//! One assigned input partition: it decodes each record with its topic's
//! mapping, finds the workflow's home and forwards the record there through
//! the repartition topic, or, under `at_least_once`, holds a record read on
//! its workflow's home partition until a marker joins it there
//! ([`crate::route::Forward::marker`]). Bad records become dead letters
//! here, where they were read. It keeps its forwards, dead letters and next
//! offset until the commit takes them, and its held records until their
//! marker is read back: the offset it commits is never past one still held.

use std::collections::VecDeque;
use std::sync::Arc;

use prometheus::IntCounter;

use crate::commit::{Decided, Outputs, Staged};
use crate::config::Config;
use crate::input::dead_letter::DeadLetter;
use crate::input::event::{BadInput, OwnedStepEvent, StepEvent};
use crate::input::record::InputRecord;
use crate::metrics::Metrics;
use crate::route::Forward;
use crate::runtime::task::dead_letter;
use crate::state::StoreBatch;

/// The room for held records a source keeps once they are released: a few
/// polls' worth.
const HELD_ROOM_KEPT: usize = 8_192;

/// A record held for its marker: decoded once, when it was read. Its
/// topic and partition are its source's.
pub struct Held {
    /// Its workflow's home partition.
    pub home: i32,
    pub offset: i64,
    timestamp_ms: Option<i64>,
    /// Its key, if any, then its value, unchanged (for a dead letter should
    /// its join refuse it): one allocation.
    bytes: Box<[u8]>,
    key_len: Option<u32>,
    pub event: OwnedStepEvent,
}

impl Held {
    fn new(home: i32, event: &StepEvent<'_>, record: &InputRecord<'_>) -> Held {
        let (key, value) = (record.key.unwrap_or_default(), record.value.unwrap_or_default());
        let mut bytes = Vec::with_capacity(key.len() + value.len());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(value);
        Held {
            home,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            bytes: bytes.into_boxed_slice(),
            key_len: record.key.map(|k| k.len() as u32),
            event: event.to_owned_event(),
        }
    }

    /// The record it was read as, from `topic`'s `partition`.
    pub fn record<'a>(&'a self, topic: &'a str, partition: i32) -> InputRecord<'a> {
        let key_len = self.key_len.map_or(0, |len| len as usize);
        InputRecord {
            key: self.key_len.map(|_| &self.bytes[..key_len]),
            value: Some(&self.bytes[key_len..]),
            timestamp_ms: self.timestamp_ms,
            topic,
            partition,
            offset: self.offset,
        }
    }

    /// About how many bytes it takes: itself, its record and its event.
    fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Held>() + 16 + self.bytes.len() + self.event.heap_bytes()
    }
}

pub struct Source {
    pub topic: Arc<str>,
    pub partition: i32,
    /// Where to rewind to: the offset after the last commit.
    pub replay_from: Option<i64>,
    next_offset: Option<i64>,
    /// The offset after the last record read, kept across commits.
    read_to: Option<i64>,
    /// It read a record since it was assigned ([`Source::is_reading`]).
    has_read_any: bool,
    forwards: Vec<Forward>,
    /// The records read on their workflow's home partition (this one's
    /// number) and not yet joined there, in offset order.
    held: VecDeque<Held>,
    /// About what the held records take.
    held_bytes: usize,
    /// The last held record a marker covers.
    marked_through: Option<i64>,
    /// Paused because its held records took too much (see
    /// [`crate::runtime::partitions::Partitions`]'s `bound_held`).
    capped: bool,
    /// Its home partition is not active (opening, restoring, stopped): a
    /// record for it is not held but dropped, and no offset is committed,
    /// until the home partition is active and this is read again from its
    /// last commit ([`Source::freeze`]).
    frozen: bool,
    /// Held records were joined since the last commit began: the offset it
    /// commits may move on though nothing was read.
    released: bool,
    dead_letters: Vec<DeadLetter>,
    /// Always empty: a source decides nothing (for [`Source::outputs`]).
    no_outcomes: Vec<Decided>,
    /// About what the forwards and dead letters not yet published take.
    outputs_bytes: usize,
    forwarded: IntCounter,
}

impl Source {
    pub fn new(topic: Arc<str>, partition: i32, metrics: &Metrics) -> Source {
        Source {
            forwarded: metrics.forwarded(&topic),
            topic,
            partition,
            replay_from: None,
            next_offset: None,
            read_to: None,
            has_read_any: false,
            forwards: Vec::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            marked_through: None,
            capped: false,
            frozen: false,
            released: false,
            dead_letters: Vec::new(),
            no_outcomes: Vec::new(),
            outputs_bytes: 0,
        }
    }

    /// A record read: its offset is committed with the next commit.
    pub fn read(&mut self, offset: i64) {
        self.replay_from.get_or_insert(offset);
        self.next_offset = Some(offset + 1);
        self.read_to = Some(offset + 1);
        self.has_read_any = true;
    }

    /// Whether the record at `offset` was read since the last rewind.
    pub fn has_read(&self, offset: i64) -> bool {
        self.read_to.is_some_and(|to| to > offset)
    }

    /// Sends `record`, whose workflow's home is `home`, there.
    pub fn forward(&mut self, home: i32, event: &StepEvent<'_>, record: &InputRecord<'_>) {
        self.forwarded.inc();
        let forward = Forward {
            home,
            workflow_id: event.workflow_id.to_string(),
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.unwrap_or_default().to_vec(),
            timestamp_ms: record.timestamp_ms,
            source_topic: record.topic.to_string(),
            source_partition: record.partition,
            source_offset: record.offset,
        };
        self.outputs_bytes += forward.approx_bytes();
        self.forwards.push(forward);
    }

    /// Keeps `record`, read on its workflow's home partition `home`, until
    /// a marker joins it there ([`Source::mark`], [`Source::release`]).
    pub fn hold(&mut self, home: i32, event: &StepEvent<'_>, record: &InputRecord<'_>) {
        if self.frozen {
            return; // read again once its home partition is active
        }
        let held = Held::new(home, event, record);
        self.held_bytes += held.approx_bytes();
        self.held.push_back(held);
    }

    /// Sends a marker for the records held since the last one, if any; whether it did.
    pub fn mark(&mut self) -> bool {
        // A partition that held many (its home partition behind) gives the room back.
        if self.held.capacity() > HELD_ROOM_KEPT && self.held.len() < self.held.capacity() / 4 {
            self.held.shrink_to(self.held.len().max(HELD_ROOM_KEPT));
        }
        let Some(last) = self.held.back() else { return false };
        if self.marked_through.is_some_and(|through| through >= last.offset) {
            return false;
        }
        let marker = Forward::marker(last.home, &self.topic, self.partition, last.offset);
        self.marked_through = Some(last.offset);
        self.outputs_bytes += marker.approx_bytes();
        self.forwards.push(marker);
        true
    }

    /// Takes the held records up to `through`, which a marker read back joins.
    pub fn release(&mut self, through: i64) -> std::collections::vec_deque::Drain<'_, Held> {
        let count = self.held.partition_point(|h| h.offset <= through);
        self.held_bytes -= self.held.range(..count).map(Held::approx_bytes).sum::<usize>();
        self.released |= count > 0;
        self.held.drain(..count)
    }

    /// Whether it takes a share of the room for held records: it has read
    /// a record since it was assigned. (Whatever holds records has; and
    /// the count does not swing within a commit interval, nor after a
    /// rewind, which would let one partition hold the share of many.)
    pub fn is_reading(&self) -> bool {
        self.has_read_any
    }

    /// About how much memory the held records take.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Its home partition stops being active: what it held is dropped, and
    /// nothing it reads from here is held or committed; its records for
    /// other homes are still forwarded (and forwarded again after the
    /// rewind, which the join absorbs). Memory stays bounded however long
    /// the home partition is away, and other homes' records go on.
    pub fn freeze(&mut self) {
        self.frozen = true;
        self.next_offset = None;
        self.drop_held();
    }

    /// Its home partition is active again: whether it was frozen, and so
    /// must be read again from its last commit.
    pub fn thaw(&mut self) -> bool {
        std::mem::take(&mut self.frozen)
    }

    pub fn is_capped(&self) -> bool {
        self.capped
    }

    pub fn set_capped(&mut self, capped: bool) {
        self.capped = capped;
    }

    pub fn dead_letter(&mut self, config: &Config, metrics: &Metrics, record: &InputRecord<'_>, error: BadInput) {
        let letter = dead_letter(config, metrics, record, error);
        self.outputs_bytes += letter.approx_bytes();
        self.dead_letters.push(letter);
    }

    /// About how much memory the forwards and dead letters not yet published take.
    pub fn pending_bytes(&self) -> usize {
        self.outputs_bytes
    }

    pub fn is_dirty(&self) -> bool {
        self.next_offset.is_some() || self.released || !self.forwards.is_empty() || !self.dead_letters.is_empty()
    }

    /// The forwards and dead letters not yet published, for
    /// [`crate::commit::Strategy::publish`], which empties them.
    pub fn outputs(&mut self) -> Outputs<'_> {
        self.outputs_bytes = 0;
        Outputs { outcomes: &mut self.no_outcomes, dead_letters: &mut self.dead_letters, forwards: &mut self.forwards }
    }

    /// Takes everything the next commit must publish, and the offset it
    /// commits: the next one to read, or the first held one, whichever is
    /// first (a replay from there reads again what its markers join).
    pub fn stage(&mut self) -> Staged {
        self.outputs_bytes = 0;
        let read = self.next_offset.take().or(if self.released { self.read_to } else { None });
        self.released = false;
        let read = read.filter(|_| !self.frozen);
        let next_offset = read.map(|next| self.held.front().map_or(next, |first| first.offset.min(next)));
        Staged {
            topic: Arc::clone(&self.topic),
            store: None,
            outcomes: Vec::new(),
            dead_letters: std::mem::take(&mut self.dead_letters),
            forwards: std::mem::take(&mut self.forwards),
            changelog: Vec::new(),
            batch: StoreBatch::default(),
            next_offset,
            last_committed: self.replay_from,
        }
    }

    /// Forgets everything since the last finished commit: its input is read again.
    pub fn discard(&mut self) {
        self.outputs_bytes = 0;
        self.forwards.clear();
        self.dead_letters.clear();
        self.next_offset = None;
        self.read_to = None;
        self.drop_held();
    }

    fn drop_held(&mut self) {
        self.held = VecDeque::new();
        self.held_bytes = 0;
        self.marked_through = None;
        self.released = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::event;

    fn read_and_hold(source: &mut Source, config: &Config, offset: i64) {
        let value = br#"{"workflow_id":"w","step":"payment"}"#;
        let record =
            InputRecord { key: None, value: Some(value), timestamp_ms: Some(1_000), topic: "in", partition: 0, offset };
        let event = event::decode(config, None, record.value, 1_000).unwrap();
        source.read(offset);
        source.hold(0, &event, &record);
    }

    #[test]
    fn the_offset_committed_never_passes_a_record_held_for_its_marker() {
        let config = crate::runtime::task::tests::config_under("at_least_once");
        let mut source = Source::new(Arc::from("in"), 0, &Metrics::new());
        for offset in 10..13 {
            read_and_hold(&mut source, &config, offset);
        }
        assert!(source.mark(), "one marker for the three");
        assert!(!source.mark(), "none again for the same records");
        let staged = source.stage();
        let markers: Vec<_> = staged.forwards.iter().filter(|f| f.is_marker()).collect();
        assert_eq!(markers.len(), 1);
        assert_eq!((markers[0].source_offset, markers[0].home), (12, 0));
        assert_eq!(staged.next_offset, Some(10), "the first held record, read again after a crash");
        source.replay_from = Some(10);

        read_and_hold(&mut source, &config, 13);
        assert!(source.has_read(13) && !source.has_read(14));
        let bytes = source.held_bytes();
        assert_eq!(source.release(12).map(|h| h.offset).collect::<Vec<_>>(), vec![10, 11, 12]);
        assert_eq!(source.held_bytes(), bytes / 4, "one of four left");
        assert_eq!(source.stage().next_offset, Some(13), "13 is still held");
        assert_eq!(source.release(13).len(), 1);
        assert!(source.is_dirty(), "a release moves the offset on though nothing was read");
        assert_eq!(source.stage().next_offset, Some(14));
        assert!(!source.is_dirty());

        read_and_hold(&mut source, &config, 14);
        source.discard();
        assert_eq!(source.held_bytes(), 0);
        assert!(!source.has_read(14), "after a rewind, read again before its marker joins it");
        assert_eq!(source.release(14).len(), 0);
    }
}
