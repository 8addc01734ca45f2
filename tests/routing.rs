//! Routing: every workflow joins, whoever produced its events. Producers
//! configured as users configure them (a Java-style murmur2 producer, a
//! librdkafka-default CRC32 producer, an unkeyed one, a third party's topic
//! in its own format with another partition count) put a workflow's steps on
//! different partitions; junction forwards each to its home partition and
//! joins it there, through crashes, under both guarantees.

mod common;

use common::{
    assert_one_outcome_each, by_workflow, event, http_get, read_to_end, wait_until, Broker, Junction, RawRecord, Setup,
};
use junction::route;
use serde_json::{json, Value};

fn keyed(e: &Value) -> RawRecord {
    (Some(e["workflow_id"].as_str().unwrap().as_bytes().to_vec()), Some(serde_json::to_vec(e).unwrap()))
}

fn unkeyed(e: &Value) -> RawRecord {
    (None, Some(serde_json::to_vec(e).unwrap()))
}

#[test]
fn steps_from_a_murmur2_a_crc32_and_an_unkeyed_producer_all_join_at_least_once() {
    three_producers(Broker::start(), "at_least_once");
}

#[test]
fn steps_from_a_murmur2_a_crc32_and_an_unkeyed_producer_all_join_exactly_once() {
    three_producers(Broker::kafka(), "exactly_once");
}

fn three_producers(broker: Broker, guarantee: &'static str) {
    let setup = Setup::new(&broker, 4);
    let mut setup = setup;
    setup.guarantee = guarantee;
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();
    let n = 400;
    let ids: Vec<String> = (0..n).map(|i| format!("mixed-{i}")).collect();
    let step = |step: &str| -> Vec<Value> {
        ids.iter().map(|id| event(id, "order", step, "succeeded", Some(&format!("{id}-{step}")))).collect()
    };
    // The payment service partitions as Java clients do; the inventory
    // service is a Python or Go client with librdkafka's default; the fraud
    // check sends no key at all.
    broker.produce_with(Some("murmur2_random"), &setup.input, &step("payment").iter().map(keyed).collect::<Vec<_>>());
    broker.produce_with(None, &setup.input, &step("inventory").iter().map(keyed).collect::<Vec<_>>());
    broker.produce_with(None, &setup.input, &step("fraud_check").iter().map(unkeyed).collect::<Vec<_>>());

    let mut out = broker.reader(&setup.output);
    let records = out.read_until("every workflow's outcome", |r| by_workflow(r).len() >= n).to_vec();
    assert_eq!(assert_one_outcome_each(&records, n), 0, "no repeats without a crash");
    assert!(records.iter().all(|r| r.json()["outcome"] == "completed"), "every workflow completed");
    for r in &records {
        // Keyed by workflow ID with murmur2: a Java consumer or Kafka Streams co-partitions with them.
        let id = r.json()["workflow_id"].as_str().unwrap().to_string();
        assert_eq!(r.key.as_deref(), Some(id.as_bytes()));
        assert_eq!(r.partition, route::home(&id, 4), "{id}'s outcome is on its murmur2 partition");
    }
    // A record read on its home partition (every murmur2 one, a quarter of
    // the others) is joined there (under at_least_once where its marker is
    // read back); only the rest go through the repartition topic.
    let input = read_to_end(&broker, &setup.input, "read_committed");
    let off_home = input.iter().filter(|r| r.partition != route::home(r.json()["workflow_id"].as_str().unwrap(), 4));
    let forwarded = junction.metric("junction_forwarded_total", &format!("topic=\"{}\"", setup.input));
    assert_eq!(forwarded, off_home.count() as f64, "records forwarded, of {}", input.len());
    let murmur2_forwarded = input
        .iter()
        .filter(|r| r.json()["step"] == "payment")
        .filter(|r| r.partition != route::home(r.json()["workflow_id"].as_str().unwrap(), 4))
        .count();
    assert_eq!(murmur2_forwarded, 0, "a murmur2 producer keyed by workflow ID puts every record on its home");
    // As of the last finished commit, which can follow an at_least_once outcome.
    wait_until("mixed-7's committed state", || {
        http_get(junction.http_port, "/workflows/mixed-7").is_some_and(|(s, _)| s == 200)
    });
    let (status, body) = http_get(junction.http_port, "/workflows/mixed-7").unwrap();
    assert_eq!(status, 200, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["home_partition"], route::home("mixed-7", 4));
    eprintln!(
        "three producers ({guarantee}): {n} workflows completed, {forwarded} of {} records forwarded",
        input.len()
    );
}

/// A payment provider's callback topic, in the provider's format.
const CALLBACK_MAPPING: &str = r#"
[kafka.mappings.CALLBACKS]
workflow_id = "/merchantReference"
fixed_workflow_type = "callback"
fixed_step = "callback"
status = "/eventCode"
status_values = { AUTHORISATION = "succeeded", REFUSED = "failed" }
event_id = "/pspReference"
occurred_at = "/eventDate"
payload = "/amount"
"#;

#[test]
fn two_input_topics_of_different_sizes_one_in_a_foreign_format() {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, 3);
    let callbacks = format!("{}-psp", setup.app);
    broker.create_topic(&callbacks, 5);
    setup.more_inputs = vec![callbacks.clone()];
    setup.mappings = CALLBACK_MAPPING.replace("CALLBACKS", &callbacks);
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();
    assert_eq!(broker.partition_count(&format!("{}-repartition", setup.app)), 5, "N: the largest input's count");
    assert_eq!(broker.partition_count(&format!("{}-state-changelog", setup.app)), 5);

    let n = 200;
    let requests: Vec<RawRecord> = (0..n)
        .map(|i| keyed(&event(&format!("pay-{i}"), "callback", "request", "succeeded", Some(&format!("req-{i}")))))
        .collect();
    broker.produce(&setup.input, &requests);
    // The provider keys by its own reference, with its own partitioner.
    let at = junction::time::format_time(junction::time::now_ms());
    let callback = |i: usize, code: &str| -> RawRecord {
        let v = json!({
            "merchantReference": format!("pay-{i}"),
            "pspReference": format!("psp-{i}"),
            "eventCode": code,
            "eventDate": at,
            "amount": {"value": i, "currency": "EUR"},
            "success": "true",
        });
        (Some(format!("psp-{i}").into_bytes()), Some(serde_json::to_vec(&v).unwrap()))
    };
    let mut records: Vec<RawRecord> =
        (0..n).map(|i| callback(i, if i % 10 == 3 { "REFUSED" } else { "AUTHORISATION" })).collect();
    // What the mapping cannot read: no reference, an unmapped code, not JSON.
    let no_reference = br#"{"pspReference":"psp-x","eventCode":"AUTHORISATION"}"#.to_vec();
    let unmapped = serde_json::to_vec(&json!({"merchantReference": "pay-1", "eventCode": "CHARGEBACK"})).unwrap();
    records.push((Some(b"x1".to_vec()), Some(no_reference.clone())));
    records.push((Some(b"x2".to_vec()), Some(unmapped.clone())));
    records.push((Some(b"x3".to_vec()), Some(b"<xml/>".to_vec())));
    broker.produce(&callbacks, &records);

    let mut out = broker.reader(&setup.output);
    let outcomes = out.read_until("every payment's outcome", |r| by_workflow(r).len() >= n).to_vec();
    assert_one_outcome_each(&outcomes, n);
    for (id, o) in by_workflow(&outcomes) {
        let i: usize = id.strip_prefix("pay-").unwrap().parse().unwrap();
        let expected = if i % 10 == 3 { "failed" } else { "completed" };
        assert_eq!(o[0]["outcome"], expected, "{id}: {}", o[0]);
        assert_eq!(o[0]["steps"]["callback"]["payload"]["value"], i, "the mapped payload is carried");
        assert_eq!(o[0]["steps"]["callback"]["occurred_at"], at.as_str(), "the mapped time is the event's");
    }

    let mut dlq = broker.reader(&setup.dead_letters);
    let dead = dlq.read_until("the unreadable callbacks", |r| r.len() >= 3).to_vec();
    assert_eq!(dead.len(), 3, "only the unreadable callbacks are dead-lettered");
    let find = |value: &[u8]| dead.iter().find(|d| d.value.as_deref() == Some(value)).expect("dead letter");
    let missing = find(&no_reference);
    assert_eq!(missing.header("junction.error"), "missing_field");
    assert!(missing.header("junction.error.detail").contains("/merchantReference"), "names the pointer");
    assert_eq!(missing.header("junction.source.topic"), callbacks);
    let code = find(&unmapped);
    assert_eq!(code.header("junction.error"), "invalid_field");
    assert!(
        code.header("junction.error.detail").contains("/eventCode")
            && code.header("junction.error.detail").contains("CHARGEBACK")
    );
    assert_eq!(code.key.as_deref(), Some(&b"pay-1"[..]), "keyed by the workflow ID it gave");
    assert_eq!(code.header("junction.source.key"), "x2");
    assert_eq!(find(b"<xml/>").header("junction.error"), "not_json");
    assert!(junction.is_running());
}

/// Workflows whose every step is sent without a key: almost all of them
/// are forwarded.
fn unkeyed_orders(prefix: &str, range: std::ops::Range<usize>) -> Vec<RawRecord> {
    let mut records = Vec::new();
    for step in ["payment", "inventory", "fraud_check"] {
        for i in range.clone() {
            let id = format!("{prefix}-{i}");
            records.push(unkeyed(&event(&id, "order", step, "succeeded", Some(&format!("{id}-{step}")))));
        }
    }
    records
}

fn kill_9_while_forwarding(broker: Broker, guarantee: &'static str) -> usize {
    let mut setup = Setup::new(&broker, 4);
    setup.guarantee = guarantee;
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();
    let n = 3_000;
    broker.produce(&setup.input, &unkeyed_orders("fwd", 0..n / 2));
    wait_until("records being forwarded", || junction.metric("junction_forwarded_total", "") > 500.0);
    junction.kill();
    broker.produce(&setup.input, &unkeyed_orders("fwd", n / 2..n));
    junction.start_again();

    let mut out = broker.reader(&setup.output);
    let records = out.read_until("every outcome after the restart", |r| by_workflow(r).len() >= n).to_vec();
    let repeats = assert_one_outcome_each(&records, n);
    assert!(records.iter().all(|r| r.json()["outcome"] == "completed"), "a repeated forward is absorbed");
    eprintln!("kill -9 while forwarding ({guarantee}): {n} workflows, {} records, {repeats} repeats", records.len());
    repeats
}

#[test]
fn kill_9_while_forwarding_loses_nothing_at_least_once() {
    kill_9_while_forwarding(Broker::start(), "at_least_once");
}

#[test]
fn kill_9_while_forwarding_loses_nothing_and_repeats_nothing_exactly_once() {
    // The reader is read_committed: a forward and its outcome are in the transaction of their input.
    assert_eq!(kill_9_while_forwarding(Broker::kafka(), "exactly_once"), 0, "no outcome is repeated");
}

#[test]
fn an_input_topic_that_gains_partitions_is_read_on_its_new_ones() {
    let broker = Broker::kafka();
    // The tests' junction, like librdkafka, looks at the topics' metadata every second
    // (`topic.metadata.refresh.interval.ms`).
    let setup = Setup::new(&broker, 2);
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();
    let mut out = broker.reader(&setup.output);
    let before: Vec<RawRecord> = ["payment", "inventory", "fraud_check"]
        .iter()
        .map(|s| keyed(&event("before", "order", s, "succeeded", None)))
        .collect();
    broker.produce(&setup.input, &before);
    out.read_until("the outcome before the topic grew", |r| !r.is_empty());

    // The operator scales the topic out; producers (librdkafka's default
    // partitioner, keyed by workflow ID) now spread over 4 partitions,
    // while N stays 2: partitions 2 and 3 belong with homes 0 and 1.
    broker.add_partitions(&setup.input, 4);
    let n = 200;
    let mut records = Vec::new();
    for step in ["payment", "inventory", "fraud_check"] {
        records.extend((0..n).map(|i| keyed(&event(&format!("grown-{i}"), "order", step, "succeeded", None))));
    }
    broker.produce(&setup.input, &records);
    let ends = broker.end_offsets(&setup.input, 4);
    assert!(ends[2] > 0 && ends[3] > 0, "records landed on the new partitions: {ends:?}");

    let outcomes = out.read_until("every outcome after the topic grew", |r| by_workflow(r).len() > n).to_vec();
    assert_eq!(assert_one_outcome_each(&outcomes, n + 1), 0);
    assert!(outcomes.iter().all(|r| r.json()["outcome"] == "completed"), "none waited for its deadline");
    assert_eq!(broker.partition_count(&format!("{}-repartition", setup.app)), 2, "N is kept");
    assert!(junction.logs().contains("an input topic gained partitions"), "{}", junction.logs());
}

/// Under `at_least_once` a record read on its workflow's home partition
/// waits, held, for the marker that joins it there; one read elsewhere is
/// forwarded, and the repartition partition's log orders the two. After a
/// kill -9 before any commit, the instance started again reads the markers
/// back before it has read their records again (the records it holds
/// meanwhile are bounded: its input partition pauses): each marker waits for
/// its records (the pause ends for it), and every outcome published again is
/// the one published before the kill, the steps to compensate of each
/// `failed` included, which depend on the order of its steps.
#[test]
fn markers_read_back_before_their_records_wait_for_them_and_the_replay_decides_the_same() {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, 2);
    // Nothing is committed before the kill: the restart replays every marker.
    setup.commit_interval = "10m";
    // (and no backpressure commits either: 512 MiB may wait).
    setup.state_options = "grace = \"10m\"\nmax_pending_bytes = 536870912\n".to_string();
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();
    let n = 400;
    let filler = "x".repeat(16 << 10);
    let step = |id: &str, step: &str, status: &str| {
        let mut e = event(id, "order", step, status, None);
        e["payload"] = json!({ "filler": filler });
        e
    };
    // Payment and fraud check keyed by workflow ID with murmur2 (on their
    // home partitions: held), inventory unkeyed (on either: held or
    // forwarded), failing for one workflow in three.
    let (mut payments, mut inventories, mut fraud_checks) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let id = format!("held-{i}");
        payments.push(keyed(&step(&id, "payment", "succeeded")));
        inventories.push(unkeyed(&step(&id, "inventory", if i % 3 == 0 { "failed" } else { "succeeded" })));
        fraud_checks.push(keyed(&step(&id, "fraud_check", "succeeded")));
    }
    broker.produce_with(Some("murmur2_random"), &setup.input, &payments);
    broker.produce(&setup.input, &inventories);
    broker.produce_with(Some("murmur2_random"), &setup.input, &fraud_checks);
    let mut out = broker.reader(&setup.output);
    let first = out.read_until("every outcome", |r| by_workflow(r).len() >= n).len();
    junction.kill();
    // Started again, the records it reads wait for their markers while its
    // stores open; with 2 MiB for what waits, half a megabyte of them pauses
    // each input partition, and the markers, read back at once, come before
    // most of their records.
    junction.set_env("JUNCTION_STATE_MAX_PENDING_BYTES", "2097152");
    junction.start_again();
    let records = out.read_until("every outcome again", |r| r.len() >= 2 * first).to_vec();

    let mut published: std::collections::HashMap<&str, &Option<Vec<u8>>> = std::collections::HashMap::new();
    for r in &records {
        let earlier = *published.entry(r.header(junction::names::HEADER_OUTCOME_ID)).or_insert(&r.value);
        assert!(earlier == &r.value, "an outcome published again differs from the first: {:?}", r.json());
    }
    assert_eq!(published.len(), n, "one outcome ID per workflow");
    let waits = junction.logs().matches("a marker's records are being read again").count();
    eprintln!("markers after a kill -9: {n} workflows, {} outcome records, {waits} markers waited", records.len());
    assert!(waits > 0, "a marker read back before its records waited for them");
}
