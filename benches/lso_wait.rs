//! How long `read_committed` consumers of the output wait after an instance
//! dies with a transaction open (`kill -9` under `exactly_once`).
//!
//! The open transaction holds every partition it wrote at its last stable
//! offset: no `read_committed` consumer reads past it, whichever instance
//! wrote the records behind it, until the transaction ends. It ends in one
//! of two ways, each measured here from the kill:
//! 1. **a peer takes over** and nobody restarts the dead instance: the broker
//!    aborts the transaction once it is older than `transaction.timeout.ms`
//!    (junction's default, 10 s), at its next look for timed-out
//!    transactions (`transaction.abort.timed.out.transaction.cleanup.interval.ms`,
//!    10 s by default, so the abort comes 10 to 20 s after the transaction began);
//! 2. **the instance restarts on its state directory**: it gets its instance
//!    ID back, and its producer's initialisation aborts the transaction at once.
//!    Its partitions come back at once: it is a static member of its group
//!    (KIP-345, junction's default) and takes its old place. Measured as a
//!    third case with `kafka.static_membership = false`, where the group
//!    waits for the dead member's session to time out first.
//!
//! For each: the wait until every output partition's last stable offset has
//! passed the records written before the kill ("readers unblocked"), and until
//! the first outcome decided after the kill from the dead instance's input
//! partitions is readable, which also waits for the group to hand those
//! partitions over (the session timeout, 6 s here, reported apart).
//!
//! `scripts/bench.sh --lso` runs it (`cargo bench --bench lso_wait`), with the
//! broker's own default for the cleanup interval; under `cargo test` it runs
//! once each, on the test broker (which looks every second), and checks that
//! the waits end.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const PARTITIONS: i32 = 4;
/// The harness's session timeout (`session.timeout.ms` in `Setup::config_text`).
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let runs: usize =
        if full { std::env::var("BENCH_LSO_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3) } else { 1 };
    let mut report: Vec<(String, Vec<f64>)> = Vec::new();
    let mut add = |what: &str, seconds: f64| match report.iter_mut().find(|(w, _)| w == what) {
        Some((_, values)) => values.push(seconds),
        None => report.push((what.to_string(), vec![seconds])),
    };
    for run in 1..=runs {
        let (unblocked, first) = after_a_kill(full, None);
        eprintln!("lso_wait: run {run}, a peer takes over: readers unblocked after {unblocked:.1} s, first new outcome of the dead instance's partitions after {first:.1} s");
        add("a peer takes over: readers unblocked", unblocked);
        add("a peer takes over: first outcome of the dead instance's partitions", first);
        for (case, membership) in [
            ("a restart on the same state directory (a static member)", Membership::Static),
            ("the same, a dynamic member (static_membership = false)", Membership::Dynamic),
        ] {
            let (unblocked, first) = after_a_kill(full, Some(membership));
            eprintln!("lso_wait: run {run}, {case}: readers unblocked after {unblocked:.1} s, first new outcome after {first:.1} s");
            add(&format!("{case}: readers unblocked"), unblocked);
            add(&format!("{case}: first outcome of its partitions"), first);
        }
    }
    println!(
        "\n## read_committed waits after kill -9 under exactly_once{}",
        if full { "" } else { " (small test run)" }
    );
    println!(
        "transaction.timeout.ms 10 s (junction's default); the broker looks for timed-out transactions every {} s; \
         session timeout {} s",
        if full { 10 } else { 1 },
        SESSION_TIMEOUT.as_secs()
    );
    println!("| from the kill until | min s | median s | max s | runs |\n| --- | ---: | ---: | ---: | ---: |");
    for (what, mut values) in report {
        values.sort_by(f64::total_cmp);
        let (min, median, max) = (values[0], values[values.len() / 2], values[values.len() - 1]);
        println!("| {what} | {min:.1} | {median:.1} | {max:.1} | {} |", values.len());
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// How a restarted instance rejoins its group.
#[derive(Clone, Copy, PartialEq)]
enum Membership {
    /// As a new member: the group waits for the old one's session to time out.
    Dynamic,
    /// As the same static member (`group.instance.id`, junction's default).
    Static,
}

/// Kills an instance under load in the middle of a transaction, then has a
/// peer take over (`restart` None) or restarts it as `restart` says.
/// Returns the seconds from the kill until readers are unblocked, and until
/// the first outcome decided after the kill on its partitions is read.
fn after_a_kill(full: bool, restart: Option<Membership>) -> (f64, f64) {
    // The broker's default look for timed-out transactions, in a full run.
    let broker = Arc::new(if full {
        Broker::kafka_with(&["transaction.abort.timed.out.transaction.cleanup.interval.ms=10000"])
    } else {
        Broker::kafka()
    });
    let mut setup = Setup::new(&broker, PARTITIONS);
    setup.guarantee = "exactly_once";
    if restart == Some(Membership::Dynamic) {
        setup.kafka_options = "static_membership = false\n".into();
    }
    let changelog = format!("{}-state-changelog", setup.app);
    let work = tempfile::tempdir().unwrap();
    let mut dying = Junction::start(&setup, work.path(), "dying");
    let mut peer = restart.is_none().then(|| Junction::start(&setup, work.path(), "peer"));
    dying.wait_ready();
    if let Some(peer) = &mut peer {
        peer.wait_ready();
        wait_until("the partitions shared", || !dying.assigned().is_empty() && !peer.assigned().is_empty());
    }
    let partitions: HashSet<i32> = dying.assigned().into_iter().collect();
    let load = Load::start(&broker, &setup.input, "lso");
    broker.reader(&setup.output).read_until("outcomes under load", |r| r.len() >= 1_000);

    freeze_in_open_transaction(&dying, &broker, &changelog);
    // What readers must get past: everything written before the kill.
    let written: Vec<i64> = watermarks(&broker, &setup.output).iter().map(|(_, high)| *high).collect();
    let killed = Instant::now();
    let killed_ms = now_ms();
    dying.kill();
    if restart.is_some() {
        dying.start_again();
    }

    let mut reader = decided_after(&broker, &setup.output, killed_ms);
    let (mut unblocked, mut first) = (None, None);
    let deadline = killed + Duration::from_secs(120);
    while unblocked.is_none() || first.is_none() {
        assert!(Instant::now() < deadline, "readers still wait 120 s after the kill");
        if unblocked.is_none() {
            let stable = watermarks(&broker, &setup.output);
            if stable.iter().zip(&written).all(|((stable, _), written)| stable >= written) {
                unblocked = Some(killed.elapsed().as_secs_f64());
            }
        }
        if first.is_none() && reader.next_on(&partitions) {
            first = Some(killed.elapsed().as_secs_f64());
        }
    }
    drop(load);
    (unblocked.unwrap(), first.unwrap())
}

/// A `read_committed` reader of the output that looks for an outcome sent
/// after `after_ms`, of a workflow from given input partitions.
struct DecidedAfter {
    reader: Reader,
    seen: usize,
    after_ms: i64,
}

fn decided_after(broker: &Broker, topic: &str, after_ms: i64) -> DecidedAfter {
    DecidedAfter { reader: broker.reader(topic), seen: 0, after_ms }
}

impl DecidedAfter {
    /// Reads for 50 ms; whether an outcome of `partitions` sent after the kill came.
    fn next_on(&mut self, partitions: &HashSet<i32>) -> bool {
        let records = self.reader.read_for(Duration::from_millis(50));
        let new = &records[self.seen..];
        self.seen = records.len();
        new.iter().any(|r| {
            let from = junction::route::partitioner::murmur2_partition(
                r.key.as_deref().unwrap_or_default(),
                PARTITIONS as usize,
            );
            r.timestamp_ms > self.after_ms && partitions.contains(&from)
        })
    }
}
