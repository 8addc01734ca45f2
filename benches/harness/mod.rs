//! The parts of the end-to-end benchmark (`benches/end_to_end.rs`): the
//! load, the three contenders (the pass-through ceiling, junction and the
//! Kafka Streams peer), what is measured and how it is reported.

pub mod ceiling;
pub mod load;
pub mod measure;
pub mod peer;
pub mod report;
pub mod timeline;
