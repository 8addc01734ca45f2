//! # junction
//!
//! A Kafka Streams-style stream processor that joins the step events of
//! concurrent workflows, keyed by workflow ID, and publishes exactly one
//! outcome record per decision: `completed`, `failed` (with the steps to
//! compensate), `timed_out`, and later `compensated`.
//!
//! The modules follow an event through the processor:
//!
//! - [`config`]: the TOML configuration and its environment overrides;
//! - [`event`]: decoding a step event, or the reason it is bad input
//!   ([`scan`] is its fast path);
//! - [`join`]: the pure decision, (state, event, now) → (state, outcomes);
//! - [`outcome`]: the outcome record and its deterministic ID;
//! - [`dead_letter`]: what a bad record becomes;
//! - [`task`]: one partition's record cache, processing and timers;
//! - [`codec`] and [`store`]: the state's bytes and the RocksDB store;
//! - [`commit`]: publishing outcomes, changelog and offsets, then saving state;
//! - [`restore`]: rebuilding a store from the changelog;
//! - [`processor`]: the stream thread, rebalances and the commit interval;
//! - [`kafka`]: client settings, topic preparation, delivery tracking;
//! - [`instance`]: this process's claim on its state directory, and its ID;
//! - [`http`] and [`metrics`]: what operators see.
//!
//! [`names`] holds every topic, header and reason-code name.

pub mod codec;
pub mod commit;
pub mod config;
pub mod dead_letter;
pub mod event;
pub mod http;
pub mod instance;
pub mod join;
pub mod kafka;
pub mod metrics;
pub mod names;
pub mod outcome;
pub mod processor;
pub mod restore;
pub mod scan;
pub mod store;
pub mod task;
