//! Mapped JSON: any JSON object per record, with a mapping that says which fields are the time,
//! the metric name, the value(s) and the labels (CloudWatch metric streams, Prometheus
//! remote-write adapters, home-grown shapes).
//!
//! The mapping becomes an Arrow schema (nested objects as structs, by dotted path), so decoding
//! goes through the same batched tape decoder as JSON points, with no per-record value tree.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StructArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, Float64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType};

use crate::json::{count_input, reject, DecodedBatch, IngestCounters, RawRecord, TapeBatchDecoder, WireRows};
use crate::Result;

/// Which fields of a JSON object make a metric point. Paths are dotted (`dimensions.InstanceId`).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonMapping {
    /// Path of the timestamp.
    pub time_field: String,
    /// Unit of a numeric timestamp: `s`, `ms`, `us` or `ns` (strings are parsed as RFC 3339).
    pub time_unit: String,
    /// Path of the metric name, or `None` to use `name`.
    pub name_field: Option<String>,
    /// Fixed metric name (required when there is no `name_field`; with one, a prefix-free fallback is not used).
    pub name: Option<String>,
    /// Paths of the values; each is its own series. With more than one, the series name gets
    /// `_<last path segment>` appended.
    pub value_fields: Vec<String>,
    /// Paths of the labels; the label key is the last path segment.
    pub label_fields: Vec<String>,
}

impl JsonMapping {
    /// Checks the mapping; the error says what is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.time_field.is_empty() {
            return Err("time_field is empty".into());
        }
        if self.name_field.is_none() && self.name.as_deref().unwrap_or("").is_empty() {
            return Err("set name_field or a fixed name".into());
        }
        if self.value_fields.is_empty() {
            return Err("value_fields lists no field".into());
        }
        let paths = std::iter::once(&self.time_field).chain(&self.name_field).chain(&self.value_fields).chain(&self.label_fields);
        check_unit_and_paths(&self.time_unit, paths)
    }
}

/// Checks a mapping's timestamp unit and its paths (no empty segment, none used twice).
pub(crate) fn check_unit_and_paths<'a>(unit: &str, paths: impl IntoIterator<Item = &'a String>) -> std::result::Result<(), String> {
    if !matches!(unit, "s" | "ms" | "us" | "ns") {
        return Err(format!("time_unit `{unit}` is not one of s, ms, us, ns"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in paths {
        if p.split('.').any(str::is_empty) {
            return Err(format!("path `{p}` is empty or has an empty segment"));
        }
        if !seen.insert(p) {
            return Err(format!("path `{p}` is used twice"));
        }
    }
    Ok(())
}

/// The Arrow type a mapped timestamp decodes as: numbers in `unit` (`s`, `ms`, `us`, `ns`), or
/// RFC 3339 strings.
pub(crate) fn time_type(unit: &str) -> DataType {
    let unit = match unit {
        "s" => TimeUnit::Second,
        "us" => TimeUnit::Microsecond,
        "ns" => TimeUnit::Nanosecond,
        _ => TimeUnit::Millisecond,
    };
    DataType::Timestamp(unit, Some("+00:00".into()))
}

/// A tree of paths, to build the nested decoding schema.
#[derive(Default)]
pub(crate) struct Node {
    ty: Option<DataType>,
    children: BTreeMap<String, Node>,
}

impl Node {
    pub(crate) fn insert(&mut self, path: &str, ty: DataType) -> std::result::Result<(), String> {
        let mut n = self;
        for seg in path.split('.') {
            if n.ty.is_some() {
                return Err(format!("path `{path}` goes inside a field that is also a leaf"));
            }
            n = n.children.entry(seg.to_string()).or_default();
        }
        if !n.children.is_empty() {
            return Err(format!("path `{path}` is also the parent of another path"));
        }
        n.ty = Some(ty);
        Ok(())
    }

    pub(crate) fn fields(&self) -> Fields {
        self.children
            .iter()
            .map(|(k, n)| match &n.ty {
                Some(t) => Field::new(k, t.clone(), true),
                None => Field::new(k, DataType::Struct(n.fields()), true),
            })
            .collect()
    }
}

/// Decodes mapped JSON records into points.
#[derive(Debug)]
pub struct MappedJsonDecoder {
    mapping: JsonMapping,
    inner: TapeBatchDecoder,
    counters: Arc<IngestCounters>,
}

pub(crate) fn column<'a>(batch: &'a RecordBatch, path: &str) -> Option<&'a ArrayRef> {
    let mut segs = path.split('.');
    let mut col = batch.column_by_name(segs.next()?)?;
    for s in segs {
        let st: &StructArray = col.as_struct_opt()?;
        col = st.column_by_name(s)?;
    }
    Some(col)
}

/// A leaf is null if any struct on its path is null.
pub(crate) fn valid(batch: &RecordBatch, path: &str, row: usize) -> bool {
    let mut segs = path.split('.');
    let Some(mut col) = segs.next().and_then(|s| batch.column_by_name(s)) else { return false };
    for s in segs {
        if col.is_null(row) {
            return false;
        }
        let Some(next) = col.as_struct_opt().and_then(|st| st.column_by_name(s)) else { return false };
        col = next;
    }
    col.is_valid(row)
}

impl MappedJsonDecoder {
    /// A decoder for `mapping`, reporting into `counters`.
    pub fn new(mapping: JsonMapping, counters: Arc<IngestCounters>) -> std::result::Result<Self, String> {
        mapping.validate()?;
        let mut root = Node::default();
        root.insert(&mapping.time_field, time_type(&mapping.time_unit))?;
        if let Some(n) = &mapping.name_field {
            root.insert(n, DataType::Utf8)?;
        }
        for v in &mapping.value_fields {
            root.insert(v, DataType::Float64)?;
        }
        for l in &mapping.label_fields {
            root.insert(l, DataType::Utf8)?;
        }
        let schema: SchemaRef = Arc::new(Schema::new(root.fields()));
        // Labels may be numbers in the source (`"port": 8080`): coerce scalars to strings.
        Ok(Self { mapping, inner: TapeBatchDecoder::new(schema, true), counters })
    }

    /// Decodes a batch of records into points; see the module docs.
    pub fn decode(&mut self, records: &[RawRecord]) -> Result<DecodedBatch> {
        self.decode_refs(&records.iter().collect::<Vec<_>>())
    }

    /// Like [`Self::decode`], over records borrowed from elsewhere (no payload copies).
    pub fn decode_refs(&mut self, records: &[&RawRecord]) -> Result<DecodedBatch> {
        let c = self.counters.clone();
        count_input(&c, records);
        let mut rejected = Vec::new();
        let (batch, rows) = self.inner.decode_records(records, &mut rejected)?;
        let m = &self.mapping;
        let ts_col = cast(column(&batch, &m.time_field).expect("schema has the time field"), &crate::schema::ts_type())?;
        let ts = ts_col.as_primitive::<TimestampMillisecondType>();
        let names = m.name_field.as_ref().map(|p| column(&batch, p).expect("schema has the name field").as_string::<i32>().clone());
        let values: Vec<(String, arrow::array::Float64Array)> = m
            .value_fields
            .iter()
            .map(|p| {
                let suffix = if m.value_fields.len() > 1 { format!("_{}", p.rsplit('.').next().unwrap_or(p)) } else { String::new() };
                (suffix, column(&batch, p).expect("schema has the value field").as_primitive::<Float64Type>().clone())
            })
            .collect();
        let labels: Vec<(&str, &str, arrow::array::StringArray)> = m
            .label_fields
            .iter()
            .map(|p| (p.as_str(), p.rsplit('.').next().unwrap_or(p), column(&batch, p).expect("schema has the label").as_string::<i32>().clone()))
            .collect();

        let mut out = WireRows::new();
        for (i, r) in rows.iter().enumerate() {
            let mut missing = Vec::new();
            if !valid(&batch, &m.time_field, i) {
                missing.push(m.time_field.as_str());
            }
            if let (Some(p), Some(n)) = (&m.name_field, &names) {
                if !valid(&batch, p, i) || n.value(i).is_empty() {
                    missing.push(p.as_str());
                }
            }
            let present: Vec<usize> = (0..values.len()).filter(|k| valid(&batch, &m.value_fields[*k], i)).collect();
            if present.is_empty() {
                missing.push("value_fields");
            }
            if !missing.is_empty() {
                let fields = missing.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ");
                rejected.push(reject(r, "missing_field", format!("missing or null mapped field {fields}")));
                continue;
            }
            let base = match &names {
                Some(n) => n.value(i),
                None => m.name.as_deref().unwrap_or_default(),
            };
            let row_labels: Vec<(&str, &str)> =
                labels.iter().filter(|(path, _, _)| valid(&batch, path, i)).map(|(_, key, arr)| (*key, arr.value(i))).collect();
            for k in present {
                let (suffix, arr) = &values[k];
                out.push(ts.value(i), &format!("{base}{suffix}"), row_labels.iter().copied(), arr.value(i), r)?;
            }
        }
        out.finish(&c, rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourcePos;

    fn rec(offset: i64, s: &str) -> RawRecord {
        RawRecord { payload: Some(s.as_bytes().to_vec()), key: None, pos: SourcePos { topic: "cw".into(), partition: 0, offset } }
    }

    fn cloudwatch() -> JsonMapping {
        JsonMapping {
            time_field: "timestamp".into(),
            time_unit: "ms".into(),
            name_field: Some("metric_name".into()),
            name: None,
            value_fields: vec!["value.max".into(), "value.sum".into()],
            label_fields: vec!["namespace".into(), "dimensions.InstanceId".into()],
        }
    }

    #[test]
    fn cloudwatch_metric_stream_records_become_one_series_per_value_field() {
        let mut d = MappedJsonDecoder::new(cloudwatch(), Arc::new(IngestCounters::default())).unwrap();
        let out = d
            .decode(&[
                rec(0, r#"{"metric_stream_name":"s","account_id":"1","region":"eu-west-1","namespace":"AWS/EC2","metric_name":"CPUUtilization","dimensions":{"InstanceId":"i-123"},"timestamp":1767571200000,"value":{"max":12.5,"min":1,"sum":30,"count":3},"unit":"Percent"}"#),
                rec(1, r#"{"namespace":"AWS/EC2","metric_name":"NetworkIn","timestamp":1767571260000,"value":{"sum":7}}"#),
                rec(2, r#"{"namespace":"AWS/EC2","timestamp":1767571260000,"value":{"sum":7}}"#),
                rec(3, r#"{"namespace":"AWS/EC2","metric_name":"X","timestamp":"2026-01-05T00:00:00Z","value":{"sum":"lots"}}"#),
            ])
            .unwrap();
        let keys = out.points.column(2).as_string::<i32>();
        let got: Vec<&str> = (0..keys.len()).map(|i| keys.value(i)).collect();
        assert_eq!(
            got,
            vec![
                r#"CPUUtilization_max{InstanceId="i-123",namespace="AWS/EC2"}"#,
                r#"CPUUtilization_sum{InstanceId="i-123",namespace="AWS/EC2"}"#,
                r#"NetworkIn_sum{namespace="AWS/EC2"}"#,
            ]
        );
        let v = out.points.column(5).as_primitive::<Float64Type>();
        assert_eq!((v.value(0), v.value(1), v.value(2)), (12.5, 30.0, 7.0));
        assert_eq!(out.positions.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![0, 0, 1]);
        let r: Vec<(i64, &str)> = out.rejected.iter().map(|r| (r.pos.offset, r.kind)).collect();
        assert_eq!(r, vec![(2, "missing_field"), (3, "type")]);
        assert!(out.rejected[0].reason.contains("`metric_name`"), "{:?}", out.rejected[0]);
    }

    #[test]
    fn fixed_name_and_second_timestamps() {
        let m = JsonMapping {
            time_field: "t".into(),
            time_unit: "s".into(),
            name_field: None,
            name: Some("queue_depth".into()),
            value_fields: vec!["depth".into()],
            label_fields: vec!["queue".into(), "port".into()],
        };
        let mut d = MappedJsonDecoder::new(m, Arc::new(IngestCounters::default())).unwrap();
        let out = d.decode(&[rec(0, r#"{"t": 1767571200, "depth": 4, "queue": "orders", "port": 8080}"#)]).unwrap();
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        assert_eq!(out.points.column(2).as_string::<i32>().value(0), r#"queue_depth{port="8080",queue="orders"}"#);
        assert_eq!(out.points.column(0).as_primitive::<TimestampMillisecondType>().value(0), 1_767_571_200_000);
    }

    #[test]
    fn bad_mappings_are_refused_with_the_reason() {
        let mut m = cloudwatch();
        m.time_unit = "minutes".into();
        assert!(MappedJsonDecoder::new(m, Arc::default()).unwrap_err().contains("time_unit"));
        let mut m = cloudwatch();
        m.label_fields.push("value".into());
        assert!(MappedJsonDecoder::new(m, Arc::default()).unwrap_err().contains("parent"));
        let mut m = cloudwatch();
        m.name_field = None;
        assert!(MappedJsonDecoder::new(m, Arc::default()).unwrap_err().contains("name"));
    }
}
