//! A record that a topic refuses for good never stops the others. Here the
//! output topic's `max.message.bytes` is lowered while junction runs under
//! load, below the size of one workflow's outcome (its steps carry large
//! payloads): that outcome is published without its payloads, with the
//! header `junction.truncated`, and every other outcome is committed as
//! usual, exactly once under `exactly_once`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The output topic's limit while the large outcome is decided: above any
/// batch of ordinary outcomes, below the large one.
const OUTPUT_LIMIT: &str = "24000";
/// Each of the large workflow's three payloads: 12 KB that do not compress.
const PAYLOAD_DIGITS: usize = 12_000;

#[test]
fn an_outcome_too_large_for_the_output_topic_goes_without_payloads_and_the_rest_commits_at_least_once() {
    too_large_for_the_output_topic("at_least_once");
}

#[test]
fn an_outcome_too_large_for_the_output_topic_goes_without_payloads_and_the_rest_commits_exactly_once() {
    too_large_for_the_output_topic("exactly_once");
}

fn too_large_for_the_output_topic(guarantee: &'static str) {
    let broker = Arc::new(Broker::kafka());
    let mut setup = Setup::new(&broker, 4);
    setup.guarantee = guarantee;
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();

    let load = Load::start(&broker, &setup.input, "small");
    broker.reader(&setup.output).read_until("outcomes under load", |r| r.len() >= 300);
    broker.set_topic_config(&setup.output, "max.message.bytes", OUTPUT_LIMIT);
    let large: Vec<Value> = ["payment", "inventory", "fraud_check"]
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let mut e = event("large-1", "order", step, "succeeded", None);
            e["payload"] = Value::String(noise(i as u64 + 1, PAYLOAD_DIGITS));
            e
        })
        .collect();
    broker.produce_events(&setup.input, &large);
    let mut output = broker.reader(&setup.output);
    output.read_until("the large workflow's outcome", |r| by_workflow(r).contains_key("large-1"));
    std::thread::sleep(Duration::from_secs(2));
    let (workflows, _) = load.finish();

    output.read_until("every outcome", |r| by_workflow(r).len() > workflows);
    let records = output.read_for(Duration::from_secs(2)).to_vec();
    let repeats = assert_one_outcome_each(&records, workflows + 1);
    if guarantee == "exactly_once" {
        assert_eq!(repeats, 0, "a read_committed reader saw repeated outcomes");
    }
    let large = records.iter().find(|r| r.json()["workflow_id"] == "large-1").unwrap();
    let why = large.header("junction.truncated");
    assert!(why.contains("larger than the output topic takes"), "{why}");
    let outcome = large.json();
    assert_eq!(outcome["outcome"], "completed");
    for step in ["payment", "inventory", "fraud_check"] {
        assert_eq!(outcome["steps"][step]["status"], "succeeded", "{outcome}");
        assert_eq!(outcome["steps"][step]["payload"], Value::Null, "the payloads are left out");
    }
    for r in records.iter().filter(|r| r.json()["workflow_id"] != "large-1") {
        assert!(!r.headers.contains_key("junction.truncated"), "only the large outcome is truncated: {r:?}");
    }
    assert!(junction.is_running(), "junction goes on");
    let log = junction.logs();
    assert!(!log.contains("panicked"), "{log}");
    println!(
        "refusals ({guarantee}): {workflows} ordinary workflows and one of {} bytes of payloads; {} outcome records, \
         {repeats} repeats; the large one published without payloads: {why}",
        3 * PAYLOAD_DIGITS,
        records.len()
    );
}
