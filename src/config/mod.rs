//! The configuration: one TOML file, every scalar overridable from the
//! environment, checked as a whole so that `junction validate` can list every
//! mistake at once, each with where it came from, the key and what was expected.
//!
//! Environment overrides are `JUNCTION_<SECTION>_<KEY>` (for example
//! `JUNCTION_KAFKA_BOOTSTRAP_SERVERS`, `JUNCTION_STATE_DIR`), and
//! `JUNCTION_KAFKA_PROPERTY_<NAME>` sets a librdkafka property, with `_`
//! standing for `.` (`JUNCTION_KAFKA_PROPERTY_SASL_PASSWORD` is
//! `sasl.password`).

mod env;
mod mapping;
mod read;
mod validate;
mod workflows;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Table;

use crate::names;

/// How outcomes, changelog records and input offsets are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    AtLeastOnce,
    ExactlyOnce,
}

impl Guarantee {
    pub fn as_str(self) -> &'static str {
        match self {
            Guarantee::AtLeastOnce => "at_least_once",
            Guarantee::ExactlyOnce => "exactly_once",
        }
    }
}

#[derive(Clone)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub application_id: String,
    /// Distinguishes this instance's transactional producer from its peers'.
    /// `None`: the ID kept in the state directory (see [`crate::runtime::instance`]).
    pub instance_id: Option<String>,
    /// The topics step events are read from (`input_topics`, or the one `input_topic`).
    pub input_topics: Vec<InputTopic>,
    /// The partition count of junction's own topics (the changelog and the
    /// repartition topic) when it creates them: `None`, the largest input
    /// topic's. Kept from then on (see "Routing" in the README).
    pub home_partitions: Option<usize>,
    pub output_topic: String,
    pub dead_letter_topic: String,
    pub processing_guarantee: Guarantee,
    pub commit_interval: Duration,
    pub max_event_bytes: usize,
    /// Whether the instance is a static member of its group
    /// (`group.instance.id`, from its instance ID): see
    /// [`crate::kafka::clients::group_instance_id`].
    pub static_membership: bool,
    /// librdkafka properties, passed through unchanged to every client.
    pub properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    pub fn changelog_topic(&self) -> String {
        names::changelog_topic(&self.application_id)
    }

    pub fn repartition_topic(&self) -> String {
        names::repartition_topic(&self.application_id)
    }

    /// The input topic named `name`, with its mapping.
    pub fn input(&self, name: &str) -> Option<&InputTopic> {
        self.input_topics.iter().find(|t| t.name == name)
    }

    /// The largest key or value junction copies into a dead letter: the
    /// producer's `message.max.bytes` (librdkafka's default 1,000,000) less
    /// room for the headers. (A value that is not a number is refused when
    /// the configuration is read.)
    pub fn max_record_bytes(&self) -> usize {
        let max = self.properties.get("message.max.bytes").and_then(|v| v.parse::<usize>().ok());
        max.unwrap_or(DEFAULT_MESSAGE_MAX_BYTES).saturating_sub(64 * 1024)
    }

    /// How often the input topics are checked for new partitions:
    /// librdkafka's `topic.metadata.refresh.interval.ms`, 5 minutes unless
    /// set; `None` when it is negative (librdkafka then never refreshes).
    pub fn metadata_refresh_interval(&self) -> Option<Duration> {
        let ms = self.properties.get("topic.metadata.refresh.interval.ms").and_then(|v| v.trim().parse::<i64>().ok());
        let ms = ms.unwrap_or(DEFAULT_METADATA_REFRESH_MS);
        u64::try_from(ms).ok().map(Duration::from_millis)
    }
}

/// librdkafka's default `topic.metadata.refresh.interval.ms`.
const DEFAULT_METADATA_REFRESH_MS: i64 = 300_000;

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Whether a client property holds a secret (a password, a private key, a
/// token), which must never be printed.
pub fn is_secret_property(name: &str) -> bool {
    ["password", "secret", "jaas", "key.pem", "token", "credentials"].iter().any(|s| name.contains(s))
}

/// Printing a configuration never prints a secret: such properties show as `[redacted]`.
impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret_property(k) { "[redacted]" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("application_id", &self.application_id)
            .field("instance_id", &self.instance_id)
            .field("input_topics", &self.input_topics)
            .field("home_partitions", &self.home_partitions)
            .field("output_topic", &self.output_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("processing_guarantee", &self.processing_guarantee)
            .field("commit_interval", &self.commit_interval)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("static_membership", &self.static_membership)
            .field("properties", &properties)
            .finish()
    }
}

/// One input topic, and how its records read as step events.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTopic {
    pub name: String,
    /// `None`: records are step events in junction's own format.
    pub mapping: Option<Mapping>,
}

/// Where a topic's own JSON format keeps each field of a step event:
/// JSON pointers (RFC 6901), or a value fixed for the whole topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub workflow_id: String,
    /// `None`: the one configured workflow type.
    pub workflow_type: Option<Field>,
    pub step: Field,
    /// `None`: every record reports `succeeded`.
    pub status: Option<String>,
    /// The topic's status values, and the status each stands for; empty:
    /// the values are junction's own (`succeeded`, `failed`, `compensated`).
    pub status_values: BTreeMap<String, String>,
    pub event_id: Option<String>,
    /// `None`: the record's timestamp.
    pub occurred_at: Option<String>,
    pub payload: Option<String>,
}

/// A mapped field: read at a JSON pointer, or the same for every record.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Pointer(String),
    Fixed(String),
}

#[derive(Debug, Clone)]
pub struct StateConfig {
    pub dir: PathBuf,
    pub retention: Duration,
    /// RocksDB's block cache and memtables together, for all stores of the process.
    pub memory_bytes: u64,
    /// The part of `memory_bytes` that memtables may take.
    pub write_buffer_bytes: u64,
    /// The deadline of a workflow type that sets none, so that no workflow waits forever.
    pub default_deadline: Duration,
    /// How far a home partition's clock stays behind the latest time it
    /// knows (see [`crate::runtime::task`]): the lateness a record may have.
    pub grace: Duration,
    /// How far ahead of its record's timestamp an `occurred_at` may be.
    pub max_clock_skew: Duration,
    /// The largest step payload kept in state (and repeated in the outcome).
    pub max_payload_bytes: usize,
    /// How much the states and records waiting for a commit may take
    /// before processing pauses (see [`crate::runtime::backpressure`]).
    pub max_pending_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

/// One workflow type and its join condition.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowSpec {
    pub workflow_type: String,
    pub steps: Vec<String>,
    pub quorum: usize,
    pub deadline: Option<Duration>,
}

impl WorkflowSpec {
    pub fn step_index(&self, step: &str) -> Option<usize> {
        self.steps.iter().position(|s| s == step)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub state: StateConfig,
    pub http: HttpConfig,
    pub workflows: Vec<WorkflowSpec>,
}

impl Config {
    pub fn workflow(&self, workflow_type: &str) -> Option<&WorkflowSpec> {
        self.workflows.iter().find(|w| w.workflow_type == workflow_type)
    }
}

/// Where a value came from, so that an error can send the user to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: Origin,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: `{}`: {}", self.origin, self.key, self.message)
        }
    }
}

/// Every problem found, in file order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} configuration error{}:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// RocksDB's memory for all stores of a process, by default: 128 MiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 128 << 20;
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 64 << 10;
/// What waits for a commit, by default: 64 MiB.
pub const DEFAULT_MAX_PENDING_BYTES: u64 = 64 << 20;
const MIN_PENDING_BYTES: u64 = 1 << 20;
const MIN_MEMORY_BYTES: u64 = 16 << 20;

/// Reads, overrides from the process environment, and checks a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            origin: Origin::File(path.to_path_buf()),
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse(path, &text, std::env::vars())
}

/// Parses configuration text; `env` supplies the overrides (the process
/// environment in production, a fixed list in tests).
pub fn parse(path: &Path, text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigErrors> {
    let file = Origin::File(path.to_path_buf());
    let table: Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigError {
                origin: file,
                key: String::new(),
                message: format!("not valid TOML: {}", e.to_string().trim()),
            }]))
        }
    };
    let mut reader = read::Reader::new(file, table);
    reader.apply_env(env);
    let config = reader.read();
    if reader.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(reader.errors))
    }
}

/// Parses a duration written `100ms`, `30s`, `15m`, `24h` or `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 =
        digits.parse().map_err(|_| format!("expected a duration such as 100ms, 30s, 15m, 24h, got {text:?}"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("expected a duration such as 100ms, 30s, 15m, 24h, got {text:?}")),
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("duration {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
input_topic = "steps"
output_topic = "outcomes"
dead_letter_topic = "dead"

[[workflows]]
type = "order"
steps = ["payment", "inventory", "fraud_check"]
deadline = "15m"
"#;

    fn parse_with(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        parse(Path::new("junction.toml"), text, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn a_type_without_a_deadline_gets_the_default_deadline() {
        let without = MINIMAL.replace("deadline = \"15m\"\n", "");
        let c = parse_with(&without, &[]).unwrap();
        assert_eq!(c.workflows[0].deadline, Some(Duration::from_secs(7 * 86_400)));
        let c = parse_with(&without, &[("JUNCTION_STATE_DEFAULT_DEADLINE", "2s")]).unwrap();
        assert_eq!(c.workflows[0].deadline, Some(Duration::from_secs(2)));
        let c = parse_with(MINIMAL, &[("JUNCTION_STATE_DEFAULT_DEADLINE", "2s")]).unwrap();
        assert_eq!(c.workflows[0].deadline, Some(Duration::from_secs(900)), "a type's own deadline wins");
        let zero = parse_with(&without, &[("JUNCTION_STATE_DEFAULT_DEADLINE", "0s")]).unwrap_err();
        assert!(zero.to_string().contains("state.default_deadline"), "{zero}");
    }

    #[test]
    fn the_steps_of_a_type_and_the_payload_limit_must_fit_an_outcome_record() {
        let steps: Vec<String> = (0..64).map(|i| format!("\"s{i}\"")).collect();
        let many = MINIMAL.replace(r#"["payment", "inventory", "fraud_check"]"#, &format!("[{}]", steps.join(", ")));
        let e = parse_with(&many, &[]).unwrap_err().to_string();
        assert!(e.contains("workflows[0].steps") && e.contains("state.max_payload_bytes (65536)"), "{e}");
        let c = parse_with(&many, &[("JUNCTION_STATE_MAX_PAYLOAD_BYTES", "8192")]).unwrap();
        assert_eq!(c.state.max_payload_bytes, 8192);
        let c = parse_with(&many, &[("JUNCTION_KAFKA_PROPERTY_MESSAGE_MAX_BYTES", "8000000")]);
        assert!(c.is_ok(), "a larger producer limit makes room: {:?}", c.err().map(|e| e.to_string()));
        let zero = parse_with(MINIMAL, &[("JUNCTION_STATE_MAX_PAYLOAD_BYTES", "0")]).unwrap_err().to_string();
        assert!(zero.contains("state.max_payload_bytes"), "{zero}");
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let c = parse_with(MINIMAL, &[]).unwrap();
        assert_eq!(c.kafka.processing_guarantee, Guarantee::AtLeastOnce);
        assert_eq!(c.kafka.commit_interval, Duration::from_millis(100));
        assert_eq!(c.kafka.max_event_bytes, 256 * 1024);
        assert_eq!(c.state.retention, Duration::from_secs(86_400));
        assert_eq!((c.state.memory_bytes, c.state.write_buffer_bytes), (128 << 20, 32 << 20));
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.workflows[0].quorum, 3);
        assert_eq!(c.workflows[0].deadline, Some(Duration::from_secs(900)));
        assert_eq!(c.state.default_deadline, Duration::from_secs(7 * 86_400));
        assert_eq!(c.kafka.changelog_topic(), "junction-state-changelog");
    }

    #[test]
    fn the_environment_overrides_the_file_and_sets_client_properties() {
        let c = parse_with(
            MINIMAL,
            &[
                ("JUNCTION_KAFKA_BOOTSTRAP_SERVERS", "10.0.0.1:9092"),
                ("JUNCTION_KAFKA_PROPERTY_SASL_PASSWORD", "s3cret"),
                ("JUNCTION_STATE_MAX_PENDING_BYTES", "134217728"),
                ("JUNCTION_KAFKA_STATIC_MEMBERSHIP", "false"),
            ],
        )
        .unwrap();
        assert!(!c.kafka.static_membership);
        assert_eq!(c.kafka.bootstrap_servers, "10.0.0.1:9092");
        assert_eq!(c.state.max_pending_bytes, 128 << 20);
        assert_eq!(c.kafka.properties.get("sasl.password").map(String::as_str), Some("s3cret"));
        let printed = format!("{c:?}");
        assert!(!printed.contains("s3cret") && printed.contains("[redacted]"), "{printed}");
    }

    #[test]
    fn only_section_variables_are_settings_and_a_typo_in_one_is_an_error() {
        assert!(parse_with(MINIMAL, &[("JUNCTION_CACHE", "/tmp")]).is_ok());
        let shown = parse_with(MINIMAL, &[("JUNCTION_KAFKA_BOOTSTRAP_SERVER", "x:1")]).unwrap_err().to_string();
        assert!(
            shown.contains("environment variable JUNCTION_KAFKA_BOOTSTRAP_SERVER: not a junction setting"),
            "{shown}"
        );
    }

    #[test]
    fn every_error_is_listed_with_its_origin_key_and_expectation() {
        let text =
            MINIMAL.replace("deadline = \"15m\"", "deadline = \"soon\"\nquorum = 7") + "\n[state]\nretention = 5\n";
        let errors = parse_with(&text, &[("JUNCTION_KAFKA_COMMIT_INTERVAL", "fast")]).unwrap_err().0;
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            shown
                .iter()
                .any(|e| e.starts_with("environment variable JUNCTION_KAFKA_COMMIT_INTERVAL: `kafka.commit_interval`")),
            "{shown:?}"
        );
        assert!(
            shown.iter().any(|e| e.starts_with("junction.toml: `state.retention`: expected a duration")),
            "{shown:?}"
        );
        assert!(shown.iter().any(|e| e.contains("`workflows[0].deadline`")), "{shown:?}");
        assert!(
            shown
                .iter()
                .any(|e| e
                    .contains("`workflows[0].quorum`: expected an integer from 1 to the number of steps (3), got 7")),
            "{shown:?}"
        );
        assert_eq!(errors.len(), 4, "{shown:?}");
    }

    #[test]
    fn a_grace_shorter_than_the_commit_interval_is_an_error() {
        let text = MINIMAL.to_string() + "\n[state]\ngrace = \"50ms\"\n";
        let shown = parse_with(&text, &[]).unwrap_err().to_string();
        assert!(shown.contains("`state.grace`: expected at least kafka.commit_interval (100ms)"), "{shown}");
        assert!(parse_with(&(MINIMAL.to_string() + "\n[state]\ngrace = \"100ms\"\n"), &[]).is_ok());
    }

    #[test]
    fn a_missing_required_key_and_an_unknown_key_are_errors() {
        let text = MINIMAL.replace("input_topic = \"steps\"\n", "input_topik = \"steps\"\n");
        let shown = parse_with(&text, &[]).unwrap_err().to_string();
        assert!(shown.contains("`kafka.input_topik`: unknown key"), "{shown}");
        assert!(shown.contains("`kafka.input_topics`: missing; name the topics"), "{shown}");
    }

    #[test]
    fn several_input_topics_each_with_its_own_format() {
        let text = MINIMAL.replace("input_topic = \"steps\"\n", "input_topics = [\"steps\", \"psp.callbacks\"]\n")
            + r#"
[kafka.mappings."psp.callbacks"]
workflow_id = "/merchant/reference"
fixed_step = "payment"
status = "/code"
status_values = { AUTH = "succeeded", REFUSED = "failed" }
occurred_at = "/at"
payload = ""
"#;
        let c = parse_with(&text, &[]).unwrap();
        assert_eq!(c.kafka.input_topics.len(), 2);
        assert_eq!(c.kafka.input_topics[0], InputTopic { name: "steps".into(), mapping: None });
        let m = c.kafka.input("psp.callbacks").and_then(|t| t.mapping.as_ref()).unwrap();
        assert_eq!(m.workflow_id, "/merchant/reference");
        assert_eq!(m.step, Field::Fixed("payment".into()));
        assert_eq!(m.status_values.get("REFUSED").map(String::as_str), Some("failed"));
        assert_eq!(m.payload.as_deref(), Some(""));
        let c = parse_with(MINIMAL, &[("JUNCTION_KAFKA_INPUT_TOPICS", "a, b")]).unwrap();
        let names: Vec<&str> = c.kafka.input_topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "the environment replaces input_topic with a list");
        assert_eq!(c.kafka.repartition_topic(), "junction-repartition");
    }

    #[test]
    fn bad_mappings_name_the_key_and_what_was_expected() {
        let text = MINIMAL.replace(
            "input_topic = \"steps\"\n",
            "input_topics = [\"steps\", \"cb\", \"outcomes\"]\nhome_partitions = 0\n",
        ) + r#"
[kafka.mappings.cb]
workflow_id = "merchant"
step = "/kind"
fixed_step = "payment"
status_values = { AUTH = "done" }
color = "/c"

[kafka.mappings.other]
workflow_id = "/id"
fixed_step = "refund"
"#;
        let errors = parse_with(&text, &[]).unwrap_err().to_string();
        for expected in [
            "`kafka.input_topics[2]`: \"outcomes\" is a topic junction writes",
            "`kafka.home_partitions`: expected a partition count from 1",
            "`kafka.mappings.cb.color`: unknown key",
            "`kafka.mappings.cb.workflow_id`: \"merchant\" is not a JSON pointer",
            "`kafka.mappings.cb.fixed_step`: set step (a JSON pointer) or fixed_step, not both",
            "`kafka.mappings.cb.status_values.AUTH`: expected \"succeeded\", \"failed\" or \"compensated\", got \"done\"",
            "`kafka.mappings.cb.status_values`: status_values without status",
            "`kafka.mappings.other`: a mapping for a topic that is not an input topic",
        ] {
            assert!(errors.contains(expected), "missing {expected:?} in:\n{errors}");
        }
        let unknown_step = MINIMAL.replace("input_topic = \"steps\"\n", "input_topics = [\"cb\"]\n")
            + "\n[kafka.mappings.cb]\nworkflow_id = \"/id\"\nfixed_step = \"refund\"\n";
        let errors = parse_with(&unknown_step, &[]).unwrap_err().to_string();
        assert!(
            errors.contains("`kafka.mappings.cb.fixed_step`: step \"refund\" is not a step of \"order\""),
            "{errors}"
        );
        let both = MINIMAL.replace("input_topic = \"steps\"\n", "input_topic = \"a\"\ninput_topics = [\"b\"]\n");
        assert!(parse_with(&both, &[]).unwrap_err().to_string().contains("set input_topic or input_topics, not both"));
    }

    #[test]
    fn durations_read_as_documented() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn the_consumer_group_protocol_refuses_what_its_broker_sets() {
        let text = MINIMAL.to_string()
            + "\n[kafka.properties]\n\"group.protocol\" = \"consumer\"\n\"session.timeout.ms\" = \"6000\"\n";
        let shown = parse_with(&text, &[]).unwrap_err().to_string();
        assert!(shown.contains("kafka.properties.session.timeout.ms"), "{shown}");
        assert!(shown.contains("group.consumer.session.timeout.ms"), "{shown}");
        let classic = MINIMAL.to_string() + "\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n";
        assert!(parse_with(&classic, &[]).is_ok());
    }

    #[test]
    fn a_message_max_bytes_that_is_not_a_number_is_refused() {
        let shown =
            parse_with(MINIMAL, &[("JUNCTION_KAFKA_PROPERTY_MESSAGE_MAX_BYTES", "2MB")]).unwrap_err().to_string();
        assert!(
            shown.contains(
                "environment variable JUNCTION_KAFKA_PROPERTY_MESSAGE_MAX_BYTES: `kafka.properties.message.max.bytes`: \
                 expected a number of bytes, got \"2MB\""
            ),
            "{shown}"
        );
        let c = parse_with(MINIMAL, &[("JUNCTION_KAFKA_PROPERTY_MESSAGE_MAX_BYTES", "2000000")]).unwrap();
        assert_eq!(c.kafka.max_record_bytes(), 2_000_000 - 64 * 1024);
    }

    #[test]
    fn a_metadata_refresh_interval_that_is_not_a_number_is_refused() {
        let text = MINIMAL.to_string() + "\n[kafka.properties]\n\"topic.metadata.refresh.interval.ms\" = \"5s\"\n";
        let shown = parse_with(&text, &[]).unwrap_err().to_string();
        assert!(
            shown.contains(
                "`kafka.properties.topic.metadata.refresh.interval.ms`: expected a number of milliseconds, got \"5s\""
            ),
            "{shown}"
        );
        assert_eq!(parse_with(MINIMAL, &[]).unwrap().kafka.metadata_refresh_interval(), Some(Duration::from_secs(300)));
        let never = MINIMAL.to_string() + "\n[kafka.properties]\n\"topic.metadata.refresh.interval.ms\" = \"-1\"\n";
        assert_eq!(parse_with(&never, &[]).unwrap().kafka.metadata_refresh_interval(), None);
    }

    #[test]
    fn managed_client_properties_are_refused() {
        for name in ["enable.auto.commit", "statistics.interval.ms"] {
            let text = MINIMAL.to_string() + &format!("\n[kafka.properties]\n\"{name}\" = 1\n");
            let shown = parse_with(&text, &[]).unwrap_err().to_string();
            assert!(shown.contains(&format!("kafka.properties.{name}")), "{shown}");
            assert!(shown.contains("junction sets this property itself"), "{shown}");
        }
    }
}
