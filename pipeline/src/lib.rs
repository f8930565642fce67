//! # vigil-pipeline: event time, windows, checkpoints and the feature plan
//!
//! This crate owns time. It takes decoded point and log batches from the ingest stage and:
//!
//! - cuts them into event-time tumbling windows ([`Windower`]): the watermark is the highest event
//!   time seen minus an allowed lag, a window closes when the watermark reaches its end, and a
//!   record whose window has already closed is *late* (kept aside as a side output: the
//!   `late_points` table and the late topic);
//! - tracks, per Kafka partition, the lowest offset still held by an open window, so that the
//!   engine can commit exactly the offsets whose results are durable ([`Windower::commit_positions`]);
//! - windows log rows the same way, next to the points ([`Windower::push_logs`]);
//! - runs the user-editable SQL over each set of closed windows with DataFusion
//!   ([`FeaturePlan`]): the log-signal SQL turns the table `logs` into signal points (records
//!   per service and level, error ratio, new templates, per-template rates), which join the
//!   window's `points`, and the feature SQL turns `points` into per-series features;
//! - keeps the result tables (`features`, `anomalies`, `decisions`, ...) in memory with bounded
//!   retention ([`ResultTables`]), for the query layer to read;
//! - runs the whole consume → process → publish → checkpoint → commit loop ([`engine`]): the
//!   [`engine::Processor`] drives decode, windows, the feature plan, the models and the decision
//!   rule; the [`engine::Engine`] wraps it with Kafka, checkpoints ([`store`]), rebalances and
//!   signals. Every stateful stage goes through one snapshot/restore contract
//!   ([`engine::Stateful`]), keyed by input partition where the state belongs to one;
//! - holds the typed configuration ([`config`]).
#![deny(missing_docs)]

mod background;
pub mod config;
pub mod engine;
pub mod history;
mod error;
mod plan;
pub mod store;
mod tables;
mod window;

pub use error::{Error, Result};
pub use plan::{FeaturePlan, PlanOutput, DEFAULT_FEATURES_SQL, DEFAULT_LOG_SIGNALS_SQL};
pub use tables::{HistoryFile, HistoryLocation, ResultTables, ScanParts, TableSnapshot};
pub use window::{ClosedWindow, LateRows, PartitionPosition, PushStats, Windower, WindowConfig};
