//! The benchmark's input: step events of 3-step workflows, generated
//! deterministically, and the producer that sends them as a user's service
//! would (keyed by workflow ID, lz4, lingering).

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::common::Broker;

pub const STEPS: [&str; 3] = ["payment", "inventory", "fraud_check"];
pub const WORKFLOWS: &str = r#"
[[workflows]]
type = "order"
steps = ["payment", "inventory", "fraud_check"]
"#;

/// Records as (key, value).
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// The input records, keyed by workflow ID.
pub struct Load {
    pub records: Records,
    pub duplicates: usize,
    pub failing: usize,
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

/// The ID of workflow number `n` of the load.
pub fn workflow_id(n: usize) -> String {
    format!("order-{n:09}")
}

pub fn event(workflow: usize, step: &str, status: &str, occurred_ms: i64) -> (Vec<u8>, Vec<u8>) {
    let id = workflow_id(workflow);
    let value = format!(
        r#"{{"workflow_id":"{id}","workflow_type":"order","step":"{step}","status":"{status}","event_id":"{id}-{step}","occurred_at":"{}","payload":{{"amount":{}}}}}"#,
        junction::time::format_time(occurred_ms),
        workflow % 10_000
    );
    (id.into_bytes(), value.into_bytes())
}

impl Load {
    /// `workflows` workflows, 5% failing one step, 2% of the events sent
    /// twice, shuffled within windows of `window` workflows: the steps of
    /// one workflow arrive in any order, interleaved with those of its
    /// neighbours.
    pub fn generate(workflows: usize, window: usize) -> Load {
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
}

/// The first step of workflows `first..first + n`, which then stay open.
pub fn first_steps(first: usize, n: usize) -> Records {
    let now = junction::time::now_ms();
    (first..first + n).map(|w| event(w, STEPS[0], "succeeded", now)).collect()
}

/// The other two steps of the workflows `numbers`: each then completes.
pub fn last_steps(numbers: impl Iterator<Item = usize>) -> Records {
    let now = junction::time::now_ms();
    numbers.flat_map(|w| STEPS[1..].iter().map(move |step| event(w, step, "succeeded", now))).collect()
}

/// `BENCH_PARTITIONER`: how the load is partitioned (default `murmur2_random`,
/// as Java clients and junction's homes; librdkafka's own default,
/// `consistent_random`, puts most workflows off their homes).
pub fn partitioner() -> String {
    std::env::var("BENCH_PARTITIONER").unwrap_or_else(|_| "murmur2_random".to_string())
}

pub fn load_producer(broker: &Broker, linger_ms: &str) -> BaseProducer {
    broker
        .client_config()
        .set("partitioner", partitioner())
        .set("linger.ms", linger_ms)
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap()
}

pub fn send_waiting(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) {
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

pub fn produce_all(broker: &Broker, topic: &str, records: &[(Vec<u8>, Vec<u8>)]) {
    let producer = load_producer(broker, "20");
    for (key, value) in records {
        send_waiting(&producer, BaseRecord::to(topic).key(key.as_slice()).payload(value.as_slice()));
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
}
