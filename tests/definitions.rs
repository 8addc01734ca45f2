//! Workflow definitions change (DESIGN.md): operators edit `[[workflows]]`
//! and restart while workflows are open. Each open workflow keeps the steps
//! and quorum it started with, takes a changed deadline from the next
//! start, and finishes by its own definition when its type is removed;
//! `junction validate` says which edits affect open workflows. The same
//! holds when the stores are restored from the changelog, which carries the
//! definitions the states refer to.

mod common;

use std::time::Duration;

use common::{by_workflow, event, Broker, Junction, Setup};
use serde_json::Value;

const BEFORE: &str = r#"
[[workflows]]
type = "order"
steps = ["payment", "inventory", "fraud"]
deadline = "1h"

[[workflows]]
type = "signup"
steps = ["email", "profile"]
deadline = "1h"

[[workflows]]
type = "vote"
steps = ["a", "b", "c"]
deadline = "1h"

[[workflows]]
type = "callback"
steps = ["request", "callback"]
deadline = "1h"

[[workflows]]
type = "legacy"
steps = ["x", "y"]
deadline = "1h"
"#;

/// A step removed (fraud), a step added (welcome), a quorum lowered (vote),
/// a deadline shortened (callback) and a type removed (legacy).
const AFTER: &str = r#"
[[workflows]]
type = "order"
steps = ["payment", "inventory"]
deadline = "1h"

[[workflows]]
type = "signup"
steps = ["email", "profile", "welcome"]
deadline = "1h"

[[workflows]]
type = "vote"
steps = ["a", "b", "c"]
quorum = 1
deadline = "1h"

[[workflows]]
type = "callback"
steps = ["request", "callback"]
deadline = "3s"
"#;

fn step(id: &str, workflow_type: &str, step: &str) -> Value {
    event(id, workflow_type, step, "succeeded", Some(&format!("{id}-{step}")))
}

#[test]
fn a_restart_with_each_kind_of_edit_strands_and_miscounts_no_open_workflow() {
    restart_with_each_kind_of_edit(Stores::Kept);
}

#[test]
fn a_restart_with_each_kind_of_edit_and_the_stores_restored_from_the_changelog_strands_no_open_workflow() {
    restart_with_each_kind_of_edit(Stores::Restored);
}

#[derive(PartialEq)]
enum Stores {
    Kept,
    /// The state directory is deleted before the restart.
    Restored,
}

fn restart_with_each_kind_of_edit(stores: Stores) {
    let broker = Broker::kafka();
    let mut setup = Setup::new(&broker, 2);
    setup.workflows = BEFORE.to_string();
    let work = tempfile::tempdir().unwrap();
    let mut j = Junction::start(&setup, work.path(), "j");
    j.wait_ready();
    let firsts = [
        step("o1", "order", "payment"),
        step("s1", "signup", "email"),
        step("v1", "vote", "a"),
        step("c1", "callback", "request"),
        step("l1", "legacy", "x"),
        step("l2", "legacy", "x"),
    ];
    broker.produce_events(&setup.input, &firsts);
    common::wait_until("every first step joined", || {
        j.metric("junction_events_total", "result=\"accepted\"") >= firsts.len() as f64
    });
    assert!(j.terminate(), "junction exits 0 on SIGTERM");

    setup.workflows = AFTER.to_string();
    j.reconfigure(&setup);
    let (code, said) = j.validate();
    assert_eq!(code, Some(0), "{said}");
    for expected in [
        r#"workflow type "legacy" is removed: its 2 open workflow(s) finish by their own definition"#,
        r#"1 open "order" workflow(s) keep the steps ["payment", "inventory", "fraud"] and quorum 3"#,
        r#"1 open "signup" workflow(s) keep the steps ["email", "profile"] and quorum 2"#,
        r#"1 open "vote" workflow(s) keep the steps ["a", "b", "c"] and quorum 3"#,
        r#"1 open "callback" workflow(s) started with a deadline of 3600s; the configured 3s applies"#,
    ] {
        assert!(said.contains(expected), "validate does not say {expected:?}:\n{said}");
    }
    if stores == Stores::Restored {
        std::fs::remove_dir_all(&j.state_dir).unwrap();
    }

    j.start_again();
    j.wait_ready();
    let seconds = [
        step("o1", "order", "inventory"),
        step("o1", "order", "fraud"),
        step("s1", "signup", "profile"),
        step("v1", "vote", "b"),
        step("v1", "vote", "c"),
        step("v2", "vote", "a"),
        step("l1", "legacy", "y"),
        step("l3", "legacy", "x"),
        step("o2", "order", "fraud"),
    ];
    broker.produce_events(&setup.input, &seconds);
    let mut out = broker.reader(&setup.output);
    let records = out.read_until("o1, s1, v1, v2, c1 and l1 decided", |r| by_workflow(r).len() >= 6).to_vec();
    let outcomes = by_workflow(&records);
    let only = |id: &str| -> &Value {
        let got = outcomes.get(id).unwrap_or_else(|| panic!("no outcome for {id}: {outcomes:?}"));
        assert_eq!(got.len(), 1, "{id}: {got:?}");
        &got[0]
    };
    let steps = |o: &Value| -> Vec<String> { o["steps"].as_object().unwrap().keys().cloned().collect() };

    let o1 = only("o1");
    assert_eq!(o1["outcome"], "completed", "{o1}");
    assert_eq!(steps(o1), ["fraud", "inventory", "payment"], "a removed step still counts for o1: {o1}");
    let s1 = only("s1");
    assert_eq!((&s1["outcome"], &s1["missing"]), (&Value::from("completed"), &serde_json::json!([])), "{s1}");
    let v1 = only("v1");
    assert_eq!(steps(v1), ["a", "b", "c"], "v1 keeps its quorum of 3, not the lowered 1: {v1}");
    assert_eq!(only("v2")["outcome"], "completed", "a new vote takes the lowered quorum");
    assert_eq!(only("c1")["outcome"], "timed_out", "the shortened deadline applies to c1");
    assert_eq!(only("l1")["outcome"], "completed", "a removed type's workflow finishes by its own definition");

    let mut dead = broker.reader(&setup.dead_letters);
    let letters = dead.read_until("the two bad events", |r| r.len() >= 2).to_vec();
    let mut reasons: Vec<(String, String)> = letters
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned(),
                r.header("junction.error").to_string(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [("l3".to_string(), "unknown_workflow_type".to_string()), ("o2".to_string(), "unknown_step".to_string())],
        "a removed type or step starts nothing new"
    );
    // l2 is still open, by its own 1 h deadline: nothing more for it.
    let later = out.read_for(Duration::from_secs(2));
    assert!(!by_workflow(later).contains_key("l2"), "l2 waits for its own deadline");
    assert!(j.metric("junction_workflows_open", "") >= 1.0, "l2 is open");
}
