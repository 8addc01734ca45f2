//! The reader of a configuration table: one method per section, and the
//! typed getters that record an error (origin, key, expectation) instead
//! of stopping at the first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use super::{
    parse_duration, Config, ConfigError, Guarantee, HttpConfig, InputTopic, KafkaConfig, Origin, StateConfig,
    DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_PENDING_BYTES, DEFAULT_MEMORY_BYTES, MIN_MEMORY_BYTES, MIN_PENDING_BYTES,
};
use crate::names;

/// The most partitions junction's own topics may have.
const MAX_HOME_PARTITIONS: u64 = 10_000;

pub(super) struct Reader {
    pub(super) file: Origin,
    pub(super) table: Table,
    /// `section.key` → the environment variable that set it.
    pub(super) env_values: BTreeMap<String, String>,
    pub(super) errors: Vec<ConfigError>,
}

impl Reader {
    pub(super) fn new(file: Origin, table: Table) -> Reader {
        Reader { file, table, env_values: BTreeMap::new(), errors: Vec::new() }
    }

    fn origin(&self, key: &str) -> Origin {
        match self.env_values.get(key) {
            Some(var) => Origin::Env(var.clone()),
            None => self.file.clone(),
        }
    }

    pub(super) fn error(&mut self, key: &str, message: impl Into<String>) {
        let origin = self.origin(key);
        self.errors.push(ConfigError { origin, key: key.to_string(), message: message.into() });
    }

    /// Reads every section, recording every error on the way.
    pub(super) fn read(&mut self) -> Config {
        let top = std::mem::take(&mut self.table);
        self.unknown_keys("", &top, &["kafka", "state", "http", "workflows"]);
        let kafka = self.section(&top, "kafka");
        let state = self.section(&top, "state");
        let http = self.section(&top, "http");
        let kafka = self.kafka(&kafka);
        let state = self.state(&state);
        let http = self.http(&http);
        if state.grace < kafka.commit_interval {
            self.error(
                "state.grace",
                format!(
                    "expected at least kafka.commit_interval ({:?}): what another instance forwards to a \
                     partition becomes readable at its commit, up to an interval late, and must not be late \
                     for its deadline",
                    kafka.commit_interval
                ),
            );
        }
        let mut workflows = self.workflows(&top);
        self.outcomes_fit(&workflows, &kafka, state.max_payload_bytes);
        self.mappings_fit(&kafka, &workflows);
        // No workflow lives forever: a type without a deadline gets the default.
        for w in workflows.iter_mut().filter(|w| w.deadline.is_none()) {
            w.deadline = Some(state.default_deadline);
        }
        Config { kafka, state, http, workflows }
    }

    fn kafka(&mut self, kafka: &Table) -> KafkaConfig {
        self.unknown_keys(
            "kafka",
            kafka,
            &[
                "bootstrap_servers",
                "application_id",
                "instance_id",
                "input_topic",
                "input_topics",
                "mappings",
                "home_partitions",
                "output_topic",
                "dead_letter_topic",
                "processing_guarantee",
                "commit_interval",
                "max_event_bytes",
                "static_membership",
                "properties",
            ],
        );
        let application_id = self.string(kafka, "kafka.application_id", Some("junction"));
        self.topic_name("kafka.application_id", &application_id);
        let (input_topics, output_topic, dead_letter_topic) = self.topics(kafka, &application_id);
        let home_partitions = kafka.get("home_partitions").map(|_| self.integer(kafka, "kafka.home_partitions", 1));
        if home_partitions.is_some_and(|n| n == 0 || n > MAX_HOME_PARTITIONS) {
            self.error("kafka.home_partitions", format!("expected a partition count from 1 to {MAX_HOME_PARTITIONS}"));
        }
        let guarantee = match self.string(kafka, "kafka.processing_guarantee", Some("at_least_once")).as_str() {
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
        let commit_interval = self.duration(kafka, "kafka.commit_interval", "100ms");
        if commit_interval.is_zero() {
            self.error("kafka.commit_interval", "expected a duration greater than zero");
        }
        let max_event_bytes = self.integer(kafka, "kafka.max_event_bytes", 256 * 1024);
        if max_event_bytes == 0 {
            self.error("kafka.max_event_bytes", "expected a positive number of bytes");
        }
        let instance_id = kafka.get("instance_id").map(|_| self.string(kafka, "kafka.instance_id", None));
        let static_membership = self.boolean(kafka, "kafka.static_membership", true);
        let properties = self.properties(kafka);
        self.group_protocol_fits(&properties);
        self.read_properties_are_numbers(&properties);
        KafkaConfig {
            bootstrap_servers: self.string(kafka, "kafka.bootstrap_servers", None),
            application_id,
            instance_id,
            input_topics,
            home_partitions: home_partitions.map(|n| n as usize),
            output_topic,
            dead_letter_topic,
            processing_guarantee: guarantee,
            commit_interval,
            max_event_bytes: max_event_bytes as usize,
            static_membership,
            properties,
        }
    }

    /// The input topics (`input_topics`, or the one `input_topic`) with
    /// their mappings, and the output and dead-letter topics: valid names,
    /// and no topic junction writes among the inputs.
    fn topics(&mut self, kafka: &Table, application_id: &str) -> (Vec<InputTopic>, String, String) {
        let names = self.input_topic_names(kafka);
        let output_topic = self.string(kafka, "kafka.output_topic", None);
        let dead_letter_topic = self.string(kafka, "kafka.dead_letter_topic", None);
        for (key, topic) in [("kafka.output_topic", &output_topic), ("kafka.dead_letter_topic", &dead_letter_topic)] {
            self.topic_name(key, topic);
        }
        let own = [
            output_topic.clone(),
            dead_letter_topic.clone(),
            names::changelog_topic(application_id),
            names::repartition_topic(application_id),
        ];
        for (key, name) in &names {
            self.topic_name(key, name);
            if !name.is_empty() && own.contains(name) {
                self.error(
                    key,
                    format!(
                        "{name:?} is a topic junction writes (output, dead letters, changelog or repartition); \
                         an input must be another, or junction would read its own records"
                    ),
                );
            }
        }
        let mut mappings = self.mappings(kafka);
        let topics = names.into_iter().map(|(_, name)| InputTopic { mapping: mappings.remove(&name), name }).collect();
        for topic in mappings.into_keys() {
            self.error(
                &format!("kafka.mappings.{topic}"),
                "a mapping for a topic that is not an input topic; add it to kafka.input_topics or remove the mapping",
            );
        }
        (topics, output_topic, dead_letter_topic)
    }

    /// The input topics' names, each with the key that named it: one of
    /// `input_topic` or `input_topics` (a list, or a comma-separated string,
    /// as the environment sets it).
    fn input_topic_names(&mut self, kafka: &Table) -> Vec<(String, String)> {
        let names = match (kafka.get("input_topic"), kafka.get("input_topics")) {
            (Some(_), Some(_)) => {
                self.error("kafka.input_topics", "set input_topic or input_topics, not both");
                return Vec::new();
            }
            (None, None) => {
                self.error("kafka.input_topics", "missing; name the topics step events are read from");
                return Vec::new();
            }
            (Some(_), None) => vec![("kafka.input_topic".to_string(), self.string(kafka, "kafka.input_topic", None))],
            (None, Some(Value::String(list))) => list
                .split(',')
                .enumerate()
                .map(|(i, n)| (format!("kafka.input_topics[{i}]"), n.trim().to_string()))
                .collect(),
            (None, Some(Value::Array(items))) => {
                let mut names = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(n) => names.push((format!("kafka.input_topics[{i}]"), n.clone())),
                        other => self.error(
                            &format!("kafka.input_topics[{i}]"),
                            format!("expected a topic name, got {}", describe(other)),
                        ),
                    }
                }
                names
            }
            (None, Some(other)) => {
                self.error("kafka.input_topics", format!("expected a list of topic names, got {}", describe(other)));
                return Vec::new();
            }
        };
        if names.is_empty() {
            self.error("kafka.input_topics", "expected at least one topic");
        }
        let mut seen = std::collections::HashSet::new();
        for (key, name) in &names {
            if name.is_empty() {
                self.error(key, "expected a topic name, got an empty string");
            } else if !seen.insert(name.clone()) {
                self.error(key, format!("{name:?} is listed twice"));
            }
        }
        names
    }

    fn state(&mut self, state: &Table) -> StateConfig {
        self.unknown_keys(
            "state",
            state,
            &[
                "dir",
                "retention",
                "memory_bytes",
                "write_buffer_bytes",
                "default_deadline",
                "grace",
                "max_clock_skew",
                "max_payload_bytes",
                "max_pending_bytes",
            ],
        );
        let state_dir = PathBuf::from(self.string(state, "state.dir", Some("./data")));
        let memory_bytes = self.integer(state, "state.memory_bytes", DEFAULT_MEMORY_BYTES);
        if memory_bytes < MIN_MEMORY_BYTES {
            self.error("state.memory_bytes", format!("expected at least {MIN_MEMORY_BYTES} bytes (16 MiB)"));
        }
        let write_buffer_bytes = self.integer(state, "state.write_buffer_bytes", memory_bytes / 4);
        if write_buffer_bytes == 0 || write_buffer_bytes >= memory_bytes {
            self.error(
                "state.write_buffer_bytes",
                format!("expected a positive number of bytes below state.memory_bytes ({memory_bytes})"),
            );
        }
        let default_deadline = self.duration(state, "state.default_deadline", "7d");
        if default_deadline.is_zero() {
            self.error("state.default_deadline", "expected a duration greater than zero");
        }
        let max_payload_bytes = self.integer(state, "state.max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES) as usize;
        if max_payload_bytes == 0 {
            self.error("state.max_payload_bytes", "expected a positive number of bytes");
        }
        let max_pending_bytes = self.integer(state, "state.max_pending_bytes", DEFAULT_MAX_PENDING_BYTES);
        if max_pending_bytes < MIN_PENDING_BYTES {
            self.error("state.max_pending_bytes", format!("expected at least {MIN_PENDING_BYTES} bytes (1 MiB)"));
        }
        StateConfig {
            dir: state_dir,
            max_pending_bytes,
            retention: self.duration(state, "state.retention", "24h"),
            memory_bytes,
            write_buffer_bytes,
            default_deadline,
            grace: self.duration(state, "state.grace", "1s"),
            max_clock_skew: self.duration(state, "state.max_clock_skew", "5m"),
            max_payload_bytes,
        }
    }

    fn http(&mut self, http: &Table) -> HttpConfig {
        self.unknown_keys("http", http, &["listen"]);
        let listen = self.string(http, "http.listen", Some("127.0.0.1:9464"));
        let listen = listen.parse().unwrap_or_else(|_| {
            self.error("http.listen", format!("expected an address such as 127.0.0.1:9464, got {listen:?}"));
            SocketAddr::from(([127, 0, 0, 1], 9464))
        });
        HttpConfig { listen }
    }

    pub(super) fn section(&mut self, top: &Table, name: &str) -> Table {
        match top.get(name) {
            None => Table::new(),
            Some(Value::Table(t)) => t.clone(),
            Some(other) => {
                self.error(name, format!("expected a table [{name}], got {}", other.type_str()));
                Table::new()
            }
        }
    }

    pub(super) fn unknown_keys(&mut self, section: &str, table: &Table, known: &[&str]) {
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                let full = if section.is_empty() { key.clone() } else { format!("{section}.{key}") };
                self.error(&full, format!("unknown key; expected one of: {}", known.join(", ")));
            }
        }
    }

    pub(super) fn string(&mut self, table: &Table, key: &str, default: Option<&str>) -> String {
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

    pub(super) fn integer(&mut self, table: &Table, key: &str, default: u64) -> u64 {
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

    pub(super) fn boolean(&mut self, table: &Table, key: &str, default: bool) -> bool {
        let field = key.rsplit('.').next().expect("non-empty key");
        match table.get(field) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(Value::String(s)) if matches!(s.trim(), "true" | "false") => s.trim() == "true",
            Some(other) => {
                self.error(key, format!("expected true or false, got {}", describe(other)));
                default
            }
        }
    }

    pub(super) fn duration(&mut self, table: &Table, key: &str, default: &str) -> Duration {
        self.optional_duration(table, key).flatten().unwrap_or_else(|| parse_duration(default).expect("defaults parse"))
    }

    /// `None` when absent, `Some(None)` when present but wrong (the error is recorded).
    pub(super) fn optional_duration(&mut self, table: &Table, key: &str) -> Option<Option<Duration>> {
        let field = key.rsplit('.').next().expect("non-empty key");
        let parsed = match table.get(field)? {
            Value::String(s) => parse_duration(s),
            other => Err(format!("expected a duration string such as \"30s\", got {}", describe(other))),
        };
        Some(parsed.map_err(|e| self.error(key, e)).ok())
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
}

pub(super) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Integer(n) => n.to_string(),
        other => other.type_str().to_string(),
    }
}
