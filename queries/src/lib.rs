//! # vigil-queries: the SQL surface over Vigil's result tables
//!
//! Reads the tables the pipeline keeps ([`ResultTables`](vigil_pipeline::ResultTables):
//! `features`, `anomalies`, `decisions`, ...), in memory and in their Parquet history, and
//! answers SQL over them with DataFusion, over HTTP and the Postgres wire protocol. Queries are
//! read-only (no DDL, no DML), see each table as it is when they start, and run within
//! [`Limits`]: a memory pool per query, a time limit, a cap on queries at once and on rows.
//!
//! [`SqlService`] runs queries; [`router`] serves them over HTTP:
//!
//! - `POST /sql` with the query as the body: `200` and the rows as JSON (an array of objects),
//!   CSV (`Accept: text/csv`) or an Arrow IPC stream (`Accept:
//!   application/vnd.apache.arrow.stream`); or an error status and
//!   `{"error": "...", "kind": "parse|plan|execution|resources|timeout|auth|internal"}`;
//! - `GET /`: the status page (services' health, open incidents, recent decisions, a chart);
//! - `GET /tables`: the table names;
//! - `GET /healthz`: 200 while the engine steps and its broker answers, else 503 with why;
//! - `GET /readyz`: 200 once state is restored and partitions are assigned, else 503;
//! - `GET /metrics`: the engine's counters, gauges and latency histogram in the Prometheus
//!   text format.
//!
//! With a token, every route but the probes needs `Authorization: Bearer <token>`.
//! [`PgServer`] serves the Postgres wire protocol (psql, Grafana, drivers), with SCRAM-SHA-256
//! users and optional TLS.
#![deny(missing_docs)]

mod coop;
mod format;
mod http;
mod live;
mod pg;
mod service;
mod status;

pub use format::Format;
pub use http::{router, router_with_token, serve, serve_with_token, Metric, MetricKind, MetricsFn, ProbeFn, Probes};
pub use pg::{load_tls, PgError, PgServer};
pub use service::{classify, Admission, Error, ErrorKind, Limits, SqlService};

mod server;
pub use server::{limits, start, ServerHandle, StartError};
