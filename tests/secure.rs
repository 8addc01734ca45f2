//! Secure connections: junction against a broker that serves only TLS and
//! requires SASL/SCRAM, configured through the client-properties
//! passthrough; and no secret in its logs or on its HTTP endpoint.

mod common;

use common::*;

fn order_events(ids: &[String]) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    for step in ["payment", "inventory", "fraud_check"] {
        for id in ids {
            events.push(event(id, "order", step, "succeeded", None));
        }
    }
    events
}

#[test]
fn junction_works_over_tls_with_scram_and_never_shows_the_password() {
    let broker = Broker::start_secure();
    let setup = Setup::new(&broker, 2);
    assert!(
        setup.config_text(std::path::Path::new("/tmp"), 1).contains("SASL_SSL"),
        "the security settings reach junction through kafka.properties"
    );
    let work = tempfile::tempdir().unwrap();
    // Debug logging: the most junction ever writes about itself.
    let mut junction = Junction::start_with_env(&setup, work.path(), "j", &[("RUST_LOG", "debug")]);
    junction.wait_ready();

    let ids: Vec<String> = (0..20).map(|i| format!("secure-{i}")).collect();
    broker.produce_events(&setup.input, &order_events(&ids));
    let mut output = broker.reader(&setup.output);
    let records = output.read_until("an outcome for every workflow", |r| by_workflow(r).len() == ids.len()).to_vec();
    for (id, outcomes) in by_workflow(&records) {
        assert_eq!(outcomes[0]["outcome"], "completed", "{id}: {outcomes:?}");
    }

    // The lookup shows the state as of the last finished commit, which can
    // follow an at_least_once outcome by up to a commit interval.
    wait_until("the workflow's committed state", || junction.get("/workflows/secure-1").is_some_and(|(s, _)| s == 200));
    let mut seen = String::new();
    for path in ["/metrics", "/healthz", "/readyz", "/workflows/secure-1"] {
        let (status, body) = junction.get(path).expect("the HTTP endpoint answers");
        assert_eq!(status, 200, "{path}: {body}");
        seen.push_str(&body);
    }
    assert!(junction.terminate(), "junction exits 0 on SIGTERM");
    seen.push_str(&junction.logs());
    assert!(junction.logs().contains("junction is running"), "the log was written");
    assert!(!seen.contains(SECRET_PASSWORD), "the password appears in the log or on the HTTP endpoint");
}

#[test]
fn a_refused_login_fails_at_start_up_with_a_clear_error_and_no_password() {
    let broker = Broker::start_secure();
    let setup = Setup::new(&broker, 1);
    let work = tempfile::tempdir().unwrap();
    let wrong = "wrong-Pa55word-not-logged-either";
    let mut junction =
        Junction::start_with_env(&setup, work.path(), "j", &[("JUNCTION_KAFKA_PROPERTY_SASL_PASSWORD", wrong)]);
    assert_eq!(junction.wait_exit(), Some(1), "a refused login is a configuration error: junction stops");
    let log = junction.logs();
    assert!(log.to_lowercase().contains("authenticat"), "the log says the login was refused:\n{log}");
    assert!(!log.contains(wrong) && !log.contains(SECRET_PASSWORD), "a password appears in the log:\n{log}");
}

#[test]
fn the_http_endpoint_listens_on_loopback_unless_configured_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junction.toml");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/junction.toml")).unwrap();
    // The shipped file with its http.listen removed: the default applies.
    let without_listen: String = text.lines().filter(|l| !l.starts_with("listen")).collect::<Vec<_>>().join("\n");
    std::fs::write(&path, without_listen).unwrap();
    let config = junction::config::load(&path).unwrap();
    assert!(config.http.listen.ip().is_loopback(), "default listen address {}", config.http.listen);
}
