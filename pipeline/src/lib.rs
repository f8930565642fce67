//! # vigil-pipeline: event time, windows, checkpoints and the feature plan
//!
//! This crate owns time. It takes decoded point batches from the ingest stage and:
//!
//! - cuts them into event-time tumbling windows ([`Windower`]): the watermark is the highest event
//!   time seen minus an allowed lag, a window closes when the watermark reaches its end, and a
//!   record whose window has already closed is *late* (counted and dropped);
//! - tracks, per Kafka partition, the lowest offset still held by an open window, so that the
//!   engine can commit exactly the offsets whose results are durable ([`Windower::commit_positions`]);
//! - runs the user-editable feature SQL over each set of closed windows with DataFusion
//!   ([`FeaturePlan`]), exposing the window's rows as the table `points`;
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
pub use plan::{FeaturePlan, DEFAULT_FEATURES_SQL};
pub use tables::{ResultTables, TableSnapshot};
pub use window::{ClosedWindow, PushStats, Windower, WindowConfig};
