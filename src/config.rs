//! The configuration: one TOML file, every scalar overridable from the
//! environment, checked as a whole so that `junction validate` can list every
//! mistake at once, each with where it came from, the key and what was expected.
//!
//! Environment overrides are `JUNCTION_<SECTION>_<KEY>` (for example
//! `JUNCTION_KAFKA_BOOTSTRAP_SERVERS`, `JUNCTION_STATE_DIR`), and
//! `JUNCTION_KAFKA_PROPERTY_<NAME>` sets a librdkafka property, with `_`
//! standing for `.` (`JUNCTION_KAFKA_PROPERTY_SASL_PASSWORD` is
//! `sasl.password`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

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
    /// `None`: the ID kept in the state directory (see [`crate::instance`]).
    pub instance_id: Option<String>,
    pub input_topic: String,
    pub output_topic: String,
    pub dead_letter_topic: String,
    pub processing_guarantee: Guarantee,
    pub commit_interval: Duration,
    pub max_event_bytes: usize,
    /// librdkafka properties, passed through unchanged to every client.
    pub properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    pub fn changelog_topic(&self) -> String {
        names::changelog_topic(&self.application_id)
    }
}

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
            .field("input_topic", &self.input_topic)
            .field("output_topic", &self.output_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("processing_guarantee", &self.processing_guarantee)
            .field("commit_interval", &self.commit_interval)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("properties", &properties)
            .finish()
    }
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
    /// The largest step payload kept in state (and repeated in the outcome).
    pub max_payload_bytes: usize,
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

const ENV_PREFIX: &str = "JUNCTION_";
const ENV_PROPERTY_PREFIX: &str = "JUNCTION_KAFKA_PROPERTY_";

/// RocksDB's memory for all stores of a process, by default: 128 MiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 128 << 20;
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 64 << 10;
const MIN_MEMORY_BYTES: u64 = 16 << 20;

/// The scalar keys that the environment may override, as `section.key`.
const OVERRIDABLE: &[&str] = &[
    "kafka.bootstrap_servers",
    "kafka.application_id",
    "kafka.instance_id",
    "kafka.input_topic",
    "kafka.output_topic",
    "kafka.dead_letter_topic",
    "kafka.processing_guarantee",
    "kafka.commit_interval",
    "kafka.max_event_bytes",
    "state.dir",
    "state.retention",
    "state.memory_bytes",
    "state.write_buffer_bytes",
    "state.default_deadline",
    "state.max_payload_bytes",
    "http.listen",
];

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
    let mut reader = Reader { file, table, env_values: BTreeMap::new(), errors: Vec::new() };
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

struct Reader {
    file: Origin,
    table: Table,
    /// `section.key` → the environment variable that set it.
    env_values: BTreeMap<String, String>,
    errors: Vec<ConfigError>,
}

impl Reader {
    fn apply_env(&mut self, env: impl IntoIterator<Item = (String, String)>) {
        // Only a section's prefix makes a variable a setting (and a typo in it an
        // error); other JUNCTION_ variables belong to someone else.
        let sections = ["KAFKA_", "STATE_", "HTTP_"].map(|s| format!("{ENV_PREFIX}{s}"));
        let mut env: Vec<(String, String)> =
            env.into_iter().filter(|(k, _)| sections.iter().any(|s| k.starts_with(s.as_str()))).collect();
        env.sort();
        for (var, value) in env {
            if let Some(name) = var.strip_prefix(ENV_PROPERTY_PREFIX) {
                let property = name.to_ascii_lowercase().replace('_', ".");
                let kafka = section_mut(&mut self.table, "kafka");
                section_mut(kafka, "properties").insert(property.clone(), Value::String(value));
                self.env_values.insert(format!("kafka.properties.{property}"), var);
                continue;
            }
            let key = OVERRIDABLE.iter().find(|k| env_name(k) == var);
            match key {
                Some(key) => {
                    let (section, field) = key.split_once('.').expect("overridable keys are section.key");
                    section_mut(&mut self.table, section).insert(field.to_string(), Value::String(value));
                    self.env_values.insert(key.to_string(), var);
                }
                None => self.errors.push(ConfigError {
                    origin: Origin::Env(var.clone()),
                    key: String::new(),
                    message: format!(
                        "not a junction setting; the environment may set {}, and JUNCTION_KAFKA_PROPERTY_<NAME> for client properties",
                        OVERRIDABLE.iter().map(|k| env_name(k)).collect::<Vec<_>>().join(", ")
                    ),
                }),
            }
        }
    }

    fn origin(&self, key: &str) -> Origin {
        match self.env_values.get(key) {
            Some(var) => Origin::Env(var.clone()),
            None => self.file.clone(),
        }
    }

    fn error(&mut self, key: &str, message: impl Into<String>) {
        let origin = self.origin(key);
        self.errors.push(ConfigError { origin, key: key.to_string(), message: message.into() });
    }

    fn read(&mut self) -> Config {
        let top = std::mem::take(&mut self.table);
        self.unknown_keys("", &top, &["kafka", "state", "http", "workflows"]);
        let kafka = self.section(&top, "kafka");
        let state = self.section(&top, "state");
        let http = self.section(&top, "http");

        self.unknown_keys(
            "kafka",
            &kafka,
            &[
                "bootstrap_servers",
                "application_id",
                "instance_id",
                "input_topic",
                "output_topic",
                "dead_letter_topic",
                "processing_guarantee",
                "commit_interval",
                "max_event_bytes",
                "properties",
            ],
        );
        self.unknown_keys(
            "state",
            &state,
            &["dir", "retention", "memory_bytes", "write_buffer_bytes", "default_deadline", "max_payload_bytes"],
        );
        self.unknown_keys("http", &http, &["listen"]);

        let application_id = self.string(&kafka, "kafka.application_id", Some("junction"));
        self.topic_name("kafka.application_id", &application_id);
        let state_dir = PathBuf::from(self.string(&state, "state.dir", Some("./data")));
        let input_topic = self.string(&kafka, "kafka.input_topic", None);
        let output_topic = self.string(&kafka, "kafka.output_topic", None);
        let dead_letter_topic = self.string(&kafka, "kafka.dead_letter_topic", None);
        for (key, topic) in [
            ("kafka.input_topic", &input_topic),
            ("kafka.output_topic", &output_topic),
            ("kafka.dead_letter_topic", &dead_letter_topic),
        ] {
            self.topic_name(key, topic);
        }
        if !input_topic.is_empty() && (input_topic == output_topic || input_topic == dead_letter_topic) {
            self.error(
                "kafka.input_topic",
                "must differ from output_topic and dead_letter_topic, or junction would read its own records",
            );
        }
        let guarantee = match self.string(&kafka, "kafka.processing_guarantee", Some("at_least_once")).as_str() {
            "at_least_once" => Guarantee::AtLeastOnce,
            "exactly_once" => Guarantee::ExactlyOnce,
            other => {
                self.error(
                    "kafka.processing_guarantee",
                    format!("expected \"at_least_once\" or \"exactly_once\", got {other:?}"),
                );
                Guarantee::AtLeastOnce
            }
        };
        let commit_interval = self.duration(&kafka, "kafka.commit_interval", "100ms");
        if commit_interval.is_zero() {
            self.error("kafka.commit_interval", "expected a duration greater than zero");
        }
        let max_event_bytes = self.integer(&kafka, "kafka.max_event_bytes", 256 * 1024);
        if max_event_bytes == 0 {
            self.error("kafka.max_event_bytes", "expected a positive number of bytes");
        }
        let instance_id = kafka.get("instance_id").map(|_| self.string(&kafka, "kafka.instance_id", None));
        let properties = self.properties(&kafka);
        self.group_protocol_fits(&properties);

        let kafka = KafkaConfig {
            bootstrap_servers: self.string(&kafka, "kafka.bootstrap_servers", None),
            application_id,
            instance_id,
            input_topic,
            output_topic,
            dead_letter_topic,
            processing_guarantee: guarantee,
            commit_interval,
            max_event_bytes: max_event_bytes as usize,
            properties,
        };
        let memory_bytes = self.integer(&state, "state.memory_bytes", DEFAULT_MEMORY_BYTES);
        if memory_bytes < MIN_MEMORY_BYTES {
            self.error("state.memory_bytes", format!("expected at least {MIN_MEMORY_BYTES} bytes (16 MiB)"));
        }
        let write_buffer_bytes = self.integer(&state, "state.write_buffer_bytes", memory_bytes / 4);
        if write_buffer_bytes == 0 || write_buffer_bytes >= memory_bytes {
            self.error(
                "state.write_buffer_bytes",
                format!("expected a positive number of bytes below state.memory_bytes ({memory_bytes})"),
            );
        }
        let default_deadline = self.duration(&state, "state.default_deadline", "7d");
        if default_deadline.is_zero() {
            self.error("state.default_deadline", "expected a duration greater than zero");
        }
        let max_payload_bytes = self.integer(&state, "state.max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES) as usize;
        if max_payload_bytes == 0 {
            self.error("state.max_payload_bytes", "expected a positive number of bytes");
        }
        let state = StateConfig {
            dir: state_dir,
            retention: self.duration(&state, "state.retention", "24h"),
            memory_bytes,
            write_buffer_bytes,
            default_deadline,
            max_payload_bytes,
        };
        let listen = self.string(&http, "http.listen", Some("127.0.0.1:9464"));
        let listen = listen.parse().unwrap_or_else(|_| {
            self.error("http.listen", format!("expected an address such as 127.0.0.1:9464, got {listen:?}"));
            SocketAddr::from(([127, 0, 0, 1], 9464))
        });
        let mut workflows = self.workflows(&top);
        self.outcomes_fit(&workflows, &kafka, state.max_payload_bytes);
        // No workflow lives forever: a type without a deadline gets the default.
        for w in workflows.iter_mut().filter(|w| w.deadline.is_none()) {
            w.deadline = Some(state.default_deadline);
        }
        Config { kafka, state, http: HttpConfig { listen }, workflows }
    }

    /// Under the consumer group protocol of KIP-848 the broker, not the
    /// client, sets the session, the heartbeat and the assignor: librdkafka
    /// refuses these properties then, so they are refused here, at start-up.
    fn group_protocol_fits(&mut self, properties: &BTreeMap<String, String>) {
        if properties.get("group.protocol").map(String::as_str) != Some("consumer") {
            return;
        }
        let broker_side = [
            ("session.timeout.ms", "the broker's group.consumer.session.timeout.ms"),
            ("heartbeat.interval.ms", "the broker's group.consumer.heartbeat.interval.ms"),
            ("partition.assignment.strategy", "group.remote.assignor"),
        ];
        for (name, instead) in broker_side.into_iter().filter(|(name, _)| properties.contains_key(*name)) {
            self.error(
                &format!("kafka.properties.{name}"),
                format!("not supported with \"group.protocol\" = \"consumer\": remove it and use {instead}"),
            );
        }
    }

    /// Every outcome record must fit in what the producer can send: a type's
    /// steps, each with a payload of up to `max_payload_bytes`, bound its size.
    fn outcomes_fit(&mut self, workflows: &[WorkflowSpec], kafka: &KafkaConfig, max_payload_bytes: usize) {
        let limit = crate::kafka::max_record_bytes(kafka);
        for (i, w) in workflows.iter().enumerate() {
            let largest = names::OUTCOME_OVERHEAD_BYTES.saturating_add(
                w.steps.len().saturating_mul(max_payload_bytes.saturating_add(names::OUTCOME_STEP_OVERHEAD_BYTES)),
            );
            if largest > limit {
                self.error(
                    &format!("workflows[{i}].steps"),
                    format!(
                        "{} steps with payloads of up to state.max_payload_bytes ({max_payload_bytes}) make outcome \
                         records of up to {largest} bytes, more than the producer can send ({limit}: \
                         message.max.bytes less 64 KiB); use fewer steps, a smaller state.max_payload_bytes or a \
                         larger kafka.properties.\"message.max.bytes\"",
                        w.steps.len()
                    ),
                );
            }
        }
    }

    fn section(&mut self, top: &Table, name: &str) -> Table {
        match top.get(name) {
            None => Table::new(),
            Some(Value::Table(t)) => t.clone(),
            Some(other) => {
                self.error(name, format!("expected a table [{name}], got {}", other.type_str()));
                Table::new()
            }
        }
    }

    fn unknown_keys(&mut self, section: &str, table: &Table, known: &[&str]) {
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                let full = if section.is_empty() { key.clone() } else { format!("{section}.{key}") };
                self.error(&full, format!("unknown key; expected one of: {}", known.join(", ")));
            }
        }
    }

    fn string(&mut self, table: &Table, key: &str, default: Option<&str>) -> String {
        let field = key.rsplit('.').next().expect("non-empty key");
        match (table.get(field), default) {
            (Some(Value::String(s)), _) => s.clone(),
            (Some(other), _) => {
                self.error(key, format!("expected a string, got {}", other.type_str()));
                String::new()
            }
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                self.error(key, "missing; this setting is required");
                String::new()
            }
        }
    }

    fn integer(&mut self, table: &Table, key: &str, default: u64) -> u64 {
        let field = key.rsplit('.').next().expect("non-empty key");
        match table.get(field) {
            None => default,
            Some(Value::Integer(n)) if *n >= 0 => *n as u64,
            Some(Value::String(s)) if s.trim().parse::<u64>().is_ok() => s.trim().parse().expect("checked"),
            Some(other) => {
                self.error(key, format!("expected a non-negative integer, got {}", describe(other)));
                default
            }
        }
    }

    fn duration(&mut self, table: &Table, key: &str, default: &str) -> Duration {
        self.optional_duration(table, key).flatten().unwrap_or_else(|| parse_duration(default).expect("defaults parse"))
    }

    /// `None` when absent, `Some(None)` when present but wrong (the error is recorded).
    fn optional_duration(&mut self, table: &Table, key: &str) -> Option<Option<Duration>> {
        let field = key.rsplit('.').next().expect("non-empty key");
        let parsed = match table.get(field)? {
            Value::String(s) => parse_duration(s),
            other => Err(format!("expected a duration string such as \"30s\", got {}", describe(other))),
        };
        Some(parsed.map_err(|e| self.error(key, e)).ok())
    }

    fn topic_name(&mut self, key: &str, name: &str) {
        let valid = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name.is_empty() && (!valid || name.len() > 200) {
            self.error(
                key,
                format!("{name:?} is not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 200)"),
            );
        }
    }

    fn properties(&mut self, kafka: &Table) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let table = match kafka.get("properties") {
            None => return out,
            Some(Value::Table(t)) => t,
            Some(other) => {
                self.error(
                    "kafka.properties",
                    format!("expected a table of librdkafka properties, got {}", other.type_str()),
                );
                return out;
            }
        };
        for (name, value) in table {
            let key = format!("kafka.properties.{name}");
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Integer(n) => n.to_string(),
                Value::Boolean(b) => b.to_string(),
                Value::Float(f) => f.to_string(),
                other => {
                    self.error(&key, format!("expected a string, number or boolean, got {}", other.type_str()));
                    continue;
                }
            };
            if names::MANAGED_CLIENT_PROPERTIES.contains(&name.as_str()) {
                self.error(&key, "junction sets this property itself; remove it (see the configuration reference)");
                continue;
            }
            out.insert(name.clone(), text);
        }
        out
    }

    fn workflows(&mut self, top: &Table) -> Vec<WorkflowSpec> {
        let list = match top.get("workflows") {
            None => {
                self.error("workflows", "missing; define at least one [[workflows]] entry");
                return Vec::new();
            }
            Some(Value::Array(a)) => a.clone(),
            Some(other) => {
                self.error("workflows", format!("expected an array of tables [[workflows]], got {}", other.type_str()));
                return Vec::new();
            }
        };
        if list.is_empty() {
            self.error("workflows", "empty; define at least one [[workflows]] entry");
        }
        let mut seen = HashSet::new();
        let mut specs = Vec::new();
        for (i, entry) in list.iter().enumerate() {
            let at = format!("workflows[{i}]");
            let Value::Table(t) = entry else {
                self.error(&at, format!("expected a table, got {}", entry.type_str()));
                continue;
            };
            self.unknown_keys(&at, t, &["type", "steps", "quorum", "deadline"]);
            let workflow_type = self.string(t, &format!("{at}.type"), None);
            if !workflow_type.is_empty() && !seen.insert(workflow_type.clone()) {
                self.error(&format!("{at}.type"), format!("workflow type {workflow_type:?} is defined twice"));
            }
            let steps = self.steps(t, &at);
            let quorum = match t.get("quorum") {
                None => steps.len(),
                Some(Value::Integer(q)) if *q >= 1 && (*q as usize) <= steps.len().max(1) => *q as usize,
                Some(other) => {
                    self.error(
                        &format!("{at}.quorum"),
                        format!(
                            "expected an integer from 1 to the number of steps ({}), got {}",
                            steps.len(),
                            describe(other)
                        ),
                    );
                    steps.len()
                }
            };
            let deadline = self.optional_duration(t, &format!("{at}.deadline")).flatten();
            if deadline.is_some_and(|d| d.is_zero()) {
                self.error(&format!("{at}.deadline"), "expected a duration greater than zero");
            }
            specs.push(WorkflowSpec { workflow_type, steps, quorum, deadline });
        }
        specs
    }

    fn steps(&mut self, t: &Table, at: &str) -> Vec<String> {
        let key = format!("{at}.steps");
        let Some(Value::Array(items)) = t.get("steps") else {
            self.error(&key, "expected a non-empty array of step names, such as [\"payment\", \"inventory\"]");
            return Vec::new();
        };
        let mut steps = Vec::new();
        for item in items {
            match item {
                Value::String(s) if !s.is_empty() && !steps.contains(s) => steps.push(s.clone()),
                Value::String(s) if s.is_empty() => self.error(&key, "step names must not be empty"),
                Value::String(s) => self.error(&key, format!("step {s:?} is listed twice")),
                other => self.error(&key, format!("expected step names as strings, got {}", describe(other))),
            }
        }
        if items.is_empty() {
            self.error(&key, "expected at least one step");
        }
        if steps.len() > names::MAX_STEPS {
            self.error(&key, format!("at most {} steps per workflow type", names::MAX_STEPS));
        }
        steps
    }
}

fn section_mut<'a>(table: &'a mut Table, name: &str) -> &'a mut Table {
    let entry = table.entry(name.to_string()).or_insert_with(|| Value::Table(Table::new()));
    if !entry.is_table() {
        // The file's own type error is reported when the section is read.
        *entry = Value::Table(Table::new());
    }
    entry.as_table_mut().expect("just made a table")
}

fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Integer(n) => n.to_string(),
        other => other.type_str().to_string(),
    }
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
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "10.0.0.1:9092");
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
    fn a_missing_required_key_and_an_unknown_key_are_errors() {
        let text = MINIMAL.replace("input_topic = \"steps\"\n", "input_topik = \"steps\"\n");
        let shown = parse_with(&text, &[]).unwrap_err().to_string();
        assert!(shown.contains("`kafka.input_topik`: unknown key"), "{shown}");
        assert!(shown.contains("`kafka.input_topic`: missing; this setting is required"), "{shown}");
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
    fn managed_client_properties_are_refused() {
        let text = MINIMAL.to_string() + "\n[kafka.properties]\n\"enable.auto.commit\" = true\n";
        let shown = parse_with(&text, &[]).unwrap_err().to_string();
        assert!(shown.contains("kafka.properties.enable.auto.commit"), "{shown}");
    }
}
