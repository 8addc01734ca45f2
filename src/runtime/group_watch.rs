//! Home partitions that no member of a classic group holds. Under the
//! classic protocol with cooperative-sticky assignment, a partition moving
//! between members is first revoked by its old owner, whose next join
//! lets the leader assign it. A static member that restarts in the middle
//! of such a move takes its old place with nothing to revoke, and never
//! joins again: the partition stays with nobody, and its workflows wait
//! for ever. (The consumer protocol of KIP-848 assigns on the broker and
//! does not need this.)
//!
//! This thread (`junction-group`) asks the group coordinator how the group
//! stands every few seconds; when it is stable with home partitions that
//! no member holds, twice in a row, it tells the stream thread, and the
//! member with the smallest ID leaves the group and joins it again, which
//! makes the leader assign them.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use tracing::{debug, warn};

use crate::config::Config;
use crate::kafka::clients;
use crate::kafka::group_state::{self, GroupState};
use crate::ops::view::View;

/// How often the group is described.
const INTERVAL: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the thread looks at the shutdown flag while it waits.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(100);

/// Partitions that no member holds, and the members of the group then.
#[derive(Debug, Clone)]
pub struct Orphans {
    pub partitions: Vec<i32>,
    pub members: Vec<String>,
}

/// Starts the thread under the classic protocol (none starts under the
/// consumer protocol); it ends at shutdown or when the receiver is dropped.
pub fn spawn(config: Arc<Config>, view: Arc<View>, home_partitions: usize) -> std::io::Result<Receiver<Orphans>> {
    let (tx, rx) = mpsc::channel();
    if clients::uses_consumer_protocol(&config.kafka) {
        return Ok(rx);
    }
    std::thread::Builder::new().name("junction-group".into()).spawn(move || {
        let group = config.kafka.application_id.clone();
        let topic = config.kafka.repartition_topic();
        let mut client: Option<BaseConsumer> = None;
        let mut seen_before: Vec<i32> = Vec::new();
        loop {
            let until = Instant::now() + INTERVAL;
            while Instant::now() < until {
                if view.shutdown.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(SHUTDOWN_CHECK);
            }
            if client.is_none() {
                client = clients::base(&config.kafka, "group-watch").create().ok();
            }
            let Some(c) = &client else { continue };
            let described = match group_state::describe(c, &group, &topic, REQUEST_TIMEOUT) {
                Ok(Some(state)) => state,
                Ok(None) => continue,
                Err(e) => {
                    // With a new client: librdkafka may have stranded this one (`kafka::stranded`).
                    debug!(error = %e, "cannot describe the consumer group");
                    client = None;
                    continue;
                }
            };
            let orphans = orphans(&described, home_partitions);
            // Twice in a row: a move in progress has its second round in between.
            if !orphans.is_empty() && orphans == seen_before {
                warn!(partitions = ?orphans, members = described.members.len(), "home partitions held by no member of the group");
                if tx.send(Orphans { partitions: orphans.clone(), members: described.members.clone() }).is_err() {
                    return;
                }
            }
            seen_before = orphans;
        }
    })?;
    Ok(rx)
}

/// The home partitions no member of a stable group holds.
fn orphans(group: &GroupState, home_partitions: usize) -> Vec<i32> {
    if group.state != "Stable" || group.members.is_empty() {
        return Vec::new();
    }
    (0..home_partitions as i32).filter(|p| !group.assigned.contains(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_no_member_of_a_stable_group_holds_are_orphans() {
        let group = |state: &str, assigned: &[i32]| GroupState {
            state: state.into(),
            members: vec!["m1".into(), "m2".into()],
            assigned: assigned.iter().copied().collect(),
        };
        assert_eq!(orphans(&group("Stable", &[1, 2, 3, 4, 5]), 6), vec![0]);
        assert!(orphans(&group("Stable", &[0, 1, 2, 3, 4, 5]), 6).is_empty());
        assert!(orphans(&group("PreparingRebalance", &[1]), 6).is_empty(), "a rebalance is under way");
    }
}
