//! Typed access to the columns of a `features` batch that the detector and the fleet check read.

use arrow::array::{Array, AsArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array};
use arrow::datatypes::{Float64Type, TimestampMillisecondType, UInt64Type};

use crate::{Error, Result};

/// The key columns of a `features` batch and one feature column, checked for their types.
pub(crate) struct FeatureColumns<'a> {
    pub window_start: &'a TimestampMillisecondArray,
    pub window_end: &'a TimestampMillisecondArray,
    pub series_id: &'a UInt64Array,
    pub series: &'a StringArray,
    pub name: &'a StringArray,
    pub value: &'a Float64Array,
}

impl<'a> FeatureColumns<'a> {
    /// The columns of `features`, with `feature` as the value; an error names a missing or
    /// mistyped column.
    pub fn of(features: &'a RecordBatch, feature: &str) -> Result<Self> {
        let col = |name: &str| features.column_by_name(name).ok_or_else(|| Error::Input(format!("missing column `{name}`")));
        let ts = |name: &str| -> Result<&'a TimestampMillisecondArray> {
            features
                .column_by_name(name)
                .ok_or_else(|| Error::Input(format!("missing column `{name}`")))?
                .as_primitive_opt::<TimestampMillisecondType>()
                .ok_or_else(|| Error::Input(format!("`{name}` must be Timestamp(ms)")))
        };
        let text = |name: &str| -> Result<&'a StringArray> {
            features
                .column_by_name(name)
                .ok_or_else(|| Error::Input(format!("missing column `{name}`")))?
                .as_string_opt::<i32>()
                .ok_or_else(|| Error::Input(format!("`{name}` must be Utf8")))
        };
        Ok(Self {
            window_start: ts("window_start")?,
            window_end: ts("window_end")?,
            series_id: col("series_id")?.as_primitive_opt::<UInt64Type>().ok_or_else(|| Error::Input("`series_id` must be UInt64".into()))?,
            series: text("series")?,
            name: text("name")?,
            value: col(feature)?.as_primitive_opt::<Float64Type>().ok_or_else(|| Error::Input(format!("`{feature}` must be Float64")))?,
        })
    }

    /// The value of row `i`, NaN when null.
    pub fn value(&self, i: usize) -> f64 {
        if self.value.is_null(i) { f64::NAN } else { self.value.value(i) }
    }
}

/// A `features` batch of one window (`window_start_ms`, 10 s long) for tests: (series id, series
/// key, mean) per row.
#[cfg(test)]
pub(crate) fn test_features(window_start_ms: i64, rows: &[(u64, &str, f64)]) -> RecordBatch {
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;
    let n = rows.len();
    let ts = |v: i64| Arc::new(TimestampMillisecondArray::from(vec![v; n]).with_timezone("+00:00")) as Arc<dyn Array>;
    let t = DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("window_start", t.clone(), false),
        Field::new("window_end", t, false),
        Field::new("series_id", DataType::UInt64, false),
        Field::new("series", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("mean", DataType::Float64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            ts(window_start_ms),
            ts(window_start_ms + 10_000),
            Arc::new(UInt64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| crate::decision::parse_series_key(r.1).0).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
        ],
    )
    .expect("columns match the schema")
}
