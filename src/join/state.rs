//! A workflow's join state: what each step reported, and the decision once
//! taken. The stores keep it encoded (see [`crate::state::codec`]); the
//! decision rules that change it are in [`super::decision`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::WorkflowSpec;
use crate::input::event::Status;
use crate::join::definition::StartedWith;
use crate::join::outcome::{Outcome, Payload};

/// What one step has reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub name: String,
    /// The step's work result, `Succeeded` or `Failed`; the first one wins.
    pub work: Option<Status>,
    pub occurred_at_ms: i64,
    pub payload: Option<Payload>,
    pub compensated_at_ms: Option<i64>,
    /// Statuses seen in events without an event ID, to recognise their repeats.
    pub seen_without_id: u8,
}

/// The decision taken for a workflow, once taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub outcome: Outcome,
    /// When the decision was taken, by the partition's clock (event time;
    /// the deadline for `timed_out`): the retention counts from here.
    pub decided_at_ms: i64,
    /// When the `compensated` record was decided, by the same clock, if it was.
    pub compensated_at_ms: Option<i64>,
}

/// The join state of one workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowState {
    pub workflow_type: String,
    /// The earliest `occurred_at` of the work reports seen while open (of
    /// the first event, before any work report).
    pub started_at_ms: i64,
    /// The latest `occurred_at` of the work reports seen while open.
    pub last_event_at_ms: i64,
    pub steps: Vec<StepState>,
    pub event_ids: Vec<String>,
    pub decision: Option<Decision>,
    /// The steps, quorum and deadline it started with (`None`: stored
    /// before they were kept; see [`super::definition`]).
    #[serde(default)]
    pub definition: Option<StartedWith>,
}

impl WorkflowState {
    pub fn new(workflow_type: &str, first_event_at_ms: i64) -> WorkflowState {
        WorkflowState {
            workflow_type: workflow_type.to_string(),
            started_at_ms: first_event_at_ms,
            last_event_at_ms: first_event_at_ms,
            steps: Vec::new(),
            event_ids: Vec::new(),
            decision: None,
            definition: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.decision.is_none()
    }

    /// Nothing can produce another record for this workflow.
    pub fn is_final(&self) -> bool {
        match self.decision {
            None => false,
            Some(d) => d.outcome == Outcome::Completed || d.compensated_at_ms.is_some(),
        }
    }

    pub fn deadline_ms(&self, spec: Option<&WorkflowSpec>) -> Option<i64> {
        deadline_ms(self.started_at_ms, spec)
    }

    /// When `on_timer` must next look at this workflow: its deadline while
    /// open, the end of its retention once decided.
    pub fn timer_ms(&self, spec: Option<&WorkflowSpec>, retention_ms: i64) -> Option<i64> {
        timer_ms(self.started_at_ms, self.decision.as_ref(), spec.and_then(|s| s.deadline), retention_ms)
    }

    pub(super) fn step_mut(&mut self, name: &str) -> &mut StepState {
        let i = match self.steps.iter().position(|s| s.name == name) {
            Some(i) => i,
            None => {
                self.steps.push(StepState {
                    name: name.to_string(),
                    work: None,
                    occurred_at_ms: 0,
                    payload: None,
                    compensated_at_ms: None,
                    seen_without_id: 0,
                });
                self.steps.len() - 1
            }
        };
        &mut self.steps[i]
    }

    /// The type's steps that have not reported a work status, in its order.
    pub fn missing(&self, spec: &WorkflowSpec) -> Vec<String> {
        spec.steps
            .iter()
            .filter(|name| !self.steps.iter().any(|s| &s.name == *name && s.work.is_some()))
            .cloned()
            .collect()
    }

    /// The steps whose work report is `status` and occurred by `until` (all
    /// of them without a deadline): a report that occurred after the
    /// deadline came too late to count toward a decision, however early it
    /// is read.
    pub(super) fn count(&self, status: Status, until: Option<i64>) -> usize {
        let in_time = |s: &&StepState| until.is_none_or(|d| s.occurred_at_ms <= d);
        self.steps.iter().filter(|s| s.work == Some(status)).filter(in_time).count()
    }
}

fn deadline_ms(started_at_ms: i64, spec: Option<&WorkflowSpec>) -> Option<i64> {
    deadline_after(started_at_ms, spec?.deadline)
}

/// A deadline `deadline` after `started_at_ms`; far ones saturate, never wrap.
fn deadline_after(started_at_ms: i64, deadline: Option<Duration>) -> Option<i64> {
    let deadline = i64::try_from(deadline?.as_millis()).unwrap_or(i64::MAX);
    Some(started_at_ms.saturating_add(deadline))
}

/// [`WorkflowState::timer_ms`] from the fields it needs, which a stored
/// state's summary gives without decoding it whole.
pub fn timer_ms(
    started_at_ms: i64,
    decision: Option<&Decision>,
    deadline: Option<Duration>,
    retention_ms: i64,
) -> Option<i64> {
    match decision {
        None => deadline_after(started_at_ms, deadline),
        Some(d) => Some(d.decided_at_ms.saturating_add(retention_ms)),
    }
}
