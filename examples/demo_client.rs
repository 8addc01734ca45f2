//! The quickstart's Kafka client: creates the input topic, feeds sample
//! workflows, and prints what junction publishes.
//!
//!   demo_client create-topic BOOTSTRAP TOPIC PARTITIONS
//!   demo_client feed BOOTSTRAP TOPIC
//!   demo_client watch BOOTSTRAP OUTPUT_TOPIC DEAD_LETTER_TOPIC EXPECTED_OUTCOMES EXPECTED_DEAD_LETTERS

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["create-topic", bootstrap, topic, partitions] => {
            create_topic(bootstrap, topic, partitions.parse().expect("a partition count"))
        }
        ["feed", bootstrap, topic] => feed(bootstrap, topic),
        ["watch", bootstrap, output, dlq, outcomes, dead] => {
            watch(bootstrap, output, dlq, outcomes.parse().expect("a count"), dead.parse().expect("a count"))
        }
        _ => Err("usage: demo_client create-topic|feed|watch ... (see the source)".to_string()),
    };
    if let Err(e) = result {
        eprintln!("demo_client: {e}");
        std::process::exit(1);
    }
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = client(bootstrap).create().map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = runtime.block_on(admin.create_topics([&new], &AdminOptions::new())).map_err(|e| e.to_string())?;
    for r in results {
        match r {
            Ok(t) => println!("created topic {t} with {partitions} partitions"),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => println!("topic {t} already exists"),
            Err((t, e)) => return Err(format!("cannot create {t}: {e}")),
        }
    }
    Ok(())
}

/// Sample workflows, as three concurrent services would report them.
fn samples() -> Vec<(String, Vec<u8>)> {
    let e = |id: &str, ty: &str, step: &str, status: &str, payload: Value| {
        let v = json!({"workflow_id": id, "workflow_type": ty, "step": step, "status": status,
                       "event_id": format!("{id}-{step}-{status}"), "payload": payload});
        (id.to_string(), serde_json::to_vec(&v).expect("json"))
    };
    vec![
        // order-1001: every step succeeds, out of order, one report sent twice.
        e("order-1001", "order", "inventory", "succeeded", json!({"sku": "A-7", "qty": 1})),
        e("order-1001", "order", "payment", "succeeded", json!({"amount": 42})),
        e("order-1001", "order", "payment", "succeeded", json!({"amount": 42})),
        e("order-1001", "order", "fraud_check", "succeeded", json!({"score": 0.02})),
        // order-1002: payment succeeds, inventory fails: failed, compensate payment; then the refund is confirmed.
        e("order-1002", "order", "payment", "succeeded", json!({"amount": 99})),
        e("order-1002", "order", "inventory", "failed", json!({"reason": "out of stock"})),
        e("order-1002", "order", "payment", "compensated", json!({"refund": 99})),
        // signup-7: quorum 2 of 3 completes without welcome_credit.
        e("signup-7", "signup", "email", "succeeded", Value::Null),
        e("signup-7", "signup", "profile", "succeeded", Value::Null),
        // signup-8: one step only: its 10s deadline passes with no further input.
        e("signup-8", "signup", "email", "succeeded", Value::Null),
        // Bad input: not JSON. It goes to the dead-letter topic; nothing stops.
        ("bad-1".to_string(), b"{this is not json".to_vec()),
    ]
}

fn feed(bootstrap: &str, topic: &str) -> Result<(), String> {
    // librdkafka's default partitioner (CRC32), as a Python or Go service
    // would have: junction forwards what lands off its home partition.
    let producer: BaseProducer = client(bootstrap).create().map_err(|e| e.to_string())?;
    let records = samples();
    for (key, value) in &records {
        producer
            .send(BaseRecord::to(topic).key(key.as_str()).payload(value.as_slice()))
            .map_err(|(e, _)| e.to_string())?;
    }
    producer.flush(Duration::from_secs(30)).map_err(|e| e.to_string())?;
    println!("fed {} step events for 4 workflows (one duplicate, one bad record) to {topic}", records.len());
    Ok(())
}

fn watch(bootstrap: &str, output: &str, dlq: &str, outcomes: usize, dead: usize) -> Result<(), String> {
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", "junction-demo-watch")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for topic in [output, dlq] {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).map_err(|e| e.to_string())?;
        let n = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
        for p in 0..n {
            tpl.add_partition_offset(topic, p, Offset::Beginning).map_err(|e| e.to_string())?;
        }
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut seen_outcomes, mut seen_dead) = (0, 0);
    while (seen_outcomes < outcomes || seen_dead < dead) && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m.map_err(|e| e.to_string())?;
        let header = |name: &str| {
            m.headers()
                .and_then(|hs| {
                    hs.iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
                .unwrap_or_default()
        };
        let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
        if m.topic() == output {
            seen_outcomes += 1;
            let v: Value = serde_json::from_str(&value).map_err(|e| e.to_string())?;
            println!(
                "\noutcome {:<11} {:<11} (junction.outcome.id = {})",
                v["outcome"].as_str().unwrap_or("?"),
                v["workflow_id"].as_str().unwrap_or("?"),
                header("junction.outcome.id")
            );
            println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
        } else {
            seen_dead += 1;
            println!("\ndead letter: {value:?}\n  junction.error = {}\n  junction.error.detail = {}\n  from {} partition {} offset {}",
                header("junction.error"), header("junction.error.detail"), header("junction.source.topic"),
                header("junction.source.partition"), header("junction.source.offset"));
        }
    }
    println!("\n{seen_outcomes} outcome records, {seen_dead} dead letters");
    if seen_outcomes < outcomes || seen_dead < dead {
        return Err(format!("expected {outcomes} outcomes and {dead} dead letters within 60s"));
    }
    Ok(())
}
