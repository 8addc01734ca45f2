//! The end-to-end benchmark: one junction instance against a local Apache
//! Kafka broker (single-node KRaft, `scripts/kafka/broker.sh`), measured the
//! way users see it. Run it with
//! `scripts/bench.sh` (which is `cargo bench --bench end_to_end`); the method
//! and the last figures are in BENCHMARKS.md.
//!
//! In one run it measures:
//! 1. the **ceiling**: a stateless pass-through with junction's own client
//!    settings, which consumes the input topic and produces one record per
//!    event, committing every commit interval;
//! 2. junction's **throughput** on the same preloaded input: W workflows × 3
//!    steps, interleaved as concurrent services send them, with duplicates;
//! 3. **outcome latency** at half that load: from the deciding input
//!    record's timestamp to the outcome being read by a `read_committed`
//!    consumer;
//! 4. the **restore rate** after the state directory is deleted;
//! 5. **resident memory**: the peak, and with 1 million open workflows.
//!
//! Under `cargo test` (no `--bench` argument) it runs the same phases on a
//! small load and checks the counts, so that the benchmark itself is tested.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Broker, Junction, Setup};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const STEPS: [&str; 3] = ["payment", "inventory", "fraud_check"];
const WORKFLOWS: &str = r#"
[[workflows]]
type = "order"
steps = ["payment", "inventory", "fraud_check"]
"#;
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Rounds of the ceiling and of junction, alternating.
const ROUNDS: usize = 2;

struct Sizes {
    partitions: i32,
    /// Workflows in the throughput phase.
    workflows: usize,
    /// Workflows left open for the memory figure.
    open: usize,
    latency_phase: Duration,
}

fn sizes(full: bool) -> Sizes {
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    if full {
        Sizes {
            partitions: env("BENCH_PARTITIONS", 4) as i32,
            workflows: env("BENCH_WORKFLOWS", 1_000_000),
            open: env("BENCH_OPEN_WORKFLOWS", 1_000_000),
            latency_phase: Duration::from_secs(env("BENCH_LATENCY_SECONDS", 20) as u64),
        }
    } else {
        Sizes { partitions: 4, workflows: 3_000, open: 3_000, latency_phase: Duration::from_secs(3) }
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = sizes(full);
    let broker = Broker::start();
    let mut report = Report::default();
    let work = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&broker, sizes.partitions);
    setup.workflows = WORKFLOWS.to_string();
    setup.guarantee = guarantee();
    report.title = format!("{}, load partitioned by {}", setup.guarantee, partitioner());

    // The input: W workflows × 3 steps, 5% failing, 2% of events sent twice.
    let load = Load::generate(sizes.workflows, 1_000);
    let produced = Instant::now();
    produce_all(&broker, &setup.input, &load.records);
    report.line("input records", load.records.len() as f64, "");
    report.line("  of which duplicates", load.duplicates as f64, "");
    report.line("load producer rate", load.records.len() as f64 / produced.elapsed().as_secs_f64(), "records/s");

    // 1 and 2, twice, alternating: the ceiling, a pass-through with
    // junction's client settings, and junction on the same input, each from
    // the start of the topic with a group of its own. The best of each counts.
    let (mut ceiling_rate, mut rate) = (0.0_f64, 0.0_f64);
    let mut junction = None;
    for round in 1..=ROUNDS {
        let ceiling = pass_through(&broker, &setup, round, load.records.len());
        let r = load.records.len() as f64 / ceiling.as_secs_f64();
        report.line(&format!("ceiling (round {round}): pass-through"), r, "events/s");
        ceiling_rate = ceiling_rate.max(r);

        // The last round's junction goes on to the other phases.
        if let Some(mut earlier) = junction.take() {
            assert!(Junction::terminate(&mut earlier), "junction exits 0 on SIGTERM");
            setup = fresh_application(&broker, &setup);
        }
        let (j, r, cpu) = run_junction(&broker, &setup, work.path(), round, load.records.len());
        report.line(&format!("junction (round {round})"), r, "events/s");
        if round == ROUNDS {
            cpu.report(&mut report, "throughput phase");
        }
        rate = rate.max(r);
        junction = Some(j);
    }
    let mut junction = junction.expect("a junction ran");
    report.line("  of which forwarded by the last round", junction.metric("junction_forwarded_total", ""), "records");
    report.line("ceiling: pass-through, best", ceiling_rate, "events/s");
    report.line("junction, best", rate, "events/s");
    report.line("junction / ceiling", rate / ceiling_rate, "");
    let offsets = CommittedOffsets::new(&broker, &setup);

    let outcomes = count_outcomes(&broker, &setup.output, |_| true);
    report.line("outcomes", outcomes.records as f64, "");
    report.line("  repeats", (outcomes.records - outcomes.distinct) as f64, "");
    assert_eq!(outcomes.distinct, sizes.workflows, "every workflow has its outcome");
    assert_eq!(outcomes.failed, load.failing, "every failing workflow failed");

    // 3. Outcome latency at half the measured maximum.
    let latency_rate = std::env::var("BENCH_LATENCY_RATE").ok().and_then(|r| r.parse().ok()).unwrap_or(rate / 2.0);
    let cpu = Cpu::start(&broker, junction.pid());
    let commits_before = commit_totals(&junction);
    let latency = latency_phase(&broker, &setup, latency_rate, sizes.latency_phase);
    cpu.report(&mut report, "latency phase");
    let commits_after = commit_totals(&junction);
    report.line(
        "  latency phase: mean commit duration",
        1000.0 * (commits_after.0 - commits_before.0) / (commits_after.1 - commits_before.1).max(1.0),
        "ms",
    );
    report.line("latency load", latency.events_per_second, "events/s");
    report.line("latency p50", latency.quantile(0.50), "ms");
    report.line("latency p99", latency.quantile(0.99), "ms");
    report.line("latency p99.9", latency.quantile(0.999), "ms");
    report.line("latency max", latency.quantile(1.0), "ms");
    report.line("  of which until junction sent the outcome, p50", quantile(&latency.to_junction_ms, 0.5), "ms");
    report.line("  of which until junction sent the outcome, p99", quantile(&latency.to_junction_ms, 0.99), "ms");
    report.line("latency samples", latency.samples_ms.len() as f64, "");
    let peak_before_restore = peak_resident(&junction);

    // 4. The restore rate: delete the state directory and start again.
    assert!(junction.terminate(), "junction exits 0 on SIGTERM");
    std::fs::remove_dir_all(&junction.state_dir).unwrap();
    junction.start_again();
    junction.wait_ready();
    let restored = restored_from_log(&junction.logs());
    report.line("restored records", restored.records as f64, "");
    report.line("restore rate", restored.records as f64 / restored.seconds, "records/s");
    assert!(restored.records >= sizes.workflows as u64, "the changelog holds at least one record per workflow");

    // 5. Memory with `open` workflows waiting for their other steps.
    let before = offsets.total();
    let open = Load::first_steps(sizes.open);
    produce_all(&broker, &setup.input, &open);
    wait_for(Duration::from_secs(600), "junction to take the open workflows", || {
        std::thread::sleep(Duration::from_millis(50));
        offsets.caught_up(before + open.len() as i64)
    });
    std::thread::sleep(Duration::from_secs(1));
    let open_gauge = junction.metric("junction_workflows_open", "");
    assert_eq!(open_gauge as usize, sizes.open, "junction_workflows_open counts the open workflows");
    report.line("open workflows", open_gauge, "");
    report.line("resident memory with them", resident(&junction).0 as f64 / MIB, "MiB");
    report.line("peak resident memory", peak_before_restore.max(peak_resident(&junction)) as f64 / MIB, "MiB");
    assert!(junction.terminate(), "junction exits 0 on SIGTERM");
    report.print(full);
}

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Default)]
struct Report {
    /// What the run measured: the guarantee and the load's partitioner.
    title: String,
    lines: Vec<(String, f64, String)>,
}

impl Report {
    fn line(&mut self, what: &str, value: f64, unit: &str) {
        eprintln!("bench: {what}: {value:.2} {unit}");
        self.lines.push((what.to_string(), value, unit.to_string()));
    }

    fn print(&self, full: bool) {
        println!("\n## end-to-end benchmark{}: {}", if full { "" } else { " (small test run)" }, self.title);
        println!("| measure | value | unit |\n| --- | ---: | --- |");
        for (what, value, unit) in &self.lines {
            let value = if value.fract() == 0.0 || value.abs() >= 1000.0 {
                format!("{value:.0}")
            } else {
                format!("{value:.2}")
            };
            println!("| {what} | {value} | {unit} |");
        }
    }
}

fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
    }
}

/// The input records, keyed by workflow ID.
struct Load {
    records: Vec<(Vec<u8>, Vec<u8>)>,
    duplicates: usize,
    failing: usize,
}

/// A small deterministic generator (xorshift), so that every run sends the same input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn event(workflow: usize, step: &str, status: &str, occurred_ms: i64) -> (Vec<u8>, Vec<u8>) {
    let id = format!("order-{workflow:09}");
    let value = format!(
        r#"{{"workflow_id":"{id}","workflow_type":"order","step":"{step}","status":"{status}","event_id":"{id}-{step}","occurred_at":"{}","payload":{{"amount":{}}}}}"#,
        junction::time::format_time(occurred_ms),
        workflow % 10_000
    );
    (id.into_bytes(), value.into_bytes())
}

impl Load {
    /// `workflows` workflows whose events are shuffled within windows of
    /// `window` workflows: the steps of one workflow arrive in any order,
    /// interleaved with those of its neighbours.
    fn generate(workflows: usize, window: usize) -> Load {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let base = junction::time::now_ms() - 3_600_000;
        let mut records = Vec::with_capacity(workflows * 3 + workflows / 10);
        let (mut duplicates, mut failing) = (0, 0);
        for start in (0..workflows).step_by(window) {
            let mut chunk = Vec::new();
            for w in start..(start + window).min(workflows) {
                let fails = rng.below(100) < 5;
                failing += usize::from(fails);
                for (i, step) in STEPS.iter().enumerate() {
                    let status = if fails && i == 1 { "failed" } else { "succeeded" };
                    let e = event(w, step, status, base + (w as i64 % 1000) + i as i64);
                    if rng.below(100) < 2 {
                        chunk.push(e.clone());
                        duplicates += 1;
                    }
                    chunk.push(e);
                }
            }
            for i in (1..chunk.len()).rev() {
                chunk.swap(i, rng.below(i + 1));
            }
            records.extend(chunk);
        }
        Load { records, duplicates, failing }
    }

    /// The first step of `n` new workflows, which then stay open.
    fn first_steps(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let now = junction::time::now_ms();
        (0..n).map(|w| event(100_000_000 + w, STEPS[0], "succeeded", now)).collect()
    }
}

/// `BENCH_GUARANTEE`: junction's guarantee (default `at_least_once`).
fn guarantee() -> &'static str {
    match std::env::var("BENCH_GUARANTEE").as_deref() {
        Ok("exactly_once") => "exactly_once",
        Ok("at_least_once") | Err(_) => "at_least_once",
        Ok(other) => panic!("BENCH_GUARANTEE is at_least_once or exactly_once, not {other:?}"),
    }
}

/// `BENCH_PARTITIONER`: how the load is partitioned (default `murmur2_random`,
/// as Java clients and junction's homes; librdkafka's own default,
/// `consistent_random`, puts most workflows off their homes).
fn partitioner() -> String {
    std::env::var("BENCH_PARTITIONER").unwrap_or_else(|_| "murmur2_random".to_string())
}

fn load_producer(broker: &Broker, linger_ms: &str) -> BaseProducer {
    broker
        .client_config()
        .set("partitioner", partitioner())
        .set("linger.ms", linger_ms)
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap()
}

fn send_waiting(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => panic!("cannot produce: {e}"),
        }
    }
}

fn produce_all(broker: &Broker, topic: &str, records: &[(Vec<u8>, Vec<u8>)]) {
    let producer = load_producer(broker, "20");
    for (key, value) in records {
        send_waiting(&producer, BaseRecord::to(topic).key(key.as_slice()).payload(value.as_slice()));
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
}

/// Starts junction on the preloaded input and measures the events/s until
/// its committed offsets reach the end of the input.
fn run_junction(
    broker: &Broker,
    setup: &Setup,
    work: &std::path::Path,
    round: usize,
    n: usize,
) -> (Junction, f64, Cpu) {
    let junction = Junction::start(setup, work, &format!("bench-{round}"));
    let offsets = CommittedOffsets::new(broker, setup);
    wait_for(Duration::from_secs(120), "junction to be ready", || {
        std::thread::sleep(Duration::from_millis(10));
        matches!(junction.get("/readyz"), Some((200, _)))
    });
    let started = Instant::now();
    let cpu = Cpu::start(broker, junction.pid());
    wait_for(Duration::from_secs(600), "junction to commit the whole input", || {
        std::thread::sleep(Duration::from_millis(20));
        offsets.caught_up(n as i64)
    });
    (junction, n as f64 / started.elapsed().as_secs_f64(), cpu)
}

/// The same input topic for a new application: its own group, state,
/// changelog, output and dead-letter topics.
fn fresh_application(broker: &Broker, setup: &Setup) -> Setup {
    let mut fresh = Setup::named(broker, setup.partitions);
    fresh.input = setup.input.clone();
    fresh.workflows = setup.workflows.clone();
    fresh.guarantee = setup.guarantee;
    fresh
}

/// The stateless ceiling: consume every input record with junction's
/// consumer settings and produce it on with junction's producer settings,
/// flushing and committing every commit interval, as junction does.
fn pass_through(broker: &Broker, setup: &Setup, round: usize, n: usize) -> Duration {
    let mut config = bench_config(setup);
    // Stateless: its producer is not transactional, whatever junction's guarantee.
    config.kafka.processing_guarantee = junction::config::Guarantee::AtLeastOnce;
    let output = format!("{}-passthrough-{round}", setup.app);
    broker.create_topic(&output, setup.partitions);
    let consumer: BaseConsumer = junction::kafka::consumer_config(&config.kafka, None)
        .set("group.id", format!("{}-passthrough-{round}", setup.app))
        .create()
        .unwrap();
    let producer: ThreadedProducer<DefaultProducerContext> =
        junction::kafka::producer_config(&config.kafka, "pass-through", None).create().unwrap();
    consumer.subscribe(&[&setup.input]).unwrap();
    let mut offsets: HashMap<i32, i64> = HashMap::new();
    let mut seen = 0;
    let mut started = None;
    let mut next_commit = Instant::now() + COMMIT_INTERVAL;
    let commit = |offsets: &HashMap<i32, i64>| {
        producer.flush(Duration::from_secs(60)).unwrap();
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(&setup.input, *p, Offset::Offset(*o)).unwrap();
        }
        if tpl.count() > 0 {
            consumer.commit(&tpl, CommitMode::Sync).unwrap();
        }
    };
    while seen < n {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            started.get_or_insert_with(Instant::now);
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&output).key(m.key().unwrap_or_default()).payload(m.payload().unwrap_or_default());
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => panic!("pass-through cannot produce: {e}"),
                }
            }
            offsets.insert(m.partition(), m.offset() + 1);
            seen += 1;
        }
        if Instant::now() >= next_commit {
            commit(&offsets);
            next_commit = Instant::now() + COMMIT_INTERVAL;
        }
    }
    commit(&offsets);
    started.expect("records were consumed").elapsed()
}

fn bench_config(setup: &Setup) -> junction::config::Config {
    let text = setup.config_text(std::path::Path::new("/unused"), 1);
    // The same environment as the junction process: JUNCTION_KAFKA_PROPERTY_* tunes both alike.
    junction::config::parse(std::path::Path::new("bench.toml"), &text, std::env::vars()).unwrap()
}

/// The input offsets junction's group has committed.
struct CommittedOffsets {
    consumer: BaseConsumer,
    tpl: TopicPartitionList,
    repartition: String,
    /// Under `exactly_once`: each transaction ends with a marker.
    transactional: bool,
}

impl CommittedOffsets {
    fn new(broker: &Broker, setup: &Setup) -> CommittedOffsets {
        let consumer = broker.client_config().set("group.id", &setup.app).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..setup.partitions {
            tpl.add_partition(&setup.input, p);
        }
        let repartition = format!("{}-repartition", setup.app);
        CommittedOffsets { consumer, tpl, repartition, transactional: setup.guarantee == "exactly_once" }
    }

    /// The input offsets committed, in all.
    fn total(&self) -> i64 {
        let Ok(committed) = self.consumer.committed_offsets(self.tpl.clone(), Duration::from_secs(5)) else {
            return 0;
        };
        committed.elements().iter().filter_map(|e| e.offset().to_raw()).filter(|o| *o > 0).sum()
    }

    /// Whether junction has committed `input` input records and joined
    /// every one it forwarded: the repartition topic's committed offsets
    /// reach its ends. (An input offset is committed once its record is
    /// joined or forwarded. Under `exactly_once` a partition's last offset
    /// is the marker of the last transaction that wrote to it, which a
    /// consumer's offset stops before.)
    fn caught_up(&self, input: i64) -> bool {
        if self.total() < input {
            return false;
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.tpl.count() as i32 {
            tpl.add_partition(&self.repartition, p);
        }
        let Ok(committed) = self.consumer.committed_offsets(tpl, Duration::from_secs(5)) else { return false };
        committed.elements().iter().all(|e| {
            let Ok((_, end)) = self.consumer.fetch_watermarks(&self.repartition, e.partition(), Duration::from_secs(5))
            else {
                return false;
            };
            let marker = i64::from(self.transactional && end > 0);
            e.offset().to_raw().unwrap_or(0).max(0) >= end - marker
        })
    }
}

struct OutcomeCount {
    records: usize,
    distinct: usize,
    failed: usize,
}

/// Reads the whole output topic as a `read_committed` consumer and counts
/// outcome records, distinct outcome IDs and `failed` outcomes. (Under
/// `exactly_once` its offsets include transaction markers, which no reader
/// is given: a partition is read once its reader is told it reached its end.)
fn count_outcomes(broker: &Broker, topic: &str, keep: impl Fn(&[u8]) -> bool) -> OutcomeCount {
    let consumer = reader(broker, topic, false);
    let partitions = broker.partition_count(topic) as i32;
    let ends = broker.end_offsets(topic, partitions);
    let mut at_end: std::collections::HashSet<i32> = (0..partitions).filter(|&p| ends[p as usize] == 0).collect();
    let mut ids = std::collections::HashSet::new();
    let (mut records, mut failed, mut read) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(300);
    while at_end.len() < partitions as usize {
        assert!(Instant::now() < deadline, "timed out reading {topic}: {read} records, partitions {at_end:?} read");
        let m = match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                let position = consumer.position().unwrap();
                if let Some(Offset::Offset(o)) = position.find_partition(topic, p).map(|e| e.offset()) {
                    if o >= ends[p as usize] {
                        at_end.insert(p);
                    }
                }
                continue;
            }
            Some(m) => m.unwrap(),
        };
        read += 1;
        if !keep(m.key().unwrap_or_default()) {
            continue;
        }
        records += 1;
        let headers = m.headers().expect("outcome headers");
        for h in headers.iter() {
            if let (junction::names::HEADER_OUTCOME_ID, Some(v)) = (h.key, h.value) {
                if ids.insert(v.to_vec()) && v.windows(8).any(|w| w == b":failed:") {
                    failed += 1;
                }
            }
        }
    }
    OutcomeCount { records, distinct: ids.len(), failed }
}

/// A `read_committed` consumer of every partition of `topic`, from the
/// beginning or from the current end.
fn reader(broker: &Broker, topic: &str, from_end: bool) -> BaseConsumer {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", common::unique("bench-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        // A reader from the beginning is told (as an error) when it reaches a partition's end.
        .set("enable.partition.eof", if from_end { "false" } else { "true" })
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..broker.partition_count(topic) as i32 {
        let from = if from_end {
            Offset::Offset(consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1)
        } else {
            Offset::Beginning
        };
        tpl.add_partition_offset(topic, p, from).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

struct Latency {
    samples_ms: Vec<i64>,
    /// The part of each sample up to junction sending the outcome (the
    /// outcome record's own timestamp), sorted on its own.
    to_junction_ms: Vec<i64>,
    events_per_second: f64,
}

impl Latency {
    fn quantile(&self, q: f64) -> f64 {
        quantile(&self.samples_ms, q)
    }
}

fn quantile(sorted: &[i64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64
}

/// Sends new workflows at `rate` events/s for `length`, each record stamped
/// with the time it is sent, and measures for every outcome the time from
/// its deciding (last) step's timestamp to the moment a `read_committed`
/// consumer reads it. The first second is warm-up and not counted.
fn latency_phase(broker: &Broker, setup: &Setup, rate: f64, length: Duration) -> Latency {
    let workflows = (rate * length.as_secs_f64() / 3.0) as usize + 1;
    let last_sent: Arc<Vec<AtomicI64>> = Arc::new((0..workflows).map(|_| AtomicI64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let first_counted = junction::time::now_ms() + 1_000;
    let reading = {
        let consumer = reader(broker, &setup.output, true);
        let (last_sent, done) = (Arc::clone(&last_sent), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut seen = 0;
            let mut quiet_since = Instant::now();
            while seen < workflows {
                let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                    // After the load ends, stop once nothing has come for 10 s.
                    if done.load(Ordering::SeqCst) && quiet_since.elapsed() > Duration::from_secs(10) {
                        break;
                    }
                    continue;
                };
                let now = junction::time::now_ms();
                quiet_since = Instant::now();
                let m = m.unwrap();
                let Some(index) = m.key().and_then(|k| k.strip_prefix(b"latency-")).and_then(parse_index) else {
                    continue;
                };
                seen += 1;
                let sent = last_sent[index].load(Ordering::SeqCst);
                if sent >= first_counted {
                    let produced = m.timestamp().to_millis().unwrap_or(now);
                    samples.push((now - sent, produced - sent));
                    if std::env::var_os("BENCH_LATENCY_TRACE").is_some() && now - sent > 150 {
                        eprintln!("slow outcome: sent {sent} produced {produced} read {now} ({} ms)", now - sent);
                    }
                }
            }
            assert_eq!(seen, workflows, "every workflow of the latency phase has its outcome");
            samples
        })
    };
    let producer = load_producer(broker, "20");
    let started = Instant::now();
    let mut sent_events = 0usize;
    for w in 0..workflows {
        // Ahead of the rate by a millisecond's worth or more: sleep until
        // due. Sleeping whenever ahead at all meant tens of thousands of
        // sleeps of some 20 µs a second, each a wake-up on the 2 cores that
        // the broker and junction need (0.13 cores in all; BENCHMARKS.md).
        let ahead = sent_events as f64 - started.elapsed().as_secs_f64() * rate;
        if ahead >= rate / 1000.0 {
            std::thread::sleep(Duration::from_secs_f64(ahead / rate));
        }
        let id = format!("latency-{w}");
        for step in STEPS {
            let now = junction::time::now_ms();
            let value = format!(r#"{{"workflow_id":"{id}","workflow_type":"order","step":"{step}"}}"#);
            send_waiting(
                &producer,
                BaseRecord::to(&setup.input).key(id.as_bytes()).payload(value.as_bytes()).timestamp(now),
            );
            last_sent[w].store(now, Ordering::SeqCst);
            sent_events += 1;
        }
        producer.poll(Duration::ZERO);
    }
    let events_per_second = sent_events as f64 / started.elapsed().as_secs_f64();
    producer.flush(Duration::from_secs(60)).unwrap();
    done.store(true, Ordering::SeqCst);
    let samples = reading.join().unwrap();
    assert!(!samples.is_empty(), "latency samples were taken");
    let (mut samples_ms, mut to_junction_ms): (Vec<i64>, Vec<i64>) = samples.into_iter().unzip();
    samples_ms.sort_unstable();
    to_junction_ms.sort_unstable();
    Latency { samples_ms, to_junction_ms, events_per_second }
}

fn parse_index(digits: &[u8]) -> Option<usize> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

struct Restored {
    records: u64,
    seconds: f64,
}

/// Sums the "state store restored" log lines: every record restored, and
/// the longest partition restore (partitions restore concurrently).
fn restored_from_log(log: &str) -> Restored {
    let field = |line: &str, name: &str| -> Option<f64> {
        let rest = &line[line.find(&format!("{name}="))? + name.len() + 1..];
        rest.split(|c: char| c.is_whitespace()).next()?.parse().ok()
    };
    let mut r = Restored { records: 0, seconds: 0.0 };
    for line in log.lines().filter(|l| l.contains("state store restored")) {
        r.records += field(line, "records").unwrap_or(0.0) as u64;
        r.seconds = r.seconds.max(field(line, "seconds").unwrap_or(0.0));
    }
    assert!(r.seconds > 0.0, "the log shows the restore:\n{log}");
    r
}

/// (VmRSS, VmHWM) of the junction process, in bytes.
fn resident(junction: &Junction) -> (u64, u64) {
    let pid = junction.pid().expect("junction is running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (kib("VmRSS:") * 1024, kib("VmHWM:") * 1024)
}

fn peak_resident(junction: &Junction) -> u64 {
    resident(junction).1
}

/// CPU time used by the broker, junction and this benchmark process over a phase.
struct Cpu {
    pids: [(&'static str, Option<u32>); 3],
    at_start: [f64; 3],
    /// junction's threads by name: CPU seconds at the start.
    threads_at_start: HashMap<String, f64>,
    started: Instant,
}

impl Cpu {
    fn start(broker: &Broker, junction: Option<u32>) -> Cpu {
        let pids = [("broker", broker.pid()), ("junction", junction), ("benchmark", Some(std::process::id()))];
        Cpu {
            at_start: pids.map(|(_, p)| cpu_seconds(p)),
            threads_at_start: thread_cpu_seconds(junction),
            pids,
            started: Instant::now(),
        }
    }

    fn report(&self, report: &mut Report, phase: &str) {
        let wall = self.started.elapsed().as_secs_f64();
        for ((name, pid), start) in self.pids.iter().zip(self.at_start) {
            if pid.is_some() {
                report.line(&format!("  {phase}: CPU cores used by {name}"), (cpu_seconds(*pid) - start) / wall, "");
            }
        }
        let mut threads: Vec<(String, f64)> = thread_cpu_seconds(self.pids[1].1)
            .into_iter()
            .map(|(name, now)| {
                let used = (now - self.threads_at_start.get(&name).copied().unwrap_or(0.0)) / wall;
                (name, used)
            })
            .filter(|(_, used)| *used >= 0.01)
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (name, used) in threads {
            report.line(&format!("  {phase}: CPU cores used by junction's {name} threads"), used, "");
        }
    }
}

/// CPU seconds of a process's threads so far, summed by thread name.
fn thread_cpu_seconds(pid: Option<u32>) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let Some(pid) = pid else { return out };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].trim_end_matches(|c: char| c.is_ascii_digit()).to_string();
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        *out.entry(name).or_insert(0.0) += (ticks(11) + ticks(12)) / 100.0;
    }
    out
}

/// User and system CPU seconds of a process so far.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').map_or(0, |i| i + 2)..].split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; 100 ticks per second.
    (ticks(11) + ticks(12)) / 100.0
}

/// (sum of seconds, count) of junction_commit_duration_seconds.
fn commit_totals(junction: &Junction) -> (f64, f64) {
    (
        junction.metric("junction_commit_duration_seconds_sum", ""),
        junction.metric("junction_commit_duration_seconds_count", ""),
    )
}
