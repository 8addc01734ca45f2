//! The stream thread's state, behind the one mutex that the loop and the
//! rebalance callbacks share: the partitions with their tasks, their
//! commits, and the error that stops the thread, once there is one.

use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use tracing::{error, info};

use crate::ops::view::View;
use crate::runtime::backpressure::{Backpressure, Regulation};
use crate::runtime::commits::Commits;
use crate::runtime::partitions::Partitions;

pub struct Engine {
    pub view: Arc<View>,
    pub partitions: Partitions,
    pub commits: Commits,
    backpressure: Backpressure,
    failure: Option<anyhow::Error>,
}

impl Engine {
    pub fn new(view: Arc<View>, partitions: Partitions, commits: Commits, max_pending_bytes: u64) -> Engine {
        Engine { view, partitions, commits, backpressure: Backpressure::new(max_pending_bytes), failure: None }
    }

    /// Pauses or resumes every partition read by what waits for a commit
    /// (see [`crate::runtime::backpressure`]). Whether a commit is wanted now.
    pub fn bound_memory<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> bool {
        match self.backpressure.regulate(self.partitions.pending_bytes(), &self.view.metrics) {
            Regulation::Hold => self.partitions.hold(consumer, true),
            Regulation::Release => self.partitions.hold(consumer, false),
            Regulation::Steady => {}
        }
        self.backpressure.is_held()
    }

    /// Commits now (see [`Commits::commit`]); `false` while the commit in flight is unfinished.
    pub fn commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, wait: bool) -> bool {
        match self.commits.commit(&mut self.partitions, consumer, wait) {
            Ok(started) => started,
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    /// Moves the commit in flight on.
    pub fn advance_commit<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if let Err(e) = self.commits.advance(&mut self.partitions, consumer, false) {
            self.fail(e);
        }
    }

    /// Sends what was decided since the last time, where the guarantee allows.
    pub fn publish<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if let Err(e) = self.commits.publish(&mut self.partitions, consumer) {
            self.fail(e);
        }
    }

    /// Asks the coordinator to confirm the membership when a writer waits for it.
    pub fn confirm_membership<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        self.commits.confirm_membership(&mut self.partitions, consumer);
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
