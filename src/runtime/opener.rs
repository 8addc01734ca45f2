//! Opening an assigned home partition's store, off the stream thread, on a
//! `junction-open-<partition>` thread of its own. Each step can take long,
//! and none may hold up the partitions already processing, nor run inside
//! librdkafka's rebalance callback (which only records the assignment):
//!
//! 1. wait until no transaction of the previous owner holds the group's
//!    offsets ([`crate::kafka::stable_offsets`]): up to the transaction
//!    timeout and the broker's sweep;
//! 2. read the changelog partition's ends from its leader;
//! 3. open the store, read every entry to check it, and judge whether its
//!    checkpoint can be trusted ([`crate::state::prepare`]);
//! 4. re-arm its timers if the deadlines or the retention were edited since
//!    they were written (a scan, once per edit).
//!
//! The stream thread takes the answers between polls
//! ([`Opener::answered`]) and restores or activates the partition. A step
//! that fails stops only its partition, as a failing store does: it is
//! tried again after a pause.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::TopicPartitionList;

use crate::config::Config;
use crate::kafka::changelog_ends::ChangelogEnds;
use crate::kafka::stable_offsets::StableOffsets;
use crate::runtime::task;
use crate::state::{self, Prepared, StoreError, StoreMemory};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "its committed offsets are still held by an open transaction (its previous owner's), or the group \
         coordinator cannot be reached: {0}"
    )]
    Offsets(KafkaError),
    #[error("cannot read the ends of its changelog partition: {0}")]
    Changelog(KafkaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start a thread to open it: {0}")]
    Thread(std::io::Error),
}

/// A partition to open.
pub struct Request {
    pub home: i32,
    /// Tells this request's answer apart from an earlier one's for the same partition.
    pub ticket: u64,
    /// The partitions whose group offsets must be stable first: the home
    /// partition's and its input partitions'.
    pub offsets: Vec<(String, i32)>,
}

/// The answer for one [`Request`].
pub struct Opened {
    pub home: i32,
    pub ticket: u64,
    pub result: Result<Ready, OpenError>,
}

/// A partition whose store is open and checked.
pub struct Ready {
    /// The group's committed offsets of the request's partitions.
    pub committed: TopicPartitionList,
    pub prepared: Prepared,
}

/// What every opening thread shares.
struct Shared {
    config: Arc<Config>,
    stable: StableOffsets,
    ends: Arc<ChangelogEnds>,
    memory: StoreMemory,
    /// The changelog's `delete.retention.ms`, when known.
    delete_retention: Option<Duration>,
}

pub struct Opener {
    shared: Arc<Shared>,
    sender: Sender<Opened>,
    answers: Receiver<Opened>,
}

impl Opener {
    pub fn new(
        config: Arc<Config>,
        ends: Arc<ChangelogEnds>,
        memory: StoreMemory,
        delete_retention: Option<Duration>,
    ) -> Opener {
        let stable = StableOffsets::new(&config.kafka);
        let (sender, answers) = mpsc::channel();
        Opener { shared: Arc::new(Shared { config, stable, ends, memory, delete_retention }), sender, answers }
    }

    /// Starts opening a partition; its answer comes with [`Opener::answered`].
    /// Setting the returned flag gives the opening up (revoked meanwhile):
    /// then no answer comes.
    pub fn open(&self, request: Request) -> Result<Arc<AtomicBool>, OpenError> {
        let cancelled = Arc::new(AtomicBool::new(false));
        let (shared, sender, cancel) = (Arc::clone(&self.shared), self.sender.clone(), Arc::clone(&cancelled));
        std::thread::Builder::new()
            .name(format!("junction-open-{}", request.home))
            .spawn(move || {
                let (home, ticket) = (request.home, request.ticket);
                if let Some(result) = open(&shared, request, &cancel) {
                    // No receiver: the stream thread has stopped.
                    let _ = sender.send(Opened { home, ticket, result });
                }
            })
            .map_err(OpenError::Thread)?;
        Ok(cancelled)
    }

    /// The answers that came since the last call.
    pub fn answered(&self) -> Vec<Opened> {
        self.answers.try_iter().collect()
    }
}

/// The steps, on the opening thread. `None`: given up.
fn open(shared: &Shared, request: Request, cancelled: &AtomicBool) -> Option<Result<Ready, OpenError>> {
    let committed = match shared.stable.wait(&request.offsets, cancelled)? {
        Ok(committed) => committed,
        Err(e) => return Some(Err(OpenError::Offsets(e))),
    };
    let given_up = || cancelled.load(Ordering::SeqCst);
    if given_up() {
        return None;
    }
    let ends = match shared.ends.of(request.home) {
        Ok(ends) => ends,
        Err(e) => return Some(Err(OpenError::Changelog(e))),
    };
    if given_up() {
        return None;
    }
    let config = &shared.config;
    let dir: PathBuf = config.state.dir.join(&config.kafka.application_id).join(request.home.to_string());
    let prepared = state::prepare(request.home, &dir, &shared.memory, ends, shared.delete_retention)
        .and_then(|prepared| task::rearm_timers(&prepared.store, config, request.home).map(|_| prepared));
    if given_up() {
        return None;
    }
    Some(prepared.map(|prepared| Ready { committed, prepared }).map_err(OpenError::Store))
}
