//! Which definition decides a workflow when `[[workflows]]` was edited
//! between restarts (DESIGN.md, "Workflow definitions change"). A workflow
//! keeps the steps and quorum it started with; the deadline is its type's
//! as configured now, or its own once its type is removed, so that it still
//! finishes.
//!
//! A state keeps its steps and quorum by reference: a [`DefinitionId`],
//! which the partition's [`Definitions`] (saved once per partition, in its
//! store and its changelog) turn back into the steps. Every workflow of a
//! type so carries 8 bytes, not its steps' names.

use std::borrow::Cow;
use std::collections::HashMap;
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

/// Names a definition's steps and quorum: a 64-bit FNV-1a hash of them,
/// the same in every build and on every machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DefinitionId(pub u64);

impl DefinitionId {
    pub fn of(steps: &[String], quorum: usize) -> DefinitionId {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h = OFFSET;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h = (h ^ u64::from(*b)).wrapping_mul(PRIME);
            }
        };
        eat(&(quorum as u64).to_le_bytes());
        eat(&(steps.len() as u64).to_le_bytes());
        for step in steps {
            eat(&(step.len() as u64).to_le_bytes());
            eat(step.as_bytes());
        }
        DefinitionId(h)
    }

    pub fn of_spec(spec: &WorkflowSpec) -> DefinitionId {
        DefinitionId::of(&spec.steps, spec.quorum)
    }
}

/// The definition a workflow started with, as its state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartedWith {
    /// By reference into the partition's [`Definitions`], with its type's
    /// deadline then: how states are written.
    Id { id: DefinitionId, deadline_ms: Option<i64> },
    /// Whole: states written before references (format version 3), or
    /// whose definition's ID was taken by another.
    Whole(Definition),
}

impl StartedWith {
    /// Its type's deadline when it started, for when the type is no longer configured.
    pub fn deadline_ms(&self) -> Option<i64> {
        match self {
            StartedWith::Id { deadline_ms, .. } => *deadline_ms,
            StartedWith::Whole(d) => d.deadline_ms,
        }
    }

    /// The definition itself, if `known` has it.
    pub fn resolve<'a>(&'a self, known: &'a Definitions) -> Option<Cow<'a, Definition>> {
        match self {
            StartedWith::Whole(d) => Some(Cow::Borrowed(d)),
            StartedWith::Id { id, deadline_ms } => known.get(*id).map(|d| {
                Cow::Owned(Definition { steps: d.steps.clone(), quorum: d.quorum, deadline_ms: *deadline_ms })
            }),
        }
    }
}

/// The definitions a partition's states refer to, by ID (their
/// `deadline_ms` unused: each state keeps its own).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Definitions(HashMap<DefinitionId, Definition, foldhash::fast::RandomState>);

impl Definitions {
    pub fn get(&self, id: DefinitionId) -> Option<&Definition> {
        self.0.get(&id)
    }

    pub fn insert(&mut self, id: DefinitionId, definition: Definition) {
        self.0.insert(id, definition);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How a new workflow of `spec`'s type keeps its definition: by ID,
    /// which these definitions are given when they lack it (returned, to be
    /// saved), or whole when another definition has that ID.
    pub fn start(&mut self, spec: &WorkflowSpec) -> (StartedWith, Option<(DefinitionId, Definition)>) {
        let deadline_ms = deadline_ms(spec);
        let id = DefinitionId::of_spec(spec);
        match self.0.get(&id) {
            Some(d) if d.is(spec) => (StartedWith::Id { id, deadline_ms }, None),
            Some(_) => (StartedWith::Whole(Definition::of(spec)), None),
            None => {
                let added = Definition { steps: spec.steps.clone(), quorum: spec.quorum, deadline_ms: None };
                self.0.insert(id, added.clone());
                (StartedWith::Id { id, deadline_ms }, Some((id, added)))
            }
        }
    }
}

fn deadline_ms(spec: &WorkflowSpec) -> Option<i64> {
    spec.deadline.map(|d| d.as_millis().min(i64::MAX as u128) as i64)
}

impl Definition {
    pub fn of(spec: &WorkflowSpec) -> Definition {
        Definition { steps: spec.steps.clone(), quorum: spec.quorum, deadline_ms: deadline_ms(spec) }
    }

    /// Whether `spec` still defines the workflow as it started: the usual case, which needs no copy.
    fn is(&self, spec: &WorkflowSpec) -> bool {
        self.quorum == spec.quorum && self.steps == spec.steps
    }
}

/// The definition `state` is decided by. `configured` is its type's
/// definition now, if the type is still configured; `known`, the
/// partition's definitions its reference points into. A state stored before
/// definitions were kept (or whose reference `known` lacks) has none of its
/// own and takes the configured one; of a removed type, its steps seen so
/// far, all required, and `default_deadline`.
pub fn governing<'c>(
    configured: Option<&'c WorkflowSpec>,
    state: &WorkflowState,
    known: &Definitions,
    default_deadline: Duration,
) -> Cow<'c, WorkflowSpec> {
    // The usual case first, without a copy: it started with its type's definition now.
    match (&state.definition, configured) {
        (Some(StartedWith::Id { id, .. }), Some(spec)) if known.get(*id).is_some_and(|d| d.is(spec)) => {
            return Cow::Borrowed(spec)
        }
        (Some(StartedWith::Whole(own)), Some(spec)) if own.is(spec) => return Cow::Borrowed(spec),
        _ => {}
    }
    let own = state.definition.as_ref().and_then(|d| d.resolve(known));
    match (own, configured) {
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
        let mut known = Definitions::default();
        let (by_id, added) = known.start(&started);
        assert!(added.is_some());
        assert_eq!(known.start(&started), (by_id.clone(), None), "added once");
        for own in [by_id, StartedWith::Whole(Definition::of(&started))] {
            let mut state = WorkflowState::new("order", 0);
            state.definition = Some(own);
            assert!(matches!(governing(Some(&started), &state, &known, Duration::ZERO), Cow::Borrowed(_)));

            let edited = spec(&["a", "b"], 1, 5);
            let g = governing(Some(&edited), &state, &known, Duration::ZERO);
            assert_eq!(
                (g.steps.clone(), g.quorum, g.deadline),
                (started.steps.clone(), 3, Some(Duration::from_secs(5)))
            );

            let removed = governing(None, &state, &known, Duration::ZERO);
            assert_eq!((removed.steps.len(), removed.quorum, removed.deadline), (3, 3, Some(Duration::from_secs(60))));
        }

        let edited = spec(&["a", "b"], 1, 5);
        let old = WorkflowState::new("order", 0);
        assert_eq!(
            governing(Some(&edited), &old, &known, Duration::ZERO).steps,
            edited.steps,
            "an old state takes the configured one"
        );
        assert_eq!(governing(None, &old, &known, Duration::from_secs(7)).deadline, Some(Duration::from_secs(7)));
    }

    #[test]
    fn an_id_is_stable_and_an_id_taken_by_another_definition_keeps_it_whole() {
        let a = spec(&["payment", "inventory"], 2, 60);
        assert_eq!(DefinitionId::of_spec(&a), DefinitionId(0x1048_0013_3234_3ae3), "FNV-1a, the same in every build");
        assert_ne!(DefinitionId::of_spec(&a), DefinitionId::of_spec(&spec(&["payment", "inventory"], 1, 60)));
        assert_ne!(DefinitionId::of_spec(&a), DefinitionId::of_spec(&spec(&["paymentinventory"], 2, 60)));
        let mut known = Definitions::default();
        known.insert(DefinitionId::of_spec(&a), Definition::of(&spec(&["other"], 1, 60)));
        assert_eq!(known.start(&a), (StartedWith::Whole(Definition::of(&a)), None));
    }
}
