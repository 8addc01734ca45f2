//! Microbenchmarks of state: its encoding (the binary format written, and the
//! JSON of version 1 for comparison) and the RocksDB store's operations as
//! the commit and the join use them. Run with `cargo bench --bench state`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use junction::input::event::Status;
use junction::join::outcome::{Outcome, Payload};
use junction::join::{Decision, StepState, WorkflowState};
use junction::state::codec;
use junction::state::{Store, StoreBatch, StoreMemory};

/// A completed three-step workflow with event IDs and small payloads, as
/// the end-to-end benchmark leaves them.
fn completed(i: usize) -> WorkflowState {
    let mut s = WorkflowState::new("order", 1_763_805_600_000);
    for (n, step) in ["payment", "inventory", "fraud_check"].iter().enumerate() {
        s.steps.push(StepState {
            name: step.to_string(),
            work: Some(Status::Succeeded),
            occurred_at_ms: 1_763_805_600_000 + n as i64,
            payload: Some(Payload(serde_json::from_str(&format!(r#"{{"amount":{i}}}"#)).unwrap())),
            compensated_at_ms: None,
            seen_without_id: 0,
        });
        s.event_ids.push(format!("order-{i:09}-{step}"));
    }
    s.last_event_at_ms = 1_763_805_600_002;
    s.decision =
        Some(Decision { outcome: Outcome::Completed, decided_at_ms: 1_763_805_601_000, compensated_at_ms: None });
    s
}

fn encoding(c: &mut Criterion) {
    let states: Vec<WorkflowState> = (0..1_000).map(completed).collect();
    let encoded: Vec<Vec<u8>> = states.iter().map(codec::encode).collect();
    let json: Vec<Vec<u8>> = states
        .iter()
        .map(|s| {
            let mut v = vec![1];
            serde_json::to_writer(&mut v, s).unwrap();
            v
        })
        .collect();
    let mut group = c.benchmark_group("state_encoding");
    group.throughput(Throughput::Elements(states.len() as u64));
    group.bench_function("encode_binary", |b| b.iter(|| states.iter().for_each(|s| drop(black_box(codec::encode(s))))));
    group.bench_function("decode_binary", |b| {
        b.iter(|| encoded.iter().for_each(|e| drop(black_box(codec::decode(e).unwrap()))))
    });
    group.bench_function("summary_binary", |b| {
        b.iter(|| encoded.iter().for_each(|e| drop(black_box(codec::summary(e).unwrap()))))
    });
    group.bench_function("decode_json_v1", |b| {
        b.iter(|| json.iter().for_each(|e| drop(black_box(codec::decode(e).unwrap()))))
    });
    group.finish();
    eprintln!(
        "state_encoding: {} bytes binary, {} bytes JSON per completed three-step state",
        encoded[0].len(),
        json[0].len()
    );
}

fn store(c: &mut Criterion) {
    let memory = StoreMemory::new(64 << 20, 16 << 20);
    let value = codec::encode(&completed(7));
    let ids: Vec<String> = (0..1_000).map(|i| format!("order-{i:09}")).collect();
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(ids.len() as u64));

    // One commit's batch: 1,000 states with their timers, and the checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &memory).unwrap();
    let mut round = 0u64;
    group.bench_function("batched_write", |b| {
        b.iter_batched(
            || {
                round += 1;
                let mut batch = StoreBatch::default();
                for id in &ids {
                    batch.put_state(&format!("{id}-{round}"), &value, Some(1_763_892_001_000));
                }
                batch.set_checkpoint(round as i64);
                batch
            },
            |batch| store.write(batch).unwrap(),
            BatchSize::SmallInput,
        )
    });
    drop(store);

    // Reads from a store of 200,000 workflows, flushed to disk, as after a
    // busy while: a known workflow, and a new one (its first event).
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &memory).unwrap();
    for chunk in 0..200 {
        let mut batch = StoreBatch::default();
        for i in 0..1_000 {
            batch.put_state(&format!("order-{:09}", chunk * 1_000 + i), &value, Some(1_763_892_001_000));
        }
        store.write(batch).unwrap();
    }
    store.flush().unwrap();
    let known: Vec<String> = (0..1_000).map(|i| format!("order-{:09}", i * 199)).collect();
    let new: Vec<String> = (0..1_000).map(|i| format!("order-{:09}", 1_000_000 + i * 7)).collect();
    group.bench_function("point_read_hit", |b| {
        b.iter(|| known.iter().for_each(|id| drop(black_box(store.get_state(id).unwrap().unwrap()))))
    });
    group.bench_function("point_read_miss", |b| {
        b.iter(|| new.iter().for_each(|id| assert!(store.get_state(id).unwrap().is_none())))
    });
    // A new workflow again, now that recent commits sit in the memtable
    // as they do between flushes: a miss searches it as well.
    for chunk in 200..230 {
        let mut batch = StoreBatch::default();
        for i in 0..1_000 {
            batch.put_state(&format!("order-{:09}", chunk * 1_000 + i), &value, Some(1_763_892_001_000));
        }
        store.write(batch).unwrap();
    }
    group.bench_function("point_read_miss_memtable", |b| {
        b.iter(|| new.iter().for_each(|id| assert!(store.get_state(id).unwrap().is_none())))
    });
    group.finish();
}

criterion_group!(state, encoding, store);
criterion_main!(state);
