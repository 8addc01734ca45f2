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

#[test]
fn outcomes_the_output_topic_refuses_by_its_acls_go_to_the_dead_letter_topic_at_least_once() {
    refused_by_acls("at_least_once");
}

#[test]
fn outcomes_the_output_topic_refuses_by_its_acls_go_to_the_dead_letter_topic_exactly_once() {
    refused_by_acls("exactly_once");
}

/// The output topic's ACLs deny junction's user the right to write, while
/// it may do everything else: every outcome goes to the dead-letter topic
/// (`outcome_refused`, the outcome as the value), the dead letters of bad
/// input go there as usual, and junction goes on.
fn refused_by_acls(guarantee: &'static str) {
    let broker = Broker::start_secure_with(&[
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        // The broker's own connections (plaintext, the controller) are anonymous.
        "super.users=User:ANONYMOUS",
    ]);
    let mut setup = Setup::named(&broker, 2);
    setup.guarantee = guarantee;
    broker.add_acls(&[
        "ALLOW:TOPIC:*:ALL",
        "ALLOW:GROUP:*:ALL",
        "ALLOW:TRANSACTIONAL_ID:*:ALL",
        "ALLOW:CLUSTER:kafka-cluster:ALL",
        &format!("DENY:TOPIC:{}:WRITE", setup.output),
    ]);
    broker.create_topic(&setup.input, 2);
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();

    let ids: Vec<String> = (0..20).map(|i| format!("denied-{i}")).collect();
    let events: Vec<Value> = ids
        .iter()
        .flat_map(|id| ["payment", "inventory", "fraud_check"].map(|s| event(id, "order", s, "succeeded", None)))
        .collect();
    broker.produce_events(&setup.input, &events);
    broker.produce(&setup.input, &[(Some(b"bad".to_vec()), Some(b"{not json".to_vec()))]);

    let mut dead = broker.reader(&setup.dead_letters);
    let refused = |r: &[Record]| r.iter().filter(|d| d.header("junction.error") == "outcome_refused").count();
    dead.read_until("every outcome on the dead-letter topic", |r| refused(r) >= ids.len());
    let records = dead.read_for(Duration::from_secs(2)).to_vec();
    let outcomes: Vec<&Record> = records.iter().filter(|d| d.header("junction.error") == "outcome_refused").collect();
    let distinct: std::collections::HashSet<&str> = outcomes.iter().map(|d| d.header("junction.outcome.id")).collect();
    assert_eq!(distinct.len(), ids.len(), "every outcome, on the dead-letter topic");
    for d in &outcomes {
        assert_eq!(d.json()["outcome"], "completed", "the value is the outcome record");
        assert!(d.header("junction.error.detail").contains("refuse"), "{d:?}");
    }
    if guarantee == "exactly_once" {
        assert_eq!(outcomes.len(), ids.len(), "a read_committed reader sees each once");
    }
    assert!(records.iter().any(|d| d.header("junction.error") == "not_json"), "bad input still dead-lettered");
    assert!(read_to_end(&broker, &setup.output, "read_committed").is_empty(), "nothing on the output topic");
    assert!(junction.is_running(), "junction goes on");
    assert!(!junction.logs().contains("panicked"));
    println!(
        "refusals ({guarantee}): {} workflows; the output topic's ACLs refuse junction: {} outcome records on the \
         dead-letter topic ({} distinct)",
        ids.len(),
        outcomes.len(),
        distinct.len()
    );
}
