//! Cross-crate end-to-end tests, linked into one test binary (each module used to be its own
//! binary, and every one of them linked DataFusion and librdkafka again).
//!
//! Kafka is always a real Kafka-protocol broker reached over TCP through rdkafka: librdkafka's
//! mock cluster, started per test by [`common::Kafka`], or tansu, a broker in a separate
//! process ([`brokers::Tansu`], installed by `.ci/run`), for crashes of `vigil run` itself.

mod brokers;
mod common;
mod process;

mod checkpoint_restore;
mod crash_loop;

mod config_env;
mod forward;
mod kafka_dead_letters;
mod kafka_cost;
mod kafka_decisions;
mod kafka_delivery;
mod kafka_feedback;
mod kafka_forecasts;
mod kafka_formats;
mod kafka_late;
mod kafka_otlp_and_logs;
mod kafka_restart;
mod sql_surface;
