//! `[kafka.mappings.<topic>]`: how an input topic that publishes its own
//! JSON format reads as step events. Each field is a JSON pointer (RFC
//! 6901) into the record's value, or, for the step and the workflow type, a
//! value fixed for the whole topic:
//!
//! ```toml
//! [kafka.mappings.psp-callbacks]
//! workflow_id = "/merchant_reference"
//! fixed_step = "payment"
//! status = "/event_code"
//! status_values = { AUTHORISED = "succeeded", REFUSED = "failed", REFUNDED = "compensated" }
//! event_id = "/psp_reference"
//! occurred_at = "/event_date"
//! payload = "/amount"
//! ```

use std::collections::BTreeMap;

use toml::{Table, Value};

use super::read::{describe, Reader};
use super::{Field, KafkaConfig, Mapping, WorkflowSpec};

const KEYS: &[&str] = &[
    "workflow_id",
    "workflow_type",
    "fixed_workflow_type",
    "step",
    "fixed_step",
    "status",
    "status_values",
    "event_id",
    "occurred_at",
    "payload",
];

/// The statuses a topic's own values may stand for.
const STATUSES: &[&str] = &["succeeded", "failed", "compensated"];

impl Reader {
    /// Every `[kafka.mappings.<topic>]`, by topic.
    pub(super) fn mappings(&mut self, kafka: &Table) -> BTreeMap<String, Mapping> {
        let mut out = BTreeMap::new();
        let tables = match kafka.get("mappings") {
            None => return out,
            Some(Value::Table(t)) => t,
            Some(other) => {
                self.error(
                    "kafka.mappings",
                    format!("expected tables [kafka.mappings.<topic>], got {}", other.type_str()),
                );
                return out;
            }
        };
        for (topic, table) in tables {
            let at = format!("kafka.mappings.{topic}");
            let Value::Table(t) = table else {
                self.error(&at, format!("expected a table of JSON pointers, got {}", table.type_str()));
                continue;
            };
            if let Some(mapping) = self.mapping(&at, t) {
                out.insert(topic.clone(), mapping);
            }
        }
        out
    }

    fn mapping(&mut self, at: &str, t: &Table) -> Option<Mapping> {
        self.unknown_keys(at, t, KEYS);
        let workflow_id = self.pointer(t, at, "workflow_id");
        if workflow_id.is_none() && !t.contains_key("workflow_id") {
            self.error(
                &format!("{at}.workflow_id"),
                "missing; the JSON pointer to the workflow ID, such as \"/order/id\"",
            );
        }
        let workflow_type = self.field(t, at, "workflow_type", false);
        let step = self.field(t, at, "step", true);
        let status_values = self.status_values(t, at);
        let status = self.pointer(t, at, "status");
        if !t.contains_key("status") && t.contains_key("status_values") {
            self.error(&format!("{at}.status_values"), "status_values without status: set the pointer to the status");
        }
        // A wrong pointer is recorded already: the rest is still checked.
        Some(Mapping {
            workflow_id: workflow_id.unwrap_or_default(),
            workflow_type,
            step: step?,
            status,
            status_values,
            event_id: self.pointer(t, at, "event_id"),
            occurred_at: self.pointer(t, at, "occurred_at"),
            payload: self.pointer(t, at, "payload"),
        })
    }

    /// A field read at a pointer (`key`) or fixed (`fixed_<key>`): one of
    /// the two, and `required` says whether neither is an error.
    fn field(&mut self, t: &Table, at: &str, key: &str, required: bool) -> Option<Field> {
        let fixed_key = format!("fixed_{key}");
        let pointer = self.pointer(t, at, key);
        let fixed = t.get(&fixed_key).map(|_| self.string(t, &format!("{at}.{fixed_key}"), None));
        match (pointer, fixed) {
            (Some(_), Some(_)) => {
                self.error(
                    &format!("{at}.{fixed_key}"),
                    format!("set {key} (a JSON pointer) or {fixed_key}, not both"),
                );
                None
            }
            (Some(p), None) => Some(Field::Pointer(p)),
            (None, Some(f)) if !f.is_empty() => Some(Field::Fixed(f)),
            (None, Some(_)) => None,
            (None, None) => {
                if required && !t.contains_key(key) {
                    self.error(
                        &format!("{at}.{key}"),
                        format!("missing; set {key} to a JSON pointer such as \"/type\", or {fixed_key} to a name"),
                    );
                }
                None
            }
        }
    }

    /// A JSON pointer: `""` (the whole value) or `/`-separated tokens, with
    /// `~0` for `~` and `~1` for `/`.
    fn pointer(&mut self, t: &Table, at: &str, key: &str) -> Option<String> {
        let full = format!("{at}.{key}");
        let p = match t.get(key)? {
            Value::String(s) => s.clone(),
            other => {
                self.error(&full, format!("expected a JSON pointer such as \"/order/id\", got {}", describe(other)));
                return None;
            }
        };
        let escapes_ok = p.match_indices('~').all(|(i, _)| matches!(p.as_bytes().get(i + 1), Some(b'0' | b'1')));
        if !(p.is_empty() || p.starts_with('/')) || !escapes_ok {
            self.error(
                &full,
                format!("{p:?} is not a JSON pointer: expected \"\" or a path such as \"/order/id\" (RFC 6901)"),
            );
            return None;
        }
        Some(p)
    }

    fn status_values(&mut self, t: &Table, at: &str) -> BTreeMap<String, String> {
        let key = format!("{at}.status_values");
        let mut out = BTreeMap::new();
        let table = match t.get("status_values") {
            None => return out,
            Some(Value::Table(values)) => values,
            Some(other) => {
                self.error(
                    &key,
                    format!(
                        "expected a table such as {{ OK = \"succeeded\", KO = \"failed\" }}, got {}",
                        describe(other)
                    ),
                );
                return out;
            }
        };
        for (value, status) in table {
            match status {
                Value::String(s) if STATUSES.contains(&s.as_str()) => {
                    out.insert(value.clone(), s.clone());
                }
                other => self.error(
                    &format!("{key}.{value}"),
                    format!("expected \"succeeded\", \"failed\" or \"compensated\", got {}", describe(other)),
                ),
            }
        }
        out
    }

    /// A mapping's fixed workflow type and step must be configured, and a
    /// topic must say a record's type when several are.
    pub(super) fn mappings_fit(&mut self, kafka: &KafkaConfig, workflows: &[WorkflowSpec]) {
        for topic in &kafka.input_topics {
            let Some(m) = &topic.mapping else { continue };
            let at = format!("kafka.mappings.{}", topic.name);
            let fixed_type = match &m.workflow_type {
                Some(Field::Fixed(name)) => match workflows.iter().find(|w| &w.workflow_type == name) {
                    Some(w) => Some(w),
                    None => {
                        self.error(
                            &format!("{at}.fixed_workflow_type"),
                            format!("workflow type {name:?} is not configured in [[workflows]]"),
                        );
                        continue;
                    }
                },
                Some(Field::Pointer(_)) => None,
                None if workflows.len() > 1 => {
                    self.error(
                        &format!("{at}.workflow_type"),
                        "missing; several workflow types are configured: set workflow_type (a JSON pointer) or \
                         fixed_workflow_type",
                    );
                    continue;
                }
                None => workflows.first(),
            };
            if let Field::Fixed(step) = &m.step {
                let types: Vec<&WorkflowSpec> = match fixed_type {
                    Some(w) => vec![w],
                    None => workflows.iter().collect(),
                };
                if !types.iter().any(|w| w.step_index(step).is_some()) {
                    self.error(
                        &format!("{at}.fixed_step"),
                        format!(
                            "step {step:?} is not a step of {}",
                            types.iter().map(|w| format!("{:?}", w.workflow_type)).collect::<Vec<_>>().join(" or ")
                        ),
                    );
                }
            }
        }
    }
}
