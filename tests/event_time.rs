//! Time (DESIGN.md, "Time"): decisions are taken on event time. A backlog
//! never turns a workflow whose steps all occurred in time into
//! `timed_out`, and a deadline that fell while junction was down still
//! fires once it is back, without new input.

mod common;

use std::time::Duration;

use common::{assert_one_outcome_each, by_workflow, event, Broker, Junction, Setup};

/// A type whose deadline a short outage outlasts.
const QUICK: &str = r#"
[[workflows]]
type = "quick"
steps = ["a", "b"]
deadline = "5s"
"#;

fn quick_setup(broker: &Broker, guarantee: &'static str) -> Setup {
    let mut setup = Setup::new(broker, 4);
    setup.workflows = QUICK.to_string();
    setup.guarantee = guarantee;
    setup
}

/// Both steps of `n` workflows, produced now (their record timestamps, and
/// so their `occurred_at`, are now).
fn both_steps(prefix: &str, n: usize) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    for step in ["a", "b"] {
        for i in 0..n {
            events.push(event(
                &format!("{prefix}-{i}"),
                "quick",
                step,
                "succeeded",
                Some(&format!("{prefix}-{i}-{step}")),
            ));
        }
    }
    events
}

/// Steps that all occurred in time, read only after junction was down past
/// their deadline: every workflow completed, none timed out.
fn a_backlog_past_the_deadline_completes_what_occurred_in_time(guarantee: &'static str) {
    let broker = Broker::kafka();
    let setup = quick_setup(&broker, guarantee);
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();
    assert!(junction.terminate(), "junction exits 0 on SIGTERM");

    let n = 50;
    broker.produce_events(&setup.input, &both_steps("backlog", n));
    // Down past the deadline of every workflow, whose steps all occurred within it.
    std::thread::sleep(Duration::from_secs(8));
    junction.start_again();
    junction.wait_ready();

    let mut out = broker.reader(&setup.output);
    let records = out.read_until("an outcome for every workflow", |r| by_workflow(r).len() >= n).to_vec();
    assert_one_outcome_each(&records, n);
    let timed_out = records.iter().filter(|r| r.json()["outcome"] == "timed_out").count();
    assert_eq!(timed_out, 0, "{timed_out} of {n} workflows whose steps occurred in time were published timed_out");
    assert!(records.iter().all(|r| r.json()["outcome"] == "completed"));
}

#[test]
fn a_backlog_past_the_deadline_completes_what_occurred_in_time_at_least_once() {
    a_backlog_past_the_deadline_completes_what_occurred_in_time("at_least_once");
}

#[test]
fn a_backlog_past_the_deadline_completes_what_occurred_in_time_exactly_once() {
    a_backlog_past_the_deadline_completes_what_occurred_in_time("exactly_once");
}

/// A deadline that falls while junction is down fires after it is back,
/// with no new input to move it.
#[test]
fn a_deadline_that_fell_while_junction_was_down_fires_without_new_input() {
    let broker = Broker::kafka();
    let setup = quick_setup(&broker, "at_least_once");
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();

    let n = 20;
    let firsts: Vec<_> =
        (0..n).map(|i| event(&format!("open-{i}"), "quick", "a", "succeeded", Some(&format!("open-{i}-a")))).collect();
    broker.produce_events(&setup.input, &firsts);
    common::wait_until("every first step joined", || {
        junction.metric("junction_events_total", "result=\"accepted\"") >= n as f64
    });
    assert!(junction.terminate(), "junction exits 0 on SIGTERM");
    std::thread::sleep(Duration::from_secs(6));
    junction.start_again();

    let mut out = broker.reader(&setup.output);
    let records = out.read_until("a timeout for every workflow", |r| by_workflow(r).len() >= n).to_vec();
    assert_one_outcome_each(&records, n);
    for r in &records {
        let outcome = r.json();
        assert_eq!(outcome["outcome"], "timed_out", "{outcome}");
        assert_eq!(outcome["missing"], serde_json::json!(["b"]), "{outcome}");
        assert_eq!(outcome["compensate"], serde_json::json!(["a"]), "{outcome}");
    }
}

/// Under `at_least_once` the outcomes go out before the commit that saves
/// their state. A `kill -9` between the two replays the workflows after
/// their deadline has passed by the wall clock: the replay decides as the
/// first run did, by the steps' own times, and publishes the same records
/// (same outcome IDs, same bytes), never a `timed_out` that contradicts them.
#[test]
fn a_kill_between_outcomes_and_their_changelog_replayed_after_the_deadline_contradicts_nothing() {
    let broker = Broker::kafka();
    let setup = quick_setup(&broker, "at_least_once");
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();

    // With batches of at most 16 bytes, no changelog record can be
    // written: every commit stops after its outcomes (and is tried again).
    let changelog = format!("{}-state-changelog", setup.app);
    broker.set_topic_config(&changelog, "max.message.bytes", "16");
    // The broker applies a setting shortly after it accepts it.
    std::thread::sleep(Duration::from_secs(2));
    let n = 50;
    broker.produce_events(&setup.input, &both_steps("unsaved", n));
    let mut out = broker.reader(&setup.output);
    let first = out.read_until("an outcome for every workflow", |r| by_workflow(r).len() >= n).to_vec();
    assert!(first.iter().all(|r| r.json()["outcome"] == "completed"));
    let saved = common::read_to_end(&broker, &changelog, "read_uncommitted");
    assert!(saved.is_empty(), "{} changelog records were saved: {:?}", saved.len(), saved.first().map(|r| &r.key));
    junction.kill();

    // Back after the deadline of every workflow, with the changelog writable again.
    broker.set_topic_config(&changelog, "max.message.bytes", "1048588");
    std::thread::sleep(Duration::from_secs(6));
    junction.start_again();
    junction.wait_ready();
    common::wait_until("the replay to save every workflow", || {
        junction.metric("junction_events_total", "result=\"accepted\"") >= 2.0 * n as f64
    });
    let all = out.read_for(Duration::from_secs(3)).to_vec();
    let mut bytes_by_id: std::collections::HashMap<&str, &Option<Vec<u8>>> = std::collections::HashMap::new();
    for r in &all {
        let outcome = r.json();
        assert_eq!(outcome["outcome"], "completed", "the replay contradicts the first run: {outcome}");
        let before = bytes_by_id.entry(r.header(junction::names::HEADER_OUTCOME_ID)).or_insert(&r.value);
        assert_eq!(*before, &r.value, "a repeat of {} differs", r.header(junction::names::HEADER_OUTCOME_ID));
    }
    assert_eq!(bytes_by_id.len(), n, "one outcome ID per workflow");
    assert!(all.len() > n, "the replay published its repeats ({} records)", all.len());
}
