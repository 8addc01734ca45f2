//! Environment overrides: `JUNCTION_<SECTION>_<KEY>` for every scalar
//! setting, and `JUNCTION_KAFKA_PROPERTY_<NAME>` for a client property.

use toml::{Table, Value};

use super::read::Reader;
use super::{ConfigError, Origin};

const ENV_PREFIX: &str = "JUNCTION_";
const ENV_PROPERTY_PREFIX: &str = "JUNCTION_KAFKA_PROPERTY_";

/// The scalar keys that the environment may override, as `section.key`.
const OVERRIDABLE: &[&str] = &[
    "kafka.bootstrap_servers",
    "kafka.application_id",
    "kafka.instance_id",
    "kafka.input_topic",
    "kafka.input_topics",
    "kafka.home_partitions",
    "kafka.output_topic",
    "kafka.dead_letter_topic",
    "kafka.processing_guarantee",
    "kafka.commit_interval",
    "kafka.max_event_bytes",
    "kafka.static_membership",
    "state.dir",
    "state.retention",
    "state.memory_bytes",
    "state.write_buffer_bytes",
    "state.default_deadline",
    "state.grace",
    "state.max_clock_skew",
    "state.max_payload_bytes",
    "state.max_pending_bytes",
    "http.listen",
];

impl Reader {
    /// Writes the overrides into the table read from the file, and remembers
    /// which variable set each key, for the errors.
    pub(super) fn apply_env(&mut self, env: impl IntoIterator<Item = (String, String)>) {
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
                    let table = section_mut(&mut self.table, section);
                    // The one input topic or the list: the variable replaces either.
                    match *key {
                        "kafka.input_topic" => table.remove("input_topics"),
                        "kafka.input_topics" => table.remove("input_topic"),
                        _ => None,
                    };
                    table.insert(field.to_string(), Value::String(value));
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
