//! # vigil-sinks: every write Vigil makes to the outside world
//!
//! - [`DecisionSink`] publishes [`Decision`](vigil_models::Decision)s as JSON to the decisions
//!   topic with CloudEvents binary-mode headers, keyed by the series, through an idempotent
//!   producer (`acks=all`), and returns only once the broker has acknowledged every one of them.
//! - [`DeadLetterSink`] publishes records that did not decode, unchanged, to the dead-letter
//!   topic, with the reason and the source topic, partition and offset in headers.
//!
//! - [`LateSink`] publishes rows that arrived behind the watermark to the late topic, with the
//!   reason, instead of dropping them.
//! - [`published_ids`] reads the tail of the decisions topic back, so that after a crash the
//!   decisions replayed from the input are not published a second time.
//! - [`forward`] (`vigil forward`) reads the decisions topic back as a consumer group and
//!   delivers every decision to HTTP receivers: Alertmanager-compatible webhooks, PagerDuty
//!   Events API v2 and generic JSON webhooks, committing an offset only once every receiver
//!   has accepted its record, or dead-lettering records that can never be delivered.
//!
//! All report failures as errors instead of dropping anything: the engine commits input offsets
//! only after these calls return `Ok`, which is what makes delivery at-least-once (and, with
//! deterministic decision ids, effectively once for consumers that deduplicate on `ce_id`).
#![deny(missing_docs)]

pub mod forward;
mod kafka;

pub use kafka::{published_ids, DeadLetterSink, DecisionSink, Error, KafkaSinkConfig, LateRecord, LateSink, Result, DLQ_HEADERS};
pub use forward::{ForwardConfig, ForwardTarget, Forwarder, TargetKind};
