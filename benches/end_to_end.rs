//! The end-to-end benchmark: junction against the tool users would
//! otherwise pick, Kafka Streams, and against a stateless pass-through that
//! no join can beat, on one local Apache Kafka broker
//! (single-node KRaft, `scripts/kafka/broker.sh`), under both guarantees,
//! on the same input. Run it with `scripts/bench.sh` (which is
//! `cargo bench --bench end_to_end`); the method and the figures are in
//! BENCHMARKS.md.
//!
//! In one run, for `at_least_once` and then `exactly_once`:
//! 1. **throughput**: the pass-through ceiling, junction and the Kafka
//!    Streams peer each read the same preloaded input (W workflows × 3
//!    steps, interleaved as concurrent services send them, with
//!    duplicates) from the start, in a group of their own, twice,
//!    alternating; events/s, CPU seconds per million events, peak resident
//!    memory. The outcomes are read back and checked;
//! 2. **outcome latency** at half junction's best load, for each of the
//!    three: from the deciding input record's timestamp to the outcome
//!    being read by a `read_committed` consumer. An unmeasured pass-through
//!    phase at that load warms the broker first, whichever contenders run.
//!
//! Then, for junction: 3. the **restore rate** after the state directory
//! is deleted; 4. **resident memory** with a million open workflows;
//! 5. **failover**: two instances with a million open workflows, one killed
//! with `kill -9`, the time until the survivor publishes outcomes for the
//! moved partitions, less the session timeout.
//!
//! Under `cargo test` (no `--bench` argument) it runs the same phases on a
//! small load and checks the counts, so that the benchmark and the peer are
//! tested in CI.

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::{Broker, Junction, Setup};
use harness::ceiling::PassThrough;
use harness::load::{self, Load};
use harness::measure::{self, CommittedOffsets, Cpu, Latency, MIB};
use harness::peer::Peer;
use harness::report::Report;
use harness::timeline::Timeline;
use rdkafka::message::Message;

/// The harness's session timeout (`Setup`'s classic group settings), which
/// failover waits out before anything else.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

struct Sizes {
    partitions: i32,
    /// Workflows in the throughput phase.
    workflows: usize,
    /// Workflows left open for the memory and failover figures.
    open: usize,
    latency_phase: Duration,
    /// The pass-through's unmeasured latency phase that warms the broker
    /// before the measured ones, under each guarantee.
    warm_up: Duration,
    /// Rounds of each contender, alternating.
    rounds: usize,
}

fn sizes(full: bool) -> Sizes {
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    if full {
        Sizes {
            partitions: env("BENCH_PARTITIONS", 4) as i32,
            workflows: env("BENCH_WORKFLOWS", 1_000_000),
            open: env("BENCH_OPEN_WORKFLOWS", 1_000_000),
            latency_phase: Duration::from_secs(env("BENCH_LATENCY_SECONDS", 20) as u64),
            warm_up: Duration::from_secs(env("BENCH_WARM_UP_SECONDS", 20) as u64),
            rounds: env("BENCH_ROUNDS", 2),
        }
    } else {
        Sizes {
            partitions: 4,
            workflows: 3_000,
            open: 3_000,
            latency_phase: Duration::from_secs(3),
            warm_up: Duration::ZERO,
            rounds: 1,
        }
    }
}

/// `BENCH_GUARANTEES`: which guarantees to measure (default both).
fn guarantees() -> Vec<&'static str> {
    let chosen = std::env::var("BENCH_GUARANTEES").unwrap_or_else(|_| "at_least_once,exactly_once".to_string());
    chosen
        .split(',')
        .map(|g| match g.trim() {
            "at_least_once" => "at_least_once",
            "exactly_once" => "exactly_once",
            other => panic!("BENCH_GUARANTEES lists at_least_once and exactly_once, not {other:?}"),
        })
        .collect()
}

/// `BENCH_CONTENDERS`: which to run beside junction (default both).
fn runs(contender: &str) -> bool {
    let chosen = std::env::var("BENCH_CONTENDERS").unwrap_or_else(|_| "ceiling,kafka-streams".to_string());
    contender == "junction" || chosen.split(',').any(|c| c.trim() == contender)
}

/// `BENCH_THROUGHPUT_ONLY=1`: the throughput rounds alone, to compare
/// settings quickly (BENCHMARKS.md, "Kafka Streams' settings").
fn throughput_only() -> bool {
    std::env::var("BENCH_THROUGHPUT_ONLY").is_ok_and(|v| v == "1")
}

/// What one contender showed under one guarantee.
#[derive(Default, Clone)]
struct Figures {
    events_per_second: f64,
    cpu_seconds_per_million: f64,
    peak_resident_mib: f64,
    latency: Option<(f64, f64, f64)>,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = sizes(full);
    let broker = Broker::start();
    let mut report = Report::default();
    report.title = format!("load partitioned by {}", load::partitioner());
    let work = tempfile::tempdir().unwrap();
    let mut base = Setup::new(&broker, sizes.partitions);
    base.workflows = load::WORKFLOWS.to_string();

    // The input: W workflows × 3 steps, 5% failing, 2% of events sent twice.
    let input = Load::generate(sizes.workflows, 1_000);
    let produced = Instant::now();
    load::produce_all(&broker, &base.input, &input.records);
    report.line("input records", input.records.len() as f64, "");
    report.line("  of which duplicates", input.duplicates as f64, "");
    report.line("load producer rate", input.records.len() as f64 / produced.elapsed().as_secs_f64(), "records/s");

    let mut summary = Vec::new();
    let mut junctions = Vec::new();
    for guarantee in guarantees() {
        let (figures, junction) = one_guarantee(&broker, &base, guarantee, &input, &sizes, work.path(), &mut report);
        summary.push((guarantee, figures));
        junctions.push(junction);
    }
    if throughput_only() {
        for (mut j, _) in junctions {
            assert!(j.terminate(), "junction exits 0 on SIGTERM");
        }
        report.print(full);
        print_summary(&summary);
        return;
    }
    // The restore and memory figures from at_least_once's instance (the
    // default guarantee), or the only one measured.
    let (mut junction, setup) = junctions.swap_remove(0);
    for (mut other, _) in junctions {
        assert!(other.terminate(), "junction exits 0 on SIGTERM");
    }
    restore_and_memory(&broker, &setup, &mut junction, &sizes, &mut report);
    drop(junction);
    failover(&broker, &base, &sizes, work.path(), &mut report);
    report.print(full);
    print_summary(&summary);
}

/// Throughput and latency of the three contenders under one guarantee.
/// Returns their figures, and junction's last instance with its setup.
fn one_guarantee(
    broker: &Broker,
    base: &Setup,
    guarantee: &'static str,
    input: &Load,
    sizes: &Sizes,
    work: &std::path::Path,
    report: &mut Report,
) -> (Vec<(&'static str, Figures)>, (Junction, Setup)) {
    let n = input.records.len();
    let (mut ceiling, mut junction, mut streams) = (Figures::default(), Figures::default(), Figures::default());
    let mut last = None;
    let mut last_peer = None;
    for round in 1..=sizes.rounds {
        if runs("ceiling") {
            let setup = fresh_application(broker, base, guarantee);
            let f = run_ceiling(broker, &setup, n);
            report.line(&format!("{guarantee}: ceiling (round {round})"), f.events_per_second, "events/s");
            keep_best(&mut ceiling, f);
        }
        if let Some((mut earlier, _)) = last.take() {
            assert!(Junction::terminate(&mut earlier), "junction exits 0 on SIGTERM");
        }
        let setup = fresh_application(broker, base, guarantee);
        let (j, f, cpu) = run_junction(broker, &setup, work, round, n);
        report.line(&format!("{guarantee}: junction (round {round})"), f.events_per_second, "events/s");
        if round == sizes.rounds {
            cpu.report(report, &format!("{guarantee}: junction's throughput phase"));
            report.line(
                &format!("{guarantee}:   junction's forwarded records"),
                j.metric("junction_forwarded_total", ""),
                "records",
            );
            // What paced the stream thread: how long its commits took, and how often it waited for them.
            let (seconds, commits) = commit_totals(&j);
            report.line(&format!("{guarantee}:   junction's commits"), commits, "");
            report.line(
                &format!("{guarantee}:   junction's mean commit duration while at full speed"),
                1000.0 * seconds / commits.max(1.0),
                "ms",
            );
            report.line(
                &format!("{guarantee}:   junction's backpressure pauses"),
                j.metric("junction_backpressure_pauses_total", ""),
                "",
            );
        }
        keep_best(&mut junction, f);
        check_outcomes(broker, &setup, input, report, "junction");
        last = Some((j, setup));

        if runs("kafka-streams") {
            drop(last_peer.take());
            let setup = fresh_application(broker, base, guarantee);
            let (p, f, cpu) = run_peer(broker, &setup, work, round, n);
            report.line(&format!("{guarantee}: kafka streams (round {round})"), f.events_per_second, "events/s");
            if round == sizes.rounds {
                cpu.report(report, &format!("{guarantee}: kafka streams' throughput phase"));
            }
            keep_best(&mut streams, f);
            check_outcomes(broker, &setup, input, report, "kafka streams");
            last_peer = Some((p, setup));
        }
    }

    if throughput_only() {
        let mut figures = vec![("junction", junction), ("kafka streams", streams), ("ceiling", ceiling)];
        figures.retain(|(who, _)| runs(&who.replace(' ', "-")));
        return (figures, last.take().expect("junction ran"));
    }

    // Outcome latency at half junction's best, for each.
    let rate = std::env::var("BENCH_LATENCY_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(junction.events_per_second / 2.0);
    // The broker's JIT compiles the paths of this load (small produce
    // requests, read_committed fetches) for its first 20 s or so, taking up
    // to 0.8 of a core meanwhile: whoever is measured first would pay for
    // it. A broker in service has long compiled them.
    if !sizes.warm_up.is_zero() {
        let warm = pass_through_latency(broker, base, guarantee, rate, sizes.warm_up);
        report.line(
            &format!("{guarantee}: the broker's warm-up (pass-through, not counted): latency p99"),
            warm.quantile(0.99),
            "ms",
        );
    }
    let (j, setup) = last.take().expect("junction ran");
    let cpu = Cpu::start(broker, "junction", j.pid());
    let commits_before = commit_totals(&j);
    let timeline = phase_timeline(broker, j.pid(), last_peer.as_ref().and_then(|(p, _)| p.pid()));
    let latency =
        measure::latency_phase(broker, latency_input(&setup), &setup.output, false, rate, sizes.latency_phase);
    cpu.report(report, &format!("{guarantee}: junction's latency phase"));
    let commits_after = commit_totals(&j);
    if let Some(timeline) = timeline {
        timeline.print(&format!("{guarantee}: junction's latency phase"), &latency);
    }
    report.line(
        &format!("{guarantee}:   junction's mean commit duration"),
        1000.0 * (commits_after.0 - commits_before.0) / (commits_after.1 - commits_before.1).max(1.0),
        "ms",
    );
    latency.report(report, &format!("{guarantee}: junction"));
    junction.latency = Some(three(&latency));
    junction.peak_resident_mib = junction.peak_resident_mib.max(peak_mib(j.pid()));

    if let Some((mut p, setup)) = last_peer.take() {
        let timeline = phase_timeline(broker, j.pid(), p.pid());
        let latency =
            measure::latency_phase(broker, latency_input(&setup), &setup.output, false, rate, sizes.latency_phase);
        if let Some(timeline) = timeline {
            timeline.print(&format!("{guarantee}: kafka streams' latency phase"), &latency);
        }
        latency.report(report, &format!("{guarantee}: kafka streams"));
        streams.latency = Some(three(&latency));
        streams.peak_resident_mib = streams.peak_resident_mib.max(peak_mib(p.pid()));
        assert!(p.terminate(), "the Kafka Streams peer closes on SIGTERM");
    }
    if runs("ceiling") {
        let latency = pass_through_latency(broker, base, guarantee, rate, sizes.latency_phase);
        latency.report(report, &format!("{guarantee}: ceiling"));
        ceiling.latency = Some(three(&latency));
    }
    let mut figures = vec![("junction", junction)];
    if runs("kafka-streams") {
        figures.push(("kafka streams", streams));
    }
    if runs("ceiling") {
        figures.push(("ceiling", ceiling));
    }
    (figures, (j, setup))
}

/// A latency phase's timeline, when wanted, of the processes that share the
/// cores during it.
fn phase_timeline(broker: &Broker, junction: Option<u32>, peer: Option<u32>) -> Option<Timeline> {
    Timeline::start(&[
        ("broker", broker.pid()),
        ("junction", junction),
        ("peer", peer),
        ("benchmark", Some(std::process::id())),
    ])
}

/// The latency of a fresh pass-through, reading the records of a latency
/// phase from its own input topic and copying them to its own output.
fn pass_through_latency(
    broker: &Broker,
    base: &Setup,
    guarantee: &'static str,
    rate: f64,
    length: Duration,
) -> Latency {
    let setup = fresh_application(broker, base, guarantee);
    let output = format!("{}-passthrough", setup.app);
    broker.create_topic(&output, setup.partitions);
    let input = latency_input(&setup);
    let (stop, running) = PassThrough::new(&bench_config(&setup), &setup.app, input, &output).in_background();
    let latency = measure::latency_phase(broker, input, &output, true, rate, length);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    running.join().unwrap();
    latency
}

fn three(l: &Latency) -> (f64, f64, f64) {
    (l.quantile(0.5), l.quantile(0.99), l.quantile(0.999))
}

fn keep_best(best: &mut Figures, f: Figures) {
    if f.events_per_second > best.events_per_second {
        best.events_per_second = f.events_per_second;
        best.cpu_seconds_per_million = f.cpu_seconds_per_million;
    }
    best.peak_resident_mib = best.peak_resident_mib.max(f.peak_resident_mib);
}

fn peak_mib(pid: Option<u32>) -> f64 {
    pid.map_or(0.0, |p| measure::resident(p).1 as f64 / MIB)
}

/// The same input topic for a new application: its own group, state,
/// changelog, output and dead-letter topics, and a second input topic of
/// its own for its latency phase, which thus adds nothing to the input the
/// others read.
fn fresh_application(broker: &Broker, base: &Setup, guarantee: &'static str) -> Setup {
    let mut fresh = Setup::named(broker, base.partitions);
    fresh.input = base.input.clone();
    fresh.more_inputs = vec![format!("{}-latency", fresh.app)];
    broker.create_topic(&fresh.more_inputs[0], base.partitions);
    fresh.workflows = base.workflows.clone();
    fresh.guarantee = guarantee;
    fresh
}

fn latency_input(setup: &Setup) -> &str {
    &setup.more_inputs[0]
}

fn bench_config(setup: &Setup) -> junction::config::Config {
    let text = setup.config_text(std::path::Path::new("/unused"), 1);
    // The same environment as the junction process: JUNCTION_KAFKA_PROPERTY_* tunes both alike.
    junction::config::parse(std::path::Path::new("bench.toml"), &text, std::env::vars()).unwrap()
}

fn run_ceiling(broker: &Broker, setup: &Setup, n: usize) -> Figures {
    let output = format!("{}-passthrough", setup.app);
    broker.create_topic(&output, setup.partitions);
    let pass = PassThrough::new(&bench_config(setup), &setup.app, &setup.input, &output);
    let cpu = Cpu::start(broker, "ceiling", None);
    let took = pass.run(n, &AtomicBool::new(false));
    Figures {
        events_per_second: n as f64 / took.as_secs_f64(),
        // In this process: the benchmark's own CPU is the pass-through's.
        cpu_seconds_per_million: cpu.used()[2] / n as f64 * 1e6,
        ..Figures::default()
    }
}

/// Starts junction on the preloaded input and measures the events/s until
/// its committed offsets reach the end of the input.
fn run_junction(
    broker: &Broker,
    setup: &Setup,
    work: &std::path::Path,
    round: usize,
    n: usize,
) -> (Junction, Figures, Cpu) {
    let junction = Junction::start(setup, work, &format!("junction-{}-{round}", setup.guarantee));
    let offsets = junction_offsets(broker, setup);
    measure::wait_for(Duration::from_secs(120), "junction to be ready", || {
        std::thread::sleep(Duration::from_millis(10));
        matches!(junction.get("/readyz"), Some((200, _)))
    });
    let f = timed(broker, "junction", junction.pid(), &offsets, n);
    (junction, f.0, f.1)
}

/// The input offsets junction's group committed, and whether it joined
/// every record it forwarded.
fn junction_offsets(broker: &Broker, setup: &Setup) -> CommittedOffsets {
    let repartition = Some(format!("{}-repartition", setup.app));
    let transactional = setup.guarantee == "exactly_once";
    CommittedOffsets::new(broker, &setup.app, &setup.input, setup.partitions, repartition, transactional)
}

/// Starts the Kafka Streams peer on the preloaded input and measures the
/// events/s from the moment it runs until its committed offsets reach the
/// end of the input.
fn run_peer(broker: &Broker, setup: &Setup, work: &std::path::Path, round: usize, n: usize) -> (Peer, Figures, Cpu) {
    let mut peer = Peer::start(broker, setup, work, &format!("streams-{}-{round}", setup.guarantee));
    let offsets = CommittedOffsets::new(broker, &setup.app, &setup.input, setup.partitions, None, false);
    measure::wait_for(Duration::from_secs(120), "the Kafka Streams peer to run", || {
        std::thread::sleep(Duration::from_millis(10));
        peer.ready()
    });
    let f = timed(broker, "kafka streams", peer.pid(), &offsets, n);
    (peer, f.0, f.1)
}

fn timed(
    broker: &Broker,
    name: &'static str,
    pid: Option<u32>,
    offsets: &CommittedOffsets,
    n: usize,
) -> (Figures, Cpu) {
    let started = Instant::now();
    let cpu = Cpu::start(broker, name, pid);
    measure::wait_for(Duration::from_secs(900), &format!("{name} to commit the whole input"), || {
        std::thread::sleep(Duration::from_millis(20));
        offsets.caught_up(n as i64)
    });
    let seconds = started.elapsed().as_secs_f64();
    let f = Figures {
        events_per_second: n as f64 / seconds,
        cpu_seconds_per_million: cpu.used()[1] / n as f64 * 1e6,
        peak_resident_mib: peak_mib(pid),
        latency: None,
    };
    (f, cpu)
}

/// Every workflow has its outcome, the failing ones failed, and repeats carry the same outcome ID.
fn check_outcomes(broker: &Broker, setup: &Setup, input: &Load, report: &mut Report, who: &str) {
    let outcomes = measure::count_outcomes(broker, &setup.output);
    let workflows = input.records.len() - input.duplicates;
    assert_eq!(outcomes.distinct * 3, workflows, "{who}: every workflow has its outcome");
    assert_eq!(outcomes.failed, input.failing, "{who}: every failing workflow failed");
    report.line(
        &format!("{}: {who}'s repeated outcomes", setup.guarantee),
        (outcomes.records - outcomes.distinct) as f64,
        "",
    );
}

/// (sum of seconds, count) of junction_commit_duration_seconds.
fn commit_totals(junction: &Junction) -> (f64, f64) {
    (
        junction.metric("junction_commit_duration_seconds_sum", ""),
        junction.metric("junction_commit_duration_seconds_count", ""),
    )
}

/// The restore rate, with the state directory deleted, and resident
/// memory with `sizes.open` workflows waiting for their other steps.
fn restore_and_memory(broker: &Broker, setup: &Setup, junction: &mut Junction, sizes: &Sizes, report: &mut Report) {
    let peak_before_restore = peak_mib(junction.pid());
    assert!(junction.terminate(), "junction exits 0 on SIGTERM");
    std::fs::remove_dir_all(&junction.state_dir).unwrap();
    junction.start_again();
    junction.wait_ready();
    let restored = measure::restored_from_log(&junction.logs());
    report.line(&format!("{}: junction's restored records", setup.guarantee), restored.records as f64, "");
    report.line(
        &format!("{}: junction's restore rate", setup.guarantee),
        restored.records as f64 / restored.seconds,
        "records/s",
    );
    assert!(restored.records >= sizes.workflows as u64, "the changelog holds at least one record per workflow");

    let offsets = junction_offsets(broker, setup);
    let before = offsets.total();
    let open = load::first_steps(100_000_000, sizes.open);
    load::produce_all(broker, &setup.input, &open);
    measure::wait_for(Duration::from_secs(600), "junction to take the open workflows", || {
        std::thread::sleep(Duration::from_millis(50));
        offsets.caught_up(before + open.len() as i64)
    });
    std::thread::sleep(Duration::from_secs(1));
    let open_gauge = junction.metric("junction_workflows_open", "");
    assert_eq!(open_gauge as usize, sizes.open, "junction_workflows_open counts the open workflows");
    let pid = junction.pid().expect("junction runs");
    report.line("junction: open workflows", open_gauge, "");
    report.line("junction: resident memory with them", measure::resident(pid).0 as f64 / MIB, "MiB");
    report.line("junction: peak resident memory", peak_before_restore.max(peak_mib(Some(pid))), "MiB");
    assert!(junction.terminate(), "junction exits 0 on SIGTERM");
}

/// Two instances share `sizes.open` open workflows; one is killed with
/// `kill -9`. Then the other steps of some of its workflows are sent, and
/// the time from the kill to the first outcome on its partitions is
/// measured: the session timeout, the survivor's rebalance and restore of
/// the moved partitions, and the join.
fn failover(broker: &Broker, base: &Setup, sizes: &Sizes, work: &std::path::Path, report: &mut Report) {
    let mut setup = fresh_application(broker, base, "at_least_once");
    setup.input = format!("{}-failover-in", setup.app);
    broker.create_topic(&setup.input, setup.partitions);
    let (mut a, mut b) = Junction::start_two(&setup, work);
    let offsets = junction_offsets(broker, &setup);
    let open = load::first_steps(200_000_000, sizes.open);
    load::produce_all(broker, &setup.input, &open);
    measure::wait_for(Duration::from_secs(600), "the two instances to take the open workflows", || {
        std::thread::sleep(Duration::from_millis(50));
        offsets.caught_up(open.len() as i64)
    });
    let open_total = a.metric("junction_workflows_open", "") + b.metric("junction_workflows_open", "");
    assert_eq!(open_total as usize, sizes.open, "the two instances hold every open workflow");
    let moved = b.assigned();
    let moved_open = b.metric("junction_workflows_open", "");
    let watch = measure::reader_of(broker, &setup.output, true, moved.iter().copied());
    // The workflows to complete after the kill: 1,000 whose home moves.
    let homes = sizes.partitions as usize;
    let completing: Vec<usize> = (200_000_000..200_000_000 + sizes.open)
        .filter(|&w| moved.contains(&junction::route::home(&load::workflow_id(w), homes)))
        .take(1_000)
        .collect();
    let completions = load::last_steps(completing.iter().copied());

    let killed = Instant::now();
    b.kill();
    load::produce_all(broker, &setup.input, &completions);
    let first = loop {
        assert!(killed.elapsed() < Duration::from_secs(300), "no outcome on the moved partitions");
        if let Some(m) = watch.poll(Duration::from_millis(5)) {
            let m = m.unwrap();
            assert!(moved.contains(&m.partition()));
            break killed.elapsed();
        }
    };
    report.line("failover: open workflows on the killed instance", moved_open, "");
    report.line("failover: from the kill to the first outcome of a moved partition", first.as_secs_f64(), "s");
    report.line("failover:   session timeout", SESSION_TIMEOUT.as_secs_f64(), "s");
    report.line("failover:   less the session timeout", (first - SESSION_TIMEOUT.min(first)).as_secs_f64(), "s");
    a.wait_ready();
    let restored = measure::restored_from_log(&a.logs());
    report.line("failover: records the survivor restored, in all", restored.records as f64, "");
    assert!(a.terminate(), "junction exits 0 on SIGTERM");
}

/// The figures side by side, with the ratios the targets are set on.
fn print_summary(summary: &[(&str, Vec<(&str, Figures)>)]) {
    println!("\n## junction, Kafka Streams and the pass-through ceiling, side by side");
    println!(
        "| guarantee | contender | events/s | p50 ms | p99 ms | p99.9 ms | CPU s per M events | peak resident MiB |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (guarantee, figures) in summary {
        for (who, f) in figures {
            let (p50, p99, p999) = f.latency.unwrap_or_default();
            // The ceiling runs inside this process: no resident memory of its own.
            let peak = if f.peak_resident_mib > 0.0 { format!("{:.0}", f.peak_resident_mib) } else { "-".to_string() };
            println!(
                "| {guarantee} | {who} | {:.0} | {p50:.0} | {p99:.0} | {p999:.0} | {:.1} | {peak} |",
                f.events_per_second, f.cpu_seconds_per_million
            );
        }
        let rate = |who: &str| figures.iter().find(|(w, _)| *w == who).map(|(_, f)| f.events_per_second);
        let junction = rate("junction").unwrap_or_default();
        if let Some(streams) = rate("kafka streams") {
            println!("| {guarantee} | junction / Kafka Streams | {:.2} | | | | | |", junction / streams);
        }
        if let Some(ceiling) = rate("ceiling") {
            println!("| {guarantee} | junction / ceiling | {:.2} | | | | | |", junction / ceiling);
        }
    }
    let junction_rate = |g: &str| {
        summary
            .iter()
            .find(|(guarantee, _)| *guarantee == g)
            .and_then(|(_, f)| f.first())
            .map(|(_, f)| f.events_per_second)
    };
    if let (Some(alo), Some(eos)) = (junction_rate("at_least_once"), junction_rate("exactly_once")) {
        println!("\njunction exactly_once / at_least_once: {:.2}", eos / alo);
    }
}
