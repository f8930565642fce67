//! # vigil-pipeline: event time, windows, checkpoints and the feature plan
//!
//! This crate owns time. It takes decoded point and log batches from the ingest stage and:
//!
//! - cuts them into event-time tumbling windows ([`Windower`]): the watermark is the highest event
//!   time seen minus an allowed lag, a window closes when the watermark reaches its end, and a
//!   record whose window has already closed is *late* (counted and dropped);
//! - tracks, per Kafka partition, the lowest offset still held by an open window, so that the
//!   engine can commit exactly the offsets whose results are durable ([`Windower::commit_positions`]);
//! - windows log rows the same way, next to the points ([`Windower::push_logs`]);
//! - runs the user-editable SQL over each set of closed windows with DataFusion
//!   ([`FeaturePlan`]): the log-signal SQL turns the table `logs` into signal points (records
//!   per service and level, error ratio, new templates, per-template rates), which join the
//!   window's `points`, and the feature SQL turns `points` into per-series features;
//! - keeps the result tables (`features`, `anomalies`, `decisions`, ...) in memory with bounded
//!   retention ([`ResultTables`]), for the query layer to read.
//!
//! It knows nothing of models or sinks: the engine feeds plan output onward.
#![deny(missing_docs)]

mod error;
mod plan;
mod tables;
mod window;

pub use error::{Error, Result};
pub use plan::{FeaturePlan, PlanOutput, DEFAULT_FEATURES_SQL, DEFAULT_LOG_SIGNALS_SQL};
pub use tables::{ResultTables, TableSnapshot};
pub use window::{ClosedWindow, PushStats, Windower, WindowConfig};
