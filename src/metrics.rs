//! Prometheus metrics: defined once here, registered in one registry that
//! `GET /metrics` renders. Label sets are bounded: results, reason codes,
//! outcomes, the configured workflow types and input topics, and the
//! partitions.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::join::outcome::Outcome;
use crate::join::EventResult;
use crate::names::Reason;

/// Seconds, from a millisecond to an hour: commit, latency and workflow durations.
const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

pub struct Metrics {
    registry: Registry,
    events: IntCounterVec,
    /// `events` for accepted, duplicate and late.
    events_by_result: [IntCounter; 3],
    dead_letters: IntCounterVec,
    forwarded: IntCounterVec,
    outcomes: IntCounterVec,
    commits: IntCounterVec,
    workflow_duration: HistogramVec,
    pub outcome_latency: Histogram,
    pub commit_duration: Histogram,
    pub restore_records: IntCounter,
    pub restore_duration: Histogram,
    store_failures: IntCounter,
    partitions: IntGaugeVec,
    workflows_open: IntGaugeVec,
    consumer_lag: IntGaugeVec,
    state_bytes: IntGaugeVec,
    pub pending_bytes: IntGauge,
    pub backpressure_pauses: IntCounter,
    pub partitions_lost: IntCounter,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram(name: &str, help: &str) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec())).expect("valid metric")
}

impl Metrics {
    /// Defines and registers every metric. Long, and on purpose: one
    /// definition per metric, name and help text together, in one place.
    pub fn new() -> Metrics {
        let events = counter(
            "junction_events_total",
            "Step events read from the input topic, by how they were taken.",
            &["result"],
        );
        let m = Metrics {
            registry: Registry::new(),
            events_by_result: ["accepted", "duplicate", "late"].map(|r| events.with_label_values(&[r])),
            events,
            dead_letters: counter(
                "junction_dead_letters_total",
                "Input records sent to the dead-letter topic, by reason code (the junction.error header).",
                &["reason"],
            ),
            forwarded: counter(
                "junction_forwarded_total",
                "Input records read off their workflow's home partition and forwarded to it through the repartition topic, by input topic.",
                &["topic"],
            ),
            outcomes: counter(
                "junction_outcomes_total",
                "Outcome records committed, by workflow type and outcome.",
                &["workflow_type", "outcome"],
            ),
            commits: counter("junction_commits_total", "Commits of one interval's work, by result.", &["result"]),
            workflow_duration: HistogramVec::new(
                HistogramOpts::new(
                    "junction_workflow_duration_seconds",
                    "Time from a workflow's first step event to its outcome (occurred_at times).",
                )
                .buckets(SECONDS_BUCKETS.to_vec()),
                &["workflow_type", "outcome"],
            )
            .expect("valid metric"),
            outcome_latency: histogram(
                "junction_outcome_latency_seconds",
                "Time from the deciding input record's timestamp (or the deadline firing) to the commit of its outcome.",
            ),
            commit_duration: histogram("junction_commit_duration_seconds", "Time to commit one interval's work."),
            restore_records: IntCounter::new(
                "junction_restore_records_total",
                "Changelog records applied to state stores while restoring.",
            )
            .expect("valid metric"),
            restore_duration: histogram(
                "junction_restore_duration_seconds",
                "Time to restore one partition's store from the changelog.",
            ),
            store_failures: IntCounter::new(
                "junction_store_failures_total",
                "Times a partition stopped because its state store failed: a write refused (disk full), an I/O error, a store that cannot be opened.",
            )
            .expect("valid metric"),
            partitions: gauge("junction_partitions", "Assigned home partitions, by task state.", &["state"]),
            workflows_open: gauge("junction_workflows_open", "Workflows waiting for a decision, by home partition.", &["partition"]),
            consumer_lag: gauge(
                "junction_consumer_lag",
                "Records in an assigned partition (of an input topic or the repartition topic) not yet consumed, from librdkafka statistics.",
                &["topic", "partition"],
            ),
            state_bytes: gauge(
                "junction_state_bytes",
                "Estimated size of a partition's state store (live data and memtables), from RocksDB.",
                &["partition"],
            ),
            pending_bytes: IntGauge::new(
                "junction_pending_bytes",
                "About how much memory the states and records waiting for a commit take (bounded by state.max_pending_bytes).",
            )
            .expect("valid metric"),
            backpressure_pauses: IntCounter::new(
                "junction_backpressure_pauses_total",
                "Times processing paused because what waited for a commit passed state.max_pending_bytes.",
            )
            .expect("valid metric"),
            partitions_lost: IntCounter::new(
                "junction_partitions_lost_total",
                "Home partitions the group gave to another instance while this one could not take part (given up without committing).",
            )
            .expect("valid metric"),
        };
        for c in [&m.events, &m.dead_letters, &m.forwarded, &m.outcomes, &m.commits] {
            m.registry.register(Box::new(c.clone())).expect("unique metric");
        }
        for g in [&m.partitions, &m.workflows_open, &m.consumer_lag, &m.state_bytes] {
            m.registry.register(Box::new(g.clone())).expect("unique metric");
        }
        for h in [&m.outcome_latency, &m.commit_duration, &m.restore_duration] {
            m.registry.register(Box::new(h.clone())).expect("unique metric");
        }
        m.registry.register(Box::new(m.workflow_duration.clone())).expect("unique metric");
        m.registry.register(Box::new(m.restore_records.clone())).expect("unique metric");
        m.registry.register(Box::new(m.store_failures.clone())).expect("unique metric");
        m.registry.register(Box::new(m.pending_bytes.clone())).expect("unique metric");
        m.registry.register(Box::new(m.backpressure_pauses.clone())).expect("unique metric");
        m.registry.register(Box::new(m.partitions_lost.clone())).expect("unique metric");
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("unique metric");
        // Every label value exists from the start, so that rates and sums work before the first event.
        for r in ["accepted", "duplicate", "late", "dead_lettered"] {
            m.events.with_label_values(&[r]);
        }
        for r in Reason::ALL {
            m.dead_letters.with_label_values(&[r.code()]);
        }
        for r in ["ok", "failed"] {
            m.commits.with_label_values(&[r]);
        }
        for s in ["restoring", "active", "stopped"] {
            m.partitions.with_label_values(&[s]);
        }
        m
    }

    /// Starts the forwarded series of the input topics at zero.
    pub fn register_input_topics<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        for t in topics {
            self.forwarded.with_label_values(&[t]);
        }
    }

    /// Resolved once per input partition: a label lookup per record would cost a hash and a lock.
    pub fn forwarded(&self, topic: &str) -> IntCounter {
        self.forwarded.with_label_values(&[topic])
    }

    /// Starts every outcome series of the configured workflow types at zero.
    pub fn register_workflow_types<'a>(&self, types: impl IntoIterator<Item = &'a str>) {
        for t in types {
            for o in Outcome::ALL {
                self.outcomes.with_label_values(&[t, o.as_str()]);
            }
        }
    }

    pub fn event(&self, result: EventResult) {
        let i = match result {
            EventResult::Accepted => 0,
            EventResult::Duplicate => 1,
            EventResult::Late => 2,
        };
        // Resolved once: a label lookup per event would cost a hash and a lock.
        self.events_by_result[i].inc();
    }

    pub fn dead_letter(&self, reason: Reason) {
        self.events.with_label_values(&["dead_lettered"]).inc();
        self.dead_letters.with_label_values(&[reason.code()]).inc();
    }

    pub fn outcome(&self, workflow_type: &str, outcome: Outcome, duration_seconds: f64) {
        self.outcomes.with_label_values(&[workflow_type, outcome.as_str()]).inc();
        self.workflow_duration.with_label_values(&[workflow_type, outcome.as_str()]).observe(duration_seconds);
    }

    pub fn commit(&self, ok: bool) {
        self.commits.with_label_values(&[if ok { "ok" } else { "failed" }]).inc();
    }

    pub fn set_partitions(&self, active: usize, restoring: usize, stopped: usize) {
        self.partitions.with_label_values(&["active"]).set(active as i64);
        self.partitions.with_label_values(&["restoring"]).set(restoring as i64);
        self.partitions.with_label_values(&["stopped"]).set(stopped as i64);
    }

    /// A partition stopped because its state store failed.
    pub fn partition_stopped(&self) {
        self.store_failures.inc();
    }

    pub fn workflows_open(&self, partition: i32) -> IntGauge {
        self.workflows_open.with_label_values(&[&partition.to_string()])
    }

    pub fn set_consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag.with_label_values(&[topic, &partition.to_string()]).set(lag);
    }

    /// Drops a revoked partition's lag: another instance reports it now.
    pub fn forget_lag(&self, topic: &str, partition: i32) {
        let _ = self.consumer_lag.remove_label_values(&[topic, &partition.to_string()]);
    }

    pub fn set_state_bytes(&self, partition: i32, bytes: u64) {
        self.state_bytes.with_label_values(&[&partition.to_string()]).set(bytes as i64);
    }

    /// Drops a revoked home partition's series: another instance reports them now.
    pub fn forget_partition(&self, partition: i32) {
        let p = partition.to_string();
        for g in [&self.workflows_open, &self.state_bytes] {
            let _ = g.remove_label_values(&[&p]);
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("metrics text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_metric_is_exported_with_help_text() {
        let m = Metrics::new();
        m.workflows_open(0).set(1);
        m.set_consumer_lag("in", 0, 5);
        m.register_input_topics(["in"]);
        m.set_state_bytes(0, 1024);
        m.outcome("order", Outcome::Completed, 1.5);
        let text = m.render();
        let mut names: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
        names.sort();
        for expected in [
            "junction_commit_duration_seconds",
            "junction_commits_total",
            "junction_consumer_lag",
            "junction_dead_letters_total",
            "junction_events_total",
            "junction_forwarded_total",
            "junction_outcome_latency_seconds",
            "junction_outcomes_total",
            "junction_partitions",
            "junction_partitions_lost_total",
            "junction_pending_bytes",
            "junction_backpressure_pauses_total",
            "junction_restore_duration_seconds",
            "junction_restore_records_total",
            "junction_state_bytes",
            "junction_workflow_duration_seconds",
            "junction_workflows_open",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_resident_memory_bytes",
        ] {
            assert!(names.contains(&expected), "{expected} is not exported: {names:?}");
            assert!(text.contains(&format!("# HELP {expected} ")), "{expected} has no help text");
        }
        println!("exported: {}", names.join(" "));
        m.forget_partition(0);
        m.forget_lag("in", 0);
        assert!(!m.render().contains("junction_consumer_lag{"), "a revoked partition's series are dropped");
    }
}
