//! How a workflow's state is stored: the same bytes go to the RocksDB store
//! and to the changelog, so that restoring is copying. A leading version byte
//! lets the format change without misreading old records.

use crate::join::WorkflowState;

const FORMAT_V1_JSON: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty state record")]
    Empty,
    #[error("unknown state format version {0}")]
    UnknownVersion(u8),
    #[error("corrupt state record: {0}")]
    Corrupt(#[from] serde_json::Error),
}

pub fn encode(state: &WorkflowState) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT_V1_JSON);
    serde_json::to_writer(&mut out, state).expect("workflow state always serializes");
    out
}

pub fn decode(bytes: &[u8]) -> Result<WorkflowState, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_V1_JSON, rest)) => Ok(serde_json::from_slice(rest)?),
        Some((&v, _)) => Err(CodecError::UnknownVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_round_trip_and_garbage_is_an_error() {
        let mut s = WorkflowState::new("order", 42);
        s.event_ids.push("e\"1".into());
        assert_eq!(decode(&encode(&s)).unwrap(), s);
        assert!(matches!(decode(b""), Err(CodecError::Empty)));
        assert!(matches!(decode(b"\x09abc"), Err(CodecError::UnknownVersion(9))));
        assert!(matches!(decode(b"\x01{"), Err(CodecError::Corrupt(_))));
    }
}
