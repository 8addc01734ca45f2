//! The broker unavailable: at start-up, and in the middle of a run. junction
//! retries, `/readyz` says why it is not ready, work resumes when the broker
//! returns, and nothing is lost. The broker keeps its data across the restart.

mod common;

use std::time::Duration;

use common::*;

fn steps_of(ids: &[String], steps: &[&str]) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    for step in steps {
        for id in ids {
            events.push(event(id, "order", step, "succeeded", Some(&format!("{id}-{step}"))));
        }
    }
    events
}

/// Waits until `/readyz` answers 503 naming the unreachable cluster.
fn wait_unready_for_the_broker(junction: &Junction) {
    wait_until(
        "/readyz to report the unreachable cluster",
        || matches!(junction.get("/readyz"), Some((503, body)) if body.contains("unreachable")),
    );
}

/// Every workflow has one distinct outcome, `completed`; returns the repeats.
fn assert_all_completed(records: &[Record], ids: &[String]) -> usize {
    assert!(records.iter().all(|r| r.json()["outcome"] == "completed"), "every outcome is completed");
    assert_one_outcome_each(records, ids.len())
}

#[test]
fn junction_waits_for_a_broker_that_is_down_at_start_up() {
    let mut broker = Broker::start_with(Storage::Durable);
    let setup = Setup::new(&broker, 2);
    broker.stop();
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    wait_unready_for_the_broker(&junction);
    assert!(junction.is_running(), "junction keeps trying");
    std::thread::sleep(Duration::from_secs(3));
    assert!(junction.is_running(), "junction keeps trying");

    broker.resume();
    junction.wait_ready();
    let ids: Vec<String> = (0..50).map(|i| format!("late-broker-{i}")).collect();
    broker.produce_events(&setup.input, &steps_of(&ids, &["payment", "inventory", "fraud_check"]));
    let mut output = broker.reader(&setup.output);
    let records = output.read_until("every outcome", |r| by_workflow(r).len() == ids.len()).to_vec();
    assert_eq!(assert_all_completed(&records, &ids), 0, "no repeats without a crash");
    assert!(junction.logs().contains("cannot reach the Kafka cluster at start-up"), "the log says why it waits");
}

#[test]
fn a_broker_restart_in_the_middle_of_a_run_loses_nothing() {
    let mut broker = Broker::start_with(Storage::Durable);
    let setup = Setup::new(&broker, 4);
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();

    let ids: Vec<String> = (0..300).map(|i| format!("outage-{i}")).collect();
    let (first, second) = ids.split_at(150);
    // The first half completes before the outage; the second half is open across it.
    broker.produce_events(&setup.input, &steps_of(first, &["payment", "inventory", "fraud_check"]));
    broker.produce_events(&setup.input, &steps_of(second, &["payment", "inventory"]));
    let mut output = broker.reader(&setup.output);
    output.read_until("the first half's outcomes", |r| by_workflow(r).len() >= first.len());
    wait_until("the open workflows to be committed", || {
        junction.metric("junction_workflows_open", "") == second.len() as f64
    });

    broker.stop();
    wait_unready_for_the_broker(&junction);
    std::thread::sleep(Duration::from_secs(3));
    assert!(junction.is_running(), "junction rides out the outage");
    broker.resume();

    broker.produce_events(&setup.input, &steps_of(second, &["fraud_check"]));
    let mut output = broker.reader(&setup.output);
    let records = output.read_until("every outcome", |r| by_workflow(r).len() == ids.len()).to_vec();
    let repeats = assert_all_completed(&records, &ids);
    junction.wait_ready();
    assert_eq!(junction.metric("junction_workflows_open", ""), 0.0);
    println!("outage: {} workflows, {} outcomes, {repeats} repeats, 0 lost", ids.len(), records.len());
}

/// A restarting broker answers metadata requests with no broker in them
/// until its controller unfences it, and librdkafka strands a client told
/// so: it never asks for a broker again (`junction::kafka::stranded`).
/// junction replaces each of its clients so stranded, and decides what
/// comes after. A proxy in front of Apache Kafka stages the restart.
#[test]
fn workflows_after_a_broker_restart_that_answered_as_fenced_are_decided() {
    decide_after_a_restart_answered_as_fenced("at_least_once");
}

#[test]
fn workflows_after_a_broker_restart_that_answered_as_fenced_are_decided_exactly_once() {
    decide_after_a_restart_answered_as_fenced("exactly_once");
}

fn decide_after_a_restart_answered_as_fenced(guarantee: &'static str) {
    decide_after_a_restart_answered_as_fenced_to(guarantee, "");
}

/// The restart, answered as fenced to the clients whose `client.id` ends with `to` ("": every client).
fn decide_after_a_restart_answered_as_fenced_to(guarantee: &'static str, to: &str) {
    let proxy = proxy::Proxy::start(free_port());
    let broker = Broker::kafka_through(&proxy);
    let mut setup = Setup::new(&broker, 2);
    setup.guarantee = guarantee;
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();
    let steps = ["payment", "inventory", "fraud_check"];
    let before: Vec<String> = (0..200).map(|i| format!("before-{i}")).collect();
    broker.produce_events(&setup.input, &steps_of(&before, &steps));
    broker.reader(&setup.output).read_until("the outcomes before", |r| by_workflow(r).len() >= before.len());

    proxy.restart_answering_as_fenced_to(to);
    let after: Vec<String> = (0..200).map(|i| format!("after-{i}")).collect();
    broker.produce_events(&setup.input, &steps_of(&after, &steps));
    let ids: Vec<String> = before.iter().chain(&after).cloned().collect();
    let records = broker.reader(&setup.output).every_outcome(ids.len(), Duration::from_secs(1));
    let repeats = assert_all_completed(&records, &ids);
    if guarantee == "exactly_once" {
        assert_eq!(repeats, 0, "a read_committed reader sees no repeat under exactly_once");
    }
    assert!(junction.is_running(), "junction rides out the restart");
    // Whether a fenced answer stranded a client is librdkafka's timing: not asserted.
    let logs = junction.logs();
    let stranded = ["the input consumer reaches no broker", "the producer reaches no broker"].map(|l| logs.contains(l));
    println!(
        "a restart answered as fenced to {to:?}, {guarantee}: {} workflows, {} outcomes, {repeats} repeats; \
         replaced as stranded (input consumer, producer): {stranded:?}",
        ids.len(),
        records.len()
    );
}

/// A broker's fenced answer can reach the transactional producer alone
/// (librdkafka issue 5301: told of no broker, it may ask for none again)
/// while the input consumer reaches the cluster and goes on reading. No
/// transaction may wait on that producer (it would hold the stream thread
/// for the commit timeout, a minute), and it is replaced. (Without that,
/// this failed in 1 of 2 runs: the producer is not stranded every time.)
#[test]
fn workflows_after_the_producer_alone_was_told_of_no_broker_are_decided_exactly_once() {
    decide_after_a_restart_answered_as_fenced_to("exactly_once", "-producer");
}
