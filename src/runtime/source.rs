//! One assigned input partition: it decodes each record with its topic's
//! mapping, finds the workflow's home and forwards the record there through
//! the repartition topic. Bad records become dead letters here, where they
//! were read. It keeps its forwards,
//! dead letters and next offset until the commit takes them.

use std::sync::Arc;

use prometheus::IntCounter;

use crate::commit::{Decided, Outputs, Staged};
use crate::config::Config;
use crate::input::dead_letter::DeadLetter;
use crate::input::event::{BadInput, StepEvent};
use crate::input::record::InputRecord;
use crate::metrics::Metrics;
use crate::route::Forward;
use crate::runtime::task::dead_letter;
use crate::state::StoreBatch;

pub struct Source {
    pub topic: Arc<str>,
    pub partition: i32,
    /// Where to rewind to: the offset after the last commit.
    pub replay_from: Option<i64>,
    next_offset: Option<i64>,
    forwards: Vec<Forward>,
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
            forwards: Vec::new(),
            dead_letters: Vec::new(),
            no_outcomes: Vec::new(),
            outputs_bytes: 0,
        }
    }

    /// A record read: its offset is committed with the next commit.
    pub fn read(&mut self, offset: i64) {
        self.replay_from.get_or_insert(offset);
        self.next_offset = Some(offset + 1);
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
        self.next_offset.is_some() || !self.forwards.is_empty() || !self.dead_letters.is_empty()
    }

    /// The forwards and dead letters not yet published, for
    /// [`crate::commit::Strategy::publish`], which empties them.
    pub fn outputs(&mut self) -> Outputs<'_> {
        self.outputs_bytes = 0;
        Outputs { outcomes: &mut self.no_outcomes, dead_letters: &mut self.dead_letters, forwards: &mut self.forwards }
    }

    /// Takes everything the next commit must publish, and the offset it commits.
    pub fn stage(&mut self) -> Staged {
        self.outputs_bytes = 0;
        Staged {
            topic: Arc::clone(&self.topic),
            store: None,
            outcomes: Vec::new(),
            dead_letters: std::mem::take(&mut self.dead_letters),
            forwards: std::mem::take(&mut self.forwards),
            changelog: Vec::new(),
            batch: StoreBatch::default(),
            next_offset: self.next_offset.take(),
            last_committed: self.replay_from,
        }
    }

    /// Forgets everything since the last finished commit: its input is read again.
    pub fn discard(&mut self) {
        self.outputs_bytes = 0;
        self.forwards.clear();
        self.dead_letters.clear();
        self.next_offset = None;
    }
}
