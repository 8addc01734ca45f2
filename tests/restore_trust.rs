//! A restore trusts only what deserves trust. A store is a copy of its
//! changelog as of its checkpoint, caught up by replaying the records
//! after it; two ways that goes wrong, against Apache Kafka:
//!
//! - the store was away longer than the changelog keeps tombstones
//!   (`delete.retention.ms`): compaction removed one written meanwhile,
//!   and the purged workflow would come back. The store is rebuilt;
//! - its checkpoint is beyond the changelog's end (here the changelog was
//!   deleted and created again): the store may be the only copy of its
//!   states. It is set aside, never deleted, and the partition rebuilt.
//!
//! And the restore reaches the changelog's end even when its consumer was
//! told of no broker while it waited for the next restore.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use junction::kafka::changelog_ends::ChangelogEnds;
use junction::metrics::Metrics;
use junction::state::restore::Restorer;
use junction::state::{codec, Store, StoreMemory};

fn complete(id: &str) -> Vec<serde_json::Value> {
    ["payment", "inventory", "fraud_check"].iter().map(|s| event(id, "order", s, "succeeded", None)).collect()
}

#[test]
fn a_store_whose_checkpoint_is_beyond_a_recreated_changelog_is_set_aside_not_deleted() {
    let broker = Broker::kafka();
    let setup = Setup::new(&broker, 1);
    let work = tempfile::tempdir().unwrap();
    let mut j = Junction::start(&setup, work.path(), "j");
    j.wait_ready();
    let ids: Vec<String> = (0..20).map(|i| format!("kept-{i}")).collect();
    broker.produce_events(&setup.input, &ids.iter().flat_map(|id| complete(id)).collect::<Vec<_>>());
    broker.reader(&setup.output).read_until("every outcome", |r| by_workflow(r).len() >= ids.len());
    assert!(j.terminate());

    // The changelog is lost: deleted, and created again by junction at its next start.
    broker.delete_topic(&format!("{}-state-changelog", setup.app));
    j.start_again();
    j.wait_ready();
    let log = j.logs();
    assert!(log.contains("set aside") && log.contains("beyond the changelog's end"), "{log}");
    let app = j.state_dir.join(&setup.app);
    let aside: Vec<_> = std::fs::read_dir(&app)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("0.set-aside-"))
        .collect();
    assert_eq!(aside.len(), 1, "the store is kept aside in {}", app.display());
    assert!(j.terminate());
    let store = junction::state::Store::open(&aside[0], &junction::state::StoreMemory::new(16 << 20, 4 << 20)).unwrap();
    let mut kept = 0;
    store.for_each_state(|_, _| kept += 1).unwrap();
    assert_eq!(kept, ids.len(), "the store set aside holds every state it had");
    println!(
        "restore trust: a store beyond a recreated changelog was set aside at {}, {kept} states kept",
        aside[0].display()
    );
}

#[test]
fn a_store_away_longer_than_its_changelog_keeps_tombstones_is_rebuilt() {
    // The log cleaner looks every 100 ms instead of every 15 s.
    let broker = Broker::kafka_with(&["log.cleaner.backoff.ms=100"]);
    let mut setup = Setup::new(&broker, 1);
    setup.retention = "2s";
    let changelog = format!("{}-state-changelog", setup.app);
    let work = tempfile::tempdir().unwrap();
    let mut a = Junction::start(&setup, work.path(), "a");
    a.wait_ready();
    // Compaction as eager as it goes: segments roll every 100 ms, and a
    // tombstone is kept 100 ms once cleaned.
    for (key, value) in [
        ("segment.ms", "100"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("delete.retention.ms", "100"),
        ("min.compaction.lag.ms", "0"),
    ] {
        broker.set_topic_config(&changelog, key, value);
    }
    broker.produce_events(&setup.input, &complete("purged"));
    broker.reader(&setup.output).read_until("purged's outcome", |r| by_workflow(r).contains_key("purged"));
    assert!(a.terminate(), "a stops with purged decided, not yet purged, in its store");

    // b takes the partition, purges the workflow when its retention has
    // passed (a tombstone), and goes on writing, so that segments roll.
    let mut b = Junction::start(&setup, work.path(), "b");
    b.wait_ready();
    let mut n = 0;
    wait_until("compaction to remove purged's records, its tombstone included", || {
        broker.produce_events(&setup.input, &complete(&format!("later-{n}")));
        n += 1;
        std::thread::sleep(Duration::from_millis(300));
        !read_to_end(&broker, &changelog, "read_committed")
            .iter()
            .any(|r| r.key.as_deref() == Some(b"purged".as_slice()))
            && n > 10
    });
    assert!(b.terminate());

    // a comes back: its store says purged is decided; the changelog after
    // its checkpoint says nothing of it any more.
    a.start_again();
    a.wait_ready();
    let (status, body) = a.get("/workflows/purged").unwrap();
    assert_eq!(status, 404, "purged must stay purged, not come back from a's old store: {body}");
    let log = a.logs();
    assert!(log.contains("delete.retention.ms"), "a says why its store is rebuilt:\n{log}");
    let later = read_to_end(&broker, &setup.output, "read_committed");
    assert_eq!(later.iter().filter(|r| r.key.as_deref() == Some(b"purged".as_slice())).count(), 1, "one outcome");
    assert!(a.terminate());
}

/// Restores partition `partition` of the changelog from its start into a
/// fresh store under `dir`, stepping `restorer` as the stream thread does;
/// returns the open workflows the store then holds.
fn restore(restorer: &mut Restorer, dir: &Path, partition: i32) -> usize {
    let store = Arc::new(Store::open(&dir.join(partition.to_string()), &StoreMemory::new(16 << 20, 4 << 20)).unwrap());
    restorer.start(partition, Arc::clone(&store), 0).unwrap();
    wait_until(&format!("the restore of changelog partition {partition} to reach its end"), || {
        let restored = restorer.step(Duration::from_millis(200));
        assert!(restored.failed.is_empty(), "{:?}", restored.failed);
        restored.done.iter().any(|(p, _)| *p == partition)
    });
    let mut open = 0;
    store.verify(|state| open += usize::from(codec::is_open(state))).unwrap();
    open
}

/// The restore's consumer lives as long as its stream thread, idle between
/// restores. A broker that its controller has fenced (frozen past its own
/// session, or restarting) answers metadata requests with no broker in
/// them, and a librdkafka client told so forgets every broker it knew, for
/// good (librdkafka issue 5301). A restore begun after that must still
/// reach the changelog's end: in a chaos run one never did, and its
/// partition decided nothing for the rest of the run. Here a proxy stages
/// the broker's restart.
#[test]
fn a_restore_after_its_consumer_was_told_of_no_broker_reaches_the_changelogs_end() {
    let proxy = proxy::Proxy::start(free_port());
    let broker = Broker::kafka_through(&proxy);
    let setup = Setup::new(&broker, 2);
    let work = tempfile::tempdir().unwrap();
    let mut junction = Junction::start(&setup, work.path(), "j");
    junction.wait_ready();
    let ids: Vec<String> = (0..400).map(|i| format!("restored-{i}")).collect();
    let first_steps: Vec<serde_json::Value> = ids.iter().map(|id| complete(id).remove(0)).collect();
    broker.produce_events(&setup.input, &first_steps);
    wait_until("the open workflows to be committed", || {
        junction.metric("junction_workflows_open", "") == ids.len() as f64
    });
    assert!(junction.terminate(), "junction exits 0 on SIGTERM");

    // The restore's own clients, configured as junction configures them
    // (its metadata refreshed every second, as in every test).
    let text = setup.config_text(&work.path().join("unused"), free_port());
    let config = junction::config::parse(Path::new("restore.toml"), &text, Vec::new()).unwrap();
    let ends = Arc::new(ChangelogEnds::new(&config.kafka).unwrap());
    let mut restorer = Restorer::new(&config.kafka, ends, Arc::new(Metrics::new()), Box::new(|_| None)).unwrap();
    let stores = work.path().join("restored");
    let first = restore(&mut restorer, &stores, 0);

    proxy.restart_answering_as_fenced();

    let second = restore(&mut restorer, &stores, 1);
    assert_eq!(first + second, ids.len(), "every open workflow is restored ({first} and {second})");
}
