//! # vigil-ingest: Kafka records in, Arrow record batches out
//!
//! This crate owns the first stage of Vigil's data path. It reads records from Kafka topics as a
//! member of a consumer group ([`KafkaSource`]) and decodes them in batches straight into Arrow
//! record batches: metrics into the [`points schema`](points_schema) ([`JsonPointDecoder`],
//! [`InfluxDecoder`], [`MappedJsonDecoder`], [`OtlpMetricsDecoder`]), logs into the
//! [`logs schema`](logs_schema) ([`OtlpLogsDecoder`], [`JsonLogDecoder`]), each log message
//! getting its template from an online miner with bounded memory ([`Drain`]). The state a format
//! needs (cumulative counters' last points, log templates) is explicit, bounded, and owned by its
//! decoder.
//!
//! A record that cannot be decoded never stops the stream: it comes back as a [`Rejected`]
//! record carrying the reason and its source position, for the dead-letter sink to publish.
//! Every decoded row keeps its [`SourcePos`] so that the pipeline can tell which offsets are safe
//! to commit once the results computed from them are durable.
//!
//! A *series* is a metric name plus its sorted labels; [`series_key`] renders it canonically
//! (`name{k="v",...}`) and [`series_id`] hashes that rendering to a stable 64-bit id (XXH3, which
//! is specified and does not change between releases or machines).
//!
//! Main types: [`JsonPointDecoder`], [`OtlpMetricsDecoder`], [`JsonLogDecoder`], [`DecodedBatch`],
//! [`DecodedLogs`], [`Rejected`], [`KafkaSource`], [`FormatCounters`].
#![deny(missing_docs)]

mod close;
mod drain;
mod error;
mod feedback;
mod focus;
mod influx;
mod json;
mod json_fast;
mod logs;
mod mapped;
mod otlp;
mod schema;
mod series;
mod source;

pub use close::{close_within, ClosedWithin, CLOSE_TIMEOUT};
pub use error::{Error, Result};
pub use feedback::FeedbackSource;
pub use focus::{costs_schema, DecodedCosts, FocusDecoder, COST_COLUMNS};
pub use influx::{InfluxCounters, InfluxDecoder, Precision};
pub use mapped::{JsonMapping, MappedJsonDecoder};
pub use otlp::{OtlpCounters, OtlpEncoding, OtlpMetricsDecoder, Prev as OtlpStream, MAX_STREAMS, STREAM_TTL_NS};
pub use drain::{Drain, DrainConfig, DrainState, Mined, MAX_TOKENS};
pub use logs::{log_col, logs_schema, normalize_level, DecodedLogs, JsonLogDecoder, LogCounters, LogMapping, OtlpLogsDecoder, MAX_MESSAGE_BYTES};
pub use json::{DecodedBatch, FormatCounters, IngestCounters, JsonPointDecoder, RawRecord, Rejected};
pub use schema::{points_schema, col};
pub use series::{series_id, series_key};
pub use source::{KafkaSource, KafkaSourceConfig, RebalanceEvent, RebalanceLog, SourcePos, FETCH_PROPERTIES};
