//! What the benchmark reads to measure: committed offsets, the output topic
//! as a `read_committed` consumer sees it, outcome latency, restore times
//! from junction's log, and CPU and memory from `/proc`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};

use super::load::{load_producer, send_waiting, STEPS};
use super::report::Report;
use super::timeline;
use crate::common::{self, Broker};

pub const MIB: f64 = 1024.0 * 1024.0;

pub fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
    }
}

/// The input offsets a group has committed, and, for junction, whether it
/// joined everything it forwarded.
pub struct CommittedOffsets {
    consumer: BaseConsumer,
    tpl: TopicPartitionList,
    /// junction's repartition topic; none for a peer that has none.
    repartition: Option<String>,
    /// Under `exactly_once`: each transaction ends with a marker.
    transactional: bool,
}

impl CommittedOffsets {
    pub fn new(
        broker: &Broker,
        group: &str,
        input: &str,
        partitions: i32,
        repartition: Option<String>,
        transactional: bool,
    ) -> CommittedOffsets {
        let consumer = broker.client_config().set("group.id", group).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(input, p);
        }
        CommittedOffsets { consumer, tpl, repartition, transactional }
    }

    /// The input offsets committed, in all.
    pub fn total(&self) -> i64 {
        let Ok(committed) = self.consumer.committed_offsets(self.tpl.clone(), Duration::from_secs(5)) else {
            return 0;
        };
        committed.elements().iter().filter_map(|e| e.offset().to_raw()).filter(|o| *o > 0).sum()
    }

    /// Whether `input` input records are committed and every forwarded one
    /// joined: the repartition topic's committed offsets reach its ends. (An
    /// input offset is committed once its record is joined or forwarded.
    /// Under `exactly_once` a partition's last offset is the marker of the
    /// last transaction that wrote to it, which a consumer's offset stops
    /// before.)
    pub fn caught_up(&self, input: i64) -> bool {
        if self.total() < input {
            return false;
        }
        let Some(repartition) = &self.repartition else { return true };
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.tpl.count() as i32 {
            tpl.add_partition(repartition, p);
        }
        let Ok(committed) = self.consumer.committed_offsets(tpl, Duration::from_secs(5)) else { return false };
        committed.elements().iter().all(|e| {
            let Ok((_, end)) = self.consumer.fetch_watermarks(repartition, e.partition(), Duration::from_secs(5))
            else {
                return false;
            };
            let marker = i64::from(self.transactional && end > 0);
            e.offset().to_raw().unwrap_or(0).max(0) >= end - marker
        })
    }
}

pub struct OutcomeCount {
    pub records: usize,
    pub distinct: usize,
    pub failed: usize,
}

/// Reads the whole output topic as a `read_committed` consumer and counts
/// outcome records, distinct outcome IDs and `failed` outcomes. (Under
/// `exactly_once` its offsets include transaction markers, which no reader
/// is given: a partition is read once its reader is told it reached its end.)
pub fn count_outcomes(broker: &Broker, topic: &str) -> OutcomeCount {
    let consumer = reader(broker, topic, false);
    let partitions = broker.partition_count(topic) as i32;
    let ends = broker.end_offsets(topic, partitions);
    let mut at_end: HashSet<i32> = (0..partitions).filter(|&p| ends[p as usize] == 0).collect();
    let mut ids = HashSet::new();
    let (mut records, mut failed) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(300);
    while at_end.len() < partitions as usize {
        assert!(Instant::now() < deadline, "timed out reading {topic}: {records} records, partitions {at_end:?} read");
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
pub fn reader(broker: &Broker, topic: &str, from_end: bool) -> BaseConsumer {
    reader_of(broker, topic, from_end, 0..broker.partition_count(topic) as i32)
}

/// A `read_committed` consumer of some partitions of `topic`.
pub fn reader_of(broker: &Broker, topic: &str, from_end: bool, partitions: impl Iterator<Item = i32>) -> BaseConsumer {
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
    for p in partitions {
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

pub struct Latency {
    pub samples_ms: Vec<i64>,
    /// The part of each sample up to the outcome's sending (the record's own
    /// timestamp), sorted on its own.
    pub to_sent_ms: Vec<i64>,
    /// With a timeline ([`super::timeline::wanted`]), each sample beside
    /// the time its deciding step was sent, in the order read; else empty.
    pub by_sent: Vec<(i64, i64)>,
    pub events_per_second: f64,
}

impl Latency {
    pub fn quantile(&self, q: f64) -> f64 {
        quantile(&self.samples_ms, q)
    }

    pub fn report(&self, report: &mut Report, who: &str) {
        report.line(&format!("{who}: latency load"), self.events_per_second, "events/s");
        for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0)] {
            report.line(&format!("{who}: latency {name}"), self.quantile(q), "ms");
        }
        report.line(
            &format!("{who}:   of which until the record was sent, p50"),
            quantile(&self.to_sent_ms, 0.5),
            "ms",
        );
        report.line(
            &format!("{who}:   of which until the record was sent, p99"),
            quantile(&self.to_sent_ms, 0.99),
            "ms",
        );
        report.line(&format!("{who}: latency samples"), self.samples_ms.len() as f64, "");
    }
}

pub fn quantile(sorted: &[i64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64
}

/// Sends new workflows at `rate` events/s for `length` to `input`, each
/// record stamped with the time it is sent, and measures for every workflow
/// the time from its deciding (last) step's timestamp to the moment a
/// `read_committed` consumer reads its record on `output`: its outcome, or
/// for the pass-through, the copy of its last step (`last_step_only`). The
/// first second is warm-up and not counted.
pub fn latency_phase(
    broker: &Broker,
    input: &str,
    output: &str,
    last_step_only: bool,
    rate: f64,
    length: Duration,
) -> Latency {
    let workflows = (rate * length.as_secs_f64() / 3.0) as usize + 1;
    let last_sent: Arc<Vec<AtomicI64>> = Arc::new((0..workflows).map(|_| AtomicI64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let first_counted = junction::time::now_ms() + 1_000;
    let prefix = common::unique("latency");
    let reading = {
        let consumer = reader(broker, output, true);
        let (last_sent, done, prefix) = (Arc::clone(&last_sent), Arc::clone(&done), prefix.clone());
        let last_step = format!(r#""step":"{}""#, STEPS[2]);
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
                let Some(index) = workflow_index(&m, &prefix) else { continue };
                if last_step_only && !contains(m.payload().unwrap_or_default(), last_step.as_bytes()) {
                    continue;
                }
                seen += 1;
                let sent = last_sent[index].load(Ordering::SeqCst);
                if sent >= first_counted {
                    let produced = m.timestamp().to_millis().unwrap_or(now);
                    samples.push((sent, now - sent, produced - sent));
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
        let id = format!("{prefix}-{w}");
        for step in STEPS {
            let now = junction::time::now_ms();
            let value =
                format!(r#"{{"workflow_id":"{id}","workflow_type":"order","step":"{step}","status":"succeeded"}}"#);
            send_waiting(&producer, BaseRecord::to(input).key(id.as_bytes()).payload(value.as_bytes()).timestamp(now));
            last_sent[w].store(now, Ordering::SeqCst);
            sent_events += 1;
        }
        producer.poll(Duration::ZERO);
    }
    let events_per_second = sent_events as f64 / started.elapsed().as_secs_f64();
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(60)).unwrap();
    done.store(true, Ordering::SeqCst);
    let samples = reading.join().unwrap();
    assert!(!samples.is_empty(), "latency samples were taken");
    let by_sent: Vec<(i64, i64)> =
        if timeline::wanted() { samples.iter().map(|&(sent, ms, _)| (sent, ms)).collect() } else { Vec::new() };
    let (mut samples_ms, mut to_sent_ms): (Vec<i64>, Vec<i64>) =
        samples.into_iter().map(|(_, ms, to_sent)| (ms, to_sent)).unzip();
    samples_ms.sort_unstable();
    to_sent_ms.sort_unstable();
    Latency { samples_ms, to_sent_ms, by_sent, events_per_second }
}

fn workflow_index(m: &BorrowedMessage<'_>, prefix: &str) -> Option<usize> {
    let key = m.key()?.strip_prefix(prefix.as_bytes())?.strip_prefix(b"-")?;
    std::str::from_utf8(key).ok()?.parse().ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub struct Restored {
    pub records: u64,
    pub seconds: f64,
}

/// Sums junction's "state store restored" log lines: every record restored,
/// and the longest partition restore (partitions restore concurrently).
pub fn restored_from_log(log: &str) -> Restored {
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

/// (VmRSS, VmHWM) of a process, in bytes.
pub fn resident(pid: u32) -> (u64, u64) {
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

/// CPU time used by the broker, a contender and this benchmark process over a phase.
pub struct Cpu {
    pids: [(&'static str, Option<u32>); 3],
    at_start: [f64; 3],
    /// The contender's threads by name: CPU seconds at the start.
    threads_at_start: HashMap<String, f64>,
    started: Instant,
}

impl Cpu {
    pub fn start(broker: &Broker, name: &'static str, pid: Option<u32>) -> Cpu {
        let pids = [("broker", broker.pid()), (name, pid), ("benchmark", Some(std::process::id()))];
        Cpu {
            at_start: pids.map(|(_, p)| cpu_seconds(p)),
            threads_at_start: thread_cpu_seconds(pid),
            pids,
            started: Instant::now(),
        }
    }

    /// CPU seconds used since the start: (broker, contender, benchmark).
    pub fn used(&self) -> [f64; 3] {
        let mut out = [0.0; 3];
        for (i, ((_, pid), start)) in self.pids.iter().zip(self.at_start).enumerate() {
            out[i] = cpu_seconds(*pid) - start;
        }
        out
    }

    /// Cores used by each process, and by the contender's busiest threads.
    pub fn report(&self, report: &mut Report, phase: &str) {
        let wall = self.started.elapsed().as_secs_f64();
        for ((name, pid), used) in self.pids.iter().zip(self.used()) {
            if pid.is_some() {
                report.line(&format!("  {phase}: CPU cores used by {name}"), used / wall, "");
            }
        }
        let name = self.pids[1].0;
        let mut threads: Vec<(String, f64)> = thread_cpu_seconds(self.pids[1].1)
            .into_iter()
            .map(|(thread, now)| {
                let used = (now - self.threads_at_start.get(&thread).copied().unwrap_or(0.0)) / wall;
                (thread, used)
            })
            .filter(|(_, used)| *used >= 0.02)
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (thread, used) in threads {
            report.line(&format!("  {phase}: CPU cores used by {name}'s {thread} threads"), used, "");
        }
    }
}

/// One thread's name and CPU seconds so far.
pub struct ThreadCpu {
    pub name: String,
    pub seconds: f64,
}

/// CPU seconds of a process's threads so far, by thread ID.
pub fn thread_cpu(pid: Option<u32>) -> HashMap<u32, ThreadCpu> {
    let mut out = HashMap::new();
    let Some(pid) = pid else { return out };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].trim_end_matches(|c: char| c.is_ascii_digit() || c == '-').to_string();
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        out.insert(tid, ThreadCpu { name, seconds: (ticks(11) + ticks(12)) / 100.0 });
    }
    out
}

/// CPU seconds of a process's threads so far, summed by thread name.
fn thread_cpu_seconds(pid: Option<u32>) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for thread in thread_cpu(pid).into_values() {
        *out.entry(thread.name).or_insert(0.0) += thread.seconds;
    }
    out
}

/// User and system CPU seconds of a process so far.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').map_or(0, |i| i + 2)..].split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; 100 ticks per second.
    (ticks(11) + ticks(12)) / 100.0
}
