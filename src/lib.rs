//! # Vigil
//!
//! Streaming analytics for operations data. Teams point their metrics topics at Vigil; it cuts
//! the streams into event-time windows of Arrow record batches, runs DataFusion plans over them,
//! scores every series for anomalies, publishes decisions to Kafka for remediation executors, and
//! answers SQL over every result.
//!
//! The data path, and the crate that owns each step:
//!
//! ```text
//!  Kafka metrics ──▶ vigil-ingest ──▶ vigil-pipeline ──▶ vigil-models ──▶ vigil-sinks ──▶ Kafka decisions
//!  (JSON points)     decode → Arrow    windows, watermark,  detector,         idempotent      (CloudEvents)
//!                    rejects → DLQ     feature SQL, tables  decision rule     producer, DLQ
//!                                            │
//!                                            ▼
//!                                      vigil-queries ──▶ HTTP POST /sql
//! ```
//!
//! This crate wires them: [`config`] is the one TOML file, [`engine`] the consume → process →
//! publish → commit loop, and [`demo`] the embedded default that runs everything against an
//! in-process Kafka mock cluster. [`serve`] holds what the long-running commands share (the SQL
//! server, probes, the stop signal). [`backtest`] runs the same detector and forecaster over a
//! user's own history (CSV or Parquet) and writes a report with charts.

pub mod backtest;
pub mod bench;
pub mod bench_kafka;
pub mod bench_memory;
pub mod bench_sql;
pub mod demo;
pub mod eval;
pub mod serve;

pub use vigil_pipeline::{config, engine};
pub use vigil_pipeline::config::Config;
pub use vigil_pipeline::engine::{Engine, EngineError, Stats};
