//! The exactly-once path: transactions are the one thing the local broker
//! (Nisshi) does not support, so these tests run junction against
//! librdkafka's mock cluster. It runs the real transactional protocol
//! (InitProducerId, AddPartitionsToTxn, TxnOffsetCommit, EndTxn) and injects
//! errors, which is what these tests exercise. It does not enforce
//! transaction semantics: it writes no commit markers and does not hide
//! aborted records from read_committed consumers, so the tests check the flow
//! (commit, abort, recovery, offsets in the transaction), not the filtering.
//! `docker-compose.yml` runs junction against Apache Kafka, where it is real.

mod common;

use std::time::Duration;

use common::{by_workflow, event, wait_until, Broker, Junction, Record, Setup};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;

struct MockSetup {
    // Field order: the clients go before the cluster they talk to.
    broker: Broker,
    setup: Setup,
    mock: MockCluster<'static, DefaultProducerContext>,
}

fn mock_setup() -> MockSetup {
    let mock = MockCluster::new(1).unwrap();
    let broker = Broker::external(mock.bootstrap_servers());
    let mut setup = Setup::named(&broker, 2);
    setup.guarantee = "exactly_once";
    let changelog = format!("{}-state-changelog", setup.app);
    // The mock has no CreateTopics: every topic exists before junction starts.
    for topic in [&setup.input, &setup.output, &setup.dead_letters, &changelog] {
        mock.create_topic(topic, 2, 1).unwrap();
    }
    MockSetup { broker, setup, mock }
}

fn orders(prefix: &str, n: usize) -> Vec<Value> {
    let mut events = Vec::new();
    for step in ["payment", "inventory", "fraud_check"] {
        for i in 0..n {
            events.push(event(&format!("{prefix}-{i}"), "order", step, "succeeded", None));
        }
    }
    events
}

/// Every workflow has an outcome, and every record of it the same outcome ID.
fn assert_every_workflow_decided_with_stable_ids(records: &[Record], n: usize) {
    let by_id = by_workflow(records);
    assert_eq!(by_id.len(), n);
    for r in records {
        let wf = r.json()["workflow_id"].as_str().unwrap().to_string();
        assert_eq!(r.header("junction.outcome.id"), format!("{wf}:completed:{}", started_ms(&by_id[&wf][0])));
    }
}

fn started_ms(outcome: &Value) -> i64 {
    junction::event::parse_time(outcome["started_at"].as_str().unwrap()).unwrap()
}

fn wait_for_commits(j: &Junction, result: &str, at_least: f64) {
    wait_until(&format!("a {result} commit"), || {
        j.metric("junction_commits_total", &format!("result=\"{result}\"")) >= at_least
    });
}

#[test]
fn outcomes_changelog_and_input_offsets_commit_in_one_transaction() {
    let m = mock_setup();
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&m.setup, work.path(), "eos");
    junction.wait_ready();

    let n = 200;
    m.broker.produce_events(&m.setup.input, &orders("eos", n));
    let mut out = m.broker.reader(&m.setup.output);
    let records = out.read_until("every outcome", |r| r.len() >= n).to_vec();
    assert_eq!(records.len(), n, "no transaction failed, so nothing repeats");
    assert_every_workflow_decided_with_stable_ids(&records, n);
    wait_for_commits(&junction, "ok", 1.0);
    assert_eq!(junction.metric("junction_commits_total", "result=\"failed\""), 0.0);
    let changelog = format!("{}-state-changelog", m.setup.app);
    let mut cl = m.broker.reader(&changelog);
    cl.read_until("changelog records", |r| r.len() >= n);

    // The input offsets went into the transactions: a restart reprocesses nothing.
    assert!(junction.terminate());
    junction.start_again();
    junction.wait_ready();
    assert_eq!(out.read_for(Duration::from_secs(3)).len(), n, "a restart after clean commits repeats no outcome");
    assert!(junction.logs().contains("exactly_once"));
}

#[test]
fn an_aborted_transaction_discards_the_interval_and_resumes_from_the_last_commit() {
    let m = mock_setup();
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&m.setup, work.path(), "abort");
    junction.wait_ready();

    // The broker refuses the offsets of the next transaction as a zombie's
    // (a rebalance moved on): an abortable error. Only junction's
    // transactional producer sends this request, so the test's own clients
    // are unaffected.
    m.mock.request_errors(RDKafkaApiKey::TxnOffsetCommit, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION]);
    let n = 100;
    m.broker.produce_events(&m.setup.input, &orders("abort", n));
    let mut out = m.broker.reader(&m.setup.output);
    let records = out.read_until("every outcome after the abort", |r| by_workflow(r).len() >= n).to_vec();
    assert_every_workflow_decided_with_stable_ids(&records, n);
    wait_for_commits(&junction, "failed", 1.0);
    assert!(
        junction.logs().contains("commit failed; discarding the work since the last commit"),
        "{}",
        junction.logs()
    );
    assert!(junction.is_running(), "an abortable error does not stop junction");
}

#[test]
fn a_fenced_producer_is_replaced_and_work_resumes_from_the_last_commit() {
    let m = mock_setup();
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&m.setup, work.path(), "fenced");
    junction.wait_ready();

    // A newer producer with the same transactional ID would make the broker
    // answer like this: the producer is fenced, a fatal error.
    m.mock.request_errors(RDKafkaApiKey::AddPartitionsToTxn, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED]);
    let n = 100;
    m.broker.produce_events(&m.setup.input, &orders("fenced", n));
    let mut out = m.broker.reader(&m.setup.output);
    let records = out.read_until("every outcome after the fencing", |r| by_workflow(r).len() >= n).to_vec();
    assert_every_workflow_decided_with_stable_ids(&records, n);
    wait_for_commits(&junction, "failed", 1.0);
    assert!(junction.logs().contains("fatal"), "{}", junction.logs());
    assert!(junction.is_running());
}
