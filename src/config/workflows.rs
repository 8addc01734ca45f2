//! The `[[workflows]]` entries: each type's steps, quorum and deadline.

use std::collections::HashSet;

use toml::{Table, Value};

use super::read::{describe, Reader};
use super::WorkflowSpec;
use crate::names;

impl Reader {
    pub(super) fn workflows(&mut self, top: &Table) -> Vec<WorkflowSpec> {
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
