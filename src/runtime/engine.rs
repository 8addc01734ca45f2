//! The stream thread's state, behind the one mutex that the loop and the
//! rebalance callbacks share: the partitions with their tasks, their
//! commits, and the error that stops the thread, once there is one.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use tracing::{error, info, warn};

use crate::commit::Member;
use crate::kafka::group_state;
use crate::ops::view::View;
use crate::runtime::backpressure::{Backpressure, Regulation};
use crate::runtime::commits::Commits;
use crate::runtime::membership::{MemberId, Membership};
use crate::runtime::partitions::Partitions;

pub struct Engine {
    pub view: Arc<View>,
    pub partitions: Partitions,
    pub commits: Commits,
    backpressure: Backpressure,
    /// The member ID the partitions held were assigned to.
    membership: Membership,
    /// This consumer's member ID, as last read (see [`MemberId`]).
    member_id: MemberId,
    /// Set when the partitions were given up for a lost membership: the
    /// loop joins the group again, claiming none.
    rejoin: bool,
    /// Set once the stream thread has given its partitions up to leave the
    /// group: the callbacks of the consumer's close then ask librdkafka
    /// nothing (see [`crate::runtime::rebalance`]).
    pub closing: bool,
    failure: Option<anyhow::Error>,
}

impl Engine {
    pub fn new(view: Arc<View>, partitions: Partitions, commits: Commits, max_pending_bytes: u64) -> Engine {
        Engine {
            view,
            partitions,
            commits,
            backpressure: Backpressure::new(max_pending_bytes),
            membership: Membership::default(),
            member_id: MemberId::default(),
            rejoin: false,
            closing: false,
            failure: None,
        }
    }

    /// The group gave this instance's partitions `homes` to others while it
    /// could not take part (paused past its session timeout, cut off from
    /// the coordinator, stuck past `max.poll.interval.ms`), or may have:
    /// they are someone else's now. Nothing more is written for them: no
    /// commit, no timer, no changelog record, no store batch; the commit in
    /// flight is given up (under `exactly_once` seen to its end first: the
    /// coordinator decides it), and the work since the last commit with it.
    pub fn give_up<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, homes: &[i32], why: &str) {
        let inputs = self.partitions.inputs_of(homes);
        warn!(
            lost_homes = ?homes,
            lost_inputs = ?inputs,
            why,
            "partitions lost: the group gave them to another instance while this one could not take part (a long \
             pause, a network cut); giving them up without committing, firing timers or writing the changelog"
        );
        self.view.metrics.partitions_lost.inc_by(homes.len() as u64);
        if let Err(e) = self.commits.drop_lost(&mut self.partitions, &member(&self.membership, consumer)) {
            self.fail(e);
        }
        self.partitions.close_lost(homes);
        self.partitions.remove_sources(consumer, &inputs);
        // Whatever else is held (nothing, when the whole assignment is lost) reads again from its last commit.
        self.partitions.rewind(consumer);
        self.partitions.publish_health(false);
    }

    /// Records an assignment of `homes`, to be opened (off the stream
    /// thread). When the partitions held from before were assigned to
    /// another member ID (see [`crate::runtime::membership`]), they are
    /// given up with the new ones, and the group joined again.
    pub fn assigned<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, homes: &[i32]) {
        self.member_id.forget();
        if self.membership_changed(consumer) {
            let mut all = self.partitions.held();
            all.extend(homes);
            self.give_up_membership(consumer, &all, "this instance joined its group again under a new member ID");
            return;
        }
        let now = self.member_id.at(Instant::now(), || group_state::member_id(consumer)).map(str::to_string);
        self.membership.assigned(now);
        let inputs = self.partitions.inputs_of(homes);
        if let Err(e) = self.partitions.add_sources(consumer, &inputs) {
            self.fail(anyhow::anyhow!(e).context(format!("cannot read the input partitions {inputs:?}")));
            return;
        }
        for &partition in homes {
            self.partitions.open(consumer, partition);
        }
        info!(
            home_partitions = ?self.partitions.held(),
            input_partitions = ?self.partitions.held_sources(),
            "partitions assigned"
        );
        self.partitions.publish_health(true);
    }

    /// Whether the partitions held were assigned to another member ID than this consumer's now.
    fn membership_changed<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> bool {
        let holding = !self.partitions.held().is_empty();
        self.membership.changed(holding, || self.member_id.at(Instant::now(), || group_state::member_id(consumer)))
    }

    /// Gives up `homes` for a membership lost without librdkafka saying so,
    /// and has the loop join the group again, claiming none of them: the
    /// group then assigns them afresh, and whoever gets them restores them
    /// from the changelog and reads from the group's committed offsets.
    fn give_up_membership<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, homes: &[i32], why: &str) {
        self.give_up(consumer, homes, why);
        self.membership.forget();
        // A refusal seen meanwhile was of the membership given up.
        self.commits.take_refused_membership();
        self.rejoin = true;
    }

    /// The consumer cannot go on (the group fenced this static member, or
    /// librdkafka stranded it, `why`): every partition is given up as lost,
    /// and the membership forgotten, for a new consumer to join again.
    pub fn start_over<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, why: &str) {
        let held = self.partitions.held();
        if !held.is_empty() {
            self.give_up(consumer, &held, why);
        }
        self.membership.forget();
        self.commits.take_refused_membership();
        // The new consumer joins claiming nothing.
        self.rejoin = false;
    }

    /// Replaces the clients made before the broker restart that stranded
    /// the input consumer (after [`Engine::start_over`], with every
    /// partition given up): the changelog's readers and the producer.
    pub fn renew_clients(&mut self) {
        self.partitions.renew_clients();
        self.commits.renew_producer();
    }

    /// Whether the loop must join the group again (see [`Engine::assigned`]).
    pub fn take_rejoin(&mut self) -> bool {
        std::mem::take(&mut self.rejoin)
    }

    /// Gives every partition up when the membership they were assigned
    /// under is gone: checked before each commit, and after one the
    /// coordinator refused for an unknown member.
    fn check_membership<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let why = if self.commits.take_refused_membership() {
            "the group coordinator refused a commit from this instance as from a member it does not know"
        } else if self.membership_changed(consumer) {
            "this instance's member ID changed since its partitions were assigned"
        } else {
            return;
        };
        let held = self.partitions.held();
        if !held.is_empty() {
            self.give_up_membership(consumer, &held, why);
        }
    }

    /// Pauses or resumes every partition read by what waits for a commit
    /// (see [`crate::runtime::backpressure`]). Whether a commit is wanted now.
    pub fn bound_memory<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> bool {
        let mut pending = self.partitions.pending_bytes();
        if self.backpressure.is_over(pending) && self.commits.is_transaction_in_flight() {
            // The transaction frees what it carries once it ends. Waiting
            // for it, as a commit made on the stream thread would, costs
            // less than pausing every partition, which drops what
            // librdkafka has fetched ahead.
            if let Err(e) = self.commits.advance(&mut self.partitions, &member(&self.membership, consumer), true) {
                self.fail(e);
            }
            pending = self.partitions.pending_bytes();
        }
        match self.backpressure.regulate(pending, &self.view.metrics) {
            Regulation::Hold => self.partitions.hold(consumer, true),
            Regulation::Release => self.partitions.hold(consumer, false),
            Regulation::Steady => {}
        }
        self.backpressure.is_held()
    }

    /// Commits now (see [`Commits::commit`]); `false` while the commit in flight is unfinished.
    pub fn commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, wait: bool) -> bool {
        self.check_membership(consumer);
        let started = match self.commits.commit(&mut self.partitions, &member(&self.membership, consumer), wait) {
            Ok(started) => started,
            Err(e) => {
                self.fail(e);
                false
            }
        };
        self.check_membership(consumer);
        started
    }

    /// Moves the commit in flight on.
    pub fn advance_commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if let Err(e) = self.commits.advance(&mut self.partitions, &member(&self.membership, consumer), false) {
            self.fail(e);
        }
        self.check_membership(consumer);
    }

    /// Sends what was decided since the last time, where the guarantee allows.
    pub fn publish<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if let Err(e) = self.commits.publish(&mut self.partitions, consumer) {
            self.fail(e);
        }
    }

    /// Asks the coordinator to confirm the membership when a writer waits for it.
    pub fn confirm_membership<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        self.commits.confirm_membership(&mut self.partitions, &member(&self.membership, consumer));
    }

    /// Opens the stopped partitions whose pause is over.
    pub fn retry_parked<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        self.partitions.retry_parked(consumer);
    }

    /// Restores or activates the partitions whose stores were opened since the last turn.
    pub fn take_opened<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        self.partitions.take_opened(consumer);
    }

    /// Reads the new partitions of input topics that grew (`counts`: each
    /// one's partition count now) that go with the home partitions held here.
    pub fn grow_inputs<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, counts: &[Option<usize>]) {
        let new = self.partitions.grow_inputs(counts);
        if new.is_empty() {
            return;
        }
        match self.partitions.add_sources(consumer, &new) {
            Ok(()) => info!(reading = ?new, "reading the new input partitions of the home partitions held here"),
            Err(e) => self.fail(anyhow::anyhow!(e).context(format!("cannot read the new input partitions {new:?}"))),
        }
    }

    /// The stream thread cannot go on: nothing more is committed, and the
    /// loop stops with `e` at its next turn.
    pub fn fail(&mut self, e: anyhow::Error) {
        self.commits.halt();
        error!(error = format!("{e:#}"), "the stream thread cannot go on");
        self.view.update_health(|h| h.failure = Some(format!("{e:#}")));
        self.failure.get_or_insert(e);
    }

    /// The error that stops the stream thread, if there is one.
    pub fn take_failure(&mut self) -> Option<anyhow::Error> {
        self.failure.take()
    }
}

pub fn lock(engine: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    // A panic while holding the lock already ends the process; the guard is still usable to shut down.
    engine.lock().unwrap_or_else(|p| p.into_inner())
}

/// `consumer`, as the member the partitions held were assigned to: what
/// it commits is refused once its member ID is another (see [`Member`]).
fn member<'a, C: ConsumerContext>(membership: &'a Membership, consumer: &'a BaseConsumer<C>) -> Member<'a, C> {
    Member { consumer, assigned_to: membership.assigned_to() }
}
