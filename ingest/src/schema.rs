//! The Arrow schema of decoded metric points (the `points` table).

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// Column names of the points schema.
pub mod col {
    /// Event time, `Timestamp(ms, UTC)`.
    pub const TS: &str = "ts";
    /// Stable 64-bit series id, `UInt64`.
    pub const SERIES_ID: &str = "series_id";
    /// Canonical series rendering `name{k="v",...}` with sorted labels, `Utf8`.
    pub const SERIES: &str = "series";
    /// Metric name, `Utf8`.
    pub const NAME: &str = "name";
    /// Labels as sent, `Map<Utf8, Utf8>` (query with `labels['host']`).
    pub const LABELS: &str = "labels";
    /// The measured value, `Float64`.
    pub const VALUE: &str = "value";
}

pub(crate) fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()))
}

pub(crate) fn labels_type() -> DataType {
    let entries = Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("keys", DataType::Utf8, false),
            Field::new("values", DataType::Utf8, true),
        ])),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

/// The schema JSON records are decoded with: the wire shape of a metric point.
pub(crate) fn wire_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            // Nullable on the wire so a missing field is found per row, not as a batch error.
            Field::new(col::TS, ts_type(), true),
            Field::new(col::NAME, DataType::Utf8, true),
            Field::new(col::LABELS, labels_type(), true),
            Field::new(col::VALUE, DataType::Float64, true),
        ]))
    })
    .clone()
}

/// The schema of decoded points: `ts, series_id, series, name, labels, value`.
pub fn points_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new(col::TS, ts_type(), false),
            Field::new(col::SERIES_ID, DataType::UInt64, false),
            Field::new(col::SERIES, DataType::Utf8, false),
            Field::new(col::NAME, DataType::Utf8, false),
            Field::new(col::LABELS, labels_type(), true),
            Field::new(col::VALUE, DataType::Float64, false),
        ]))
    })
    .clone()
}
