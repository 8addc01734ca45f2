//! Prometheus metrics: defined once here, registered in one registry that
//! `GET /metrics` renders. Label sets are bounded: results, reason codes,
//! outcomes and the configured workflow types.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::join::EventResult;
use crate::names::Reason;
use crate::outcome::Outcome;

pub struct Metrics {
    registry: Registry,
    events: IntCounterVec,
    dead_letters: IntCounterVec,
    outcomes: IntCounterVec,
    commits: IntCounterVec,
    pub commit_duration: Histogram,
    pub restore_records: IntCounter,
    pub partitions: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let events = IntCounterVec::new(
            Opts::new("junction_events_total", "Step events read from the input topic, by how they were taken."),
            &["result"],
        )
        .expect("valid metric");
        let dead_letters = IntCounterVec::new(
            Opts::new("junction_dead_letters_total", "Input records sent to the dead-letter topic, by reason code."),
            &["reason"],
        )
        .expect("valid metric");
        let outcomes = IntCounterVec::new(
            Opts::new("junction_outcomes_total", "Outcome records committed, by workflow type and outcome."),
            &["workflow_type", "outcome"],
        )
        .expect("valid metric");
        let commits = IntCounterVec::new(
            Opts::new("junction_commits_total", "Commits of outcomes, changelog, store and offsets, by result."),
            &["result"],
        )
        .expect("valid metric");
        let commit_duration = Histogram::with_opts(
            HistogramOpts::new("junction_commit_duration_seconds", "Time to commit one interval's work.")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )
        .expect("valid metric");
        let restore_records = IntCounter::new(
            "junction_restore_records_total",
            "Changelog records applied to state stores while restoring.",
        )
        .expect("valid metric");
        let partitions =
            IntGaugeVec::new(Opts::new("junction_partitions", "Assigned input partitions, by task state."), &["state"])
                .expect("valid metric");
        for c in [&events, &dead_letters, &outcomes, &commits] {
            registry.register(Box::new(c.clone())).expect("unique metric");
        }
        registry.register(Box::new(commit_duration.clone())).expect("unique metric");
        registry.register(Box::new(restore_records.clone())).expect("unique metric");
        registry.register(Box::new(partitions.clone())).expect("unique metric");
        // Every label value exists from the start, so that rates and sums work before the first event.
        for r in ["accepted", "duplicate", "late", "dead_lettered"] {
            events.with_label_values(&[r]);
        }
        for r in Reason::ALL {
            dead_letters.with_label_values(&[r.code()]);
        }
        for r in ["ok", "failed"] {
            commits.with_label_values(&[r]);
        }
        for s in ["restoring", "active"] {
            partitions.with_label_values(&[s]);
        }
        Metrics { registry, events, dead_letters, outcomes, commits, commit_duration, restore_records, partitions }
    }

    pub fn event(&self, result: EventResult) {
        let label = match result {
            EventResult::Accepted => "accepted",
            EventResult::Duplicate => "duplicate",
            EventResult::Late => "late",
        };
        self.events.with_label_values(&[label]).inc();
    }

    pub fn dead_letter(&self, reason: Reason) {
        self.events.with_label_values(&["dead_lettered"]).inc();
        self.dead_letters.with_label_values(&[reason.code()]).inc();
    }

    pub fn outcome(&self, workflow_type: &str, outcome: Outcome) {
        self.outcomes.with_label_values(&[workflow_type, outcome.as_str()]).inc();
    }

    pub fn commit(&self, ok: bool) {
        self.commits.with_label_values(&[if ok { "ok" } else { "failed" }]).inc();
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
