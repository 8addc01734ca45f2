//! The outcome record: what junction publishes when a workflow's join
//! condition decides, its JSON form, and its deterministic ID.

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::event::format_time;

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

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an outcome record always serializes")
    }
}

impl Serialize for OutcomeRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Steps<'a>(&'a [StepView]);
        impl Serialize for Steps<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(self.0.len()))?;
                for step in self.0 {
                    map.serialize_entry(&step.step, &StepJson(step))?;
                }
                map.end()
            }
        }
        struct StepJson<'a>(&'a StepView);
        impl Serialize for StepJson<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(3))?;
                map.serialize_entry("status", self.0.status)?;
                map.serialize_entry("occurred_at", &format_time(self.0.occurred_at_ms))?;
                map.serialize_entry("payload", &self.0.payload)?;
                map.end()
            }
        }
        let mut map = s.serialize_map(Some(10))?;
        map.serialize_entry("workflow_id", &self.workflow_id)?;
        map.serialize_entry("workflow_type", &self.workflow_type)?;
        map.serialize_entry("outcome", self.outcome.as_str())?;
        map.serialize_entry("steps", &Steps(&self.steps))?;
        map.serialize_entry("failed_steps", &self.failed_steps)?;
        map.serialize_entry("missing", &self.missing)?;
        map.serialize_entry("compensate", &self.compensate)?;
        map.serialize_entry("started_at", &format_time(self.started_at_ms))?;
        map.serialize_entry("finished_at", &format_time(self.finished_at_ms))?;
        map.serialize_entry("duration_ms", &(self.finished_at_ms - self.started_at_ms).max(0))?;
        map.end()
    }
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
}
