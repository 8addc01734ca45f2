//! Exactly-once against Apache Kafka's real transactions, read the way users
//! read the output: with `read_committed` consumers, which see a
//! transaction's records only once it commits and never an aborted one's.
//!
//! Each test breaks a transaction in a way production does (a crash in the
//! middle of one, an instance frozen past its session and transaction
//! timeouts, an abort, a restart on a new host, two instances given one
//! identity) and then checks that every outcome and every dead letter is
//! there exactly once, and that no store holds state from an aborted
//! transaction.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;
use serde_json::Value;

fn exactly_once(broker: &Broker, partitions: i32) -> Setup {
    let mut setup = Setup::new(broker, partitions);
    setup.guarantee = "exactly_once";
    setup
}

/// What a `read_committed` reader saw: every one of `workflows` decided
/// exactly once, as expected, and every bad record dead-lettered exactly
/// once. Reads on for a while after the last one, to see late repeats.
fn assert_exactly_once(broker: &Broker, setup: &Setup, prefix: &str, workflows: usize, bad: usize) {
    let records = broker.reader(&setup.output).every_outcome(workflows, Duration::from_secs(3));
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &records {
        let v = r.json();
        let id = v["workflow_id"].as_str().unwrap().to_string();
        let index: usize = id.strip_prefix(&format!("{prefix}-")).unwrap().parse().unwrap();
        let expected = if index % 20 == 7 { "failed" } else { "completed" };
        assert_eq!(v["outcome"], expected, "{id}");
        *seen.entry(id).or_default() += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "a read_committed reader saw outcomes more than once: {repeated:?}");
    assert_eq!(seen.len(), workflows, "workflows with an outcome");

    let mut dead = broker.reader(&setup.dead_letters);
    dead.read_until("every dead letter", |r| r.len() >= bad);
    let dead = dead.read_for(Duration::from_secs(1)).to_vec();
    let sources: HashSet<(String, String)> = dead
        .iter()
        .map(|d| (d.header("junction.source.partition").to_string(), d.header("junction.source.offset").to_string()))
        .collect();
    assert_eq!(dead.len(), bad, "dead letters seen by a read_committed reader");
    assert_eq!(sources.len(), bad, "each bad record dead-lettered once");
    println!(
        "exactly once: {workflows} workflows, {} outcome records, 0 repeats, 0 lost; {bad} dead letters",
        records.len()
    );
}

/// `junction`, the one instance of `setup` (2 partitions), panicked
/// nowhere, shuts down cleanly, and leaves stores that hold what the
/// committed changelog holds.
fn stops_with_its_stores_as_the_changelog(broker: &Broker, setup: &Setup, junction: &mut Junction) {
    assert_no_panic(junction, "j");
    assert!(junction.terminate(), "the shutdown did not finish:\n{}", junction.logs());
    let owners = [(junction.state_dir.clone(), 0), (junction.state_dir.clone(), 1)];
    assert_stores_match_the_committed_changelog(broker, setup, &owners);
}

#[test]
fn kill_9_in_a_transaction_then_a_restart_shows_every_outcome_and_dead_letter_once() {
    let broker = Arc::new(Broker::kafka());
    let setup = exactly_once(&broker, 4);
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();

    let load = Load::start(&broker, &setup.input, "crash");
    broker.reader(&setup.output).read_until("outcomes under load", |r| r.len() >= 500);
    freeze_in_open_transaction(&junction, &broker, &setup.output);
    junction.kill();
    assert!(transaction_open(&broker, &setup.output), "the kill left a transaction open");
    junction.start_again();
    std::thread::sleep(Duration::from_secs(3));
    let (workflows, bad) = load.finish();

    assert_exactly_once(&broker, &setup, "crash", workflows, bad);
    let everything = read_to_end(&broker, &setup.output, "read_uncommitted");
    let committed = read_to_end(&broker, &setup.output, "read_committed");
    assert!(
        everything.len() > committed.len(),
        "the transaction open at the kill was aborted: its records are in the log ({}) but not read ({})",
        everything.len(),
        committed.len()
    );
    assert_no_panic(&junction, "j");
}

#[test]
fn a_frozen_instance_is_fenced_and_nothing_it_writes_becomes_visible() {
    let broker = Arc::new(Broker::kafka());
    let setup = exactly_once(&broker, 4);
    let work = tempfile::tempdir().unwrap();
    let (mut a, mut b) = Junction::start_two(&setup, work.path());

    let load = Load::start(&broker, &setup.input, "frozen");
    broker.reader(&setup.output).read_until("outcomes under load", |r| r.len() >= 500);
    // Only the owner of a partition writes its changelog partition.
    freeze_in_open_transaction(&a, &broker, &format!("{}-state-changelog", setup.app));
    // Frozen past its session timeout (6 s): b takes every partition, and
    // waits for a's open transaction, which the broker aborts once it is
    // older than the transaction timeout.
    wait_until("b to hold every partition, restored", || b.assigned().len() == 4 && b.restoring().is_empty());
    broker.reader(&setup.output).read_until("b's outcomes for a's partitions", |r| r.len() >= 1_000);
    a.thaw();
    std::thread::sleep(Duration::from_secs(5));
    let (workflows, bad) = load.finish();

    assert_exactly_once(&broker, &setup, "frozen", workflows, bad);
    let log = a.logs();
    assert!(log.contains("fenced"), "a learns that it was fenced:\n{log}");
    // It rejoins the group, or exits cleanly.
    if a.is_running() {
        a.wait_ready();
    }
    assert_no_panic(&a, "a");
    assert_no_panic(&b, "b");
    let stores: Vec<_> =
        [&a, &b].iter().flat_map(|j| j.assigned().into_iter().map(|p| (j.state_dir.clone(), p))).collect();
    assert!(b.terminate());
    a.terminate();
    assert_stores_match_the_committed_changelog(&broker, &setup, &stores);
}

#[test]
fn an_aborted_transaction_is_redone_and_the_next_commit_is_not_mistaken_for_a_failure() {
    let broker = Arc::new(Broker::kafka());
    let setup = exactly_once(&broker, 2);
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();

    // The changelog refuses every batch of states for a while (128 bytes
    // still take the broker's own transaction markers): each transaction
    // that carries one fails, is aborted, and its interval is redone. (A
    // state has nowhere else to go; an outcome too large for the output
    // topic would be published without its payloads instead: see
    // tests/refusals.rs.)
    let changelog = format!("{}-state-changelog", setup.app);
    broker.set_topic_config(&changelog, "max.message.bytes", "128");
    let load = Load::start(&broker, &setup.input, "abort");
    wait_until("transactions aborted", || junction.metric("junction_commits_total", "result=\"failed\"") >= 3.0);
    broker.set_topic_config(&changelog, "max.message.bytes", "1048588");
    broker.reader(&setup.output).read_until("outcomes again", |r| r.len() >= 200);
    std::thread::sleep(Duration::from_secs(2));
    let (workflows, bad) = load.finish();

    assert_exactly_once(&broker, &setup, "abort", workflows, bad);
    assert!(junction.logs().contains("commit failed"), "{}", junction.logs());
    assert!(junction.is_running(), "an aborted transaction does not stop junction");
    stops_with_its_stores_as_the_changelog(&broker, &setup, &mut junction);
}

/// A transaction the broker committed, whose answer never came back (a
/// broker stalled, or the network cut, at that moment): junction's commit
/// fails, but its outcomes are out, so its interval must not be redone as
/// an aborted one's is. Every client reaches the broker through a proxy,
/// which loses the answer of one `EndTxn` and then keeps new connections
/// out until junction has given up waiting for it.
#[test]
fn a_commit_whose_answer_is_lost_is_not_redone_when_the_broker_took_it() {
    let proxy = proxy::Proxy::start(free_port());
    let broker = Arc::new(Broker::kafka_through(&proxy));
    let setup = exactly_once(&broker, 2);
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();

    let load = Load::start(&broker, &setup.input, "lost");
    broker.reader(&setup.output).read_until("the first outcomes", |r| r.len() >= 100);
    proxy.lose_next_commit_answer();
    wait_until("a commit's answer lost", || proxy.lost_a_commit_answer());
    // junction waits for the answer as long as its commit timeout allows (60 s).
    let deadline = Instant::now() + Duration::from_secs(180);
    while !junction.logs().contains("commit failed") {
        assert!(Instant::now() < deadline, "the commit did not fail:\n{}", junction.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    proxy.let_connections_through();
    broker.reader(&setup.output).read_until("outcomes after the lost answer", |r| r.len() >= 400);
    let (workflows, bad) = load.finish();

    assert_exactly_once(&broker, &setup, "lost", workflows, bad);
    assert!(junction.logs().contains("had committed: its interval is not redone"), "{}", junction.logs());
    assert!(junction.is_running(), "a commit whose answer is lost does not stop junction");
    stops_with_its_stores_as_the_changelog(&broker, &setup, &mut junction);
}

#[test]
fn a_store_is_not_restored_while_a_transaction_on_its_changelog_is_open() {
    let broker = Arc::new(Broker::kafka());
    let setup = exactly_once(&broker, 2);
    let changelog = format!("{}-state-changelog", setup.app);
    let work = tempfile::tempdir().unwrap();
    let mut a = Junction::start(&setup, work.path(), "a");
    a.wait_ready();

    let load = Load::start(&broker, &setup.input, "restore");
    broker.reader(&setup.output).read_until("outcomes under load", |r| r.len() >= 500);
    freeze_in_open_transaction(&a, &broker, &changelog);
    a.kill();
    // Another instance, with a state directory (so a transactional ID) of
    // its own, takes the partitions once a's session expires. The open
    // transaction stays open until the broker aborts it for its age.
    // The end of a's open transaction, partition by partition: b's own
    // transactions come after it.
    let ends: Vec<i64> = watermarks(&broker, &changelog).iter().map(|(_, high)| *high).collect();
    let mut b = Junction::start(&setup, work.path(), "b");
    let mut checked_while_open = 0;
    loop {
        let open: Vec<i32> = watermarks(&broker, &changelog)
            .iter()
            .zip(&ends)
            .enumerate()
            .filter(|(_, ((stable, _), end))| stable < end)
            .map(|(p, _)| p as i32)
            .collect();
        if open.is_empty() {
            break;
        }
        let (held, restoring) = (b.assigned(), b.restoring());
        for p in open.iter().filter(|p| held.contains(p)) {
            assert!(
                restoring.contains(p),
                "b counts partition {p} restored while a transaction on its changelog is open"
            );
            checked_while_open += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(checked_while_open > 0, "b held a partition while the transaction was open");
    b.wait_ready();
    std::thread::sleep(Duration::from_secs(2));
    let (workflows, bad) = load.finish();

    assert_exactly_once(&broker, &setup, "restore", workflows, bad);
    assert_no_panic(&b, "b");
    assert!(b.terminate());
    assert_stores_match_the_committed_changelog(&broker, &setup, &[(b.state_dir.clone(), 0), (b.state_dir.clone(), 1)]);
}

#[test]
fn a_restart_with_the_same_state_directory_aborts_its_open_transaction_at_once_even_on_a_new_host() {
    let broker = Arc::new(Broker::kafka());
    let mut setup = exactly_once(&broker, 2);
    // Only a restart can end the transaction within this test: the broker
    // would abort it for its age after 5 minutes.
    setup.properties.push(("transaction.timeout.ms".into(), "300000".into()));
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();

    let load = Load::start(&broker, &setup.input, "rehost");
    broker.reader(&setup.output).read_until("outcomes under load", |r| r.len() >= 500);
    freeze_in_open_transaction(&junction, &broker, &setup.output);
    junction.kill();
    // The container is re-created with its volume: the same state
    // directory, another host name.
    junction.start_again_on_host("a-new-container");
    wait_until("the open transaction to be aborted by the restarted instance", || {
        !transaction_open(&broker, &setup.output)
    });
    junction.wait_ready();
    std::thread::sleep(Duration::from_secs(2));
    let (workflows, bad) = load.finish();
    assert_exactly_once(&broker, &setup, "rehost", workflows, bad);
    assert_no_panic(&junction, "j");
}

#[test]
fn two_instances_given_one_instance_id_never_fence_each_other_in_a_loop() {
    let broker = Arc::new(Broker::kafka());
    let mut setup = exactly_once(&broker, 4);
    // As a deployment that copies one configuration to every replica would.
    setup.kafka_options = "instance_id = \"replica\"\n".into();
    let work = tempfile::tempdir().unwrap();
    let mut a = Junction::start(&setup, work.path(), "a");
    a.wait_ready();
    let load = Load::start(&broker, &setup.input, "twins");
    broker.reader(&setup.output).read_until("outcomes under load", |r| r.len() >= 200);
    let mut b = Junction::start(&setup, work.path(), "b");

    // b's producer fences a's. a must not fence b back: it stops, and says why.
    assert_eq!(a.wait_exit(), Some(1), "the fenced instance exits with an error");
    let log = a.logs();
    assert!(log.contains("kafka.instance_id"), "a names the setting to fix:\n{log}");
    b.wait_ready();
    std::thread::sleep(Duration::from_secs(2));
    let (workflows, bad) = load.finish();
    assert_exactly_once(&broker, &setup, "twins", workflows, bad);
    assert!(b.is_running(), "the survivor goes on");
    assert_no_panic(&b, "b");
}

#[test]
fn a_thawed_instance_does_not_fire_the_deadlines_its_successor_fired() {
    let broker = Arc::new(Broker::kafka());
    let setup = exactly_once(&broker, 2);
    let work = tempfile::tempdir().unwrap();
    let (a, b) = Junction::start_two(&setup, work.path());
    let held_by_a = a.assigned()[0];

    // Callbacks that never come: each of these workflows times out 2 s
    // after its request, on a's partition.
    let ids: Vec<String> = (0..2_000)
        .map(|i| format!("callback-{i}"))
        .filter(|id| junction::route::partitioner::murmur2_partition(id.as_bytes(), 2) == held_by_a)
        .take(100)
        .collect();
    let requests: Vec<Value> = ids.iter().map(|id| event(id, "callback", "request", "succeeded", None)).collect();
    broker.produce_events(&setup.input, &requests);
    let changelog = format!("{}-state-changelog", setup.app);
    wait_until("a to commit the open workflows", || {
        let records = read_to_end(&broker, &changelog, "read_committed");
        let states = records.iter().filter(|r| is_state(r.key.as_deref())).count();
        states >= ids.len()
    });
    // Frozen between transactions, before the deadlines: b takes a's
    // partition and fires them.
    a.freeze();
    let mut output = broker.reader(&setup.output);
    output.read_until("b's timed_out outcomes", |r| by_workflow(r).len() >= ids.len());
    // Thawed, a still believes it holds the partition and that the
    // deadlines are its to fire.
    a.thaw();
    let records = output.read_for(Duration::from_secs(8)).to_vec();
    for (id, outcomes) in by_workflow(&records) {
        assert_eq!(outcomes.len(), 1, "{id} was decided more than once: {outcomes:?}");
        assert_eq!(outcomes[0]["outcome"], "timed_out", "{id}");
    }
    assert_eq!(by_workflow(&records).len(), ids.len());
    assert_no_panic(&a, "a");
    assert_no_panic(&b, "b");
}

/// An instance paused in the middle of a transaction may have sent its
/// input offsets to it before its changelog records reached the broker.
/// The instance that takes its partitions over must wait for that
/// transaction before it counts its store as up to date: otherwise, once
/// the transaction commits, it reads on from offsets past records whose
/// state its store lacks, and their workflows never decide. The paused
/// instance is staged by a member of the group that the test runs itself:
/// its transaction commits the input offsets past a workflow's three steps
/// at once, and that workflow's state and outcome (as a junction of its
/// own wrote them) only once its successor holds the partition.
#[test]
fn a_successor_waits_for_its_predecessors_open_transaction_before_it_trusts_its_store() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{Offset, TopicPartitionList};
    const TIMEOUT: Duration = Duration::from_secs(30);

    let broker = Broker::kafka();
    let steps: Vec<Value> = ["payment", "inventory", "fraud_check"]
        .iter()
        .map(|s| event("paused-1", "order", s, "succeeded", None))
        .collect();
    // The workflow's decided state and its outcome, as junction writes them.
    let twin = exactly_once(&broker, 1);
    let work = tempfile::tempdir().unwrap();
    let mut t = Junction::start(&twin, work.path(), "twin");
    t.wait_ready();
    broker.produce_events(&twin.input, &steps);
    let outcome = broker.reader(&twin.output).read_until("the twin's outcome", |r| !r.is_empty())[0].clone();
    assert!(t.terminate());
    let changelog = read_to_end(&broker, &format!("{}-state-changelog", twin.app), "read_committed");
    let state = changelog.into_iter().rfind(|r| is_state(r.key.as_deref())).unwrap();

    let setup = exactly_once(&broker, 1);
    let repartition = format!("{}-repartition", setup.app);
    let mut j = Junction::start(&setup, work.path(), "j");
    j.wait_ready();
    assert!(j.terminate());
    broker.produce_events(&setup.input, &steps);

    // The predecessor: a member of the group whose open transaction holds
    // the input offset past the three steps. It then leaves the group.
    let member: BaseConsumer = broker
        .client_config()
        .set("group.id", &setup.app)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "6000")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    member.subscribe(&[&repartition]).unwrap();
    wait_until("the predecessor to hold the partition", || {
        member.poll(Duration::from_millis(100));
        member.assignment().unwrap().count() == 1
    });
    let producer: BaseProducer = broker
        .client_config()
        .set("transactional.id", unique("predecessor"))
        .set("transaction.timeout.ms", "60000")
        .create()
        .unwrap();
    producer.init_transactions(TIMEOUT).unwrap();
    producer.begin_transaction().unwrap();
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset(&setup.input, 0, Offset::Offset(steps.len() as i64)).unwrap();
    offsets.add_partition_offset(&repartition, 0, Offset::Offset(0)).unwrap();
    producer.send_offsets_to_transaction(&offsets, &member.group_metadata().unwrap(), TIMEOUT).unwrap();
    drop(member);

    // The successor takes the partition while the transaction is open. (A
    // successor that does not wait for it holds it, restored, within seconds.)
    j.start_again();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until && !(j.assigned() == [0] && j.restoring().is_empty()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let changelog = format!("{}-state-changelog", setup.app);
    let key = state.key.clone().unwrap();
    producer
        .send(BaseRecord::<[u8], [u8]>::to(&changelog).partition(0).key(&key).payload(state.value.as_deref().unwrap()))
        .unwrap();
    let headers = outcome
        .headers
        .iter()
        .fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_bytes()) }));
    let outcome_key = outcome.key.clone().unwrap();
    producer
        .send(
            BaseRecord::<[u8], [u8]>::to(&setup.output)
                .key(&outcome_key)
                .payload(outcome.value.as_deref().unwrap())
                .headers(headers),
        )
        .unwrap();
    producer.commit_transaction(TIMEOUT).unwrap();

    wait_until("the successor to hold the workflow decided by its predecessor", || {
        j.get("/workflows/paused-1")
            .is_some_and(|(status, body)| status == 200 && body.contains("\"outcome\":\"completed\""))
    });
    j.wait_ready();
    std::thread::sleep(Duration::from_secs(2));
    assert!(j.terminate());
    assert_no_panic(&j, "j");
    let outcomes = read_to_end(&broker, &setup.output, "read_committed");
    assert_eq!(outcomes.len(), 1, "the predecessor's outcome alone: {outcomes:?}");
}

/// Whether a changelog record is a workflow's state (not the clock's or a definition's).
/// Freezes `a` in a transaction that holds the group's input offsets: one
/// open on the output topic whose offsets the group coordinator will not
/// give out (a `read_committed` client asks with `require_stable`). A
/// freeze after the transaction's records but before its offsets joined it
/// is tried again.
fn freeze_holding_the_offsets(a: &Junction, broker: &Broker, setup: &Setup) {
    let asker: BaseConsumer = broker
        .client_config()
        .set("group.id", &setup.app)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let repartition = format!("{}-repartition", setup.app);
    for _ in 0..20 {
        freeze_in_open_transaction(a, broker, &setup.output);
        let mut tpl = TopicPartitionList::new();
        for p in 0..setup.partitions {
            tpl.add_partition(&repartition, p);
            tpl.add_partition(&setup.input, p);
        }
        if asker.committed_offsets(tpl, Duration::from_secs(3)).is_err() {
            return;
        }
        a.thaw();
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no freeze caught a transaction holding the group's offsets in 20 tries");
}

fn is_state(key: Option<&[u8]>) -> bool {
    junction::state::ChangelogKey::reserved(key.unwrap_or_default()).is_none()
}

/// Opening a partition runs off the stream thread, and an error there stops
/// only that partition, as a failing store does. Here the previous owner's
/// transaction holds the group's offsets longer than the successor waits for
/// them (the predecessor's `transaction.timeout.ms` is 5 minutes, the
/// successor waits its own 10 s and the broker's sweep): the successor stops
/// those partitions, stays up, tries them again, and takes them once the
/// predecessor, restarted, has aborted its transaction.
#[test]
fn a_partition_whose_offsets_stay_held_stops_alone_and_is_taken_once_they_are_free() {
    let broker = Arc::new(Broker::kafka());
    let setup = exactly_once(&broker, 2);
    let work = tempfile::tempdir().unwrap();
    let long = [("JUNCTION_KAFKA_PROPERTY_TRANSACTION_TIMEOUT_MS", "300000")];
    let mut a = Junction::start_with_env(&setup, work.path(), "a", &long);
    a.wait_ready();
    let load = Load::start(&broker, &setup.input, "held");
    broker.reader(&setup.output).read_until("outcomes under load", |r| r.len() >= 300);
    freeze_holding_the_offsets(&a, &broker, &setup);
    a.kill();

    let mut b = Junction::start(&setup, work.path(), "b");
    wait_until("b to stop a partition whose offsets stay held", || {
        b.logs().contains("its committed offsets are still held by an open transaction")
    });
    assert!(b.is_running(), "the others go on: b stays up\n{}", b.logs());
    let (status, body) = b.get("/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("still held by an open transaction"), "/readyz names it: {body}");

    // a comes back on its state directory: its producer aborts the transaction.
    a.start_again();
    a.wait_ready();
    b.wait_ready();
    std::thread::sleep(Duration::from_secs(2));
    let (workflows, bad) = load.finish();
    assert_exactly_once(&broker, &setup, "held", workflows, bad);
    assert_no_panic(&a, "a");
    assert_no_panic(&b, "b");
}
