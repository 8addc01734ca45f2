//! The Kafka adapters, apart from what they carry: client configurations
//! ([`clients`]), topic preparation ([`topics`]), the producer and its
//! records ([`producer`]), delivery tracking ([`delivery`]) and the purge of
//! the repartition topic ([`purge`]), and the wait for a previous owner's
//! transaction ([`stable_offsets`]), and whether a partition is read to its
//! end ([`caught_up`]). Nothing here
//! decides what to commit or when.

pub mod caught_up;
pub mod clients;
pub mod delivery;
pub mod producer;
pub mod purge;
pub mod stable_offsets;
pub mod topics;

pub use clients::{consumer_config, producer_config};
