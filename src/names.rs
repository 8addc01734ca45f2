//! Every name that crosses the process boundary, defined once: topics,
//! headers, dead-letter reason codes and the limits that produce them.

/// The changelog topic that backs up the state stores of one application.
pub fn changelog_topic(application_id: &str) -> String {
    format!("{application_id}-state-changelog")
}

/// The topic that carries records read off their workflow's home partition
/// to it (see [`crate::runtime`]: "Routing").
pub fn repartition_topic(application_id: &str) -> String {
    format!("{application_id}-repartition")
}

/// Header on every outcome record: the outcome kind.
pub const HEADER_OUTCOME: &str = "junction.outcome";
/// Header on every outcome record: the same value on a repeat of the record.
pub const HEADER_OUTCOME_ID: &str = "junction.outcome.id";
/// Dead-letter headers.
pub const HEADER_ERROR: &str = "junction.error";
pub const HEADER_ERROR_DETAIL: &str = "junction.error.detail";
pub const HEADER_SOURCE_TOPIC: &str = "junction.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "junction.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "junction.source.offset";
/// On a tick of a home partition's clock in the repartition topic (see
/// [`crate::route::Forward::tick`]): its timestamp is the wall clock's time.
pub const HEADER_TICK: &str = "junction.tick";
/// On a marker in the repartition topic (see [`crate::route::Forward::marker`]):
/// where its source topic, partition and offset headers say what it covers.
pub const HEADER_MARKER: &str = "junction.marker";
/// On an outcome record published without its steps' payloads, because the
/// output topic refused it for its size: why (see [`crate::kafka::refusals`]).
pub const HEADER_TRUNCATED: &str = "junction.truncated";
/// The `junction.error` of an outcome record that the output topic refused
/// for good, found on the dead-letter topic instead.
pub const REASON_OUTCOME_REFUSED: &str = "outcome_refused";
/// On a dead letter or a forwarded record keyed by the workflow ID: the
/// source record's own key, when it had one.
pub const HEADER_SOURCE_KEY: &str = "junction.source.key";

/// The changelog key of a partition's clock: not UTF-8, so never a workflow ID.
pub const CLOCK_RECORD_KEY: &[u8] = b"\xffjunction.clock";
/// The changelog key of a definition that states refer to is this prefix
/// and its ID (big-endian u64): not UTF-8 either.
pub const DEFINITION_RECORD_PREFIX: &[u8] = b"\xffjunction.definition.";

/// The longest workflow ID accepted, in bytes.
pub const MAX_WORKFLOW_ID_BYTES: usize = 256;
/// The most steps one workflow type may name (a step set is a bitmask).
pub const MAX_STEPS: usize = 64;
/// The longest event ID kept in state, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 256;
/// What an outcome record takes besides its steps' payloads, at most: the
/// fixed fields, and per step its name, status, time and event ID.
pub const OUTCOME_OVERHEAD_BYTES: usize = 4 * 1024;
pub const OUTCOME_STEP_OVERHEAD_BYTES: usize = 1024;

/// Client properties that junction sets itself because its guarantees depend on them.
pub const MANAGED_CLIENT_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "transactional.id",
    "enable.idempotence",
    "partitioner",
    "statistics.interval.ms",
];

/// Why a record went to the dead-letter topic: the stable code in the
/// `junction.error` header (and, later, the `reason` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The record has no value (a tombstone or an empty record).
    EmptyValue,
    /// The value is larger than `kafka.max_event_bytes`.
    TooLarge,
    /// The value is not valid UTF-8 JSON.
    NotJson,
    /// The value is JSON but not an object.
    NotObject,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type or an invalid value.
    InvalidField,
    /// `workflow_type` names no configured workflow type.
    UnknownWorkflowType,
    /// `step` is not one of the workflow type's steps.
    UnknownStep,
    /// `workflow_id` is longer than the limit.
    WorkflowIdTooLong,
    /// `payload` is larger than `state.max_payload_bytes`.
    PayloadTooLarge,
    /// `occurred_at` is later than the record's timestamp by more than `state.max_clock_skew`.
    ClockSkew,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::EmptyValue,
        Reason::TooLarge,
        Reason::NotJson,
        Reason::NotObject,
        Reason::MissingField,
        Reason::InvalidField,
        Reason::UnknownWorkflowType,
        Reason::UnknownStep,
        Reason::WorkflowIdTooLong,
        Reason::PayloadTooLarge,
        Reason::ClockSkew,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::EmptyValue => "empty_value",
            Reason::TooLarge => "too_large",
            Reason::NotJson => "not_json",
            Reason::NotObject => "not_object",
            Reason::MissingField => "missing_field",
            Reason::InvalidField => "invalid_field",
            Reason::UnknownWorkflowType => "unknown_workflow_type",
            Reason::UnknownStep => "unknown_step",
            Reason::WorkflowIdTooLong => "workflow_id_too_long",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::ClockSkew => "clock_skew",
        }
    }
}
