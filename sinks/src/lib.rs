//! # vigil-sinks: every write Vigil makes to the outside world
//!
//! - [`DecisionSink`] publishes [`Decision`](vigil_models::Decision)s as JSON to the decisions
//!   topic with CloudEvents binary-mode headers, keyed by the series, through an idempotent
//!   producer (`acks=all`), and returns only once the broker has acknowledged every one of them.
//! - [`DeadLetterSink`] publishes records that did not decode, unchanged, to the dead-letter
//!   topic, with the reason and the source topic, partition and offset in headers.
//!
//! Both report failures as errors instead of dropping anything: the engine commits input offsets
//! only after these calls return `Ok`, which is what makes delivery at-least-once (and, with
//! deterministic decision ids, effectively once for consumers that deduplicate on `ce_id`).
#![deny(missing_docs)]

mod kafka;

pub use kafka::{DeadLetterSink, DecisionSink, Error, KafkaSinkConfig, Result, DLQ_HEADERS};
