//! # vigil-queries: the SQL surface over Vigil's result tables
//!
//! Reads the tables the pipeline keeps ([`ResultTables`](vigil_pipeline::ResultTables):
//! `features`, `anomalies`, `decisions`, ...) and answers SQL over them with DataFusion.
//! Queries are read-only (no DDL, no DML) and see a consistent snapshot of every table taken when
//! the query starts.
//!
//! [`SqlService`] runs queries; [`router`] serves them over HTTP:
//!
//! - `POST /sql` with the query as the body: `200` and a JSON array of row objects, or `400` and
//!   `{"error": "..."}`;
//! - `GET /tables`: the table names;
//! - `GET /healthz`: 200 while the engine steps and its broker answers, else 503 with why;
//! - `GET /readyz`: 200 once state is restored and partitions are assigned, else 503;
//! - `GET /metrics`: the engine's counters, gauges and latency histogram in the Prometheus
//!   text format.
#![deny(missing_docs)]

mod http;
mod service;

pub use http::{router, serve, Metric, MetricKind, MetricsFn, ProbeFn, Probes};
pub use service::{Error, SqlService};
