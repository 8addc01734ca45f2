//! Property tests of the pure join: the same events, in any order and with
//! any duplication, lead to the same decisions.
//!
//! What a decision can know depends on what had arrived when it was taken: a
//! `failed` record lists the steps that had succeeded by then. So the
//! properties are: duplicates never change a single byte of any record; any
//! interleaving gives the same sequence of outcome kinds (when every
//! succeeded step is compensated, or none is); a `completed` record under the
//! default quorum is identical whatever the order; and every record is
//! internally consistent.

use std::borrow::Cow;
use std::time::Duration;

use junction::config::WorkflowSpec;
use junction::input::event::{Status, StepEvent, TypeRef};
use junction::join::outcome::{Outcome, OutcomeRecord};
use junction::join::{apply_event, WorkflowState};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    spec: WorkflowSpec,
    events: Vec<StepEvent<'static>>,
}

fn spec(n: usize, quorum: usize) -> WorkflowSpec {
    WorkflowSpec { workflow_type: "t".into(), steps: (0..n).map(|i| format!("s{i}")).collect(), quorum, deadline: None }
}

fn event(step: usize, status: Status, id: Option<String>, at: i64) -> StepEvent<'static> {
    StepEvent {
        workflow_id: Cow::Borrowed("w"),
        workflow: TypeRef::Configured(0),
        step: Cow::Owned(format!("s{step}")),
        status,
        event_id: id.map(Cow::Owned),
        occurred_at_ms: at,
        payload: None,
    }
}

/// A workflow's events: each step reports at most one work status; succeeded
/// steps are all compensated or none is; event IDs are present or not.
fn case() -> impl Strategy<Value = Case> {
    (1usize..=5)
        .prop_flat_map(|n| {
            (
                Just(n),
                1..=n,
                proptest::collection::vec((0u8..3, 0i64..10_000, 0i64..10_000), n),
                any::<bool>(),
                any::<bool>(),
            )
        })
        .prop_map(|(n, quorum, reports, compensate_all, with_ids)| {
            let mut events = Vec::new();
            for (step, (kind, at, comp_at)) in reports.into_iter().enumerate() {
                let id = |s: &str| with_ids.then(|| format!("{s}-{step}"));
                match kind {
                    0 => {
                        events.push(event(step, Status::Succeeded, id("ok"), at));
                        if compensate_all {
                            events.push(event(step, Status::Compensated, id("comp"), comp_at));
                        }
                    }
                    1 => events.push(event(step, Status::Failed, id("fail"), at)),
                    _ => {} // the step never reports
                }
            }
            Case { spec: spec(n, quorum), events }
        })
        .prop_filter("at least one event", |c| !c.events.is_empty())
}

fn run(spec: &WorkflowSpec, events: &[StepEvent<'static>]) -> Vec<OutcomeRecord> {
    let mut state = WorkflowState::new(&spec.workflow_type, events[0].occurred_at_ms);
    let mut out = Vec::new();
    for e in events {
        out.extend(apply_event(spec, &mut state, "w", e, 1_000_000).1);
    }
    out
}

fn kinds(records: &[OutcomeRecord]) -> Vec<Outcome> {
    records.iter().map(|r| r.outcome).collect()
}

/// A permutation of `events` with `copies` extra copies inserted at positions
/// chosen by `seed`.
fn shuffle_and_duplicate(events: &[StepEvent<'static>], seed: &[usize], copies: &[usize]) -> Vec<StepEvent<'static>> {
    let mut out: Vec<StepEvent<'static>> = events.to_vec();
    for (i, s) in seed.iter().enumerate() {
        let len = out.len();
        out.swap(i % len, s % len);
    }
    for c in copies {
        let e = out[c % out.len()].clone();
        let at = (c / 7) % (out.len() + 1);
        out.insert(at, e);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn duplicates_never_change_any_record(case in case(), copies in proptest::collection::vec(any::<usize>(), 0..8)) {
        let base = run(&case.spec, &case.events);
        // Copies inserted after their original: the first arrival order is unchanged.
        let mut with_dups = case.events.clone();
        for c in &copies {
            let i = c % case.events.len();
            let original = with_dups.iter().position(|e| same(e, &case.events[i])).unwrap();
            let at = original + 1 + (c / 11) % (with_dups.len() - original);
            with_dups.insert(at, case.events[i].clone());
        }
        prop_assert_eq!(run(&case.spec, &with_dups), base);
    }

    #[test]
    fn any_interleaving_and_duplication_gives_the_same_decisions(
        case in case(),
        seed in proptest::collection::vec(any::<usize>(), 0..10),
        copies in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let base = run(&case.spec, &case.events);
        let other = run(&case.spec, &shuffle_and_duplicate(&case.events, &seed, &copies));
        prop_assert_eq!(kinds(&other), kinds(&base));
        if case.spec.quorum == case.spec.steps.len() {
            if let (Some(a), Some(b)) = (base.first(), other.first()) {
                if a.outcome == Outcome::Completed {
                    prop_assert_eq!(a, b);
                }
            }
        }
    }

    #[test]
    fn every_record_is_consistent_and_each_outcome_appears_at_most_once(
        case in case(),
        seed in proptest::collection::vec(any::<usize>(), 0..10),
        copies in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let records = run(&case.spec, &shuffle_and_duplicate(&case.events, &seed, &copies));
        let k = kinds(&records);
        for o in Outcome::ALL {
            prop_assert!(k.iter().filter(|x| **x == o).count() <= 1);
        }
        prop_assert!(k.len() <= 2);
        if k.len() == 2 {
            prop_assert_eq!(k[1], Outcome::Compensated);
        }
        for r in &records {
            prop_assert!(r.started_at_ms <= r.finished_at_ms || r.outcome == Outcome::Compensated);
            let mut all: Vec<&String> = r.failed_steps.iter().chain(&r.missing).chain(&r.compensate).collect();
            if r.outcome == Outcome::Completed {
                prop_assert!(r.compensate.is_empty());
                prop_assert!(r.steps.iter().filter(|s| s.status == "succeeded").count() >= case.spec.quorum);
            } else {
                all.sort();
                all.dedup();
                prop_assert_eq!(all.len(), case.spec.steps.len(), "failed, missing and compensate partition the steps");
            }
            if r.outcome == Outcome::Failed {
                prop_assert!(r.failed_steps.len() > case.spec.steps.len() - case.spec.quorum);
            }
        }
    }
}

fn same(a: &StepEvent<'_>, b: &StepEvent<'_>) -> bool {
    a.step == b.step && a.status == b.status && a.event_id == b.event_id && a.occurred_at_ms == b.occurred_at_ms
}

#[test]
fn a_deadline_in_the_past_times_out_before_the_event_is_applied() {
    let mut s = spec(2, 2);
    s.deadline = Some(Duration::from_millis(10));
    let mut state = WorkflowState::new("t", 0);
    let (_, out) = apply_event(&s, &mut state, "w", &event(0, Status::Succeeded, None, 0), 5);
    assert!(out.is_empty());
    let (_, out) = apply_event(&s, &mut state, "w", &event(1, Status::Succeeded, None, 1), 50);
    assert_eq!(kinds(&out), [Outcome::TimedOut]);
}
