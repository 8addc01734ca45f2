//! # junction
//!
//! A Kafka Streams-style stream processor that joins the step events of
//! concurrent workflows, keyed by workflow ID, and publishes exactly one
//! outcome record per decision: `completed`, `failed` (with the steps to
//! compensate), `timed_out`, and later `compensated`.
//!
//! `ARCHITECTURE.md`, at the top of the repository, is the map: the data
//! path, what each folder owns and may not touch, the threads, and the
//! invariants that the crash tests defend. The modules follow a record
//! through the processor, in this order:
//!
//! - [`input`]: a record becomes a step event, or bad input with its reason;
//! - [`route`]: which partition is a workflow's home, and what a record
//!   forwarded there carries;
//! - [`join`]: the pure decision, (state, event, now) → (state, outcomes);
//! - [`state`]: the stores, their record cache, the changelog's bytes, and restore;
//! - [`commit`]: each guarantee's commit protocol, one strategy each;
//! - [`runtime`]: the stream thread, the partitions' lifecycle and rebalances;
//! - [`kafka`]: the Kafka adapters: clients, producer, delivery tracking,
//!   topics;
//! - [`ops`]: what operators see (HTTP), through a narrow view of the runtime.
//!
//! Used by every stage: [`config`] (the TOML configuration and its
//! environment overrides), [`names`] (every topic, header and reason-code
//! name), [`metrics`] (every metric), and [`time`].

pub mod commit;
pub mod config;
pub mod input;
pub mod join;
pub mod kafka;
pub mod metrics;
pub mod names;
pub mod ops;
pub mod route;
pub mod runtime;
pub mod state;
pub mod time;
