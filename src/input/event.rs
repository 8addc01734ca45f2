//! Decoding a step event from an input record, or saying exactly why it is
//! bad input. Decoding borrows from the record: the workflow ID, event ID and
//! payload point into the consumer's buffer unless JSON escapes force a copy.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{Config, Field, Mapping, WorkflowSpec};
use crate::input::{mapped, scan};
use crate::names::{Reason, MAX_EVENT_ID_BYTES, MAX_WORKFLOW_ID_BYTES};
use crate::time::{format_time, parse_time};

/// A step's reported status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Succeeded,
    Failed,
    Compensated,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Compensated => "compensated",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "succeeded" => Some(Status::Succeeded),
            "failed" => Some(Status::Failed),
            "compensated" => Some(Status::Compensated),
            _ => None,
        }
    }
}

/// A valid step event.
#[derive(Debug, Clone)]
pub struct StepEvent<'a> {
    pub workflow_id: Cow<'a, str>,
    /// Its workflow type, as far as the configuration tells it.
    pub workflow: TypeRef<'a>,
    /// The step it names. Whether the workflow has it is for its state to
    /// say: one that started with a step removed since still takes it.
    pub step: Cow<'a, str>,
    pub status: Status,
    pub event_id: Option<Cow<'a, str>>,
    pub occurred_at_ms: i64,
    pub payload: Option<&'a RawValue>,
}

impl StepEvent<'_> {
    /// A copy that owns its text: for a record kept past its consumer's
    /// buffer, and joined later without decoding it again.
    pub fn to_owned_event(&self) -> OwnedStepEvent {
        let event_id = self.event_id.as_deref();
        let mut text = String::with_capacity(self.workflow_id.len() + self.step.len() + event_id.map_or(0, str::len));
        text.push_str(&self.workflow_id);
        text.push_str(&self.step);
        text.push_str(event_id.unwrap_or_default());
        let workflow = match &self.workflow {
            TypeRef::Configured(i) => OwnedType::Configured(*i),
            TypeRef::Unresolved { named, error } => {
                OwnedType::Unresolved(Box::new((named.as_ref().map(|n| n.to_string()), error.clone())))
            }
        };
        OwnedStepEvent {
            text: text.into_boxed_str(),
            step_at: self.workflow_id.len() as u32,
            event_id_at: event_id.map(|_| (self.workflow_id.len() + self.step.len()) as u32),
            workflow,
            status: self.status,
            occurred_at_ms: self.occurred_at_ms,
            payload: self.payload.map(RawValue::to_owned),
        }
    }
}

/// A [`StepEvent`] that owns its text ([`StepEvent::to_owned_event`]),
/// in one allocation (and the payload's), not one per field: a record held
/// for its marker costs the stream thread less, and the memory it is
/// bounded by is spent on more records.
#[derive(Debug, Clone)]
pub struct OwnedStepEvent {
    /// The workflow ID, the step and the event ID, one after the other.
    text: Box<str>,
    step_at: u32,
    event_id_at: Option<u32>,
    workflow: OwnedType,
    status: Status,
    occurred_at_ms: i64,
    payload: Option<Box<RawValue>>,
}

/// A [`TypeRef`] owned; the rare unresolved one boxed, to keep it small.
#[derive(Debug, Clone)]
enum OwnedType {
    Configured(usize),
    Unresolved(Box<(Option<String>, BadInput)>),
}

impl OwnedStepEvent {
    pub fn as_event(&self) -> StepEvent<'_> {
        let step_at = self.step_at as usize;
        let step_end = self.event_id_at.map_or(self.text.len(), |at| at as usize);
        StepEvent {
            workflow_id: Cow::Borrowed(&self.text[..step_at]),
            workflow: match &self.workflow {
                OwnedType::Configured(i) => TypeRef::Configured(*i),
                OwnedType::Unresolved(unresolved) => {
                    let (named, error) = &**unresolved;
                    TypeRef::Unresolved { named: named.as_deref().map(Cow::Borrowed), error: error.clone() }
                }
            },
            step: Cow::Borrowed(&self.text[step_at..step_end]),
            status: self.status,
            event_id: self.event_id_at.map(|at| Cow::Borrowed(&self.text[at as usize..])),
            occurred_at_ms: self.occurred_at_ms,
            payload: self.payload.as_deref(),
        }
    }

    /// About how many bytes it takes beside itself: its text, its payload
    /// and their allocations.
    pub fn heap_bytes(&self) -> usize {
        16 + self.text.len() + self.payload.as_ref().map_or(0, |p| 16 + p.get().len())
    }
}

/// An event's workflow type, as the configuration tells it.
#[derive(Debug, Clone)]
pub enum TypeRef<'a> {
    /// A configured type (index into `Config::workflows`), or the only one
    /// when the event names none.
    Configured(usize),
    /// A type that is not configured (`named`), or none named while several
    /// are. Bad input (`error`), unless the workflow's state gives its type:
    /// a workflow keeps its type when the type is removed, and an event that
    /// names none when a second type is added still finds its workflow.
    Unresolved { named: Option<Cow<'a, str>>, error: BadInput },
}

/// Why a record is bad input: the stable reason and a human explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadInput {
    pub reason: Reason,
    pub detail: String,
    /// The workflow ID, when the record gave one before the fault: the dead
    /// letter is keyed by it.
    pub workflow_id: Option<String>,
}

impl BadInput {
    pub fn new(reason: Reason, detail: impl Into<String>) -> BadInput {
        BadInput { reason, detail: detail.into(), workflow_id: None }
    }
}

/// The fields of an event as serde_json reads them, each kept raw so that
/// a wrong one can be named: the slow path, for what [`scan`] is unsure of.
#[derive(Deserialize)]
struct SerdeFields<'a> {
    #[serde(borrow, default)]
    workflow_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    workflow_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    step: Option<&'a RawValue>,
    #[serde(borrow, default)]
    status: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    occurred_at: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// A JSON string that borrows from the input when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// Decodes one input record's value: in junction's own format, or, for a
/// topic with a `mapping`, in that topic's format. `record_timestamp_ms`
/// stands in for a missing `occurred_at`. The fields are checked in this
/// order, so that a record with several faults always gets the same reason.
/// The record's key plays no part: it only routes (see [`crate::runtime`]).
pub fn decode<'a>(
    config: &Config,
    mapping: Option<&Mapping>,
    value: Option<&'a [u8]>,
    record_timestamp_ms: i64,
) -> Result<StepEvent<'a>, BadInput> {
    let fields = match mapping {
        None => object_fields(config, value)?,
        Some(m) => mapped::fields(m, sized_value(config, value)?)?,
    };
    let names = Names { mapping };
    let workflow_id = workflow_id(&names, fields.workflow_id)?;
    let with_id = |mut bad: BadInput| {
        bad.workflow_id = Some(workflow_id.to_string());
        bad
    };
    let workflow = match mapping.and_then(|m| m.workflow_type.as_ref()) {
        Some(Field::Fixed(name)) => type_ref(config, &names, Some(Cow::Owned(name.clone()))),
        _ => type_ref(config, &names, optional_text(fields.workflow_type, &names, "workflow_type").map_err(with_id)?),
    };
    let workflow = match workflow {
        TypeRef::Unresolved { named, error } => TypeRef::Unresolved { named, error: with_id(error) },
        known => known,
    };
    let step = match mapping.map(|m| &m.step) {
        Some(Field::Fixed(name)) => Cow::Owned(name.clone()),
        _ => required_text(fields.step, &names, "step").map_err(with_id)?,
    };
    // A mapping's pointer can find an empty string where the step's name should be.
    if step.is_empty() && mapping.is_some() {
        return Err(with_id(BadInput::new(Reason::MissingField, format!("{} is empty", names.of("step")))));
    }
    let status = status(&names, fields.status).map_err(with_id)?;
    let event_id = event_id(&names, fields.event_id).map_err(with_id)?;
    let occurred_at_ms = occurred_at(&names, fields.occurred_at, record_timestamp_ms)
        .and_then(|at| in_range(config, &names, at, record_timestamp_ms))
        .map_err(with_id)?;
    let payload = payload(config, &names, fields.payload).map_err(with_id)?;
    Ok(StepEvent { workflow_id, workflow, step, status, event_id, occurred_at_ms, payload })
}

/// How the messages name each field: `` `step` `` in junction's format, and
/// in a mapped topic the pointer it was looked for at, `` `/kind` (step) ``.
/// A mapped topic also has its own status values, and may give the workflow
/// ID as a number and the time as milliseconds since the epoch.
struct Names<'m> {
    mapping: Option<&'m Mapping>,
}

impl Names<'_> {
    fn of(&self, field: &str) -> String {
        let pointer = self.mapping.and_then(|m| match field {
            "workflow_id" => Some(m.workflow_id.as_str()),
            "workflow_type" => match &m.workflow_type {
                Some(Field::Pointer(p)) => Some(p.as_str()),
                _ => None,
            },
            "step" => match &m.step {
                Field::Pointer(p) => Some(p.as_str()),
                Field::Fixed(_) => None,
            },
            "status" => m.status.as_deref(),
            "event_id" => m.event_id.as_deref(),
            "occurred_at" => m.occurred_at.as_deref(),
            "payload" => m.payload.as_deref(),
            _ => None,
        });
        match pointer {
            Some(p) => format!("`{p}` ({field})"),
            None => format!("`{field}`"),
        }
    }

    fn is_mapped(&self) -> bool {
        self.mapping.is_some()
    }
}

/// The value, once it is known to be there and of a size that may be read.
fn sized_value<'a>(config: &Config, value: Option<&'a [u8]>) -> Result<&'a [u8], BadInput> {
    let value = match value {
        Some(v) if !v.is_empty() => v,
        _ => return Err(BadInput::new(Reason::EmptyValue, "the record has no value")),
    };
    if value.len() > config.kafka.max_event_bytes {
        return Err(BadInput::new(
            Reason::TooLarge,
            format!("the value is {} bytes, more than max_event_bytes ({})", value.len(), config.kafka.max_event_bytes),
        ));
    }
    Ok(value)
}

/// The value's fields, once it is known to be a JSON object of a size that may be read.
fn object_fields<'a>(config: &Config, value: Option<&'a [u8]>) -> Result<scan::Fields<'a>, BadInput> {
    let value = sized_value(config, value)?;
    // serde would read a JSON array into the struct by position: only an object is an event.
    if value.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(value) {
            Ok(_) => BadInput::new(Reason::NotObject, "the value is JSON but not an object"),
            Err(e) => BadInput::new(Reason::NotJson, format!("the value is not valid JSON: {e}")),
        });
    }
    match scan::fields(value) {
        Some(fields) => Ok(fields),
        None => serde_fields(value),
    }
}

/// The workflow ID: a non-empty string (in a mapped topic, a number too) of a bounded size.
fn workflow_id<'a>(names: &Names<'_>, raw: Option<&'a str>) -> Result<Cow<'a, str>, BadInput> {
    let workflow_id = match raw {
        Some(r) if names.is_mapped() && r.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => Cow::Borrowed(r),
        _ => required_text(raw, names, "workflow_id")?,
    };
    if workflow_id.is_empty() {
        return Err(BadInput::new(Reason::InvalidField, format!("{} must not be empty", names.of("workflow_id"))));
    }
    if workflow_id.len() > MAX_WORKFLOW_ID_BYTES {
        return Err(BadInput::new(
            Reason::WorkflowIdTooLong,
            format!("{} is {} bytes, more than {MAX_WORKFLOW_ID_BYTES}", names.of("workflow_id"), workflow_id.len()),
        ));
    }
    Ok(workflow_id)
}

/// The event's workflow type; it may be left out when only one is configured.
fn type_ref<'a>(config: &Config, names: &Names<'_>, named: Option<Cow<'a, str>>) -> TypeRef<'a> {
    match named {
        Some(t) => match config.workflows.iter().position(|w| w.workflow_type == t) {
            Some(i) => TypeRef::Configured(i),
            None => {
                let error =
                    BadInput::new(Reason::UnknownWorkflowType, format!("workflow type {t:?} is not configured"));
                TypeRef::Unresolved { named: Some(t), error }
            }
        },
        None if config.workflows.len() == 1 => TypeRef::Configured(0),
        None => TypeRef::Unresolved {
            named: None,
            error: BadInput::new(
                Reason::MissingField,
                format!("{} is required when more than one workflow type is configured", names.of("workflow_type")),
            ),
        },
    }
}

/// Bad input: `step` is not one of `spec`'s steps.
pub fn unknown_step(spec: &WorkflowSpec, step: &str) -> BadInput {
    BadInput::new(
        Reason::UnknownStep,
        format!("step {step:?} is not one of {:?}'s steps {:?}", spec.workflow_type, spec.steps),
    )
}

fn status(names: &Names<'_>, raw: Option<&str>) -> Result<Status, BadInput> {
    let values = names.mapping.map(|m| &m.status_values).filter(|v| !v.is_empty());
    let text = match (raw, values) {
        // A topic's own values may be numbers or booleans too: matched by their JSON text.
        (Some(r), Some(_)) if !r.starts_with('"') && r != "null" => Some(Cow::Borrowed(r)),
        _ => optional_text(raw, names, "status")?,
    };
    let Some(s) = text else { return Ok(Status::Succeeded) };
    let status = match values {
        Some(values) => values.get(s.as_ref()).and_then(|v| Status::parse(v)).ok_or_else(|| {
            let known: Vec<&str> = values.keys().map(String::as_str).collect();
            BadInput::new(
                Reason::InvalidField,
                format!("{} is {s:?}, which status_values does not map; expected one of {known:?}", names.of("status")),
            )
        })?,
        None => Status::parse(&s).ok_or_else(|| {
            BadInput::new(
                Reason::InvalidField,
                format!("{} is {s:?}; expected \"succeeded\", \"failed\" or \"compensated\"", names.of("status")),
            )
        })?,
    };
    Ok(status)
}

fn event_id<'a>(names: &Names<'_>, raw: Option<&'a str>) -> Result<Option<Cow<'a, str>>, BadInput> {
    let event_id = match raw {
        Some(r) if names.is_mapped() && r.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
            Some(Cow::Borrowed(r))
        }
        _ => optional_text(raw, names, "event_id")?,
    };
    if let Some(id) = event_id.as_ref().filter(|id| id.len() > MAX_EVENT_ID_BYTES) {
        return Err(BadInput::new(
            Reason::InvalidField,
            format!("{} is {} bytes, more than {MAX_EVENT_ID_BYTES}", names.of("event_id"), id.len()),
        ));
    }
    Ok(event_id)
}

/// The event's time: an RFC 3339 time (in a mapped topic, milliseconds
/// since the epoch too), or the record's timestamp when there is none.
fn occurred_at(names: &Names<'_>, raw: Option<&str>, record_timestamp_ms: i64) -> Result<i64, BadInput> {
    if let Some(r) = raw.filter(|r| names.is_mapped() && r.starts_with(|c: char| c == '-' || c.is_ascii_digit())) {
        return r.parse::<i64>().map_err(|_| {
            BadInput::new(
                Reason::InvalidField,
                format!(
                    "{} is {r}; expected an RFC 3339 time or whole milliseconds since 1970",
                    names.of("occurred_at")
                ),
            )
        });
    }
    match optional_text(raw, names, "occurred_at")? {
        None => Ok(record_timestamp_ms),
        Some(t) => parse_time(&t).ok_or_else(|| {
            BadInput::new(
                Reason::InvalidField,
                format!("{} is {t:?}; expected an RFC 3339 time", names.of("occurred_at")),
            )
        }),
    }
}

/// An event time that a deadline can be kept by: not before 1970, and not
/// further ahead of its record's timestamp than `state.max_clock_skew`.
fn in_range(config: &Config, names: &Names<'_>, at_ms: i64, record_timestamp_ms: i64) -> Result<i64, BadInput> {
    if at_ms < 0 {
        return Err(BadInput::new(
            Reason::InvalidField,
            format!("{} is {}, before 1970", names.of("occurred_at"), format_time(at_ms)),
        ));
    }
    let skew_ms = config.state.max_clock_skew.as_millis() as i64;
    if at_ms > record_timestamp_ms.saturating_add(skew_ms) {
        return Err(BadInput::new(
            Reason::ClockSkew,
            format!(
                "{} is {}, more than state.max_clock_skew ({} s) after the record's timestamp {}",
                names.of("occurred_at"),
                format_time(at_ms),
                skew_ms / 1000,
                format_time(record_timestamp_ms)
            ),
        ));
    }
    Ok(at_ms)
}

/// The payload, kept in state and repeated in the outcome: its size is bounded.
fn payload<'a>(config: &Config, names: &Names<'_>, raw: Option<&'a str>) -> Result<Option<&'a RawValue>, BadInput> {
    let Some(p) = raw else { return Ok(None) };
    if p.len() > config.state.max_payload_bytes {
        return Err(BadInput::new(
            Reason::PayloadTooLarge,
            format!(
                "{} is {} bytes, more than state.max_payload_bytes ({})",
                names.of("payload"),
                p.len(),
                config.state.max_payload_bytes
            ),
        ));
    }
    serde_json::from_str::<&RawValue>(p)
        .map(Some)
        .map_err(|e| BadInput::new(Reason::NotJson, format!("{} is not valid JSON: {e}", names.of("payload"))))
}

/// The fields of an event, read by serde_json: the same as [`scan::fields`]
/// finds, or the error that says what is wrong.
fn serde_fields(value: &[u8]) -> Result<scan::Fields<'_>, BadInput> {
    let f: SerdeFields<'_> = serde_json::from_slice(value).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            BadInput::new(Reason::NotObject, format!("the value is not a JSON object: {e}"))
        }
        _ => BadInput::new(Reason::NotJson, format!("the value is not valid JSON: {e}")),
    })?;
    Ok(scan::Fields {
        workflow_id: f.workflow_id.map(RawValue::get),
        workflow_type: f.workflow_type.map(RawValue::get),
        step: f.step.map(RawValue::get),
        status: f.status.map(RawValue::get),
        event_id: f.event_id.map(RawValue::get),
        occurred_at: f.occurred_at.map(RawValue::get),
        payload: f.payload.map(RawValue::get),
    })
}

/// A field's text, from its raw JSON. (`names` names the field in an
/// error only: nothing is formatted for a good record.)
fn optional_text<'a>(raw: Option<&'a str>, names: &Names<'_>, field: &str) -> Result<Option<Cow<'a, str>>, BadInput> {
    match raw {
        None => Ok(None),
        // A string without escapes is its text between the quotes (the raw value is already valid JSON).
        Some(r) if r.len() >= 2 && r.starts_with('"') && !r.contains('\\') => {
            Ok(Some(Cow::Borrowed(&r[1..r.len() - 1])))
        }
        Some(r) => serde_json::from_str::<Text<'a>>(r)
            .map(|t| Some(t.0))
            .map_err(|_| BadInput::new(Reason::InvalidField, format!("{} must be a string, got {r}", names.of(field)))),
    }
}

fn required_text<'a>(raw: Option<&'a str>, names: &Names<'_>, field: &str) -> Result<Cow<'a, str>, BadInput> {
    optional_text(raw, names, field)?
        .ok_or_else(|| BadInput::new(Reason::MissingField, format!("{} is required", names.of(field))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::time::format_time;
    use proptest::prelude::*;
    use std::path::Path;

    fn config_with(types: &str) -> Config {
        let text = format!(
            "[kafka]\nbootstrap_servers = \"x:1\"\ninput_topic = \"in\"\noutput_topic = \"out\"\ndead_letter_topic = \"dlq\"\n{types}"
        );
        config::parse(Path::new("t.toml"), &text, Vec::new()).unwrap()
    }

    fn two_types() -> Config {
        config_with("[[workflows]]\ntype = \"order\"\nsteps = [\"payment\", \"inventory\"]\n[[workflows]]\ntype = \"signup\"\nsteps = [\"email\"]\n")
    }

    /// A record timestamp after every `occurred_at` of these tests (2027-01-15).
    const LATER: i64 = 1_800_000_000_000;

    /// The fields a join reads, as text, to compare an event with its owned copy.
    fn fields(e: &StepEvent<'_>) -> String {
        let workflow = match &e.workflow {
            TypeRef::Configured(i) => format!("type {i}"),
            TypeRef::Unresolved { named, error } => format!("unresolved {named:?} {error:?}"),
        };
        format!(
            "{} {workflow} {} {:?} {:?} {} {:?}",
            e.workflow_id,
            e.step,
            e.status,
            e.event_id,
            e.occurred_at_ms,
            e.payload.map(RawValue::get)
        )
    }

    #[test]
    fn an_owned_copy_of_an_event_reads_as_the_event() {
        let c = two_types();
        let records = [
            r#"{"workflow_id":"w\"1","workflow_type":"order","step":"pay\u006dent","status":"failed","event_id":"e-1","occurred_at":"2026-12-01T10:00:00Z","payload":{"a":[1,2]}}"#,
            r#"{"workflow_id":"w2","workflow_type":"order","step":"payment","occurred_at":"2026-12-01T10:00:00Z"}"#,
            r#"{"workflow_id":"w3","workflow_type":"gone","step":"","event_id":"","occurred_at":"2026-12-01T10:00:00Z"}"#,
            r#"{"workflow_id":"w4","step":"email","occurred_at":"2026-12-01T10:00:00Z"}"#,
        ];
        for record in records {
            let event = decode(&c, None, Some(record.as_bytes()), LATER).unwrap();
            assert_eq!(fields(&event.to_owned_event().as_event()), fields(&event), "{record}");
        }
        let unresolved = decode(&c, None, Some(records[2].as_bytes()), LATER).unwrap();
        assert!(matches!(unresolved.workflow, TypeRef::Unresolved { .. }), "the third names a type not configured");
        assert!(unresolved.event_id.as_deref() == Some(""), "an empty event ID is kept apart from none");
    }

    #[test]
    fn an_event_time_before_1970_or_too_far_ahead_of_its_record_is_bad_input() {
        let c = two_types();
        let at =
            |t: &str| format!(r#"{{"workflow_id":"w","workflow_type":"order","step":"payment","occurred_at":"{t}"}}"#);
        let record_ms = crate::time::parse_time("2026-12-01T10:00:00Z").unwrap();
        let bad = decode(&c, None, Some(at("1969-12-31T23:59:59Z").as_bytes()), record_ms).unwrap_err();
        assert_eq!(bad.reason, Reason::InvalidField);
        assert!(bad.detail.contains("before 1970"), "{}", bad.detail);
        // Up to state.max_clock_skew (5 minutes by default) ahead is a producer's clock; further is not.
        assert!(decode(&c, None, Some(at("2026-12-01T10:05:00Z").as_bytes()), record_ms).is_ok());
        let bad = decode(&c, None, Some(at("2026-12-01T10:05:00.001Z").as_bytes()), record_ms).unwrap_err();
        assert_eq!(bad.reason, Reason::ClockSkew);
        assert!(bad.detail.contains("state.max_clock_skew (300 s)"), "{}", bad.detail);
        assert_eq!(bad.workflow_id.as_deref(), Some("w"));
        let far = decode(&c, None, Some(at("9999-12-31T23:59:59Z").as_bytes()), record_ms).unwrap_err();
        assert_eq!(far.reason, Reason::ClockSkew, "a time that would push the deadline out of reach");
    }

    /// Why `value` is bad input, as far as decoding tells (a type it
    /// cannot resolve is bad unless the workflow's state gives it).
    fn reason(value: &[u8]) -> Reason {
        match decode(&two_types(), None, Some(value), 0) {
            Err(bad) => bad.reason,
            Ok(StepEvent { workflow: TypeRef::Unresolved { error, .. }, .. }) => error.reason,
            Ok(e) => panic!("{e:?} decoded"),
        }
    }

    const EVENTS: &[&str] = &[
        r#"{"workflow_id":"order-1","workflow_type":"order","step":"inventory","status":"failed","event_id":"e1","occurred_at":"2026-11-22T10:00:00.123+01:00","payload":{"a":[1,-2.5e3,true,null,"x\"y"]}}"#,
        r#" { "workflow_id" : "w\u00e9" , "step" : "payment" , "extra" : {"k":[[],{}]} , "payload" : "p" } "#,
        r#"{"workflow_id":"w","step":"email","status":null,"payload":null,"occurred_at":null}"#,
    ];

    /// Whatever the fast path answers is what serde_json answers.
    fn agrees(value: &[u8]) -> Result<(), TestCaseError> {
        if let Some(fast) = scan::fields(value) {
            let slow = serde_fields(value);
            prop_assert_eq!(Ok(fast), slow, "{}", String::from_utf8_lossy(value));
        }
        Ok(())
    }

    proptest! {
        // Cheap cases, and the near misses that matter are rare: many of them.
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn the_fast_path_agrees_with_serde_json_on_edited_events(
            which in 0..EVENTS.len(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0..3u8, prop::sample::select(
                vec![b'{', b'}', b'[', b']', b':', b',', b'"', b'\\', b' ', b'0', b'1', b'-', b'.', b'e', b'+', b'u', b'n', b't', 0x01, 0xc3, 0xa9, 0xff, b'\n'],
            )), 1..4),
        ) {
            let mut v = EVENTS[which].as_bytes().to_vec();
            for (at, kind, byte) in edits {
                let at = at.index(v.len() + 1);
                match kind {
                    0 => v.insert(at, byte),
                    1 if at < v.len() => { v.remove(at); }
                    _ if at < v.len() => v[at] = byte,
                    _ => v.push(byte),
                }
            }
            agrees(&v)?;
        }

        #[test]
        fn the_fast_path_agrees_with_serde_json_on_near_json(
            members in proptest::collection::vec((prop::sample::select(
                vec!["workflow_id", "step", "payload", "status", "zz"],
            ), near_json()), 0..4),
            trailing in prop::bool::weighted(0.03),
        ) {
            let members: Vec<String> = members.iter().map(|(k, v)| format!(r#""{k}" : {v}"#)).collect();
            let text = format!("{{{}{}}}", members.join(","), if trailing { "," } else { "" });
            agrees(text.as_bytes())?;
        }
    }

    /// JSON values, and values that are nearly JSON (bad numbers, escapes,
    /// literals, trailing commas), nested a few levels.
    fn near_json() -> impl Strategy<Value = String> {
        let literal = |words: &[&'static str]| prop::sample::select(words.to_vec()).prop_map(String::from);
        let leaf = prop_oneof![
            4 => r"-?(0|[1-9][0-9]{0,2})(\.[0-9]{1,2})?([eE][+-]?[0-9]{1,2})?",
            1 => r"-?[0-9]{0,3}(\.[0-9]{0,2})?([eE][+-]?[0-9]{0,2})?",
            4 => r#""([a-z é]|\\[nt"\\/]|\\u[0-9a-fA-F]{4}){0,5}""#,
            1 => r#""([a-z é\x01]|\\[a-z"\\/]|\\u[0-9a-fA-F]{0,4}){0,5}""#,
            4 => literal(&["true", "false", "null"]),
            1 => literal(&["tru", "nul", "f", "nulll"]),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            let comma = || prop::bool::weighted(0.03).prop_map(|t| if t { "," } else { "" });
            prop_oneof![
                (proptest::collection::vec(inner.clone(), 0..4), comma())
                    .prop_map(|(v, c)| format!("[{}{c}]", v.join(","))),
                (proptest::collection::vec((r#""[a-z]{0,2}""#, inner), 0..4), comma()).prop_map(|(v, c)| {
                    let members: Vec<String> = v.iter().map(|(k, x)| format!("{k}:{x}")).collect();
                    format!("{{{}{c}}}", members.join(","))
                }),
            ]
        })
    }

    #[test]
    fn the_fast_path_reads_the_sample_events() {
        for e in EVENTS {
            assert!(scan::fields(e.as_bytes()).is_some(), "{e}");
            agrees(e.as_bytes()).unwrap();
        }
    }

    #[test]
    fn a_full_event_decodes_and_borrows() {
        let c = two_types();
        let v = br#"{"workflow_id":"order-1","workflow_type":"order","step":"inventory","status":"failed","event_id":"e1","occurred_at":"2026-11-22T10:00:00.123+01:00","payload":{"a":1}}"#;
        let e = decode(&c, None, Some(v), LATER).unwrap();
        assert!(matches!(e.workflow_id, Cow::Borrowed("order-1")));
        assert!(matches!(e.workflow, TypeRef::Configured(0)));
        assert_eq!((e.step.as_ref(), e.status), ("inventory", Status::Failed));
        assert_eq!(e.event_id.as_deref(), Some("e1"));
        assert_eq!(format_time(e.occurred_at_ms), "2026-11-22T09:00:00.123Z");
        assert_eq!(e.payload.unwrap().get(), r#"{"a":1}"#);
    }

    #[test]
    fn defaults_apply_for_status_time_and_a_single_type() {
        let c = config_with("[[workflows]]\ntype = \"order\"\nsteps = [\"payment\"]\n");
        let e = decode(&c, None, Some(br#"{"workflow_id":"w","step":"payment"}"#), 1_700_000_000_000).unwrap();
        assert_eq!((e.status, e.occurred_at_ms), (Status::Succeeded, 1_700_000_000_000));
        assert!(matches!(e.workflow, TypeRef::Configured(0)));
        assert!(e.payload.is_none() && e.event_id.is_none());
    }

    #[test]
    fn every_kind_of_bad_input_has_its_reason() {
        assert_eq!(decode(&two_types(), None, None, 0).unwrap_err().reason, Reason::EmptyValue);
        assert_eq!(reason(b"{not json"), Reason::NotJson);
        assert_eq!(reason(b"\xff\xfe"), Reason::NotJson);
        assert_eq!(reason(b"[1,2]"), Reason::NotObject);
        assert_eq!(reason(br#"{"workflow_type":"order","step":"payment"}"#), Reason::MissingField);
        assert_eq!(reason(br#"{"workflow_id":"w","step":"payment"}"#), Reason::MissingField);
        assert_eq!(reason(br#"{"workflow_id":7,"workflow_type":"order","step":"payment"}"#), Reason::InvalidField);
        assert_eq!(reason(br#"{"workflow_id":"","workflow_type":"order","step":"payment"}"#), Reason::InvalidField);
        assert_eq!(
            reason(br#"{"workflow_id":"w","workflow_type":"nope","step":"payment"}"#),
            Reason::UnknownWorkflowType
        );
        // Whether the workflow has the step is for its state to say (see `runtime::task`).
        let step =
            decode(&two_types(), None, Some(br#"{"workflow_id":"w","workflow_type":"order","step":"email"}"#), 0);
        assert_eq!(step.unwrap().step, "email");
        assert_eq!(
            reason(br#"{"workflow_id":"w","workflow_type":"order","step":"payment","status":"done"}"#),
            Reason::InvalidField
        );
        assert_eq!(
            reason(br#"{"workflow_id":"w","workflow_type":"order","step":"payment","occurred_at":"yesterday"}"#),
            Reason::InvalidField
        );
        let long = format!(r#"{{"workflow_id":"{}","workflow_type":"order","step":"payment"}}"#, "x".repeat(257));
        assert_eq!(reason(long.as_bytes()), Reason::WorkflowIdTooLong);
        let long_event_id = format!(
            r#"{{"workflow_id":"w","workflow_type":"order","step":"payment","event_id":"{}"}}"#,
            "e".repeat(257)
        );
        assert_eq!(reason(long_event_id.as_bytes()), Reason::InvalidField);
        let mut c = two_types();
        c.state.max_payload_bytes = 8;
        let payload = br#"{"workflow_id":"w","workflow_type":"order","step":"payment","payload":"123456789"}"#;
        assert_eq!(decode(&c, None, Some(payload), 0).unwrap_err().reason, Reason::PayloadTooLarge);
        let small = br#"{"workflow_id":"w","workflow_type":"order","step":"payment","payload":"123456"}"#;
        assert!(decode(&c, None, Some(small), 0).is_ok(), "a payload within the limit is kept");
        c.kafka.max_event_bytes = 10;
        assert_eq!(decode(&c, None, Some(br#"{"workflow_id":"w"}"#), 0).unwrap_err().reason, Reason::TooLarge);
    }

    fn mapped() -> Config {
        let text = "[kafka]\nbootstrap_servers = \"x:1\"\ninput_topics = [\"cb\"]\noutput_topic = \"out\"\ndead_letter_topic = \"dlq\"\n\
            [kafka.mappings.cb]\nworkflow_id = \"/ref/order\"\nfixed_step = \"payment\"\nstatus = \"/code\"\n\
            status_values = { AUTH = \"succeeded\", REFUSED = \"failed\", \"3\" = \"compensated\" }\nevent_id = \"/psp\"\n\
            occurred_at = \"/at\"\npayload = \"/amount\"\n\
            [[workflows]]\ntype = \"order\"\nsteps = [\"payment\", \"inventory\"]\n";
        config::parse(Path::new("t.toml"), text, Vec::new()).unwrap()
    }

    #[test]
    fn a_mapped_topic_reads_its_own_format() {
        let c = mapped();
        let m = c.kafka.input_topics[0].mapping.as_ref();
        let v =
            br#"{"ref":{"order":"order-9"},"code":"REFUSED","psp":"p-1","at":"2026-11-22T10:00:00Z","amount":{"v":5}}"#;
        let e = decode(&c, m, Some(v), LATER).unwrap();
        assert_eq!(e.workflow_id, "order-9");
        assert!(matches!(e.workflow, TypeRef::Configured(0)));
        assert_eq!(e.status, Status::Failed);
        assert_eq!(e.event_id.as_deref(), Some("p-1"));
        assert_eq!(format_time(e.occurred_at_ms), "2026-11-22T10:00:00.000Z");
        assert_eq!(e.payload.unwrap().get(), r#"{"v":5}"#);
        let numbers = br#"{"ref":{"order":1001},"code":3,"psp":77,"at":1764000000000}"#;
        let e = decode(&c, m, Some(numbers), LATER).unwrap();
        assert_eq!(
            (e.workflow_id.as_ref(), e.status, e.occurred_at_ms),
            ("1001", Status::Compensated, 1_764_000_000_000)
        );
        assert_eq!(e.event_id.as_deref(), Some("77"));
        let defaults = br#"{"ref":{"order":"o"}}"#;
        let e = decode(&c, m, Some(defaults), 7).unwrap();
        assert_eq!((e.status, e.occurred_at_ms, e.event_id), (Status::Succeeded, 7, None));
    }

    #[test]
    fn a_record_the_mapping_cannot_read_names_the_pointer_that_failed() {
        let c = mapped();
        let m = c.kafka.input_topics[0].mapping.as_ref();
        let bad = |v: &[u8]| decode(&c, m, Some(v), 0).unwrap_err();
        let missing = bad(br#"{"order":"o"}"#);
        assert_eq!(missing.reason, Reason::MissingField);
        assert!(missing.detail.contains("`/ref/order` (workflow_id)"), "{}", missing.detail);
        let wrong = bad(br#"{"ref":{"order":["o"]}}"#);
        assert_eq!(wrong.reason, Reason::InvalidField);
        assert!(wrong.detail.contains("`/ref/order`"), "{}", wrong.detail);
        let unmapped = bad(br#"{"ref":{"order":"o"},"code":"PENDING"}"#);
        assert_eq!(unmapped.reason, Reason::InvalidField);
        assert!(
            unmapped.detail.contains("`/code` (status)") && unmapped.detail.contains("PENDING"),
            "{}",
            unmapped.detail
        );
        assert_eq!(unmapped.workflow_id.as_deref(), Some("o"), "the dead letter is keyed by the workflow ID");
        let time = bad(br#"{"ref":{"order":"o"},"at":"soon"}"#);
        assert!(time.detail.contains("`/at` (occurred_at)"), "{}", time.detail);
        assert_eq!(bad(b"not json").reason, Reason::NotJson);
        assert_eq!(decode(&c, m, None, 0).unwrap_err().reason, Reason::EmptyValue);
    }
}
