//! The Kafka adapters, apart from what they carry: client configurations
//! ([`clients`]), topic preparation ([`topics`]), the producer and its
//! records ([`producer`]), delivery tracking ([`delivery`]), records a topic
//! refuses for good and their remedies ([`refusals`]), what each topic
//! takes ([`limits`]), the purge of
//! the repartition topic ([`purge`]), a changelog partition's ends
//! ([`changelog_ends`]), and the wait for a previous owner's
//! transaction ([`stable_offsets`]), and whether a partition is read to its
//! end ([`caught_up`]), and an offset commit whose answer comes back
//! ([`answered_commit`]), and how the group coordinator describes the group
//! ([`group_state`]), and which clients librdkafka has stranded
//! ([`stranded`]). Nothing here decides what to commit or when.

pub mod answered_commit;
pub mod caught_up;
pub mod changelog_ends;
pub mod clients;
pub mod delivery;
pub mod group_state;
pub mod limits;
pub mod producer;
pub mod purge;
pub mod refusals;
pub mod stable_offsets;
pub mod stranded;
pub mod topics;

pub use clients::{consumer_config, producer_config};
