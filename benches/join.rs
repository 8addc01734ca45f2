//! Microbenchmarks of the pure path: decoding an event, the join decision,
//! and both together.
//! Run with `cargo bench --bench join`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use junction::config;
use junction::input::event::decode;
use junction::join::{apply_event, WorkflowState};

const CONFIG: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
input_topic = "in"
output_topic = "out"
dead_letter_topic = "dlq"

[[workflows]]
type = "order"
steps = ["payment", "inventory", "fraud_check"]
"#;

fn events(i: usize) -> [Vec<u8>; 3] {
    ["payment", "inventory", "fraud_check"].map(|step| {
        format!(
            r#"{{"workflow_id":"order-{i}","workflow_type":"order","step":"{step}","status":"succeeded","event_id":"{step}-{i}","occurred_at":"2026-11-22T10:00:00.123Z","payload":{{"amount":42}}}}"#
        )
        .into_bytes()
    })
}

/// The records' timestamp: just after the events occurred (an `occurred_at`
/// far ahead of it would be bad input).
const RECORD_MS: i64 = 1_795_341_601_000;

fn benches(c: &mut Criterion) {
    let config = config::parse(Path::new("bench.toml"), CONFIG, Vec::new()).unwrap();
    let inputs: Vec<[Vec<u8>; 3]> = (0..1_000).map(events).collect();

    let mut group = c.benchmark_group("join");
    group.throughput(Throughput::Elements(3 * inputs.len() as u64));
    group.bench_function("decode", |b| {
        b.iter(|| {
            for wf in &inputs {
                for e in wf {
                    black_box(decode(&config, None, Some(e), RECORD_MS).unwrap());
                }
            }
        })
    });
    let decoded: Vec<Vec<_>> = inputs
        .iter()
        .map(|wf| wf.iter().map(|e| decode(&config, None, Some(e), RECORD_MS).unwrap()).collect())
        .collect();
    group.bench_function("decide", |b| {
        b.iter(|| {
            for wf in &decoded {
                let spec = configured(&config, &wf[0]);
                let mut state = WorkflowState::new(&spec.workflow_type, wf[0].occurred_at_ms);
                for event in wf {
                    black_box(apply_event(spec, &mut state, &event.workflow_id, event, 0));
                }
            }
        })
    });
    group.bench_function("decode_and_decide", |b| {
        b.iter(|| {
            for wf in &inputs {
                let mut state: Option<WorkflowState> = None;
                for e in wf {
                    let event = decode(&config, None, Some(e), RECORD_MS).unwrap();
                    let spec = configured(&config, &event);
                    let s = state.get_or_insert_with(|| WorkflowState::new(&spec.workflow_type, event.occurred_at_ms));
                    black_box(apply_event(spec, s, &event.workflow_id, &event, 0));
                }
            }
        })
    });
    group.finish();
}

criterion_group!(join, benches);
criterion_main!(join);

/// The configured type of an event that names one.
fn configured<'c>(
    config: &'c junction::config::Config,
    event: &junction::input::event::StepEvent<'_>,
) -> &'c junction::config::WorkflowSpec {
    match event.workflow {
        junction::input::event::TypeRef::Configured(i) => &config.workflows[i],
        _ => panic!("the benchmark's events name configured types"),
    }
}
