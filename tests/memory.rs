//! Memory is bounded while a commit is slow. The broker throttles
//! junction's producer (a client quota of 1 MB/s), so every commit
//! crawls, while a backlog of 400,000 workflows, each with two of its three
//! steps, waits on the input topic: every one of them is a state that waits
//! for a commit. junction must pause its partitions once what waits passes
//! `state.max_pending_bytes` (16 MiB here), resume once it is committed, and
//! decide every workflow once the quota is lifted and the last steps come;
//! its resident memory must stay within what the README's "Memory" adds up
//! for these settings.
//!
//! The backlog is large enough that holding it would pass that sum: with the
//! bound lifted to 1 GiB, 127 MiB waited and junction reached 431–484 MiB.
//! So the sum is what shows that memory does not grow with the backlog. (The
//! peaks of the two halves are printed, not compared: the C library's
//! malloc steps up by 20–35 MiB when it likes, and the code without the
//! bound once passed that comparison, 362 then 376 MiB.)

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const CLIENT_ID: &str = "junction-memory-test";
const MIB: f64 = (1 << 20) as f64;
const PENDING_LIMIT: u64 = 16 << 20;
const STORE_MEMORY: u64 = 16 << 20;
/// librdkafka's queues, each: fetched records (the input and the restore
/// consumer) and the producer's.
const QUEUE_KBYTES: u64 = 8 << 10;
/// What the README counts for the rest: the code and threads, librdkafka's
/// buffers beyond its queues (its fetches, and what the C allocator keeps of
/// them), and what junction's allocator keeps of freed memory for a while.
const FIXED: f64 = 256.0 * MIB;
/// What one poll batch can add past the bound before the check that pauses (2,000 records).
const ONE_BATCH: f64 = 3.0 * MIB;

/// Sets (or, with `None`, removes) the broker's produce quota for junction's client ID.
fn quota(broker: &Broker, bytes_per_second: Option<u64>) {
    let home = std::env::var("JUNCTION_BROKER_HOME").unwrap_or_else(|_| {
        let cache = std::env::var("JUNCTION_CACHE")
            .unwrap_or_else(|_| format!("{}/.cache/junction", std::env::var("HOME").unwrap_or_default()));
        format!("{cache}/tools/kafka-4.1.1")
    });
    let change = match bytes_per_second {
        Some(rate) => vec!["--add-config".to_string(), format!("producer_byte_rate={rate}")],
        None => vec!["--delete-config".to_string(), "producer_byte_rate".to_string()],
    };
    let status = Command::new("java")
        .args(["-cp", &format!("{home}/libs/*"), "kafka.admin.ConfigCommand"])
        .args(["--bootstrap-server", &broker.bootstrap, "--alter", "--entity-type", "clients"])
        // junction names its producer after the configured client.id.
        .args(["--entity-name", &format!("{CLIENT_ID}-producer")])
        .args(change)
        .status()
        .expect("run Kafka's ConfigCommand");
    assert!(status.success(), "kafka-configs --alter failed");
}

#[test]
fn a_slow_commit_pauses_processing_instead_of_growing_memory() {
    let broker = Broker::kafka();
    let mut setup = Setup::new(&broker, 4);
    // librdkafka's session (45 s): the producer then holds a record up to 29 s, which a throttled broker needs.
    setup.group_protocol = "classic-defaults";
    setup.state_options =
        format!("memory_bytes = 16777216\nwrite_buffer_bytes = 4194304\nmax_pending_bytes = {PENDING_LIMIT}\n");
    setup.properties.push(("client.id".into(), CLIENT_ID.into()));
    // The queues the documented sum below counts.
    setup.properties.push(("queued.max.messages.kbytes".into(), QUEUE_KBYTES.to_string()));
    setup.properties.push(("queue.buffering.max.kbytes".into(), QUEUE_KBYTES.to_string()));
    let work = tempfile::tempdir().unwrap();
    let mut j = Junction::start(&setup, work.path(), "j");
    j.wait_ready();
    let rss = |j: &Junction| j.metric("process_resident_memory_bytes", "");
    let before = rss(&j);

    quota(&broker, Some(1_000_000));
    let workflows = 400_000;
    let steps = |names: &[&str]| -> Vec<_> {
        (0..workflows)
            .flat_map(|w| names.iter().map(move |s| event(&format!("m-{w}"), "order", s, "succeeded", None)))
            .collect()
    };
    broker.produce_events(&setup.input, &steps(&["payment", "inventory"]));

    // Throttled for a while, long enough to take most of the backlog in:
    // what waits stays bounded, and memory with it.
    let (mut most_pending, mut first_half, mut second_half) = (0.0f64, 0.0f64, 0.0f64);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(24) {
        most_pending = most_pending.max(j.metric("junction_pending_bytes", ""));
        let now = rss(&j);
        if start.elapsed() < Duration::from_secs(12) {
            first_half = first_half.max(now);
        } else {
            second_half = second_half.max(now);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let most_rss = first_half.max(second_half);
    let pauses = j.metric("junction_backpressure_pauses_total", "");
    quota(&broker, None);
    broker.produce_events(&setup.input, &steps(&["fraud_check"]));
    // Counted, not decoded, while waiting: 400,000 records.
    let mut output = broker.reader(&setup.output);
    output.read_until("every outcome", |r| r.len() >= workflows);
    let decided = output
        .read_for(Duration::from_secs(1))
        .iter()
        .filter_map(|r| r.key.clone())
        .collect::<std::collections::HashSet<_>>();
    assert_eq!(decided.len(), workflows, "every workflow decided");

    // The README's sum: RocksDB, twice what may wait and half of it held
    // for markers, librdkafka's three queues, and the rest.
    let documented = STORE_MEMORY as f64 + 2.5 * PENDING_LIMIT as f64 + 3.0 * (QUEUE_KBYTES * 1024) as f64 + FIXED;
    println!(
        "memory: resident {:.0} MiB before, at most {:.0} MiB in the first 12 s throttled and {:.0} MiB in the next \
         12 s (the documented sum for these settings: {:.0} MiB); at most {:.1} MiB waiting for a commit (bound {} \
         MiB); {pauses} pauses",
        before / MIB,
        first_half / MIB,
        second_half / MIB,
        documented / MIB,
        most_pending / MIB,
        PENDING_LIMIT >> 20
    );
    assert!(
        most_rss <= documented,
        "resident memory {:.0} MiB, above the documented {:.0} MiB",
        most_rss / MIB,
        documented / MIB
    );
    assert!(pauses >= 1.0, "processing paused while the commit was slow");
    assert!(most_pending <= PENDING_LIMIT as f64 + ONE_BATCH, "what waits stays bounded: {most_pending} bytes");
    assert!(j.terminate());
}
