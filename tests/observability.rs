//! What operators see: a real Prometheus scraping junction, counters that
//! account for every record, the shipped alert rules and dashboard, and no
//! secret in logs or metrics.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{event, free_port, http_get, wait_until, Junction, Running, Setup};
use serde_json::Value;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn complete_orders(prefix: &str, n: usize) -> Vec<Value> {
    let mut events = Vec::new();
    for i in 0..n {
        for step in ["payment", "inventory", "fraud_check"] {
            events.push(event(&format!("{prefix}-{i}"), "order", step, "succeeded", None));
        }
    }
    events
}

/// The metric names in Prometheus text.
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

/// A real Prometheus server, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn scraping(target_port: u16, dir: &Path) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: junction\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus (scripts/setup.sh installs it)");
        Prometheus { child, port }
    }

    /// The value of an instant query that returns one sample.
    fn query(&self, promql: &str) -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={encoded}"))?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_junction_and_sees_the_outcome_counter_rise() {
    let Running { junction, setup, broker, work } = Running::start(2);
    let prometheus = Prometheus::scraping(junction.http_port, work.path());
    wait_until("Prometheus scraping junction's zero outcome counter", || {
        prometheus.query("sum(junction_outcomes_total)") == Some(0.0)
    });

    let n = 20;
    broker.produce_events(&setup.input, &complete_orders("prom", n));
    wait_until("Prometheus seeing the outcome counter rise to every workflow", || {
        prometheus.query("sum(junction_outcomes_total{outcome=\"completed\"})") == Some(n as f64)
    });
    assert_eq!(prometheus.query("sum(junction_dead_letters_total)"), Some(0.0));
}

#[test]
fn the_outcome_and_dead_letter_counters_account_for_every_record_sent() {
    let Running { work: _work, junction, setup, broker } = Running::start(3);
    let n = 60;
    broker.produce_events(&setup.input, &complete_orders("count", n));
    let bad: Vec<_> =
        (0..7).map(|i| (Some(format!("bad-{i}").into_bytes()), Some(b"not json at all".to_vec()))).collect();
    broker.produce(&setup.input, &bad);

    let mut out = broker.reader(&setup.output);
    out.read_until("every outcome", |r| r.len() >= n);
    wait_until("the counters to catch up", || {
        junction.metric("junction_outcomes_total", "") >= n as f64
            && junction.metric("junction_dead_letters_total", "") >= bad.len() as f64
    });
    assert_eq!(junction.metric("junction_outcomes_total", ""), n as f64);
    assert_eq!(junction.metric("junction_outcomes_total", "outcome=\"completed\",workflow_type=\"order\""), n as f64);
    assert_eq!(junction.metric("junction_dead_letters_total", ""), bad.len() as f64);
    assert_eq!(junction.metric("junction_dead_letters_total", "reason=\"not_json\""), bad.len() as f64);
    assert_eq!(junction.metric("junction_events_total", "result=\"accepted\""), (3 * n) as f64);
    assert_eq!(junction.metric("junction_workflows_open", ""), 0.0);
    assert_eq!(junction.metric("junction_workflow_duration_seconds_count", ""), n as f64);
}

#[test]
fn promtool_accepts_the_alert_rules_and_the_prometheus_configuration() {
    for args in [
        vec!["check", "rules", "config/prometheus/alerts.yml"],
        vec!["check", "config", "config/prometheus/prometheus.yml"],
    ] {
        let out = Command::new("promtool").args(&args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_dashboard_is_valid_json_and_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(repo_file("config/grafana/dashboards/junction.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let panels = dashboard["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in ["events", "Outcomes", "latency", "Open workflows", "lag", "Restore", "Dead letters"] {
        assert!(titles.iter().any(|t| t.contains(wanted)), "no panel for {wanted}: {titles:?}");
    }
    let mut queried = BTreeSet::new();
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if token.starts_with("junction_") || token.starts_with("process_") {
                    let base =
                        ["_bucket", "_count", "_sum"].iter().find_map(|s| token.strip_suffix(s)).unwrap_or(token);
                    queried.insert(base.to_string());
                }
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");

    // Histograms with labels, the lag and the state size appear once there is traffic.
    let Running { work: _work, junction, setup, broker } = Running::start(2);
    broker.produce_events(&setup.input, &complete_orders("dash", 5));
    wait_until("every metric the dashboard queries", || {
        let names = exported(&junction.get("/metrics").map(|(_, b)| b).unwrap_or_default());
        queried.iter().all(|q| names.contains(q))
    });
}

#[test]
fn no_secret_from_the_client_properties_appears_in_logs_or_metrics() {
    let broker = common::Broker::start();
    let setup = Setup::new(&broker, 1);
    let work = tempfile::tempdir().unwrap();
    let secret = "s3cr3t-do-not-print";
    let mut junction = Junction::start_with_env(
        &setup,
        work.path(),
        "j",
        &[("JUNCTION_KAFKA_PROPERTY_SASL_PASSWORD", secret), ("RUST_LOG", "debug,librdkafka=debug")],
    );
    junction.wait_ready();
    broker.produce_events(&setup.input, &complete_orders("secret", 3));
    let mut out = broker.reader(&setup.output);
    out.read_until("the outcomes", |r| r.len() >= 3);
    let metrics = junction.get("/metrics").unwrap().1;
    assert!(junction.terminate());
    let logs = junction.logs();
    assert!(logs.contains("junction is running"), "the log was written: {logs}");
    assert!(!logs.contains(secret), "the password is in the log");
    assert!(!metrics.contains(secret), "the password is in the metrics");
}

/// `junction_outcomes_total` counts outcomes once their commit is done, so
/// commits that fail (here the changelog refuses every batch of states for
/// a while, under `at_least_once`, where outcomes go out before the commit)
/// and are redone count each outcome once.
#[test]
fn outcomes_are_counted_when_committed_not_when_sent() {
    let broker = std::sync::Arc::new(common::Broker::start_with(common::Storage::Memory));
    if !broker.has_transactions() {
        return; // Nisshi does not take topic settings.
    }
    let setup = Setup::new(&broker, 2);
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();
    let changelog = format!("{}-state-changelog", setup.app);
    broker.set_topic_config(&changelog, "max.message.bytes", "128");
    broker.produce_events(&setup.input, &complete_orders("counted", 200));
    wait_until("commits to fail", || junction.metric("junction_commits_total", "result=\"failed\"") >= 3.0);
    broker.set_topic_config(&changelog, "max.message.bytes", "1048588");
    wait_until("every outcome committed", || {
        let records = common::read_to_end(&broker, &setup.output, "read_committed");
        common::by_workflow(&records).len() >= 200
            && junction.metric("junction_commits_total", "result=\"ok\"") > 0.0
            && junction.metric("junction_pending_bytes", "") == 0.0
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    let published = common::read_to_end(&broker, &setup.output, "read_committed").len();
    let counted = junction.metric("junction_outcomes_total", "");
    println!("outcomes: 200 workflows, {published} records published (repeats of failed commits included), {counted} counted");
    assert!(published > 200, "the failed commits' outcomes went out, and again after them");
    assert_eq!(counted, 200.0, "each outcome counted once, when its commit was done");
}
