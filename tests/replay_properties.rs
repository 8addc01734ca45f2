//! Property test of replays under `at_least_once` (DESIGN.md, "Time"):
//! outcomes are published before the commit that saves their state, so a
//! crash replays the home partition's log from its last commit. For any
//! log (events of a few workflows, with any event times, record timestamps
//! and ticks of the wall clock), any commit points, any punctuations and
//! any crash point, the records published before the crash and after the
//! replay never contradict each other: together they are exactly the
//! records of a run without the crash, and a record published twice is the
//! same to the byte.
//!
//! This drives the real task and its RocksDB store, without a broker:
//! the log is what the repartition partition would hold.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use junction::config::Config;
use junction::metrics::Metrics;
use junction::runtime::task::{InputRecord, Task};
use junction::state::{Store, StoreMemory};
use proptest::prelude::*;

const BASE_MS: i64 = 1_700_000_000_000;

/// Three steps, a 10 s deadline and a 30 s retention: the logs below span
/// about a minute, so deadlines, purges and a workflow ID's reuse all happen.
const CONFIG: &str = r#"
[kafka]
bootstrap_servers = "x:1"
input_topic = "in"
output_topic = "out"
dead_letter_topic = "dlq"
processing_guarantee = "at_least_once"
[state]
retention = "30s"
grace = "1s"
[[workflows]]
type = "order"
steps = ["a", "b", "c"]
deadline = "10s"
"#;

#[derive(Debug, Clone)]
enum Entry {
    Event { workflow: u8, step: u8, status: u8, occurred_ms: i64, timestamp_ms: i64 },
    Tick { at_ms: i64 },
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        6 => (0u8..3, 0u8..3, 0u8..8, 0i64..60_000, 0i64..15_000).prop_map(|(workflow, step, status, occurred, lag)| {
            Entry::Event { workflow, step, status, occurred_ms: BASE_MS + occurred, timestamp_ms: BASE_MS + occurred + lag }
        }),
        1 => (0i64..80_000).prop_map(|at| Entry::Tick { at_ms: BASE_MS + at }),
    ]
}

/// One run's published records, by outcome ID, in the order published.
type Published = Vec<(String, Vec<u8>)>;

/// Processes `log[from..to]` (its offsets are its indexes), publishing
/// every outcome as it is decided, punctuating where `punctuate` says,
/// and committing every `every` entries and at `to` when `commit_at_end`.
/// Returns the offset committed last.
#[allow(clippy::too_many_arguments)]
fn run(
    task: &mut Task,
    log: &[Entry],
    from: usize,
    to: usize,
    every: usize,
    punctuate: &[bool],
    commit_at_end: bool,
    published: &mut Published,
) -> usize {
    let mut committed = from;
    let mut values = Vec::new();
    for (offset, e) in log.iter().enumerate().take(to).skip(from) {
        match e {
            Entry::Event { workflow, step, status, occurred_ms, timestamp_ms } => {
                let status = ["succeeded", "failed", "compensated"][usize::from(*status % 3)];
                values.clear();
                values.extend_from_slice(
                    format!(
                        r#"{{"workflow_id":"w{workflow}","step":"{}","status":"{status}","occurred_at":"{}"}}"#,
                        ["a", "b", "c"][usize::from(*step)],
                        junction::time::format_time(*occurred_ms)
                    )
                    .as_bytes(),
                );
                let record = InputRecord {
                    key: None,
                    value: Some(&values),
                    timestamp_ms: Some(*timestamp_ms),
                    topic: "in",
                    partition: 0,
                    offset: offset as i64,
                };
                task.process_forwarded(&record, offset as i64, 0).unwrap();
            }
            Entry::Tick { at_ms } => task.tick(*at_ms, offset as i64),
        }
        if punctuate[offset] {
            // Where a punctuation falls is the wall clock's doing: a replay meets others.
            task.punctuate(BASE_MS + 100_000, offset % 2 == 0).unwrap();
            // A tick asked for would go to the log's end: this log is given.
            task.outputs().forwards.clear();
        }
        publish(task, published);
        if (offset + 1) % every == 0 || (commit_at_end && offset + 1 == to) {
            let staged = task.stage();
            published.extend(staged.outcomes.iter().map(|d| (d.record.id(), d.record.to_json())));
            task.store.write(staged.batch).unwrap();
            task.committed();
            committed = offset + 1;
        }
    }
    committed
}

/// Commits, fires every timer due by the clock, and commits that: what is
/// left to decide at the log's end, wherever the punctuations fell.
fn finish(task: &mut Task, published: &mut Published) {
    for punctuate in [true, false] {
        if punctuate {
            task.punctuate(BASE_MS + 100_000, false).unwrap();
        }
        publish(task, published);
        let staged = task.stage();
        task.store.write(staged.batch).unwrap();
        task.committed();
    }
}

/// Under `at_least_once` outcomes go out before the commit: at every publish.
fn publish(task: &mut Task, published: &mut Published) {
    let outputs = task.outputs();
    published.extend(outputs.outcomes.drain(..).map(|d| (d.record.id(), d.record.to_json())));
}

fn open_task(dir: &Path, config: &Arc<Config>, memory: &StoreMemory) -> Task {
    let store = Arc::new(Store::open(dir, memory).unwrap());
    let mut task = Task::new(0, store, Arc::clone(config), Arc::new(Metrics::new()));
    task.read_saved().unwrap();
    task
}

fn by_id(published: &Published) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    for (id, bytes) in published {
        if let Some(before) = out.insert(id.clone(), bytes.clone()) {
            if &before != bytes {
                return Err(format!(
                    "{id} published as\n  {}\nand as\n  {}",
                    String::from_utf8_lossy(&before),
                    String::from_utf8_lossy(bytes)
                ));
            }
        }
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_crash_and_its_replay_publish_nothing_that_contradicts(
        log in prop::collection::vec(entry(), 1..60),
        every in 1usize..8,
        crash in any::<prop::sample::Index>(),
        punctuate in prop::collection::vec(any::<bool>(), 60),
        punctuate_again in prop::collection::vec(any::<bool>(), 60),
    ) {
        let config = Arc::new(junction::config::parse(Path::new("t.toml"), CONFIG, Vec::new()).unwrap());
        let memory = StoreMemory::new(16 << 20, 4 << 20);
        let crash = crash.index(log.len() + 1);

        // Without a crash.
        let clean_dir = tempfile::tempdir().unwrap();
        let mut clean = Vec::new();
        let mut task = open_task(clean_dir.path(), &config, &memory);
        run(&mut task, &log, 0, log.len(), every, &[false; 60], true, &mut clean);
        finish(&mut task, &mut clean);
        drop(task);
        let clean = by_id(&clean);
        // A workflow ID reused after its purge with the same start time gives one ID to two records.
        prop_assume!(clean.is_ok());
        let clean = clean.unwrap();

        // Crashed at `crash`: what was not committed is lost, and replayed from the last commit.
        let dir = tempfile::tempdir().unwrap();
        let mut published = Vec::new();
        let mut task = open_task(dir.path(), &config, &memory);
        let committed = run(&mut task, &log, 0, crash, every, &punctuate, false, &mut published);
        drop(task);
        let mut task = open_task(dir.path(), &config, &memory);
        run(&mut task, &log, committed, log.len(), every, &punctuate_again, true, &mut published);
        finish(&mut task, &mut published);

        let crashed = by_id(&published);
        prop_assert!(crashed.is_ok(), "{}", crashed.unwrap_err());
        let crashed = crashed.unwrap();
        let ids = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
        prop_assert_eq!(ids(&crashed), ids(&clean), "the crash changed which records were published");
        prop_assert_eq!(crashed, clean);
    }
}
