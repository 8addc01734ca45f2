//! Incremental rebalancing, against Apache Kafka 4.x with both of its group
//! protocols: the classic one with the cooperative-sticky assignor, and the
//! consumer protocol of KIP-848 (`group.protocol=consumer`), where the broker
//! assigns. An instance joining under load takes over only some partitions;
//! the first instance keeps the others and keeps processing them. The pause
//! of each partition is measured and printed.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

const PARTITIONS: usize = 6;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn a_joining_instance_moves_only_some_partitions_and_the_others_keep_going_classic_protocol() {
    a_joining_instance_moves_only_some_partitions("classic");
}

#[test]
fn a_joining_instance_moves_only_some_partitions_and_the_others_keep_going_consumer_protocol() {
    a_joining_instance_moves_only_some_partitions("consumer");
}

fn a_joining_instance_moves_only_some_partitions(group_protocol: &'static str) {
    let broker = Arc::new(Broker::kafka());
    let mut setup = Setup::new(&broker, PARTITIONS as i32);
    setup.group_protocol = group_protocol;
    let work = tempfile::tempdir().unwrap();
    let mut first = Junction::start(&setup, work.path(), "j0");
    first.wait_ready();

    // A steady load: 30 complete workflows every 50 ms, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (broker, stop, input) = (Arc::clone(&broker), Arc::clone(&stop), setup.input.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut events = Vec::new();
                for w in n..n + 30 {
                    for step in ["payment", "inventory", "fraud_check"] {
                        events.push(event(&format!("rb-{w}"), "order", step, "succeeded", None));
                    }
                }
                broker.produce_events(&input, &events);
                n += 30;
                std::thread::sleep(Duration::from_millis(50));
            }
            n
        })
    };
    std::thread::sleep(Duration::from_secs(4));
    let joined_ms = now_ms();
    let mut second = Junction::start(&setup, work.path(), "j1");
    second.wait_ready();
    let ready_ms = now_ms();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::SeqCst);
    let workflows = load.join().unwrap();

    let mut output = broker.reader(&setup.output);
    let records = output.read_until("every outcome", |r| by_workflow(r).len() >= workflows).to_vec();
    assert_eq!(by_workflow(&records).len(), workflows, "every workflow has its outcome");

    // Who held what: the first instance gave up some partitions, never all.
    let log = first.logs();
    let revokes: Vec<&str> = log.lines().filter(|l| l.contains("partitions revoked")).collect();
    assert!(!revokes.is_empty(), "the first instance gave partitions to the second:\n{log}");
    for line in &revokes {
        assert!(!line.contains("keeping=[]"), "the first instance gave up every partition: {line}");
    }
    let second_log = second.logs();
    assert!(second_log.contains("partitions assigned"), "{second_log}");

    // The state moved too: each instance ends up with half of the home
    // partitions (the repartition topic's, whose tasks hold the stores), not
    // one with every input partition and the other with every store; and it
    // reads the input partitions of the same numbers.
    let (first_homes, first_inputs) = holdings(&log);
    let (second_homes, second_inputs) = holdings(&second_log);
    println!("rebalance ({group_protocol} protocol): j0 holds homes {first_homes:?} and inputs {first_inputs:?}");
    println!("rebalance ({group_protocol} protocol): j1 holds homes {second_homes:?} and inputs {second_inputs:?}");
    for (name, homes) in [("first", &first_homes), ("second", &second_homes)] {
        assert_eq!(
            homes.len(),
            PARTITIONS / 2,
            "the {name} instance holds half of the home partitions:\n{log}\n{second_log}"
        );
    }
    assert_eq!(first_homes, first_inputs, "the first instance reads the input partitions of its homes");
    assert_eq!(second_homes, second_inputs, "the second instance reads the input partitions of its homes");

    // Each input partition's longest gap between outcomes around the join,
    // from the outcome records' timestamps (set when junction sends them).
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for r in &records {
        let p = junction::route::partitioner::murmur2_partition(r.key.as_deref().unwrap_or_default(), PARTITIONS);
        by_partition.entry(p).or_default().push(r.timestamp_ms);
    }
    println!(
        "rebalance ({group_protocol} protocol): the second instance started at +0 ms and was ready at +{} ms",
        ready_ms - joined_ms
    );
    for (p, mut ts) in by_partition {
        ts.sort_unstable();
        let window: Vec<i64> = ts.into_iter().filter(|t| *t >= joined_ms - 1_000 && *t <= ready_ms + 3_000).collect();
        let pause = window.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        println!("rebalance: input partition {p}: longest pause between outcomes {pause} ms");
    }
    println!("rebalance: {}", revokes.join("\nrebalance: "));
}

/// The home and input partition numbers an instance's log last said it
/// holds: its last "partitions assigned" line names both; a revoke after it
/// names the homes kept (`keeping`), and the inputs are then those assigned
/// less those revoked.
fn holdings(log: &str) -> (Vec<i32>, Vec<i32>) {
    let numbers = |text: &str| -> Vec<i32> {
        text.split(|c: char| !c.is_ascii_digit()).filter(|n| !n.is_empty()).map(|n| n.parse().unwrap()).collect()
    };
    let list = |line: &str, key: &str| -> String {
        let from = line.split(&format!("{key}=[")).nth(1).unwrap_or_default();
        // Up to the list's closing bracket: the first "]" not inside a tuple's parentheses.
        from.split(']').next().unwrap_or_default().to_string()
    };
    // An input list is [("topic", n), ...]: each number follows a topic's closing quote.
    let inputs = |text: &str| -> Vec<i32> {
        text.split("\", ").skip(1).filter_map(|r| r.split(')').next()).flat_map(numbers).collect()
    };
    let (mut homes, mut held_inputs) = (Vec::new(), Vec::new());
    for line in log.lines() {
        if line.contains("partitions assigned") {
            homes = numbers(&list(line, "home_partitions"));
            held_inputs = inputs(&list(line, "input_partitions"));
        } else if line.contains("partitions revoked") {
            homes = numbers(&list(line, "keeping"));
            let revoked = inputs(&list(line, "revoked_inputs"));
            held_inputs.retain(|p| !revoked.contains(p));
        }
    }
    (homes, held_inputs)
}

/// Two instances given one `kafka.instance_id` under `at_least_once`. No
/// transactional producer fences the first: only the group does, when the
/// second joins as the same static member, and librdkafka hands that to the
/// consumer as a fatal consumption error. The fenced instance must stop and
/// name the setting to fix, not stay up holding nothing; the other goes on
/// and every workflow is decided.
#[test]
fn two_instances_given_one_instance_id_leave_one_running_and_the_other_says_why_at_least_once() {
    let broker = Arc::new(Broker::kafka());
    let mut setup = Setup::new(&broker, 4);
    setup.guarantee = "at_least_once";
    // As a deployment that copies one configuration to every replica would.
    setup.kafka_options = "instance_id = \"replica\"\n".into();
    let work = tempfile::tempdir().unwrap();
    let mut a = Junction::start(&setup, work.path(), "a");
    a.wait_ready();
    let load = Load::start(&broker, &setup.input, "twins");
    broker.reader(&setup.output).read_until("outcomes under load", |r| r.len() >= 200);
    let mut b = Junction::start(&setup, work.path(), "b");

    assert_eq!(a.wait_exit(), Some(1), "the fenced instance exits with an error");
    let log = a.logs();
    assert!(log.contains("kafka.instance_id"), "a names the setting to fix:\n{log}");
    b.wait_ready();
    std::thread::sleep(Duration::from_secs(2));
    let (workflows, _) = load.finish();
    let records = broker.reader(&setup.output).every_outcome(workflows, Duration::from_secs(2));
    assert_one_outcome_each(&records, workflows);
    assert!(b.is_running(), "the survivor goes on");
    assert_no_panic(&b, "b");
}

/// A rebalance's assignment that reaches an instance as it leaves the
/// group. The instance is told to stop, and its stream thread is held where
/// it starts to leave (after its last commit) while the other instance, a
/// dynamic member, leaves: the group gives this one the other's partitions,
/// and that assignment waits in the consumer's queue when the close goes
/// on. In a close, librdkafka may end its group before it answers a request
/// that a callback sends, which then waits for ever (librdkafka issues 4041
/// and 4884). The instance must exit with status 0 within its shutdown
/// budget, and a successor decides every workflow.
#[test]
fn an_assignment_that_arrives_as_an_instance_leaves_its_group_does_not_hang_its_shutdown() {
    let broker = Arc::new(Broker::kafka());
    let mut setup = Setup::new(&broker, PARTITIONS as i32);
    // A dynamic member's shutdown leaves the group at once, so that it rebalances at once.
    setup.kafka_options = "static_membership = false\n".into();
    let work = tempfile::tempdir().unwrap();
    let (mut leaving, mut other) = Junction::start_two(&setup, work.path());
    let load = Load::start(&broker, &setup.input, "close");
    broker.reader(&setup.output).read_until("outcomes under load", |r| r.len() >= 500);

    let (gdb, closing) = leaving.stall_in_close(Duration::from_secs(5));
    leaving.signal("-TERM");
    wait_until("the stream thread to start leaving the group", &closing);
    assert!(other.terminate(), "the other instance exits 0 on SIGTERM:\n{}", other.logs());
    let code = leaving.wait_exit();
    drop(gdb);
    assert_eq!(code, Some(0), "the instance leaving shuts down within its budget:\n{}", leaving.logs());

    let mut successor = Junction::start(&setup, work.path(), "successor");
    successor.wait_ready();
    std::thread::sleep(Duration::from_secs(2));
    let (workflows, _) = load.finish();
    let records = broker.reader(&setup.output).every_outcome(workflows, Duration::from_secs(2));
    assert_one_outcome_each(&records, workflows);
    assert!(successor.terminate(), "the successor exits 0 on SIGTERM");
}

/// A static member that its group fences though no other instance has its
/// ID: here a client that joins once under its `group.instance.id` and goes
/// without leaving, as a broker restart or a join that timed out can leave
/// it too (the chaos test met it after a frozen broker). The instance gives
/// its partitions up as lost, joins again with a new consumer and decides
/// every workflow; only a second fence soon after says that another
/// instance has its ID.
#[test]
fn a_static_member_fenced_once_joins_again_and_decides_everything() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::ClientConfig;

    let broker = Arc::new(Broker::kafka());
    let mut setup = Setup::new(&broker, 4);
    setup.kafka_options = "instance_id = \"one\"\n".into();
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();
    let load = Load::start(&broker, &setup.input, "fenced");
    broker.reader(&setup.output).read_until("outcomes under load", |r| r.len() >= 200);
    {
        // Takes junction's place in the group, then goes without leaving.
        let intruder: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &setup.bootstrap)
            .set("group.id", &setup.app)
            .set("group.instance.id", format!("{}-one", setup.app))
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        intruder.subscribe(&[&format!("{}-repartition", setup.app)]).unwrap();
        wait_until("the intruder to take junction's place", || {
            intruder.poll(Duration::from_millis(100));
            intruder.assignment().is_ok_and(|a| a.count() > 0)
        });
    }
    wait_until("junction to join again", || junction.logs().contains("joining the group again with a new consumer"));
    junction.wait_ready();
    std::thread::sleep(Duration::from_secs(2));
    let (workflows, _) = load.finish();
    let records = broker.reader(&setup.output).every_outcome(workflows, Duration::from_secs(2));
    assert_one_outcome_each(&records, workflows);
    assert!(junction.terminate(), "junction exits 0 on SIGTERM:\n{}", junction.logs());
}
