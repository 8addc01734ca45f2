//! Which definition decides a workflow when `[[workflows]]` was edited
//! between restarts (DESIGN.md, "Workflow definitions change"). A workflow
//! keeps the steps and quorum it started with, stored in its state; the
//! deadline is its type's as configured now, or its own once its type is
//! removed, so that it still finishes.

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::WorkflowSpec;
use crate::join::state::WorkflowState;

/// What a workflow started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub steps: Vec<String>,
    pub quorum: usize,
    /// Its type's deadline then, for when the type is no longer configured.
    pub deadline_ms: Option<i64>,
}

impl Definition {
    pub fn of(spec: &WorkflowSpec) -> Definition {
        Definition {
            steps: spec.steps.clone(),
            quorum: spec.quorum,
            deadline_ms: spec.deadline.map(|d| d.as_millis().min(i64::MAX as u128) as i64),
        }
    }

    /// Whether `spec` still defines the workflow as it started: the usual case, which needs no copy.
    fn is(&self, spec: &WorkflowSpec) -> bool {
        self.quorum == spec.quorum && self.steps == spec.steps
    }
}

/// The definition `state` is decided by. `configured` is its type's
/// definition now, if the type is still configured. A state stored before
/// definitions were kept has none of its own and takes the configured one;
/// of a removed type, its steps seen so far, all required, and
/// `default_deadline`.
pub fn governing<'c>(
    configured: Option<&'c WorkflowSpec>,
    state: &WorkflowState,
    default_deadline: Duration,
) -> Cow<'c, WorkflowSpec> {
    match (&state.definition, configured) {
        (None, Some(spec)) => Cow::Borrowed(spec),
        (Some(own), Some(spec)) if own.is(spec) => Cow::Borrowed(spec),
        (Some(own), configured) => Cow::Owned(WorkflowSpec {
            workflow_type: state.workflow_type.clone(),
            steps: own.steps.clone(),
            quorum: own.quorum,
            deadline: governing_deadline(configured, own.deadline_ms, default_deadline),
        }),
        (None, None) => {
            let steps: Vec<String> = state.steps.iter().map(|s| s.name.clone()).collect();
            Cow::Owned(WorkflowSpec {
                workflow_type: state.workflow_type.clone(),
                quorum: steps.len().max(1),
                steps,
                deadline: governing_deadline(None, None, default_deadline),
            })
        }
    }
}

/// The deadline a workflow is kept to: its type's as configured now; once
/// the type is removed, the one it started with (`own_deadline_ms`), or
/// `default_deadline` when that was not stored.
pub fn governing_deadline(
    configured: Option<&WorkflowSpec>,
    own_deadline_ms: Option<i64>,
    default_deadline: Duration,
) -> Option<Duration> {
    match configured {
        Some(spec) => spec.deadline,
        None => Some(own_deadline_ms.map_or(default_deadline, |ms| Duration::from_millis(ms.max(0) as u64))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(steps: &[&str], quorum: usize, deadline_s: u64) -> WorkflowSpec {
        WorkflowSpec {
            workflow_type: "order".into(),
            steps: steps.iter().map(|s| s.to_string()).collect(),
            quorum,
            deadline: Some(Duration::from_secs(deadline_s)),
        }
    }

    #[test]
    fn a_workflow_keeps_its_steps_and_quorum_and_takes_the_deadline_configured_now() {
        let started = spec(&["a", "b", "c"], 3, 60);
        let mut state = WorkflowState::new("order", 0);
        state.definition = Some(Definition::of(&started));
        assert!(matches!(governing(Some(&started), &state, Duration::ZERO), Cow::Borrowed(_)));

        let edited = spec(&["a", "b"], 1, 5);
        let g = governing(Some(&edited), &state, Duration::ZERO);
        assert_eq!((g.steps.clone(), g.quorum, g.deadline), (started.steps.clone(), 3, Some(Duration::from_secs(5))));

        let removed = governing(None, &state, Duration::ZERO);
        assert_eq!((removed.steps.len(), removed.quorum, removed.deadline), (3, 3, Some(Duration::from_secs(60))));

        let old = WorkflowState::new("order", 0);
        assert_eq!(
            governing(Some(&edited), &old, Duration::ZERO).steps,
            edited.steps,
            "an old state takes the configured one"
        );
        assert_eq!(governing(None, &old, Duration::from_secs(7)).deadline, Some(Duration::from_secs(7)));
    }
}
