//! Joining the group again, claiming no partition: after a membership
//! given up ([`crate::runtime::membership`]), and for home partitions no
//! member holds ([`crate::runtime::group_watch`]).
//!
//! The consumer unsubscribes, and subscribes again only once librdkafka
//! holds no home partition. Both at once do nothing in a rebalance:
//! librdkafka postpones an unsubscribe until the rebalance ends, and a
//! subscribe made meanwhile replaces it. The member then went on with the
//! partitions it had been assigned still counted its own, and claimed them
//! when it joined. After a membership given up, the group left it those
//! that no other member claimed; librdkafka, which had never said they were
//! lost, kept them without a callback, and the stream thread, which had
//! given them up, never held them again: no one decided their workflows
//! (seen in the chaos test under `exactly_once`).
//!
//! Once the unsubscribe is applied, librdkafka revokes every home
//! partition it holds through the rebalance callback, at a poll (or, where
//! it counts its assignment lost, has a "lost" callback already queued
//! that gives them up).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use tracing::{info, warn};

/// How long a join may wait for librdkafka before it says so: a rebalance
/// that waits for a slow member lasts up to that member's
/// `max.poll.interval.ms`, and the unsubscribe waits for its end.
const PATIENCE: Duration = Duration::from_secs(30);

/// A join under way: unsubscribed, waiting for librdkafka to let go.
#[derive(Debug, Default)]
pub struct Rejoin {
    since: Option<Instant>,
    warned: bool,
}

impl Rejoin {
    /// Leaves the group, unless a join is already under way.
    pub fn begin<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if self.since.is_some() {
            return;
        }
        consumer.unsubscribe();
        self.since = Some(Instant::now());
        self.warned = false;
    }

    pub fn is_under_way(&self) -> bool {
        self.since.is_some()
    }

    /// Subscribes to `topic` again once librdkafka holds none of its
    /// partitions (the home partitions); says so if that takes longer than
    /// [`PATIENCE`].
    pub fn step<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, topic: &str) {
        let Some(since) = self.since else { return };
        let held: Vec<i32> = match consumer.assignment() {
            Ok(list) => list.elements().iter().filter(|e| e.topic() == topic).map(|e| e.partition()).collect(),
            Err(e) => {
                warn!(error = %e, "cannot read the consumer's assignment; joining the group again later");
                return;
            }
        };
        if !held.is_empty() {
            self.warn_if_slow(since, &held);
            return;
        }
        if let Err(e) = consumer.subscribe(&[topic]) {
            warn!(error = %e, "cannot subscribe again to the repartition topic; trying again");
            return;
        }
        info!(after_ms = since.elapsed().as_millis() as u64, "joining the group again, claiming no partition");
        self.since = None;
    }

    fn warn_if_slow(&mut self, since: Instant, held: &[i32]) {
        if !self.warned && since.elapsed() > PATIENCE {
            warn!(
                partitions = ?held,
                waited_s = since.elapsed().as_secs(),
                "left the group to join it again, but librdkafka has not revoked these home partitions yet (its \
                 rebalance is not over); still waiting"
            );
            self.warned = true;
        }
    }
}
