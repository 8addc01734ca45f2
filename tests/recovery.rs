//! Crashes, lost state and lost instances: no outcome is lost, and a repeat
//! (at-least-once) always carries the same outcome ID.

mod common;

use common::{assert_one_outcome_each, by_workflow, event, wait_until, Broker, Junction, Running, Setup};
use serde_json::Value;

const STEPS: [&str; 3] = ["payment", "inventory", "fraud_check"];

/// Steps of `n` order workflows, interleaved as concurrent services send
/// them: within each window of 100 workflows, step by step.
fn interleaved_orders(prefix: &str, n: usize, steps: &[&str]) -> Vec<Value> {
    let mut events = Vec::new();
    for window in (0..n).collect::<Vec<_>>().chunks(100) {
        for step in steps {
            for i in window {
                events.push(event(
                    &format!("{prefix}-{i}"),
                    "order",
                    step,
                    "succeeded",
                    Some(&format!("{prefix}-{i}-{step}")),
                ));
            }
        }
    }
    events
}

#[test]
fn kill_9_in_the_middle_of_a_load_loses_no_outcome() {
    let Running { work: _work, mut junction, setup, broker } = Running::start(4);

    let n = 3_000;
    let events = interleaved_orders("load", n, &STEPS);
    let (first, rest) = events.split_at(events.len() / 2 + 100);
    broker.produce_events(&setup.input, first);
    let mut out = broker.reader(&setup.output);
    out.read_until("some outcomes before the crash", |r| !r.is_empty());
    junction.kill();
    broker.produce_events(&setup.input, rest);
    junction.start_again();

    let records = out.read_until("every outcome after the restart", |r| by_workflow(r).len() >= n).to_vec();
    let repeats = assert_one_outcome_each(&records, n);
    assert!(records.iter().all(|r| r.json()["outcome"] == "completed"));
    eprintln!("kill -9 mid-load: {n} workflows, {} outcome records, {repeats} repeats", records.len());
}

#[test]
fn a_restart_with_the_state_directory_deleted_restores_state_from_the_changelog() {
    let Running { work: _work, mut junction, setup, broker } = Running::start(3);

    let n = 500;
    broker.produce_events(&setup.input, &interleaved_orders("wf", n, &STEPS[..2]));
    wait_until("every event processed", || {
        junction.metric("junction_events_total", "result=\"accepted\"") >= (2 * n) as f64
    });
    assert!(junction.terminate());
    std::fs::remove_dir_all(&junction.state_dir).unwrap();

    junction.start_again();
    junction.wait_ready();
    assert!(
        junction.metric("junction_restore_records_total", "") >= n as f64,
        "the state came back from the changelog"
    );
    broker.produce_events(&setup.input, &interleaved_orders("wf", n, &STEPS[2..]));
    let mut out = broker.reader(&setup.output);
    let records = out.read_until("every workflow completed", |r| by_workflow(r).len() >= n).to_vec();
    assert_one_outcome_each(&records, n);
    assert!(records.iter().all(|r| r.json()["outcome"] == "completed"));
}

#[test]
fn two_instances_share_the_partitions_and_a_survivor_finishes_everything() {
    let broker = Broker::start();
    let setup = Setup::new(&broker, 4);
    let work = tempfile::tempdir().unwrap();
    let (mut a, mut b) = Junction::start_two(&setup, work.path());

    let n = 1_000;
    broker.produce_events(&setup.input, &interleaved_orders("two", n, &STEPS[..2]));
    let accepted = |j: &Junction| j.metric("junction_events_total", "result=\"accepted\"");
    wait_until("every event processed by the two", || accepted(&a) + accepted(&b) >= (2 * n) as f64);
    assert!(accepted(&b) > 0.0, "b did its share");
    b.kill();
    broker.produce_events(&setup.input, &interleaved_orders("two", n, &STEPS[2..]));

    let mut out = broker.reader(&setup.output);
    let records = out.read_until("every workflow completed by the survivor", |r| by_workflow(r).len() >= n).to_vec();
    assert_one_outcome_each(&records, n);
    assert!(records.iter().all(|r| r.json()["outcome"] == "completed"), "the survivor restored b's open workflows");
    a.wait_ready();
}

/// The SST files of a store, to damage them.
fn sst_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .collect()
}

#[test]
fn damaged_stores_and_garbage_in_the_changelog_are_reported_and_rebuilt() {
    let Running { work: _work, mut junction, setup, broker } = Running::start(3);
    let n = 300;
    broker.produce_events(&setup.input, &interleaved_orders("done", n, &STEPS));
    broker.produce_events(&setup.input, &interleaved_orders("open", n, &STEPS[..2]));
    let mut out = broker.reader(&setup.output);
    out.read_until("the finished half's outcomes", |r| by_workflow(r).len() >= n);
    wait_until("the open half to be committed", || junction.metric("junction_workflows_open", "") == n as f64);
    assert!(junction.terminate(), "a clean stop flushes every store to its files");

    let stores = junction.state_dir.join(&setup.app);
    // Partition 0: every SST file truncated to half.
    let files = sst_files(&stores.join("0"));
    assert!(!files.is_empty(), "the flushed store has SST files");
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(f).unwrap().set_len(len / 2).unwrap();
    }
    // Partition 1: bytes in the middle of every SST file overwritten.
    for f in sst_files(&stores.join("1")) {
        let mut bytes = std::fs::read(&f).unwrap();
        let (middle, end) = (bytes.len() / 3, (bytes.len() / 3 + 64).min(bytes.len()));
        for b in &mut bytes[middle..end] {
            *b ^= 0x5a;
        }
        std::fs::write(&f, bytes).unwrap();
    }
    // Partition 2: a checkpoint beyond the changelog's end.
    {
        let memory = junction::state::StoreMemory::new(16 << 20, 4 << 20);
        let store = junction::state::Store::open(&stores.join("2"), &memory).unwrap();
        let mut batch = junction::state::StoreBatch::default();
        batch.set_checkpoint(1_000_000_000);
        store.write(batch).unwrap();
        store.flush().unwrap();
        drop(store);
    }
    // And records that are no state at all, in every changelog partition.
    let changelog = format!("{}-state-changelog", setup.app);
    let garbage: Vec<_> = (0..30)
        .map(|i| (Some(format!("garbage-{i}").into_bytes()), Some(b"\x00\xffthis is not a state".to_vec())))
        .collect();
    broker.produce(&changelog, &garbage);

    junction.start_again();
    junction.wait_ready();
    let log = junction.logs();
    let damaged = log.matches("state store is damaged; rebuilding it from the changelog").count();
    assert_eq!(damaged, 2, "the truncated and the overwritten store are both found damaged:\n{log}");
    assert!(log.contains("beyond the changelog's end"), "{log}");
    assert!(log.contains("garbage record in the changelog; skipped"), "{log}");
    assert_eq!(junction.metric("junction_workflows_open", ""), n as f64, "the open workflows came back");

    broker.produce_events(&setup.input, &interleaved_orders("open", n, &STEPS[2..]));
    let records = out.read_until("every workflow's outcome", |r| by_workflow(r).len() >= 2 * n).to_vec();
    assert_eq!(assert_one_outcome_each(&records, 2 * n), 0, "a clean stop repeats nothing");
    assert!(records.iter().all(|r| r.json()["outcome"] == "completed"));
    assert!(!log.contains("panicked"), "{log}");
}
