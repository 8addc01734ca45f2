//! The join decision, pure: a function of (state, event, now) to (new state,
//! outcome records), and of (state, now) for deadlines and purges. No Kafka,
//! no RocksDB, no clock: the runtime supplies `now`, the home partition's
//! clock in event time (see [`crate::runtime::task`]), which makes every
//! rule here testable on its own and every replay of the same input give
//! the same records.
//!
//! The rules, from DESIGN.md:
//! - `completed` once `quorum` distinct steps succeeded;
//! - `failed` once failures make the quorum impossible, listing the failed
//!   steps and the succeeded ones to compensate;
//! - `timed_out` once the deadline (from the earliest event) passes first;
//! - `compensated` after `failed`/`timed_out`, once every succeeded step has
//!   reported `compensated`;
//! - a duplicate (same event ID, or without one the same step and status)
//!   changes nothing; events after the final decision are late and absorbed;
//! - a decided workflow is remembered for the retention, then purged.
//!
//! A step that succeeds after its workflow failed or timed out still needs
//! compensating, so it joins the set that `compensated` waits for.

use crate::config::WorkflowSpec;
use crate::input::event::{Status, StepEvent};
use crate::join::outcome::{Outcome, OutcomeRecord, Payload, StepView};
use crate::join::state::{Decision, StepState, WorkflowState};

/// How an event was taken, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult {
    Accepted,
    Duplicate,
    /// The workflow had already reached its final decision.
    Late,
}

/// What a timer did to a workflow.
#[derive(Debug, Clone, PartialEq)]
pub enum TimerResult {
    /// Not yet due (the timer moved, or nothing changed).
    NotDue,
    /// The deadline passed: the workflow timed out.
    Decided(Vec<OutcomeRecord>),
    /// The retention passed: forget the workflow.
    Purge,
}

fn status_bit(status: Status) -> u8 {
    match status {
        Status::Succeeded => 1,
        Status::Failed => 2,
        Status::Compensated => 4,
    }
}

/// Applies one event. `state` is the workflow's state, freshly created by the
/// caller with `WorkflowState::new` when the workflow is unknown.
pub fn apply_event(
    spec: &WorkflowSpec,
    state: &mut WorkflowState,
    workflow_id: &str,
    event: &StepEvent<'_>,
    now_ms: i64,
) -> (EventResult, Vec<OutcomeRecord>) {
    let mut outcomes = Vec::new();
    // A deadline that passed before this event was seen decides first.
    if state.is_open() && state.deadline_ms(Some(spec)).is_some_and(|d| d <= now_ms) {
        outcomes.extend(time_out(spec, state, workflow_id, now_ms));
    }

    let step_name = event.step.as_ref();
    let is_repeat = match &event.event_id {
        Some(id) => state.event_ids.iter().any(|seen| seen == id.as_ref()),
        None => state.steps.iter().any(|s| s.name == step_name && s.seen_without_id & status_bit(event.status) != 0),
    };
    if is_repeat {
        return (EventResult::Duplicate, outcomes);
    }
    if state.is_final() {
        return (EventResult::Late, outcomes);
    }

    take_report(state, step_name, event);
    if state.is_open() {
        outcomes.extend(quorum_decision(spec, state, workflow_id, now_ms));
    }
    outcomes.extend(check_compensated(spec, state, workflow_id, now_ms));
    (EventResult::Accepted, outcomes)
}

/// Takes a new (not repeated, not late) report into the state: its ID, its
/// times, and the step's status, of which the first one counts.
fn take_report(state: &mut WorkflowState, step_name: &str, event: &StepEvent<'_>) {
    let changes_step = state.steps.iter().find(|s| s.name == step_name).is_none_or(|s| match event.status {
        Status::Succeeded | Status::Failed => s.work.is_none(),
        Status::Compensated => s.compensated_at_ms.is_none(),
    });
    match &event.event_id {
        // Only an event that changes its step is remembered by its ID: any
        // other is answered the same way again, and the IDs kept stay
        // bounded by twice the steps, whatever a producer sends.
        Some(id) if changes_step => state.event_ids.push(id.to_string()),
        Some(_) => {}
        None => state.step_mut(step_name).seen_without_id |= status_bit(event.status),
    }
    // Start and finish times span the work reports: a compensation
    // acknowledgement, whenever it arrives, moves neither.
    if state.is_open() && event.status != Status::Compensated {
        if state.steps.iter().any(|s| s.work.is_some()) {
            state.started_at_ms = state.started_at_ms.min(event.occurred_at_ms);
            state.last_event_at_ms = state.last_event_at_ms.max(event.occurred_at_ms);
        } else {
            state.started_at_ms = event.occurred_at_ms;
            state.last_event_at_ms = event.occurred_at_ms;
        }
    }

    let step = state.step_mut(step_name);
    match event.status {
        Status::Succeeded | Status::Failed if step.work.is_none() => {
            step.work = Some(event.status);
            step.occurred_at_ms = event.occurred_at_ms;
            step.payload = event.payload.map(Payload::from_raw);
        }
        Status::Compensated if step.compensated_at_ms.is_none() => {
            step.compensated_at_ms = Some(event.occurred_at_ms);
        }
        // A second, different report for the same step changes nothing: the first one counts.
        _ => {}
    }
}

/// `completed` once `quorum` steps succeeded, `failed` once failures make
/// the quorum impossible, for an open workflow.
fn quorum_decision(
    spec: &WorkflowSpec,
    state: &mut WorkflowState,
    workflow_id: &str,
    now_ms: i64,
) -> Option<OutcomeRecord> {
    let n = spec.steps.len();
    // Event time: only the reports that occurred by the deadline decide.
    let until = state.deadline_ms(Some(spec));
    let outcome = if state.count(Status::Succeeded, until) >= spec.quorum {
        Some(Outcome::Completed)
    } else if state.count(Status::Failed, until) > n - spec.quorum {
        Some(Outcome::Failed)
    } else {
        None
    };
    let outcome = outcome?;
    state.decision = Some(Decision { outcome, decided_at_ms: now_ms, compensated_at_ms: None });
    Some(record(spec, state, workflow_id, outcome, state.last_event_at_ms))
}

/// Fires a workflow's timer: its deadline, or the end of its retention.
pub fn on_timer(
    spec: Option<&WorkflowSpec>,
    state: &mut WorkflowState,
    workflow_id: &str,
    now_ms: i64,
    retention_ms: i64,
) -> TimerResult {
    match state.decision {
        None => match spec {
            Some(spec) if state.deadline_ms(Some(spec)).is_some_and(|d| d <= now_ms) => {
                TimerResult::Decided(time_out(spec, state, workflow_id, now_ms))
            }
            _ => TimerResult::NotDue,
        },
        Some(_) if retention_passed(state, now_ms, retention_ms) => TimerResult::Purge,
        Some(_) => TimerResult::NotDue,
    }
}

/// Whether a decided workflow's retention has passed by `now_ms`: it is
/// forgotten then, whether its purge timer fired yet or not.
pub fn retention_passed(state: &WorkflowState, now_ms: i64, retention_ms: i64) -> bool {
    state.decision.is_some_and(|d| d.decided_at_ms.saturating_add(retention_ms) <= now_ms)
}

fn time_out(spec: &WorkflowSpec, state: &mut WorkflowState, workflow_id: &str, now_ms: i64) -> Vec<OutcomeRecord> {
    let deadline = state.deadline_ms(Some(spec)).expect("only called with a deadline");
    // Decided at the deadline, wherever the clock read it: a replay decides at the same time.
    state.decision = Some(Decision { outcome: Outcome::TimedOut, decided_at_ms: deadline, compensated_at_ms: None });
    let mut out = vec![record(spec, state, workflow_id, Outcome::TimedOut, deadline)];
    out.extend(check_compensated(spec, state, workflow_id, now_ms));
    out
}

/// After `failed` or `timed_out`: `compensated` once every succeeded step is compensated.
fn check_compensated(
    spec: &WorkflowSpec,
    state: &mut WorkflowState,
    workflow_id: &str,
    now_ms: i64,
) -> Option<OutcomeRecord> {
    let d = state.decision?;
    if d.outcome == Outcome::Completed || d.compensated_at_ms.is_some() {
        return None;
    }
    let mut to_compensate = state.steps.iter().filter(|s| s.work == Some(Status::Succeeded)).peekable();
    to_compensate.peek()?;
    let mut finished = 0;
    for s in to_compensate {
        finished = finished.max(s.compensated_at_ms?);
    }
    state.decision = Some(Decision { compensated_at_ms: Some(now_ms), ..d });
    Some(record(spec, state, workflow_id, Outcome::Compensated, finished))
}

/// Builds the outcome record from the state as it is at the decision.
fn record(
    spec: &WorkflowSpec,
    state: &WorkflowState,
    workflow_id: &str,
    outcome: Outcome,
    finished_at_ms: i64,
) -> OutcomeRecord {
    let by_status = |status: Status| -> Vec<String> {
        ordered(spec, state).filter(|s| s.work == Some(status)).map(|s| s.name.clone()).collect()
    };
    let steps = ordered(spec, state)
        .filter_map(|s| {
            if outcome == Outcome::Compensated && s.work == Some(Status::Succeeded) {
                let at = s.compensated_at_ms?;
                return Some(StepView {
                    step: s.name.clone(),
                    status: "compensated",
                    occurred_at_ms: at,
                    payload: s.payload.clone(),
                });
            }
            let status = s.work?;
            Some(StepView {
                step: s.name.clone(),
                status: status.as_str(),
                occurred_at_ms: s.occurred_at_ms,
                payload: s.payload.clone(),
            })
        })
        .collect();
    OutcomeRecord {
        workflow_id: workflow_id.to_string(),
        workflow_type: state.workflow_type.clone(),
        outcome,
        steps,
        failed_steps: by_status(Status::Failed),
        missing: state.missing(spec),
        compensate: if outcome == Outcome::Completed { Vec::new() } else { by_status(Status::Succeeded) },
        started_at_ms: state.started_at_ms,
        finished_at_ms,
    }
}

/// The state's steps in the order the workflow type names them.
fn ordered<'a>(spec: &'a WorkflowSpec, state: &'a WorkflowState) -> impl Iterator<Item = &'a StepState> {
    spec.steps.iter().filter_map(|name| state.steps.iter().find(|s| &s.name == name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;
    use std::time::Duration;

    fn spec(quorum: Option<usize>, deadline_ms: Option<u64>) -> WorkflowSpec {
        let steps: Vec<String> = ["payment", "inventory", "fraud_check"].iter().map(|s| s.to_string()).collect();
        WorkflowSpec {
            workflow_type: "order".into(),
            quorum: quorum.unwrap_or(steps.len()),
            steps,
            deadline: deadline_ms.map(Duration::from_millis),
        }
    }

    fn ev(step: usize, status: Status, id: Option<&str>, at: i64) -> StepEvent<'static> {
        StepEvent {
            workflow_id: Cow::Borrowed("w"),
            workflow: crate::input::event::TypeRef::Configured(0),
            step: Cow::Borrowed(["payment", "inventory", "fraud_check"][step]),
            status,
            event_id: id.map(|i| Cow::Owned(i.to_string())),
            occurred_at_ms: at,
            payload: None,
        }
    }

    fn run(spec: &WorkflowSpec, events: &[StepEvent<'static>], now: i64) -> (WorkflowState, Vec<OutcomeRecord>) {
        let mut state = WorkflowState::new("order", events[0].occurred_at_ms);
        let mut out = Vec::new();
        for e in events {
            out.extend(apply_event(spec, &mut state, "w", e, now).1);
        }
        (state, out)
    }

    use Status::*;

    #[test]
    fn all_steps_succeeding_completes_once() {
        let s = spec(None, None);
        let (_, out) =
            run(&s, &[ev(0, Succeeded, None, 10), ev(1, Succeeded, None, 30), ev(2, Succeeded, None, 20)], 100);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].outcome, Outcome::Completed);
        assert_eq!((out[0].started_at_ms, out[0].finished_at_ms), (10, 30));
        assert!(out[0].missing.is_empty() && out[0].compensate.is_empty());
    }

    #[test]
    fn a_quorum_completes_before_every_step_reports() {
        let s = spec(Some(2), None);
        let (state, out) = run(&s, &[ev(0, Failed, None, 1), ev(1, Succeeded, None, 2), ev(2, Succeeded, None, 3)], 9);
        assert_eq!(out.iter().map(|o| o.outcome).collect::<Vec<_>>(), [Outcome::Completed]);
        assert_eq!(out[0].failed_steps, ["payment"]);
        assert!(state.is_final());
    }

    #[test]
    fn a_failed_step_lists_what_to_compensate() {
        let s = spec(None, None);
        let (_, out) = run(&s, &[ev(0, Succeeded, None, 1), ev(1, Failed, None, 2)], 9);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].outcome, Outcome::Failed);
        assert_eq!(out[0].failed_steps, ["inventory"]);
        assert_eq!(out[0].compensate, ["payment"]);
        assert_eq!(out[0].missing, ["fraud_check"]);
    }

    #[test]
    fn failure_waits_until_the_quorum_is_impossible() {
        let s = spec(Some(2), None);
        let (_, out) = run(&s, &[ev(0, Failed, None, 1)], 9);
        assert!(out.is_empty());
        let (_, out) = run(&s, &[ev(0, Failed, None, 1), ev(1, Failed, None, 2)], 9);
        assert_eq!(out[0].outcome, Outcome::Failed);
    }

    #[test]
    fn compensation_acknowledgements_end_in_compensated() {
        let s = spec(None, None);
        let (mut state, out) = run(&s, &[ev(0, Succeeded, None, 1), ev(1, Failed, None, 2)], 9);
        assert_eq!(out.len(), 1);
        let (r, out) = apply_event(&s, &mut state, "w", &ev(0, Compensated, None, 5), 10);
        assert_eq!(r, EventResult::Accepted);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].outcome, Outcome::Compensated);
        assert_eq!(out[0].steps[0].status, "compensated");
        assert_eq!(out[0].finished_at_ms, 5);
        assert!(state.is_final());
        let (r, out) = apply_event(&s, &mut state, "w", &ev(2, Succeeded, None, 6), 11);
        assert_eq!((r, out.len()), (EventResult::Late, 0));
    }

    #[test]
    fn a_step_that_succeeds_after_the_failure_must_be_compensated_too() {
        let s = spec(None, None);
        let (mut state, _) = run(&s, &[ev(1, Failed, None, 1), ev(0, Succeeded, None, 2)], 9);
        let (_, out) = apply_event(&s, &mut state, "w", &ev(2, Succeeded, None, 3), 9);
        assert!(out.is_empty());
        let (_, out) = apply_event(&s, &mut state, "w", &ev(0, Compensated, None, 4), 9);
        assert!(out.is_empty(), "fraud_check is still to compensate");
        let (_, out) = apply_event(&s, &mut state, "w", &ev(2, Compensated, None, 5), 9);
        assert_eq!(out[0].outcome, Outcome::Compensated);
    }

    #[test]
    fn duplicates_by_event_id_or_by_step_and_status_change_nothing() {
        let s = spec(None, None);
        let (mut state, _) = run(&s, &[ev(0, Succeeded, Some("a"), 1)], 9);
        let before = state.clone();
        assert_eq!(apply_event(&s, &mut state, "w", &ev(0, Succeeded, Some("a"), 1), 9).0, EventResult::Duplicate);
        assert_eq!(apply_event(&s, &mut state, "w", &ev(1, Failed, Some("a"), 1), 9).0, EventResult::Duplicate);
        assert_eq!(state, before);
        let (mut state, _) = run(&s, &[ev(0, Succeeded, None, 1)], 9);
        assert_eq!(apply_event(&s, &mut state, "w", &ev(0, Succeeded, None, 7), 9).0, EventResult::Duplicate);
    }

    #[test]
    fn event_ids_stay_bounded_whatever_a_producer_sends() {
        let s = spec(None, None);
        let (mut state, _) = run(&s, &[ev(0, Succeeded, Some("a"), 1)], 9);
        for i in 0..1_000 {
            let id = format!("retry-{i}");
            apply_event(&s, &mut state, "w", &ev(0, if i % 2 == 0 { Succeeded } else { Failed }, Some(&id), 2), 9);
        }
        assert_eq!(state.event_ids, ["a"], "reports that change nothing are not remembered");
        assert_eq!(state.steps[0].work, Some(Succeeded), "the first report still counts");
    }

    #[test]
    fn a_deadline_fires_without_new_input_and_then_the_workflow_is_purged() {
        let s = spec(None, Some(1_000));
        let (mut state, out) = run(&s, &[ev(0, Succeeded, None, 100)], 200);
        assert!(out.is_empty());
        assert_eq!(state.timer_ms(Some(&s), 50_000), Some(1_100));
        assert_eq!(on_timer(Some(&s), &mut state, "w", 1_099, 50_000), TimerResult::NotDue);
        let TimerResult::Decided(out) = on_timer(Some(&s), &mut state, "w", 1_100, 50_000) else {
            panic!("deadline not fired")
        };
        assert_eq!(out[0].outcome, Outcome::TimedOut);
        assert_eq!(out[0].finished_at_ms, 1_100);
        assert_eq!(out[0].missing, ["inventory", "fraud_check"]);
        assert_eq!(out[0].compensate, ["payment"]);
        assert_eq!(state.timer_ms(Some(&s), 50_000), Some(51_100));
        assert_eq!(on_timer(Some(&s), &mut state, "w", 51_100, 50_000), TimerResult::Purge);
    }

    #[test]
    fn a_report_that_occurred_after_the_deadline_does_not_count_toward_the_quorum() {
        let s = spec(Some(2), Some(1_000));
        // Read while the clock is still before the deadline, but it occurred after it.
        let (mut state, out) = run(&s, &[ev(0, Succeeded, None, 100), ev(1, Succeeded, None, 1_200)], 500);
        assert!(out.is_empty(), "{out:?}");
        let TimerResult::Decided(out) = on_timer(Some(&s), &mut state, "w", 1_100, 50_000) else {
            panic!("deadline not fired")
        };
        assert_eq!(out[0].outcome, Outcome::TimedOut);
        assert_eq!(out[0].compensate, ["payment", "inventory"], "a late success still needs compensating");
        // One that occurred in time counts, however late the clock reads it.
        let (_, out) = run(&s, &[ev(0, Succeeded, None, 100), ev(1, Succeeded, None, 1_100)], 500);
        assert_eq!(out.iter().map(|o| o.outcome).collect::<Vec<_>>(), [Outcome::Completed]);
    }

    #[test]
    fn an_event_after_the_deadline_times_out_first() {
        let s = spec(None, Some(1_000));
        let (mut state, _) = run(&s, &[ev(0, Succeeded, None, 100)], 200);
        let (r, out) = apply_event(&s, &mut state, "w", &ev(1, Succeeded, None, 150), 5_000);
        assert_eq!(r, EventResult::Accepted);
        assert_eq!(out.iter().map(|o| o.outcome).collect::<Vec<_>>(), [Outcome::TimedOut]);
    }
}
