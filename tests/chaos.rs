//! Chaos: three instances in one group under a load of 100,000 workflows,
//! with random `kill -9`s, SIGTERMs and restarts of instances, instances
//! frozen (SIGSTOP) past their session timeout and thawed, the broker
//! frozen past every session timeout, and a restart of the broker (which
//! keeps its data); on Apache Kafka, the output topic's `max.message.bytes`
//! also falls below one workflow's outcome. Afterwards every workflow has
//! its outcome (that one without its payloads), a repeat carries the same
//! outcome ID, the dead letters are exactly the bad records, and no log
//! holds a panic. Under `exactly_once` a `read_committed` reader must see
//! no repeat at all: not of an outcome, not of a dead letter.
//!
//! `CHAOS_WORKFLOWS` and `CHAOS_SEED` change the size and the random choices.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const STEPS: [&str; 3] = ["payment", "inventory", "fraud_check"];
const INSTANCES: usize = 3;
const PARTITIONS: i32 = 6;
/// How long the whole run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// A small deterministic generator (xorshift), so that a seed replays a run.
struct Random(u64);

impl Random {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The load: every workflow's three steps, 5% of them failing one step, 1%
/// of the events sent twice, interleaved within windows of 1,000 workflows;
/// and one bad record every 1,000 workflows.
fn load(workflows: usize, random: &mut Random) -> (Vec<RawRecord>, usize) {
    let mut records = Vec::new();
    let mut bad = 0;
    for window in (0..workflows).collect::<Vec<_>>().chunks(1_000) {
        let mut batch: Vec<RawRecord> = Vec::new();
        for &w in window {
            let id = format!("chaos-{w}");
            for (s, step) in STEPS.iter().enumerate() {
                let status = if w % 20 == 7 && s == 1 { "failed" } else { "succeeded" };
                let e = event(&id, "order", step, status, Some(&format!("{id}-{step}")));
                let record = (Some(id.clone().into_bytes()), Some(serde_json::to_vec(&e).unwrap()));
                if random.below(100) == 0 {
                    batch.push(record.clone());
                }
                batch.push(record);
            }
        }
        batch.push((Some(format!("bad-{bad}").into_bytes()), Some(b"{not json".to_vec())));
        bad += 1;
        for i in (1..batch.len()).rev() {
            batch.swap(i, random.below(i + 1));
        }
        records.extend(batch);
    }
    (records, bad)
}

/// Says what the instances know of workflows without an outcome: which
/// home partitions they are on, what `/readyz` says, and each one's state
/// where its home partition is held.
fn explain_missing(instances: &[Junction], seen: &HashSet<String>, workflows: usize) {
    let missing: Vec<String> = (0..workflows).map(|w| format!("chaos-{w}")).filter(|id| !seen.contains(id)).collect();
    let mut homes: HashMap<i32, usize> = HashMap::new();
    for id in &missing {
        *homes.entry(junction::route::home(id, PARTITIONS as usize)).or_default() += 1;
    }
    eprintln!("chaos: {} workflows without an outcome, by home partition: {homes:?}", missing.len());
    for (i, j) in instances.iter().enumerate() {
        eprintln!("chaos: j{i} /readyz: {:?}", j.get("/readyz"));
        if let Some((_, metrics)) = j.get("/metrics") {
            let lines = metrics
                .lines()
                .filter(|l| l.starts_with("junction_consumer_lag") || l.starts_with("junction_partitions"));
            eprintln!("chaos: j{i} metrics:\n{}", lines.collect::<Vec<_>>().join("\n"));
        }
        for id in missing.iter().take(5) {
            eprintln!("chaos: j{i} /workflows/{id}: {:?}", j.get(&format!("/workflows/{id}")));
        }
    }
}

/// A workflow whose outcome is larger than the output topic takes once its
/// limit falls: three steps with 12 KB payloads that do not compress.
fn large_workflow() -> Vec<serde_json::Value> {
    STEPS
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let mut e = event(LARGE, "order", step, "succeeded", Some(&format!("{LARGE}-{step}")));
            e["payload"] = serde_json::Value::String(noise(i as u64 + 7, 12_000));
            e
        })
        .collect()
}

/// The input records that dead letters name: (partition, offset).
fn source_offsets(dead_letters: &[Record]) -> HashSet<(String, String)> {
    dead_letters
        .iter()
        .map(|d| (d.header("junction.source.partition").to_string(), d.header("junction.source.offset").to_string()))
        .collect()
}

#[test]
fn three_instances_survive_kills_freezes_restarts_and_a_frozen_and_restarted_broker_at_least_once() {
    chaos("at_least_once", Broker::start_with(Storage::Durable));
}

#[test]
fn three_instances_survive_kills_freezes_restarts_and_a_frozen_and_restarted_broker_exactly_once() {
    chaos("exactly_once", Broker::kafka());
}

/// How long a frozen instance stays frozen: past its session timeout (6 s),
/// so that its partitions move, but not always past its transaction timeout.
const FREEZE: Duration = Duration::from_secs(8);
/// How long the broker stays frozen: past every member's session timeout.
const BROKER_FREEZE: Duration = Duration::from_secs(9);
/// The output topic's limit once it falls: above a batch of ordinary
/// outcomes, below the large workflow's outcome (three payloads of 12 KB).
const OUTPUT_LIMIT: &str = "24000";
const LARGE: &str = "chaos-large";

fn chaos(guarantee: &'static str, mut broker: Broker) {
    let workflows: usize = std::env::var("CHAOS_WORKFLOWS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
    println!("chaos: seed {seed} (CHAOS_SEED replays it), {workflows} workflows, {INSTANCES} instances, {guarantee}");
    let mut random = Random(seed);
    let started = Instant::now();

    let mut setup = Setup::new(&broker, PARTITIONS);
    setup.guarantee = guarantee;
    let work = tempfile::tempdir().unwrap();
    let mut instances: Vec<Junction> =
        (0..INSTANCES).map(|i| Junction::start(&setup, work.path(), &format!("j{i}"))).collect();
    for j in &mut instances {
        j.wait_ready();
    }
    let (input, bad) = load(workflows, &mut random);
    let chunks: Vec<&[RawRecord]> = input.chunks(input.len().div_ceil(12)).collect();

    // Produce the load in 12 parts; between parts, one act of chaos.
    let (mut kills, mut terms, mut freezes, mut broker_restarts, mut broker_freezes) = (0, 0, 0, 0, 0);
    // Alter topic settings on Apache Kafka only: Nisshi's are not checked.
    let large = broker.has_transactions();
    for (i, chunk) in chunks.iter().enumerate() {
        broker.produce(&setup.input, chunk);
        if i == 1 && large {
            broker.set_topic_config(&setup.output, "max.message.bytes", OUTPUT_LIMIT);
            broker.produce_events(&setup.input, &large_workflow());
            println!("chaos: the output topic takes {OUTPUT_LIMIT} bytes at most; {LARGE}'s outcome takes more");
        }
        if i == chunks.len() / 2 {
            broker.stop();
            std::thread::sleep(Duration::from_secs(2));
            broker.resume();
            broker_restarts += 1;
            println!("chaos: broker restarted");
            continue;
        }
        if i == chunks.len() / 3 {
            broker.freeze();
            std::thread::sleep(BROKER_FREEZE);
            broker.thaw();
            broker_freezes += 1;
            println!("chaos: broker frozen for {} s", BROKER_FREEZE.as_secs());
            continue;
        }
        let victim = random.below(INSTANCES);
        if random.below(3) == 0 {
            instances[victim].freeze();
            std::thread::sleep(FREEZE);
            instances[victim].thaw();
            freezes += 1;
            println!("chaos: j{victim} frozen for {} s", FREEZE.as_secs());
            continue;
        }
        if random.below(2) == 0 {
            instances[victim].kill();
            kills += 1;
            println!("chaos: kill -9 of j{victim}");
        } else {
            assert!(instances[victim].terminate(), "j{victim} exits 0 on SIGTERM");
            terms += 1;
            println!("chaos: SIGTERM to j{victim}");
        }
        std::thread::sleep(Duration::from_millis(500 + 250 * random.below(8) as u64));
        instances[victim].start_again();
    }
    let restarts = kills + terms;

    let mut output = broker.reader(&setup.output);
    let deadline = started + RUN_LIMIT;
    let mut seen: HashSet<String> = HashSet::new();
    let mut read = 0;
    let expected = workflows + usize::from(large);
    while seen.len() < expected {
        if Instant::now() >= deadline {
            explain_missing(&instances, &seen, workflows);
            panic!("only {} of {expected} workflows have an outcome", seen.len());
        }
        let records = output.read_for(Duration::from_secs(1));
        for r in &records[read..] {
            seen.insert(r.json()["workflow_id"].as_str().unwrap().to_string());
        }
        read = records.len();
    }
    let records = output.read_for(Duration::from_secs(2)).to_vec();

    // One distinct outcome per workflow; a repeat is the same record with the same ID.
    let mut first: HashMap<String, (String, Vec<u8>)> = HashMap::new();
    // Where each workflow's first outcome is, and, per output partition,
    // the repeats' offsets with their first's: a failure says where to look.
    let mut first_at: HashMap<String, i64> = HashMap::new();
    let mut repeats_at: std::collections::BTreeMap<i32, Vec<(i64, i64)>> = Default::default();
    let mut repeats = 0;
    let mut failed = 0;
    for r in &records {
        let v = r.json();
        let id = v["workflow_id"].as_str().unwrap().to_string();
        let outcome_id = r.header("junction.outcome.id").to_string();
        let kind = v["outcome"].as_str().unwrap().to_string();
        if kind == "compensated" {
            continue;
        }
        if id == LARGE {
            let why = r.header("junction.truncated");
            assert!(why.contains("larger than the output topic takes"), "{why}");
            assert!(v["steps"]["payment"]["payload"].is_null(), "{v}");
            continue;
        }
        match first.get(&id) {
            Some((seen_id, value)) => {
                assert_eq!(seen_id, &outcome_id, "{id}: a repeat has another outcome ID");
                assert_eq!(value, r.value.as_ref().unwrap(), "{id}: a repeat differs");
                repeats += 1;
                repeats_at.entry(r.partition).or_default().push((first_at[&id], r.offset));
            }
            None => {
                let index: usize = id.strip_prefix("chaos-").unwrap().parse().unwrap();
                let expected = if index % 20 == 7 { "failed" } else { "completed" };
                assert_eq!(kind, expected, "{id}");
                failed += usize::from(kind == "failed");
                first_at.insert(id.clone(), r.offset);
                first.insert(id, (outcome_id, r.value.clone().unwrap()));
            }
        }
    }
    let lost = workflows - first.len();
    assert_eq!(lost, 0, "lost outcomes");
    let large_outcomes = records.iter().filter(|r| r.key.as_deref() == Some(LARGE.as_bytes())).count();
    assert_eq!(large_outcomes > 0, large, "{LARGE}'s outcome, without its payloads");
    assert_eq!(failed, (0..workflows).filter(|w| w % 20 == 7).count());

    // Dead letters: exactly the bad records, each named by its source offset.
    let mut dlq = broker.reader(&setup.dead_letters);
    let dead = dlq.read_until("every dead letter", |r| source_offsets(r).len() >= bad);
    let distinct_dead = source_offsets(dead);
    assert_eq!(distinct_dead.len(), bad, "dead letters, by source offset");
    assert!(dead.iter().all(|d| d.header("junction.error") == "not_json"));
    let dead = dlq.read_for(Duration::from_secs(1)).to_vec();
    if guarantee == "exactly_once" {
        let summary: Vec<String> = repeats_at
            .iter()
            .map(|(p, at)| {
                let (lo, hi) = (at.iter().map(|a| a.1).min().unwrap(), at.iter().map(|a| a.1).max().unwrap());
                let firsts = (at.iter().map(|a| a.0).min().unwrap(), at.iter().map(|a| a.0).max().unwrap());
                format!(
                    "partition {p}: {} repeats at offsets {lo}..={hi}, first seen at {}..={}",
                    at.len(),
                    firsts.0,
                    firsts.1
                )
            })
            .collect();
        assert_eq!(repeats, 0, "a read_committed reader saw repeated outcomes: {summary:?}");
        assert_eq!(large_outcomes, usize::from(large), "a read_committed reader saw {LARGE}'s outcome repeated");
        assert_eq!(dead.len(), bad, "a read_committed reader saw repeated dead letters");
    }

    let mut marker_waits = 0;
    for (i, j) in instances.iter().enumerate() {
        let log = j.logs();
        assert!(!log.contains("panicked"), "j{i}'s log holds a panic:\n{log}");
        marker_waits += log.matches("a marker's records are being read again").count();
    }
    println!(
        "chaos ({guarantee}): {workflows} workflows ({} input records), {kills} kill -9, {terms} SIGTERM, \
         {restarts} instance restarts, {freezes} instance freezes, {broker_freezes} broker freeze, \
         {broker_restarts} broker restart; {} outcome records: {} workflows with an outcome, {repeats} repeats \
         (same ID), {lost} lost{}; {} dead letters for {bad} bad records ({} distinct); {marker_waits} markers \
         read back before their records were read again; {:.0} s",
        input.len(),
        records.len(),
        first.len(),
        if large { format!("; {LARGE}'s outcome without payloads, {large_outcomes} record(s)") } else { String::new() },
        dead.len(),
        distinct_dead.len(),
        started.elapsed().as_secs_f64()
    );
}
