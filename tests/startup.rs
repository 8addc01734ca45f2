//! Start-up: a bad configuration or a topic of the wrong shape fails at once,
//! saying where and what was expected.

mod common;

use std::process::Command;

use common::{Broker, Junction, Setup};

fn validate(path: &std::path::Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_junction")).args(["validate", "--config"]).arg(path).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_configuration_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/junction.toml");
    let (code, stdout, stderr) = validate(&path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("valid (2 workflow types, at_least_once)"), "{stdout}");
}

#[test]
fn validate_lists_every_error_with_the_file_the_key_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
input_topic = "in"
output_topic = "out"
processing_guarantee = "twice"
commit_interval = "soon"

[[workflows]]
type = "order"
steps = ["payment", "payment"]
quorum = 0
"#,
    )
    .unwrap();
    let (code, _, stderr) = validate(&path);
    assert_eq!(code, Some(2));
    let file = path.display().to_string();
    for expected in [
        "5 configuration errors",
        "`kafka.dead_letter_topic`: missing; this setting is required",
        "`kafka.processing_guarantee`: expected \"at_least_once\" or \"exactly_once\", got \"twice\"",
        "`kafka.commit_interval`: expected a duration such as 100ms",
        "`workflows[0].steps`: step \"payment\" is listed twice",
        "`workflows[0].quorum`: expected an integer from 1 to the number of steps (1), got 0",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
    assert!(stderr.lines().skip(1).all(|l| l.trim_start().starts_with(&file)), "every error names the file:\n{stderr}");
}

#[test]
fn validate_names_every_bad_mapping_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mapped.toml");
    std::fs::write(
        &path,
        r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
input_topics = ["steps", "psp"]
output_topic = "out"
dead_letter_topic = "dlq"

[kafka.mappings.psp]
workflow_id = "merchantReference"
fixed_step = "shipping"
status = "/code"
status_values = { OK = "done" }

[[workflows]]
type = "order"
steps = ["payment", "inventory"]
"#,
    )
    .unwrap();
    let (code, _, stderr) = validate(&path);
    assert_eq!(code, Some(2));
    for expected in [
        "3 configuration errors",
        "`kafka.mappings.psp.workflow_id`: \"merchantReference\" is not a JSON pointer",
        "`kafka.mappings.psp.status_values.OK`: expected \"succeeded\", \"failed\" or \"compensated\", got \"done\"",
        "`kafka.mappings.psp.fixed_step`: step \"shipping\" is not a step of \"order\"",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}

#[test]
fn home_partitions_are_kept_once_chosen_and_a_disagreement_is_refused() {
    let broker = Broker::start();
    let mut setup = Setup::new(&broker, 2);
    // An existing changelog (a deployment from before the repartition topic) keeps its N.
    broker.create_topic_with(&format!("{}-state-changelog", setup.app), 3, &[("cleanup.policy", "compact")]);
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();
    assert_eq!(broker.partition_count(&format!("{}-repartition", setup.app)), 3, "created with the changelog's N");
    assert!(junction.terminate());

    setup.kafka_options = "home_partitions = 2".to_string();
    let mut junction = Junction::start(&setup, work.path(), "j2");
    assert_eq!(junction.wait_exit(), Some(1));
    let log = junction.logs();
    assert!(log.contains("kafka.home_partitions is 2 while") && log.contains("set kafka.home_partitions = 3"), "{log}");
}

#[test]
fn own_topics_that_disagree_or_have_the_wrong_cleanup_policy_are_refused() {
    let broker = Broker::start();
    let setup = Setup::new(&broker, 2);
    broker.create_topic_with(&format!("{}-state-changelog", setup.app), 2, &[("cleanup.policy", "compact")]);
    broker.create_topic(&format!("{}-repartition", setup.app), 4);
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    assert_eq!(junction.wait_exit(), Some(1));
    let log = junction.logs();
    assert!(log.contains("-state-changelog\" has 2") && log.contains("-repartition\" has 4"), "{log}");

    if !broker.has_transactions() {
        return; // Nisshi describes no topic settings: only Apache Kafka's are checked.
    }
    let setup = Setup::new(&broker, 2);
    broker.create_topic_with(&format!("{}-repartition", setup.app), 2, &[("cleanup.policy", "compact")]);
    let mut junction = Junction::start(&setup, work.path(), "j2");
    assert_eq!(junction.wait_exit(), Some(1));
    let log = junction.logs();
    assert!(log.contains("cleanup.policy=\"compact\"") && log.contains("needs \"delete\""), "{log}");
}

/// A changelog that would lose states: one whose `delete` policy expires
/// them, one that asks more replicas than it has (no write would ever be
/// acknowledged), and one too small for the states the configuration
/// allows. An output topic too small for the largest outcome only warns:
/// such an outcome goes without its payloads.
#[test]
fn a_changelog_that_would_lose_states_is_refused_and_a_small_output_topic_is_warned_of() {
    let broker = Broker::kafka();
    let work = tempfile::tempdir().unwrap();
    let refused = |settings: &[(&str, &str)], name: &str| {
        let setup = Setup::new(&broker, 2);
        broker.create_topic_with(&format!("{}-state-changelog", setup.app), 2, settings);
        let mut junction = Junction::start(&setup, work.path(), name);
        assert_eq!(junction.wait_exit(), Some(1), "{}", junction.logs());
        junction.logs()
    };
    let log = refused(&[("cleanup.policy", "compact,delete"), ("retention.ms", "604800000")], "expiring");
    assert!(log.contains("retention.ms") && log.contains("a workflow open longer than the retention"), "{log}");
    let log = refused(&[("cleanup.policy", "compact"), ("min.insync.replicas", "2")], "isr");
    assert!(log.contains("min.insync.replicas") && log.contains("2 with 1 replicas"), "{log}");

    let log = refused(&[("cleanup.policy", "compact"), ("max.message.bytes", "100000")], "small-changelog");
    assert!(log.contains("takes records of at most 100000 bytes") && log.contains("state.max_payload_bytes"), "{log}");

    let setup = Setup::new(&broker, 2);
    broker.create_topic_with(&setup.output, 2, &[("max.message.bytes", "100000")]);
    let mut junction = Junction::start(&setup, work.path(), "small-output");
    junction.wait_ready();
    let log = junction.logs();
    assert!(log.contains("published without its payloads") && log.contains("max_message_bytes=100000"), "{log}");
}

#[test]
fn a_missing_input_topic_is_refused_at_start_up() {
    let broker = Broker::start();
    let setup = Setup::named(&broker, 2);
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    assert_eq!(junction.wait_exit(), Some(1));
    let log = junction.logs();
    assert!(log.contains(&format!("input topic {:?} does not exist", setup.input)), "{log}");
}
