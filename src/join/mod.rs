//! The join, pure: a function of (state, event, now) to (new state,
//! outcome records), and of (state, now) for deadlines and purges. No Kafka,
//! no RocksDB, no clock, no threads: the runtime passes `now` and keeps the
//! states.
//!
//! - [`state`]: a workflow's join state;
//! - [`definition`]: which definition decides a workflow after an edit;
//! - [`decision`]: the rules that change it and decide;
//! - [`outcome`]: the outcome record, its JSON and its deterministic ID.

pub mod decision;
pub mod definition;
pub mod outcome;
pub mod state;

pub use decision::{apply_event, on_timer, retention_passed, EventResult, TimerResult};
pub use definition::{governing, Definition, DefinitionId, Definitions, StartedWith};
pub use state::{timer_ms, Decision, StepState, WorkflowState};
