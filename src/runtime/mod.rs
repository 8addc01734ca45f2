//! The runtime: the stream thread that drives every stage for the
//! partitions this instance holds. It knows nothing of the business: the
//! join decides, the state stage keeps, the commit strategy commits.
//!
//! - [`stream_thread`]: the loop (poll, process, restore, publish, commit);
//! - [`engine`]: its state, shared with the rebalance callbacks;
//! - [`rebalance`]: the consumer's callbacks (assign, revoke, statistics);
//! - [`membership`]: whether the partitions held were assigned to this
//!   consumer's member ID, which librdkafka does not always say;
//! - [`input_watch`]: notices input topics that gain partitions;
//! - [`group_watch`]: notices home partitions no member of a classic group
//!   holds, and has one member join again;
//! - [`rejoin`]: joins the group again claiming no partition (it leaves,
//!   and subscribes again once librdkafka has let go of every one);
//! - [`partitions`]: each partition's lifecycle (opening, restoring, active,
//!   stopped);
//! - [`opener`]: opens and checks an assigned partition's store, off the
//!   stream thread;
//! - [`source`]: one input partition, which forwards its records to their
//!   home partitions (see [`crate::route`]);
//! - [`commits`]: when to commit, and what a failed commit means;
//! - [`backpressure`]: pauses processing while too much waits for a commit;
//! - [`task`]: one partition's processing and timers;
//! - [`instance`]: this process's claim on its state directory, and its ID.
//!
//! The threads of a junction process, and who may block:
//! - the stream thread (`junction-stream`): librdkafka and RocksDB calls,
//!   never for long (a commit in flight is moved on between polls, not
//!   waited for but at a rebalance, at shutdown and, under `exactly_once`,
//!   when partitions are lost or the memory bound is passed). It owns every task; the rebalance callbacks, which
//!   librdkafka runs inside `poll`, reach the same state through one mutex
//!   that the loop never holds while polling;
//! - the `junction-save` thread, under `at_least_once` (see
//!   [`crate::commit::at_least_once`]): sends each commit's changelog,
//!   waits for it and writes the stores, at a lower priority, under the
//!   membership lease ([`crate::commit::lease`]);
//! - the `junction-commit` thread, under `exactly_once` (see
//!   [`crate::commit::exactly_once`]): runs each commit's transaction and
//!   writes the stores once it has committed;
//! - a `junction-open-<partition>` thread per assigned partition until its
//!   store is open and checked ([`opener`]);
//! - `junction-inputs`, which asks the cluster for the input topics'
//!   partition counts every `topic.metadata.refresh.interval.ms`;
//! - `junction-group`, which describes a classic group every few seconds
//!   ([`group_watch`]);
//! - two `junction-restore` threads that write restored batches to the
//!   stores (see [`crate::state::restore_writer`]);
//! - a `junction-probe` thread while the input consumer reaches no broker,
//!   which asks a fresh client whether the cluster answers
//!   ([`crate::kafka::stranded`]);
//! - librdkafka's own threads (network, delivery reports), RocksDB's
//!   (flushes; compactions at the lowest priority);
//! - the tokio runtime, which serves HTTP and signals and never blocks on
//!   Kafka or RocksDB (store reads run on its blocking pool).

pub mod backpressure;
pub mod commits;
pub mod engine;
pub mod group_watch;
pub mod input_watch;
pub mod instance;
pub mod membership;
pub mod opener;
pub mod partitions;
pub mod rebalance;
pub mod rejoin;
pub mod source;
pub mod stream_thread;
pub mod task;

pub use partitions::{PARK_RETRY_FIRST, PARK_RETRY_MAX};
pub use stream_thread::run;
