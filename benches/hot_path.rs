//! junction's hot path on a fixed input, for a figure the machine's noise
//! does not move: instructions per event, counted by callgrind. Run it with
//! `scripts/bench.sh --instructions`, which builds this program and runs
//!
//! ```sh
//! valgrind --tool=callgrind --toggle-collect='*hot_path::interval*' <this program> --bench
//! ```
//!
//! and divides the instructions collected by the events this program
//! prints. What it counts is the stream thread's own work for each record
//! of a commit interval ([`interval`]): decoding the event, loading its
//! workflow's state (the record cache, else the store), the join decision,
//! and staging the interval (the changed states encoded for the changelog
//! and the store batch, the outcomes rendered as their JSON records). Not
//! counted: librdkafka (fetching, producing), RocksDB's write of the batch,
//! and the threads beside the stream thread.
//!
//! Under `at_least_once` (`HOT_PATH_GUARANTEE=at_least_once`) each record
//! read on its workflow's home partition is held by its input partition
//! ([`Source`]) until its marker is read back, and joined then: the interval
//! also counts holding the records and joining them at their marker (one
//! marker per interval here; one per poll in a running instance).
//!
//! The input: 30,000 workflows of the end-to-end benchmark's kind (3 steps,
//! 5% failing, 2% of events twice, shuffled within windows of 1,000
//! workflows), in intervals of 3,000 records. Under `cargo test` it runs
//! once without callgrind and checks its counts.

use std::path::Path;
use std::sync::Arc;

use junction::config::Config;
use junction::input::event;
use junction::input::record::InputRecord;
use junction::metrics::Metrics;
use junction::runtime::source::Source;
use junction::runtime::task::Task;
use junction::state::{Store, StoreMemory};

/// junction's allocator (src/main.rs), so that allocation costs here what it costs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONFIG: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
input_topic = "in"
output_topic = "out"
dead_letter_topic = "dlq"
processing_guarantee = "exactly_once"

[[workflows]]
type = "order"
steps = ["payment", "inventory", "fraud_check"]
"#;
const WORKFLOWS: usize = 30_000;
const INTERVAL: usize = 3_000;
/// The records' timestamp: 2026-11-22T10:00:01Z, just after the events occurred.
const RECORD_MS: i64 = 1_795_341_601_000;

fn main() {
    let config = Arc::new(junction::config::parse(Path::new("hot_path.toml"), CONFIG, Vec::new()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let memory = StoreMemory::new(128 << 20, 32 << 20);
    let store = Arc::new(Store::open(dir.path(), &memory).unwrap());
    let metrics = Arc::new(Metrics::new());
    let mut task = Task::new(0, store, Arc::clone(&config), Arc::clone(&metrics));
    let (records, failing) = input();
    let mut source = match std::env::var("HOT_PATH_GUARANTEE").as_deref() {
        Ok("at_least_once") => Some(Source::new(Arc::from("in"), 0, &metrics)),
        Ok("exactly_once") | Err(_) => None,
        Ok(other) => panic!("HOT_PATH_GUARANTEE: expected at_least_once or exactly_once, not {other:?}"),
    };

    let (mut outcomes, mut failed, mut bytes) = (0, 0, 0);
    for (i, chunk) in records.chunks(INTERVAL).enumerate() {
        let first_offset = (i * INTERVAL) as i64;
        let staged = match source.as_mut() {
            Some(source) => interval_held(&config, source, &mut task, chunk, first_offset),
            None => interval(&mut task, chunk, first_offset),
        };
        outcomes += staged.outcomes;
        failed += staged.failed;
        bytes += staged.bytes;
        task.store.write(staged.batch).unwrap();
        task.committed();
    }
    assert_eq!(outcomes, WORKFLOWS, "one outcome per workflow");
    assert_eq!(failed, failing, "every failing workflow failed");
    let guarantee = if source.is_some() { "at_least_once" } else { "exactly_once" };
    println!("hot path: {} events, {outcomes} outcomes ({bytes} bytes of JSON), {guarantee}", records.len());
}

struct Interval {
    batch: junction::state::StoreBatch,
    outcomes: usize,
    failed: usize,
    bytes: usize,
}

/// One commit interval's work on the stream thread: what callgrind counts.
#[inline(never)]
fn interval(task: &mut Task, records: &[Vec<u8>], first_offset: i64) -> Interval {
    for (i, value) in records.iter().enumerate() {
        let offset = first_offset + i as i64;
        task.process_forwarded(&record(value, offset), offset, RECORD_MS).unwrap();
    }
    stage(task)
}

/// The same interval under `at_least_once`: each record decoded and held by
/// its input partition, as the stream thread reads it, then joined when the
/// interval's marker is read back.
#[inline(never)]
fn interval_held(
    config: &Config,
    source: &mut Source,
    task: &mut Task,
    records: &[Vec<u8>],
    first_offset: i64,
) -> Interval {
    for (i, value) in records.iter().enumerate() {
        let record = record(value, first_offset + i as i64);
        let event = event::decode(config, None, record.value, RECORD_MS).unwrap();
        source.read(record.offset);
        source.hold(0, &event, &record);
    }
    assert!(source.mark(), "a marker for the interval's records");
    let marker_offset = first_offset;
    let topic = std::sync::Arc::clone(&source.topic);
    for held in source.release(first_offset + records.len() as i64 - 1) {
        task.join_held(&held, &held.record(&topic, 0), marker_offset, RECORD_MS).unwrap();
    }
    let staged = source.stage();
    std::hint::black_box(&staged.forwards);
    stage(task)
}

/// The input record of `value` at `offset`, as the consumer hands it over.
fn record(value: &[u8], offset: i64) -> InputRecord<'_> {
    InputRecord { key: None, value: Some(value), timestamp_ms: Some(RECORD_MS), topic: "in", partition: 0, offset }
}

/// Stages what the task decided in the interval, and renders its outcomes.
fn stage(task: &mut Task) -> Interval {
    let staged = task.stage();
    let mut json = Vec::with_capacity(512);
    let (mut failed, mut bytes) = (0, 0);
    for decided in &staged.outcomes {
        json.clear();
        decided.record.write_json(&mut json);
        bytes += json.len();
        failed += usize::from(decided.record.outcome == junction::join::outcome::Outcome::Failed);
    }
    std::hint::black_box(&staged.changelog);
    Interval { outcomes: staged.outcomes.len(), failed, bytes, batch: staged.batch }
}

/// The events, and how many workflows fail: the end-to-end benchmark's
/// generator (`benches/harness/load.rs`), with fixed times.
fn input() -> (Vec<Vec<u8>>, usize) {
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    let mut below = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let steps = ["payment", "inventory", "fraud_check"];
    let (mut records, mut failing) = (Vec::new(), 0);
    for start in (0..WORKFLOWS).step_by(1_000) {
        let mut chunk = Vec::new();
        for w in start..start + 1_000 {
            let fails = below(100) < 5;
            failing += usize::from(fails);
            for (i, step) in steps.iter().enumerate() {
                let status = if fails && i == 1 { "failed" } else { "succeeded" };
                let e = format!(
                    r#"{{"workflow_id":"order-{w:09}","workflow_type":"order","step":"{step}","status":"{status}","event_id":"order-{w:09}-{step}","occurred_at":"2026-11-22T10:00:00.{:03}Z","payload":{{"amount":{}}}}}"#,
                    w % 1000,
                    w % 10_000
                )
                .into_bytes();
                if below(100) < 2 {
                    chunk.push(e.clone());
                }
                chunk.push(e);
            }
        }
        for i in (1..chunk.len()).rev() {
            chunk.swap(i, below(i as u64 + 1) as usize);
        }
        records.extend(chunk);
    }
    (records, failing)
}
