//! The first stage: an input record becomes a step event, or bad input with
//! its reason. Pure: no Kafka client, no store, no clock.
//!
//! - [`event`]: decoding a step event, or saying exactly why it is bad input;
//! - [`scan`]: the fast path of that decoding, for well-formed JSON;
//! - [`mapped`]: where a topic with its own format keeps each field;
//! - [`record`]: an input record, as the stages see it;
//! - [`dead_letter`]: what a bad record becomes.

pub mod dead_letter;
pub mod event;
pub mod mapped;
pub mod record;
pub mod scan;
