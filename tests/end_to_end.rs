//! The join end to end: a real broker, the real binary, real clients.

mod common;

use std::time::Duration;

use common::{by_workflow, event, wait_until, Broker, Junction, RawRecord, Running, Setup};
use serde_json::json;

#[test]
fn the_join_completes_on_quorum_and_absorbs_duplicates_and_late_events() {
    let Running { work: _work, mut junction, setup, broker } = Running::start(3);

    broker.produce_events(
        &setup.input,
        &[
            event("order-1", "order", "payment", "succeeded", Some("p1")),
            event("order-1", "order", "payment", "succeeded", Some("p1")), // same event ID: duplicate
            event("order-1", "order", "inventory", "succeeded", None),
            event("order-1", "order", "inventory", "succeeded", None), // same step and status, no ID: duplicate
            event("order-1", "order", "fraud_check", "succeeded", Some("f1")),
            event("signup-1", "signup", "email", "succeeded", None),
            event("signup-1", "signup", "profile", "succeeded", None), // quorum 2 of 3: completed
            event("order-2", "order", "payment", "succeeded", None),
            event("order-2", "order", "inventory", "succeeded", None), // fraud_check missing: open
        ],
    );
    let mut out = broker.reader(&setup.output);
    out.read_until("two outcomes", |r| r.len() >= 2);
    // Late: signup-1 has completed; this changes nothing.
    broker.produce_events(&setup.input, &[event("signup-1", "signup", "welcome_credit", "succeeded", None)]);
    let records = out.read_for(Duration::from_secs(2)).to_vec();
    assert_eq!(records.len(), 2, "exactly one outcome per decided workflow: {records:?}");

    let by_id = by_workflow(&records);
    let order = &by_id["order-1"][0];
    assert_eq!(order["outcome"], "completed");
    assert_eq!(order["workflow_type"], "order");
    assert_eq!(order["missing"], json!([]));
    assert_eq!(order["steps"].as_object().unwrap().len(), 3);
    let signup = &by_id["signup-1"][0];
    assert_eq!(signup["outcome"], "completed");
    assert_eq!(signup["missing"], json!(["welcome_credit"]));
    assert!(!by_id.contains_key("order-2"));
    for r in &records {
        assert_eq!(r.header("junction.outcome"), "completed");
        let id = r.header("junction.outcome.id");
        assert!(id.starts_with(&format!("{}:completed:", r.json()["workflow_id"].as_str().unwrap())), "{id}");
        assert_eq!(r.key.as_deref(), Some(r.json()["workflow_id"].as_str().unwrap().as_bytes()));
    }

    // The open workflow's join state is visible over HTTP, as of the last finished commit.
    wait_until("order-2's committed state", || junction.get("/workflows/order-2").is_some_and(|(s, _)| s == 200));
    let (status, body) = junction.get("/workflows/order-2").unwrap();
    assert_eq!(status, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["open"], true);
    assert_eq!(state["missing"], json!(["fraud_check"]));
    assert_eq!(junction.get("/workflows/nobody").unwrap().0, 404);

    assert_eq!(junction.metric("junction_events_total", "result=\"duplicate\""), 2.0);
    assert_eq!(junction.metric("junction_events_total", "result=\"late\""), 1.0);
    assert_eq!(junction.metric("junction_outcomes_total", ""), 2.0);
    assert!(junction.terminate(), "a SIGTERM ends junction with exit status 0");
}

#[test]
fn a_failure_lists_what_to_compensate_and_the_acknowledgements_end_in_compensated() {
    let Running { work: _work, junction: _junction, setup, broker } = Running::start(2);

    broker.produce_events(
        &setup.input,
        &[
            event("order-9", "order", "payment", "succeeded", None),
            event("order-9", "order", "inventory", "failed", None),
        ],
    );
    let mut out = broker.reader(&setup.output);
    let failed = out.read_until("the failed outcome", |r| !r.is_empty())[0].clone();
    let v = failed.json();
    assert_eq!(failed.header("junction.outcome"), "failed");
    assert_eq!(v["outcome"], "failed");
    assert_eq!(v["failed_steps"], json!(["inventory"]));
    assert_eq!(v["compensate"], json!(["payment"]));
    assert_eq!(v["missing"], json!(["fraud_check"]));

    // A further failure is no new decision; the compensation acknowledgement ends the saga.
    broker.produce_events(
        &setup.input,
        &[
            event("order-9", "order", "fraud_check", "failed", None),
            event("order-9", "order", "payment", "compensated", None),
        ],
    );
    let records = out.read_until("the compensated outcome", |r| r.len() >= 2).to_vec();
    let v = records[1].json();
    assert_eq!(v["outcome"], "compensated");
    assert_eq!(v["steps"]["payment"]["status"], "compensated");
    assert_eq!(records[1].header("junction.outcome"), "compensated");
    assert_eq!(out.read_for(Duration::from_secs(1)).len(), 2, "nothing after compensated");
}

#[test]
fn a_deadline_fires_on_wall_clock_time_without_new_input() {
    let Running { work: _work, junction: _junction, setup, broker } = Running::start(1);

    // The "callback" type has a 2s deadline; its callback never comes.
    broker.produce_events(&setup.input, &[event("cb-1", "callback", "request", "succeeded", None)]);
    let mut out = broker.reader(&setup.output);
    let r = out.read_until("the timed_out outcome", |r| !r.is_empty())[0].clone();
    let v = r.json();
    assert_eq!(v["outcome"], "timed_out");
    assert_eq!(v["missing"], json!(["callback"]));
    assert_eq!(v["compensate"], json!(["request"]));
    assert_eq!(v["duration_ms"], 2000);

    broker.produce_events(
        &setup.input,
        &[
            event("cb-1", "callback", "callback", "succeeded", None), // too late: it must be compensated too
            event("cb-1", "callback", "request", "compensated", None),
            event("cb-1", "callback", "callback", "compensated", None),
        ],
    );
    let records = out.read_until("the compensated outcome", |r| r.len() >= 2).to_vec();
    assert_eq!(records[1].json()["outcome"], "compensated");
}

#[test]
fn a_type_without_a_deadline_times_out_at_the_default_deadline() {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, 1);
    setup.default_deadline = "2s";
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();

    // "order" sets no deadline of its own: no workflow waits forever.
    broker.produce_events(&setup.input, &[event("o-1", "order", "payment", "succeeded", None)]);
    let mut out = broker.reader(&setup.output);
    let v = out.read_until("the timed_out outcome", |r| !r.is_empty())[0].json();
    assert_eq!(v["outcome"], "timed_out");
    assert_eq!(v["missing"], json!(["inventory", "fraud_check"]));
    assert_eq!(v["duration_ms"], 2000);
}

#[test]
fn every_kind_of_bad_input_goes_to_the_dead_letter_topic_while_good_input_flows() {
    let Running { work: _work, mut junction, setup, broker } = Running::start(2);

    let good = |id: &str, step: &str| {
        let e = event(id, "order", step, "succeeded", None);
        (Some(id.as_bytes().to_vec()), Some(serde_json::to_vec(&e).unwrap()))
    };
    let raw = |key: Option<&[u8]>, value: Option<&[u8]>| (key.map(<[u8]>::to_vec), value.map(<[u8]>::to_vec));
    let too_large = format!(
        r#"{{"workflow_id":"big","workflow_type":"order","step":"payment","payload":"{}"}}"#,
        "x".repeat(300_000)
    );
    let fat_payload = format!(
        r#"{{"workflow_id":"fat","workflow_type":"order","step":"payment","payload":"{}"}}"#,
        "x".repeat(100_000)
    );
    let long_id = format!(r#"{{"workflow_id":"{0}","workflow_type":"order","step":"payment"}}"#, "w".repeat(300));
    let bad: Vec<(&str, RawRecord)> = vec![
        ("empty_value", raw(Some(b"k1"), None)),
        ("not_json", raw(Some(b"k2"), Some(b"{this is not json"))),
        ("not_json", raw(Some(b"k3"), Some(b"\xff\xfe\x00binary"))),
        ("not_object", raw(Some(b"k4"), Some(b"[1,2,3]"))),
        ("missing_field", raw(Some(b"k5"), Some(br#"{"workflow_type":"order","step":"payment"}"#))),
        (
            "invalid_field",
            raw(
                Some(b"k6"),
                Some(br#"{"workflow_id":"k6","workflow_type":"order","step":"payment","status":"maybe"}"#),
            ),
        ),
        (
            "unknown_workflow_type",
            raw(Some(b"k7"), Some(br#"{"workflow_id":"k7","workflow_type":"refund","step":"payment"}"#)),
        ),
        (
            "unknown_step",
            raw(Some(b"not-k8"), Some(br#"{"workflow_id":"k8","workflow_type":"order","step":"shipping"}"#)),
        ),
        ("too_large", raw(Some(b"big"), Some(too_large.as_bytes()))),
        ("workflow_id_too_long", raw(None, Some(long_id.as_bytes()))),
        ("payload_too_large", raw(Some(b"fat"), Some(fat_payload.as_bytes()))),
        (
            "clock_skew",
            raw(
                Some(b"k9"),
                Some(br#"{"workflow_id":"k9","workflow_type":"order","step":"payment","occurred_at":"2999-01-01T00:00:00Z"}"#),
            ),
        ),
        (
            "invalid_field",
            raw(
                Some(b"k10"),
                Some(br#"{"workflow_id":"k10","workflow_type":"order","step":"payment","occurred_at":"1969-12-31T23:59:59Z"}"#),
            ),
        ),
    ];
    // A key that is not the workflow ID only routes: the record is joined.
    let foreign_key =
        raw(Some(b"other"), Some(br#"{"workflow_id":"good-3","workflow_type":"order","step":"payment"}"#));
    let mut records = vec![good("good-1", "payment"), good("good-2", "payment"), foreign_key];
    for (_, r) in &bad {
        records.push(r.clone());
    }
    for step in ["inventory", "fraud_check"] {
        records.push(good("good-1", step));
        records.push(good("good-2", step));
        records.push(good("good-3", step));
    }
    broker.produce(&setup.input, &records);

    let mut dlq = broker.reader(&setup.dead_letters);
    let dead = dlq.read_until("every bad record", |r| r.len() >= bad.len()).to_vec();
    assert_eq!(dlq.read_for(Duration::from_secs(1)).len(), bad.len(), "only bad records are dead-lettered");
    for (reason, (key, value)) in &bad {
        let d = dead
            .iter()
            .find(|d| &d.value == value)
            .unwrap_or_else(|| panic!("the {reason} record is not in the dead-letter topic byte for byte"));
        if key.as_deref() == Some(b"not-k8") {
            // Keyed by the workflow ID it gave; its own key is kept in a header.
            assert_eq!(d.key.as_deref(), Some(&b"k8"[..]));
            assert_eq!(d.header("junction.source.key"), "not-k8");
        } else {
            assert_eq!(&d.key, key, "the {reason} record keeps its key");
        }
        assert_eq!(d.header("junction.error"), *reason);
        assert!(!d.header("junction.error.detail").is_empty());
        assert_eq!(d.header("junction.source.topic"), setup.input);
        let partition: i32 = d.header("junction.source.partition").parse().unwrap();
        let offset: i64 = d.header("junction.source.offset").parse().unwrap();
        assert!((0..2).contains(&partition) && offset >= 0);
    }

    let mut out = broker.reader(&setup.output);
    let outcomes = out.read_until("the good workflows", |r| r.len() >= 3).to_vec();
    let by_id = by_workflow(&outcomes);
    for id in ["good-1", "good-2", "good-3"] {
        assert_eq!(by_id[id][0]["outcome"], "completed", "{id}");
    }
    assert_eq!(junction.metric("junction_dead_letters_total", ""), bad.len() as f64);
    assert!(junction.is_running(), "bad input never stops the processor");
}
