//! How long an instance restarted after a `kill -9` takes to process
//! again, as a new user would run it: one instance, junction's and the
//! broker's defaults, a 45 s session timeout. Measured from the restart,
//! until `/readyz` answers 200 and until the outcome of a workflow sent
//! just after the restart is read, for a static member of its group
//! (junction's default: it takes its old place at once) and a dynamic one
//! (`kafka.static_membership = false`: the group waits for the dead
//! member's session to time out first).
//!
//! `scripts/bench.sh --restart` runs it (`cargo bench --bench restart`,
//! `BENCH_RESTART_RUNS` runs of each); under `cargo test` it runs the
//! static case once, with the tests' 6 s session, and checks that it ends.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let runs: usize =
        if full { std::env::var("BENCH_RESTART_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3) } else { 1 };
    let cases: &[bool] = if full { &[true, false] } else { &[true] };
    let mut rows = Vec::new();
    for &is_static in cases {
        let (mut ready, mut outcome) = (Vec::new(), Vec::new());
        for run in 1..=runs {
            let (r, o) = restart(full, is_static);
            eprintln!("restart: run {run}, static {is_static}: ready after {r:.1} s, first outcome after {o:.1} s");
            ready.push(r);
            outcome.push(o);
        }
        rows.push((is_static, ready, outcome));
    }
    println!(
        "\n## The pause after kill -9 and a restart{}",
        if full { " (junction's and the broker's defaults: a 45 s session timeout)" } else { " (small test run)" }
    );
    println!("| membership | from the restart until | min s | median s | max s | runs |\n| --- | --- | ---: | ---: | ---: | ---: |");
    for (is_static, ready, outcome) in rows {
        let member = if is_static { "static (default)" } else { "dynamic (static_membership = false)" };
        for (what, mut values) in [("/readyz 200", ready), ("a new workflow's outcome", outcome)] {
            values.sort_by(f64::total_cmp);
            println!(
                "| {member} | {what} | {:.1} | {:.1} | {:.1} | {} |",
                values[0],
                values[values.len() / 2],
                values[values.len() - 1],
                values.len()
            );
        }
    }
}

/// Kills the one instance after it has processed a load, restarts it, and
/// returns the seconds until it is ready and until a new workflow's outcome is read.
fn restart(full: bool, is_static: bool) -> (f64, f64) {
    let broker = Broker::kafka();
    let mut setup = Setup::new(&broker, 4);
    if full {
        // A new user's settings: librdkafka's session timeout (45 s) and heartbeat (3 s).
        setup.group_protocol = "classic-defaults";
    }
    if !is_static {
        setup.kafka_options = "static_membership = false\n".into();
    }
    let work = tempfile::tempdir().unwrap();
    let mut j = Junction::start(&setup, work.path(), "j");
    j.wait_ready();
    let before: Vec<_> = (0..200)
        .flat_map(|i| {
            ["payment", "inventory", "fraud_check"]
                .map(|s| event(&format!("before-{i}"), "order", s, "succeeded", None))
        })
        .collect();
    broker.produce_events(&setup.input, &before);
    broker.reader(&setup.output).read_until("the first outcomes", |r| r.len() >= 200);
    j.kill();
    let restarted = Instant::now();
    j.start_again();
    let after: Vec<_> =
        ["payment", "inventory", "fraud_check"].map(|s| event("after-restart", "order", s, "succeeded", None)).to_vec();
    broker.produce_events(&setup.input, &after);
    let deadline = restarted + Duration::from_secs(120);
    let mut ready = None;
    let mut output = broker.reader(&setup.output);
    loop {
        assert!(Instant::now() < deadline, "the restarted instance did not process again:\n{}", j.logs());
        if ready.is_none() && matches!(j.get("/readyz"), Some((200, _))) {
            ready = Some(restarted.elapsed().as_secs_f64());
        }
        let records = output.read_for(Duration::from_millis(100));
        if let Some(ready) = ready.filter(|_| by_workflow(records).contains_key("after-restart")) {
            return (ready, restarted.elapsed().as_secs_f64());
        }
    }
}
