//! How a workflow's state is stored: the same bytes go to the RocksDB store
//! and to the changelog, so that restoring is copying. A leading version byte
//! lets the format change without misreading old records.
//!
//! Version 4, the one written, is a compact binary layout; version 3 (the
//! definition only whole), version 2 (without a definition) and version 1
//! (JSON) are still read, and states without a definition take their type's
//! configured one. Integers are little-endian, lengths and counts are LEB128
//! varints, a string is its length then its UTF-8 bytes:
//!
//! ```text
//! u8  version = 4
//! u8  flags: 1 = decided, 2 = compensated, 4 = definition whole,
//!     8 = its deadline, 16 = definition by ID
//! i64 started_at_ms, i64 last_event_at_ms
//! if decided:     u8 outcome, i64 decided_at_ms
//! if compensated: i64 compensated_at_ms
//! str workflow_type
//! if deadline:    i64 the definition's deadline_ms
//! if by ID:       u64 its DefinitionId
//! if whole:       varint quorum, varint steps, each a str
//! varint steps, each: str name, u8 work (0 none, 1 succeeded, 2 failed),
//!     i64 occurred_at_ms, u8 seen_without_id, u8 flags (1 = payload,
//!     2 = compensated), [str payload JSON], [i64 compensated_at_ms]
//! varint event IDs, each a str
//! ```
//!
//! A partition's definitions, which the IDs point into, are stored as
//! [`encode_definition`] writes them: `u8 version = 1`, varint quorum,
//! varint steps, each a str.
//!
//! Everything a timer or a count needs comes first, so that [`summary`] reads
//! it without decoding the steps: restoring and counting open workflows stay
//! cheap.

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::input::event::Status;
use crate::join::outcome::{Outcome, Payload};
use crate::join::{Decision, Definition, DefinitionId, StartedWith, StepState, WorkflowState};

const FORMAT_V1_JSON: u8 = 1;
const FORMAT_V2_BINARY: u8 = 2;
const FORMAT_V3_DEFINED: u8 = 3;
const FORMAT_V4_REFERENCED: u8 = 4;
const DEFINITION_FORMAT: u8 = 1;

const DECIDED: u8 = 1;
const COMPENSATED: u8 = 2;
const DEFINITION: u8 = 4;
const DEFINITION_DEADLINE: u8 = 8;
const DEFINITION_ID: u8 = 16;
const STEP_PAYLOAD: u8 = 1;
const STEP_COMPENSATED: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty state record")]
    Empty,
    #[error("unknown state format version {0}")]
    UnknownVersion(u8),
    #[error("corrupt state record: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("corrupt state record: {0}")]
    Malformed(&'static str),
}

pub fn encode(state: &WorkflowState) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(64 + state.steps.len() * 48 + state.event_ids.iter().map(|e| e.len() + 1).sum::<usize>());
    encode_into(state, &mut out);
    out
}

/// Appends the encoding of `state` to `out`.
pub fn encode_into(state: &WorkflowState, out: &mut Vec<u8>) {
    out.push(FORMAT_V4_REFERENCED);
    let mut flags = 0;
    if let Some(d) = &state.decision {
        flags |= DECIDED;
        if d.compensated_at_ms.is_some() {
            flags |= COMPENSATED;
        }
    }
    if let Some(def) = &state.definition {
        flags |= match def {
            StartedWith::Id { .. } => DEFINITION_ID,
            StartedWith::Whole(_) => DEFINITION,
        };
        if def.deadline_ms().is_some() {
            flags |= DEFINITION_DEADLINE;
        }
    }
    out.push(flags);
    out.extend_from_slice(&state.started_at_ms.to_le_bytes());
    out.extend_from_slice(&state.last_event_at_ms.to_le_bytes());
    if let Some(d) = &state.decision {
        out.push(outcome_code(d.outcome));
        out.extend_from_slice(&d.decided_at_ms.to_le_bytes());
        if let Some(at) = d.compensated_at_ms {
            out.extend_from_slice(&at.to_le_bytes());
        }
    }
    put_str(out, &state.workflow_type);
    if let Some(def) = &state.definition {
        if let Some(deadline) = def.deadline_ms() {
            out.extend_from_slice(&deadline.to_le_bytes());
        }
        match def {
            StartedWith::Id { id, .. } => out.extend_from_slice(&id.0.to_le_bytes()),
            StartedWith::Whole(def) => put_definition(out, def),
        }
    }
    put_varint(out, state.steps.len());
    for step in &state.steps {
        put_str(out, &step.name);
        out.push(match step.work {
            None => 0,
            Some(Status::Succeeded) => 1,
            Some(Status::Failed) => 2,
            Some(Status::Compensated) => 3,
        });
        out.extend_from_slice(&step.occurred_at_ms.to_le_bytes());
        out.push(step.seen_without_id);
        let flags = if step.payload.is_some() { STEP_PAYLOAD } else { 0 }
            | if step.compensated_at_ms.is_some() { STEP_COMPENSATED } else { 0 };
        out.push(flags);
        if let Some(p) = &step.payload {
            put_str(out, p.0.get());
        }
        if let Some(at) = step.compensated_at_ms {
            out.extend_from_slice(&at.to_le_bytes());
        }
    }
    put_varint(out, state.event_ids.len());
    for id in &state.event_ids {
        put_str(out, id);
    }
}

pub fn decode(bytes: &[u8]) -> Result<WorkflowState, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_V1_JSON, rest)) => Ok(serde_json::from_slice(rest)?),
        Some((&version @ (FORMAT_V2_BINARY | FORMAT_V3_DEFINED | FORMAT_V4_REFERENCED), rest)) => {
            let mut r = Reader(rest);
            let head = r.head(version)?;
            let deadline_ms = head.own_deadline_ms;
            let definition = if head.flags & DEFINITION_ID != 0 {
                Some(StartedWith::Id { id: DefinitionId(r.u64()?), deadline_ms })
            } else if head.flags & DEFINITION != 0 {
                Some(StartedWith::Whole(Definition { deadline_ms, ..r.definition()? }))
            } else {
                None
            };
            let mut steps = Vec::with_capacity(r.count(11)?);
            for _ in 0..steps.capacity() {
                let name = r.str()?.to_string();
                let work = match r.u8()? {
                    0 => None,
                    1 => Some(Status::Succeeded),
                    2 => Some(Status::Failed),
                    3 => Some(Status::Compensated),
                    _ => return Err(CodecError::Malformed("unknown step status")),
                };
                let occurred_at_ms = r.i64()?;
                let seen_without_id = r.u8()?;
                let flags = r.u8()?;
                let payload = if flags & STEP_PAYLOAD != 0 {
                    let raw: Box<RawValue> = serde_json::from_str(r.str()?)?;
                    Some(Payload(raw))
                } else {
                    None
                };
                let compensated_at_ms = if flags & STEP_COMPENSATED != 0 { Some(r.i64()?) } else { None };
                steps.push(StepState { name, work, occurred_at_ms, payload, compensated_at_ms, seen_without_id });
            }
            let mut event_ids = Vec::with_capacity(r.count(1)?);
            for _ in 0..event_ids.capacity() {
                event_ids.push(r.str()?.to_string());
            }
            if !r.0.is_empty() {
                return Err(CodecError::Malformed("trailing bytes"));
            }
            Ok(WorkflowState {
                workflow_type: head.workflow_type.to_string(),
                started_at_ms: head.started_at_ms,
                last_event_at_ms: head.last_event_at_ms,
                steps,
                event_ids,
                decision: head.decision,
                definition,
            })
        }
        Some((&v, _)) => Err(CodecError::UnknownVersion(v)),
    }
}

/// What timers and counts need of a state, read without decoding the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary<'a> {
    pub workflow_type: Cow<'a, str>,
    pub started_at_ms: i64,
    pub last_event_at_ms: i64,
    pub decision: Option<Decision>,
    /// The deadline of the definition it started with, if that is stored.
    pub own_deadline_ms: Option<i64>,
    flags: u8,
}

/// Whether an encoded state is a workflow waiting for its decision, as
/// `junction_workflows_open` counts it (an unreadable state is not).
pub fn is_open(bytes: &[u8]) -> bool {
    summary(bytes).is_ok_and(|s| s.decision.is_none())
}

pub fn summary(bytes: &[u8]) -> Result<Summary<'_>, CodecError> {
    match bytes.split_first() {
        Some((&version @ (FORMAT_V2_BINARY | FORMAT_V3_DEFINED | FORMAT_V4_REFERENCED), rest)) => {
            Reader(rest).head(version)
        }
        // Old records are read whole.
        _ => decode(bytes).map(|s| Summary {
            workflow_type: Cow::Owned(s.workflow_type),
            started_at_ms: s.started_at_ms,
            last_event_at_ms: s.last_event_at_ms,
            decision: s.decision,
            own_deadline_ms: s.definition.and_then(|d| d.deadline_ms()),
            flags: 0,
        }),
    }
}

/// The record of one of a partition's definitions (its steps and quorum),
/// which states refer to by [`DefinitionId`].
pub fn encode_definition(definition: &Definition) -> Vec<u8> {
    let mut out = vec![DEFINITION_FORMAT];
    put_definition(&mut out, definition);
    out
}

pub fn decode_definition(bytes: &[u8]) -> Result<Definition, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&DEFINITION_FORMAT, rest)) => {
            let mut r = Reader(rest);
            let definition = r.definition()?;
            if !r.0.is_empty() {
                return Err(CodecError::Malformed("trailing bytes"));
            }
            Ok(definition)
        }
        Some((&v, _)) => Err(CodecError::UnknownVersion(v)),
    }
}

fn put_definition(out: &mut Vec<u8>, def: &Definition) {
    put_varint(out, def.quorum);
    put_varint(out, def.steps.len());
    for step in &def.steps {
        put_str(out, step);
    }
}

fn outcome_code(o: Outcome) -> u8 {
    match o {
        Outcome::Completed => 1,
        Outcome::Failed => 2,
        Outcome::TimedOut => 3,
        Outcome::Compensated => 4,
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over a record: every read checks the length, so garbage is an error, never a panic.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.0.len() {
            return Err(CodecError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn i64(&mut self) -> Result<i64, CodecError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// Steps and quorum; the deadline is the caller's.
    fn definition(&mut self) -> Result<Definition, CodecError> {
        let quorum = self.varint()?;
        let mut steps = Vec::with_capacity(self.count(1)?);
        for _ in 0..steps.capacity() {
            steps.push(self.str()?.to_string());
        }
        Ok(Definition { steps, quorum, deadline_ms: None })
    }

    fn varint(&mut self) -> Result<usize, CodecError> {
        let mut n: usize = 0;
        for shift in (0..35).step_by(7) {
            let b = self.u8()?;
            n |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(CodecError::Malformed("varint too long"))
    }

    /// A count of items at least `min_bytes` each: no more than the bytes left could hold.
    fn count(&mut self, min_bytes: usize) -> Result<usize, CodecError> {
        let n = self.varint()?;
        if n.saturating_mul(min_bytes) > self.0.len() {
            return Err(CodecError::Malformed("count beyond the record's end"));
        }
        Ok(n)
    }

    fn str(&mut self) -> Result<&'a str, CodecError> {
        let n = self.varint()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| CodecError::Malformed("a string is not UTF-8"))
    }

    fn head(&mut self, version: u8) -> Result<Summary<'a>, CodecError> {
        let flags = self.u8()?;
        if version < FORMAT_V3_DEFINED && flags & (DEFINITION | DEFINITION_DEADLINE) != 0 {
            return Err(CodecError::Malformed("a definition in a version 2 record"));
        }
        if version < FORMAT_V4_REFERENCED && flags & DEFINITION_ID != 0 {
            return Err(CodecError::Malformed("a definition's ID in a record before version 4"));
        }
        if flags & DEFINITION != 0 && flags & DEFINITION_ID != 0 {
            return Err(CodecError::Malformed("a definition both whole and by ID"));
        }
        if flags & DEFINITION_DEADLINE != 0 && flags & (DEFINITION | DEFINITION_ID) == 0 {
            return Err(CodecError::Malformed("a definition's deadline without the definition"));
        }
        let started_at_ms = self.i64()?;
        let last_event_at_ms = self.i64()?;
        let decision = if flags & DECIDED != 0 {
            let outcome = match self.u8()? {
                1 => Outcome::Completed,
                2 => Outcome::Failed,
                3 => Outcome::TimedOut,
                4 => Outcome::Compensated,
                _ => return Err(CodecError::Malformed("unknown outcome")),
            };
            let decided_at_ms = self.i64()?;
            let compensated_at_ms = if flags & COMPENSATED != 0 { Some(self.i64()?) } else { None };
            Some(Decision { outcome, decided_at_ms, compensated_at_ms })
        } else {
            None
        };
        let workflow_type = Cow::Borrowed(self.str()?);
        let own_deadline_ms = if flags & DEFINITION_DEADLINE != 0 { Some(self.i64()?) } else { None };
        Ok(Summary { workflow_type, started_at_ms, last_event_at_ms, decision, own_deadline_ms, flags })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_state() -> WorkflowState {
        let mut s = WorkflowState::new("order", 42);
        s.last_event_at_ms = -7;
        s.event_ids.push("e\"1".into());
        s.event_ids.push("é".repeat(100));
        s.steps.push(StepState {
            name: "payment".into(),
            work: Some(Status::Succeeded),
            occurred_at_ms: 1_700_000_000_000,
            payload: Some(Payload(serde_json::from_str(r#"{"amount": 12.5, "s": "x\"y"}"#).unwrap())),
            compensated_at_ms: Some(1_700_000_000_500),
            seen_without_id: 5,
        });
        s.steps.push(StepState {
            name: "inventory".into(),
            work: Some(Status::Failed),
            occurred_at_ms: 3,
            payload: None,
            compensated_at_ms: None,
            seen_without_id: 0,
        });
        s.decision = Some(Decision { outcome: Outcome::Failed, decided_at_ms: 99, compensated_at_ms: Some(1_000) });
        s.definition = Some(StartedWith::Id { id: DefinitionId(0x0123_4567_89ab_cdef), deadline_ms: Some(-3) });
        s
    }

    /// A state as version 3 wrote it: its definition whole.
    fn whole_state() -> WorkflowState {
        let mut s = full_state();
        s.definition = Some(StartedWith::Whole(Definition {
            steps: vec!["payment".into(), "inventory".into(), "gone".into()],
            quorum: 2,
            deadline_ms: Some(-3),
        }));
        s
    }

    #[test]
    fn state_survives_a_round_trip_and_garbage_is_an_error() {
        for s in [WorkflowState::new("order", 42), full_state(), whole_state()] {
            let bytes = encode(&s);
            assert_eq!(decode(&bytes).unwrap(), s);
            let head = summary(&bytes).unwrap();
            assert_eq!((head.workflow_type.as_ref(), head.started_at_ms, head.decision), ("order", 42, s.decision));
        }
        assert!(matches!(decode(b""), Err(CodecError::Empty)));
        assert!(matches!(decode(b"\x09abc"), Err(CodecError::UnknownVersion(9))));
        assert!(matches!(decode(b"\x01{"), Err(CodecError::Corrupt(_))));
        assert!(matches!(decode(b"\x02\x00"), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn versions_2_and_3_are_still_read() {
        let mut s = full_state();
        s.definition = None;
        let mut v2 = encode(&s);
        v2[0] = FORMAT_V2_BINARY;
        assert_eq!(decode(&v2).unwrap(), s);
        assert_eq!(summary(&v2).unwrap().own_deadline_ms, None);
        // Version 3's layout is version 4's with the definition whole.
        let mut v3 = encode(&whole_state());
        v3[0] = FORMAT_V3_DEFINED;
        assert_eq!(decode(&v3).unwrap(), whole_state());
        assert_eq!(summary(&v3).unwrap().own_deadline_ms, Some(-3));
        let mut mislabelled = v3.clone();
        mislabelled[0] = FORMAT_V2_BINARY;
        assert!(decode(&mislabelled).is_err(), "a version 2 record has no definition");
        let mut by_id = encode(&full_state());
        by_id[0] = FORMAT_V3_DEFINED;
        assert!(decode(&by_id).is_err(), "a version 3 record has no definition ID");
    }

    #[test]
    fn a_definition_record_survives_a_round_trip_and_garbage_is_an_error() {
        let d = Definition { steps: vec!["payment".into(), "é".into()], quorum: 1, deadline_ms: None };
        let bytes = encode_definition(&d);
        assert_eq!(decode_definition(&bytes).unwrap(), d);
        for n in 0..bytes.len() {
            assert!(decode_definition(&bytes[..n]).is_err(), "a record cut at {n} bytes is an error");
        }
        assert!(matches!(decode_definition(b"\x07"), Err(CodecError::UnknownVersion(7))));
        assert!(decode_definition(&[bytes.as_slice(), b"x"].concat()).is_err());
    }

    #[test]
    fn version_1_json_is_still_read() {
        let s = full_state();
        let mut v1 = vec![FORMAT_V1_JSON];
        serde_json::to_writer(&mut v1, &s).unwrap();
        assert_eq!(decode(&v1).unwrap(), s);
        assert_eq!(summary(&v1).unwrap().decision, s.decision);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_an_error_or_a_state_never_a_panic() {
        for bytes in [encode(&full_state()), encode(&whole_state())] {
            for n in 0..bytes.len() {
                assert!(decode(&bytes[..n]).is_err(), "a record cut at {n} bytes is an error");
            }
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut b = bytes.clone();
                    b[i] ^= 1 << bit;
                    let _ = decode(&b);
                    let _ = summary(&b);
                }
            }
        }
    }
}
