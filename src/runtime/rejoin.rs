//! Joining the group again, claiming no partition: after a membership
//! given up ([`crate::runtime::membership`]), and for home partitions no
//! member holds ([`crate::runtime::group_watch`]).
//!
//! The consumer unsubscribes, and subscribes again only once librdkafka
//! holds no home partition. Both at once do nothing in a rebalance:
//! librdkafka postpones an unsubscribe until the rebalance ends, and a
//! subscribe made meanwhile replaces it. The member would go on with the
//! partitions it had been assigned still counted its own, and claim them
//! when it joined: after a membership given up, the group would leave it
//! those that no other member claimed, and librdkafka, which never said
//! they were lost, would keep them without a callback, while the stream
//! thread, which gave them up, would never hold them again. No one would
//! decide their workflows (seen in the chaos test under `exactly_once`).
//!
//! Once the unsubscribe is applied, librdkafka revokes every home
//! partition it holds through the rebalance callback, at a poll (where it
//! counts its assignment lost, a "lost" callback is already queued that
//! gives them up). After a membership lost in a rebalance it logs "unexpected
//! instruction to revoke current assignment" at that revoke: expected here.
//! Should it still hold some after a rebalance's longest wait, the poll
//! loop replaces the consumer ([`Step::Stuck`]).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use tracing::{info, warn};

/// A join under way: unsubscribed, waiting for librdkafka to let go.
#[derive(Debug)]
pub struct Rejoin {
    /// The repartition topic, whose partitions are the home partitions.
    topic: String,
    /// How long librdkafka may take (see [`Rejoin::new`]).
    limit: Duration,
    since: Option<Instant>,
    /// Whether a failure to read the assignment or to subscribe was said.
    complained: bool,
}

/// Where a join stands after a [`Rejoin::step`].
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// No join under way, or subscribed again.
    Idle,
    Waiting,
    /// librdkafka still holds home partitions past the limit.
    Stuck,
}

impl Rejoin {
    /// For the group's subscription to `topic` (the repartition topic).
    /// `limit`: the longest a rebalance can postpone the unsubscribe (it
    /// waits for a slow member up to its `max.poll.interval.ms`) and its
    /// session end, after which the consumer is given up.
    pub fn new(topic: String, limit: Duration) -> Rejoin {
        Rejoin { topic, limit, since: None, complained: false }
    }

    /// Leaves the group, unless a join is already under way.
    pub fn begin<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if self.since.is_some() {
            return;
        }
        consumer.unsubscribe();
        self.since = Some(Instant::now());
        self.complained = false;
    }

    /// Whether the consumer has left the group and not yet subscribed again.
    pub fn is_under_way(&self) -> bool {
        self.since.is_some()
    }

    /// Subscribes to the repartition topic again once librdkafka holds none
    /// of its partitions (the home partitions).
    ///
    /// The consumer's assignment is what says so: librdkafka takes a
    /// partition out of the group assignment that a join claims as soon as
    /// it queues its revoke, and out of the consumer's assignment once the
    /// callback has given it up. (The subscription cannot say it: it reads
    /// empty while an unsubscribe is postponed.)
    pub fn step<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Step {
        let Some(since) = self.since else { return Step::Idle };
        let held: Vec<i32> = match consumer.assignment() {
            Ok(list) => list.elements().iter().filter(|e| e.topic() == self.topic).map(|e| e.partition()).collect(),
            Err(e) => {
                self.complain(|| warn!(error = %e, "cannot read the consumer's assignment; trying again"));
                return Step::Waiting;
            }
        };
        if !held.is_empty() {
            if since.elapsed() > self.limit {
                warn!(
                    partitions = ?held,
                    waited_s = since.elapsed().as_secs(),
                    "left the group to join it again, but librdkafka has not revoked these home partitions"
                );
                self.since = None;
                return Step::Stuck;
            }
            return Step::Waiting;
        }
        if let Err(e) = consumer.subscribe(&[&self.topic]) {
            self.complain(|| warn!(error = %e, "cannot subscribe again to the repartition topic; trying again"));
            return Step::Waiting;
        }
        info!(after_ms = since.elapsed().as_millis() as u64, "joining the group again, claiming no partition");
        self.since = None;
        Step::Idle
    }

    /// Says a failure once per join: the loop tries again at every turn.
    fn complain(&mut self, say: impl FnOnce()) {
        if !self.complained {
            say();
            self.complained = true;
        }
    }
}
