//! The outcome record: what junction publishes when a workflow's join
//! condition decides, its JSON form, and its deterministic ID.

use std::io::Write as _;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::time::write_time;

/// The decisions junction publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    Failed,
    TimedOut,
    Compensated,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Completed, Outcome::Failed, Outcome::TimedOut, Outcome::Compensated];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Compensated => "compensated",
        }
    }
}

/// A step's JSON payload, kept as the producer wrote it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Payload(pub Box<RawValue>);

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Payload {
    pub fn from_raw(raw: &RawValue) -> Payload {
        Payload(raw.to_owned())
    }
}

/// One step as the outcome record shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepView {
    pub step: String,
    pub status: &'static str,
    pub occurred_at_ms: i64,
    pub payload: Option<Payload>,
}

/// One outcome record, ready to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeRecord {
    pub workflow_id: String,
    pub workflow_type: String,
    pub outcome: Outcome,
    pub steps: Vec<StepView>,
    pub failed_steps: Vec<String>,
    pub missing: Vec<String>,
    pub compensate: Vec<String>,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
}

impl OutcomeRecord {
    /// The `junction.outcome.id` header: the same for every repeat of this
    /// record. A workflow has at most one record per outcome, and the start time
    /// tells a workflow apart from a later one that reuses its ID after purge.
    pub fn id(&self) -> String {
        format!("{}:{}:{}", self.workflow_id, self.outcome.as_str(), self.started_at_ms)
    }

    /// About how many bytes the record takes, in memory or as JSON.
    pub fn approx_bytes(&self) -> usize {
        let steps: usize =
            self.steps.iter().map(|s| 96 + s.step.len() + s.payload.as_ref().map_or(4, |p| p.0.get().len())).sum();
        256 + self.workflow_id.len() + self.workflow_type.len() + steps
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        self.write_json(&mut out);
        out
    }

    /// Appends the record's JSON to `out`. Written by hand rather than
    /// through serde, which took a tenth of the stream thread's time;
    /// strings are escaped exactly as serde_json escapes them.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write_json_with(out, true);
    }

    /// The record's JSON, with every step's payload, or (`payloads` false)
    /// each as `null`: what is published when the output topic refuses the
    /// record for its size.
    pub fn write_json_with(&self, out: &mut Vec<u8>, payloads: bool) {
        out.extend_from_slice(b"{\"workflow_id\":");
        json_string(out, &self.workflow_id);
        out.extend_from_slice(b",\"workflow_type\":");
        json_string(out, &self.workflow_type);
        out.extend_from_slice(b",\"outcome\":\"");
        out.extend_from_slice(self.outcome.as_str().as_bytes());
        out.extend_from_slice(b"\",\"steps\":{");
        for (i, step) in self.steps.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_string(out, &step.step);
            out.extend_from_slice(b":{\"status\":\"");
            out.extend_from_slice(step.status.as_bytes());
            out.extend_from_slice(b"\",\"occurred_at\":\"");
            write_time(out, step.occurred_at_ms);
            out.extend_from_slice(b"\",\"payload\":");
            match &step.payload {
                // Kept as the producer wrote it, as serde_json writes a raw value.
                Some(p) if payloads => out.extend_from_slice(p.0.get().as_bytes()),
                _ => out.extend_from_slice(b"null"),
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"},\"failed_steps\":");
        json_strings(out, &self.failed_steps);
        out.extend_from_slice(b",\"missing\":");
        json_strings(out, &self.missing);
        out.extend_from_slice(b",\"compensate\":");
        json_strings(out, &self.compensate);
        out.extend_from_slice(b",\"started_at\":\"");
        write_time(out, self.started_at_ms);
        out.extend_from_slice(b"\",\"finished_at\":\"");
        write_time(out, self.finished_at_ms);
        out.extend_from_slice(b"\",\"duration_ms\":");
        let _ = write!(out, "{}", (self.finished_at_ms - self.started_at_ms).max(0));
        out.push(b'}');
    }
}

fn json_strings(out: &mut Vec<u8>, items: &[String]) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_string(out, item);
    }
    out.push(b']');
}

/// A JSON string, escaped as serde_json escapes it: `"` and `\`, and the
/// control characters (the usual short forms, else `\u00xx`).
fn json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0x00..=0x1f => 0,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if short == 0 {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_has_the_documented_shape() {
        let r = OutcomeRecord {
            workflow_id: "order-1001".into(),
            workflow_type: "order".into(),
            outcome: Outcome::Failed,
            steps: vec![
                StepView {
                    step: "payment".into(),
                    status: "succeeded",
                    occurred_at_ms: 1_763_805_600_123,
                    payload: Some(Payload(RawValue::from_string(r#"{"amount":42}"#.into()).unwrap())),
                },
                StepView {
                    step: "inventory".into(),
                    status: "failed",
                    occurred_at_ms: 1_763_805_600_200,
                    payload: None,
                },
            ],
            failed_steps: vec!["inventory".into()],
            missing: vec!["fraud_check".into()],
            compensate: vec!["payment".into()],
            started_at_ms: 1_763_805_600_123,
            finished_at_ms: 1_763_805_600_200,
        };
        let json = String::from_utf8(r.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"workflow_id":"order-1001","workflow_type":"order","outcome":"failed","steps":{"payment":{"status":"succeeded","occurred_at":"2025-11-22T10:00:00.123Z","payload":{"amount":42}},"inventory":{"status":"failed","occurred_at":"2025-11-22T10:00:00.200Z","payload":null}},"failed_steps":["inventory"],"missing":["fraud_check"],"compensate":["payment"],"started_at":"2025-11-22T10:00:00.123Z","finished_at":"2025-11-22T10:00:00.200Z","duration_ms":77}"#
        );
        assert_eq!(r.id(), "order-1001:failed:1763805600123");
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let awkward = "a\"b\\c/d\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}é\u{2028}😀 end";
        let mut out = Vec::new();
        json_string(&mut out, awkward);
        assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(awkward).unwrap());
        let r = OutcomeRecord {
            workflow_id: awkward.into(),
            workflow_type: "t\"".into(),
            outcome: Outcome::TimedOut,
            steps: vec![StepView { step: "s\n".into(), status: "missing", occurred_at_ms: 0, payload: None }],
            failed_steps: vec![],
            missing: vec!["s\n".into(), "x".into()],
            compensate: vec![],
            started_at_ms: 10,
            finished_at_ms: 5,
        };
        let value: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(value["workflow_id"], awkward);
        assert_eq!(value["steps"]["s\n"]["payload"], serde_json::Value::Null);
        assert_eq!(value["missing"], serde_json::json!(["s\n", "x"]));
        assert_eq!(value["duration_ms"], 0);
    }
}
