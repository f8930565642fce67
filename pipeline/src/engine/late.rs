//! The late side output: rows behind the watermark become `late_points` rows and records on
//! the late topic, each with the reason, instead of being dropped.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::LateRows;

/// The schema of `late_points`: the points columns, then why and where from.
pub fn late_points_schema() -> SchemaRef {
    let mut fields: Vec<Field> = vigil_ingest::points_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("reason", DataType::Utf8, false));
    fields.push(Field::new("watermark", DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())), false));
    fields.push(Field::new("topic", DataType::Utf8, false));
    fields.push(Field::new("partition", DataType::Int32, false));
    fields.push(Field::new("offset", DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// Why a row is late, in words.
pub fn reason(watermark: i64) -> String {
    let wm = chrono::DateTime::from_timestamp_millis(watermark).map_or_else(|| watermark.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    format!("its window had closed: the watermark was {wm}")
}

/// The `late_points` rows of late point rows (log rows have no place there: they go to the
/// topic only).
pub fn late_points(late: &LateRows) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
    if late.logs || late.rows.num_rows() == 0 {
        return Ok(None);
    }
    let n = late.rows.num_rows();
    let mut cols: Vec<ArrayRef> = late.rows.columns().to_vec();
    let why = reason(late.watermark);
    cols.push(Arc::new(StringArray::from(vec![why.as_str(); n])));
    cols.push(Arc::new(TimestampMillisecondArray::from(vec![late.watermark; n]).with_timezone("+00:00")));
    cols.push(Arc::new(StringArray::from(late.positions.iter().map(|p| p.topic.as_ref()).collect::<Vec<_>>())));
    cols.push(Arc::new(Int32Array::from(late.positions.iter().map(|p| p.partition).collect::<Vec<_>>())));
    cols.push(Arc::new(Int64Array::from(late.positions.iter().map(|p| p.offset).collect::<Vec<_>>())));
    RecordBatch::try_new(late_points_schema(), cols).map(Some)
}

/// One JSON object per late row, in row order.
pub fn json_rows(late: &LateRows) -> Result<Vec<Vec<u8>>, arrow::error::ArrowError> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(&late.rows)?;
        w.finish()?;
    }
    Ok(buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{WindowConfig, Windower};
    use vigil_ingest::{JsonPointDecoder, RawRecord, SourcePos};

    #[test]
    fn late_rows_are_kept_with_reason_and_source() {
        let mut w = Windower::new(WindowConfig { size_ms: 10_000, allowed_lag_ms: 0, idle_timeout: std::time::Duration::from_secs(60) });
        let recs: Vec<RawRecord> = [(0, 25_000), (1, 3_000)]
            .iter()
            .map(|(off, ts)| RawRecord {
                payload: Some(format!(r#"{{"ts": {ts}, "name": "x", "labels": {{"host": "a"}}, "value": 1.5}}"#).into_bytes()),
                key: None,
                pos: SourcePos { topic: "m".into(), partition: 2, offset: *off },
            })
            .collect();
        let d = JsonPointDecoder::default().decode(&recs).unwrap();
        let s = w.push(&d.points, &d.positions).unwrap();
        assert_eq!(s.late, 1);
        let late = w.take_late();
        assert_eq!(late.len(), 1);
        let b = late_points(&late[0]).unwrap().unwrap();
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.schema(), late_points_schema());
        let json = json_rows(&late[0]).unwrap();
        assert_eq!(json.len(), 1);
        let v: serde_json::Value = serde_json::from_slice(&json[0]).unwrap();
        assert_eq!(v["value"], 1.5);
        assert_eq!(late[0].positions[0].offset, 1);
        assert!(reason(late[0].watermark).contains("1970-01-01T00:00:25.000Z"));
        assert!(w.take_late().is_empty(), "taken once");
    }
}
