//! Storage failure: when a partition's state store cannot write (its disk is
//! full), that partition stops alone, with a clear error and `/readyz` 503;
//! its input offset is never committed past the state it could not save; the
//! other partitions go on; and once there is space again the partition
//! resumes by itself and loses nothing.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_one_outcome_each, by_workflow, event, noise, wait_until, Broker, Junction, Setup, PATIENCE};
use junction::route::partitioner::murmur2_partition;
use serde_json::{json, Value};

const PARTITIONS: i32 = 3;
/// The stopped partition's step payloads: large, so that its memtable fills
/// and RocksDB must write a file to the full disk.
const PAYLOAD_BYTES: usize = 30_000;

/// A small tmpfs, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test fills a small tmpfs to make the disk full, and mounting one needs root (as .ci/run has): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with a file, and keeps it full (taking what
    /// RocksDB frees when it deletes a file it could not finish) until the
    /// returned guard is dropped, which deletes the file.
    fn fill(&self) -> Filler {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        fill_up(&mut f);
        let stop = Arc::new(AtomicBool::new(false));
        let topping = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    fill_up(&mut f);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Filler { path, stop, topping: Some(topping) }
    }
}

/// Appends to `f` until the file system has no byte left.
fn fill_up(f: &mut std::fs::File) {
    let block = vec![0xA5u8; 64 << 10];
    loop {
        match f.write(&block) {
            Ok(n) if n == block.len() => {}
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    // The last partial block: byte by byte until nothing fits.
    while matches!(f.write(&[0xA5]), Ok(1)) {}
}

struct Filler {
    path: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    topping: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Filler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.topping.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Workflow IDs that Kafka's default partitioner puts on `partition`.
fn ids_on(partition: i32, prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|id| murmur2_partition(id.as_bytes(), PARTITIONS as usize) == partition)
        .take(n)
        .collect()
}

/// The offset a stopped partition resumes from, from the log of its first
/// stop: the offset after its last commit whose store write succeeded.
fn resume_offset(log: &str) -> i64 {
    let line = log.lines().find(|l| l.contains("partition stopped")).expect("a stop in the log");
    let value = line.split("resume_from=").nth(1).unwrap_or_else(|| panic!("no resume_from in {line}"));
    value.split(' ').next().unwrap().parse().unwrap_or_else(|e| panic!("resume_from in {line}: {e}"))
}

fn complete(ids: &[String]) -> Vec<Value> {
    let steps = ["payment", "inventory", "fraud_check"];
    steps.iter().flat_map(|step| ids.iter().map(move |id| event(id, "order", step, "succeeded", None))).collect()
}

fn big_payment(id: &str, seed: u64) -> Value {
    let mut e = event(id, "order", "payment", "succeeded", None);
    e["payload"] = json!({ "id": id, "blob": noise(seed, PAYLOAD_BYTES) });
    e
}

#[test]
fn a_full_disk_stops_only_its_partition_commits_nothing_past_unsaved_state_and_heals_when_space_returns() {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, PARTITIONS);
    // Small memtables (2 MiB per store), so that a few megabytes of state make RocksDB write to disk.
    setup.state_options = "memory_bytes = 16777216\nwrite_buffer_bytes = 4194304\n".into();
    let tmpfs = Tmpfs::mount("64m");
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start_with_state(&setup, work.path(), "j", tmpfs.path());
    junction.wait_ready();
    let mut out = broker.reader(&setup.output);

    // Before: every partition works.
    let before: Vec<String> = (0..PARTITIONS).flat_map(|p| ids_on(p, &format!("before{p}"), 10)).collect();
    broker.produce_events(&setup.input, &complete(&before));
    out.read_until("outcomes before the disk fills", |r| by_workflow(r).len() >= before.len());

    // The disk fills. Partition 0 gets open workflows with large payloads
    // until its store fails; the others get nothing yet.
    let filler = tmpfs.fill();
    let stuck = ids_on(0, "stuck", 400);
    let mut sent = 0;
    let deadline = Instant::now() + PATIENCE;
    while junction.metric("junction_partitions", "state=\"stopped\"") < 1.0 {
        assert!(Instant::now() < deadline, "partition 0 never stopped; log:\n{}", junction.logs());
        assert!(sent < stuck.len(), "{sent} large workflows did not fill the store; log:\n{}", junction.logs());
        let batch: Vec<Value> =
            stuck[sent..sent + 20].iter().enumerate().map(|(i, id)| big_payment(id, (sent + i) as u64)).collect();
        broker.produce_events(&setup.input, &batch);
        sent += 20;
        std::thread::sleep(Duration::from_millis(300));
    }
    let stuck = &stuck[..sent];
    eprintln!("partition 0 stopped after {sent} workflows with {PAYLOAD_BYTES}-byte payloads");
    // Workflows whose steps arrive while partition 0 is stopped: their
    // input records are not committed before it has joined them.
    let waiting = ids_on(0, "waiting", 10);
    broker.produce_events(&setup.input, &complete(&waiting));

    // It says so, and the process stays up. (While the disk stays full,
    // each attempt to open the store again fails and stops it again.)
    let mut readyz = None;
    wait_until("/readyz to name the stopped partition", || {
        readyz = junction.get("/readyz");
        readyz.as_ref().is_some_and(|(_, body)| body.contains("partition 0 stopped"))
    });
    let (status, body) = readyz.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("No space left on device"), "{body}");
    assert!(junction.is_running());
    let log = junction.logs();
    assert!(
        log.contains("partition stopped; its offsets stay at the last saved commit") && log.contains("No space left"),
        "{log}"
    );
    assert!(junction.metric("junction_store_failures_total", "") >= 1.0);

    // The other partitions go on, with the disk still full.
    let during: Vec<String> = (1..PARTITIONS).flat_map(|p| ids_on(p, &format!("during{p}"), 20)).collect();
    broker.produce_events(&setup.input, &complete(&during));
    out.read_until("the other partitions' outcomes while partition 0 is stopped", |r| {
        let done = by_workflow(r);
        during.iter().all(|id| done.contains_key(id))
    });
    // While the disk stays full, opening the store again stops it again
    // (its flush fails) rather than resuming it.
    wait_until("a second stop, after an attempt to open the store again", || {
        junction.metric("junction_store_failures_total", "") >= 2.0
    });
    assert_eq!(junction.get("/readyz").map(|(s, _)| s), Some(503));
    // While the disk stays full, opening the store again stops it again
    // (the flush that proves it can write fails) rather than resuming it.
    wait_until("a second stop, after an attempt to open the store again", || {
        junction.metric("junction_store_failures_total", "") >= 2.0
    });
    assert_eq!(junction.get("/readyz").map(|(s, _)| s), Some(503));
    // Input partitions 1 and 2 are committed to their end; input partition
    // 0, whose records wait for their markers at home partition 0 (README,
    // "Routing"), not past them. On the repartition topic, home partitions 1
    // and 2 are committed to their end; partition 0 not past what it saved.
    let input_end = broker.end_offsets(&setup.input, PARTITIONS);
    wait_until("input partitions 1 and 2 committed to their end", || {
        broker.committed_offsets(&setup.app, &setup.input, PARTITIONS)[1..] == input_end[1..]
    });
    let input_committed = broker.committed_offsets(&setup.app, &setup.input, PARTITIONS);
    assert!(
        input_committed[0] < input_end[0],
        "input partition 0 committed {} of {} although its home partition stopped",
        input_committed[0],
        input_end[0]
    );
    let repartition = format!("{}-repartition", setup.app);
    let end = broker.end_offsets(&repartition, PARTITIONS);
    wait_until("home partitions 1 and 2 committed to their end", || {
        let committed = broker.committed_offsets(&setup.app, &repartition, PARTITIONS);
        committed[1..] == end[1..]
    });
    let committed = broker.committed_offsets(&setup.app, &repartition, PARTITIONS);
    eprintln!("while stopped: committed {committed:?}, end {end:?}");
    assert!(committed[0] < end[0], "partition 0 committed {} of {} although its store failed", committed[0], end[0]);
    // Exactly up to its last commit whose store write succeeded, which is where it resumes.
    let saved = resume_offset(&junction.logs());
    assert_eq!(committed[0], saved, "partition 0's committed offset is past its last saved commit");

    // Space returns: the partition is opened again by itself, caught up from
    // the changelog, and replays its input from its last commit.
    drop(filler);
    wait_until("partition 0 resumed", || {
        junction.metric("junction_partitions", "state=\"stopped\"") == 0.0
            && junction.get("/readyz").is_some_and(|(s, _)| s == 200)
    });
    assert!(junction.logs().contains("stopped partition resumed"));
    let rest: Vec<Value> = ["inventory", "fraud_check"]
        .iter()
        .flat_map(|step| stuck.iter().map(move |id| event(id, "order", step, "succeeded", None)))
        .collect();
    broker.produce_events(&setup.input, &rest);

    let all = before.len() + during.len() + stuck.len() + waiting.len();
    let records = out.read_until("every outcome", |r| by_workflow(r).len() >= all).to_vec();
    let repeats = assert_one_outcome_each(&records, all);
    let outcomes = by_workflow(&records);
    for id in stuck {
        let o = &outcomes[id.as_str()][0];
        assert_eq!(o["outcome"], "completed", "{o}");
        let payload = &o["steps"]["payment"]["payload"];
        assert!(payload["id"] == id.as_str() && payload["blob"].as_str().map(str::len) == Some(PAYLOAD_BYTES));
    }
    assert!(!junction.logs().contains("panicked"));
    eprintln!(
        "storage failure: {} workflows, {} on the stopped partition, {} outcome records, {repeats} repeats, 0 lost",
        all,
        stuck.len(),
        records.len()
    );
}
