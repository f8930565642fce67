//! FOCUS cost-and-usage rows (the FinOps Open Cost and Usage Specification, 1.2/1.3) as JSON
//! records, one row per record, into the [`costs schema`](costs_schema).
//!
//! Columns read: `BilledCost`, `EffectiveCost`, `ListCost`, `ContractedCost`,
//! `ChargePeriodStart`, `ChargePeriodEnd`, `ServiceName`, `ServiceCategory`, `ResourceId`,
//! `ResourceName`, `RegionId`, `SubAccountName` and `Tags` (a JSON object, or a string holding
//! one). Names are matched exactly, then without regard to case. Costs may be numbers or
//! numeric strings (exports written from CSV carry decimals as text); negative costs (credits)
//! are kept. A row without its charge period, with an end not after its start, or without the
//! analysed cost column is rejected with the reason.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, MapBuilder, MapFieldNames, RecordBatch, StringBuilder, TimestampMillisecondBuilder};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde_json::{Map, Value};

use crate::json::{count_input, count_rejects, reject};
use crate::{IngestCounters, RawRecord, Rejected, Result, SourcePos};

/// The FOCUS cost columns one may analyse.
pub const COST_COLUMNS: [&str; 4] = ["EffectiveCost", "BilledCost", "ListCost", "ContractedCost"];

/// The schema of decoded cost rows (the `costs` table).
pub fn costs_schema() -> SchemaRef {
    static S: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let ts = || DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()));
        let entries = Fields::from(vec![Field::new("keys", DataType::Utf8, false), Field::new("values", DataType::Utf8, true)]);
        Arc::new(Schema::new(vec![
            Field::new("charge_start", ts(), false),
            Field::new("charge_end", ts(), false),
            Field::new("cost", DataType::Float64, false),
            Field::new("billed_cost", DataType::Float64, true),
            Field::new("effective_cost", DataType::Float64, true),
            Field::new("list_cost", DataType::Float64, true),
            Field::new("service_name", DataType::Utf8, true),
            Field::new("service_category", DataType::Utf8, true),
            Field::new("resource_id", DataType::Utf8, true),
            Field::new("resource_name", DataType::Utf8, true),
            Field::new("region", DataType::Utf8, true),
            Field::new("account", DataType::Utf8, true),
            Field::new("tags", DataType::Map(Arc::new(Field::new("entries", DataType::Struct(entries), false)), false), false),
        ]))
    })
    .clone()
}

/// Decoded cost rows.
#[derive(Debug)]
pub struct DecodedCosts {
    /// Rows in the [`costs_schema`], in input order.
    pub costs: RecordBatch,
    /// Source position of each row.
    pub positions: Vec<SourcePos>,
    /// Records that did not decode, with the reason.
    pub rejected: Vec<Rejected>,
}

/// Decodes FOCUS rows.
#[derive(Debug)]
pub struct FocusDecoder {
    column: String,
    counters: Arc<IngestCounters>,
}

/// One decoded row.
#[derive(Debug, Default)]
struct Row {
    start: i64,
    end: i64,
    cost: f64,
    billed: Option<f64>,
    effective: Option<f64>,
    list: Option<f64>,
    text: [Option<String>; 6],
    tags: Vec<(String, String)>,
}

const TEXT: [&str; 6] = ["ServiceName", "ServiceCategory", "ResourceId", "ResourceName", "RegionId", "SubAccountName"];

impl FocusDecoder {
    /// A decoder that analyses `column` (one of [`COST_COLUMNS`]).
    pub fn new(column: &str, counters: Arc<IngestCounters>) -> std::result::Result<Self, String> {
        if !COST_COLUMNS.contains(&column) {
            return Err(format!("`{column}` is not a FOCUS cost column; use one of {}", COST_COLUMNS.join(", ")));
        }
        Ok(Self { column: column.to_string(), counters })
    }

    /// Decodes records, one FOCUS row each.
    pub fn decode_refs(&mut self, records: &[&RawRecord]) -> Result<DecodedCosts> {
        count_input(&self.counters, records);
        let mut rows = Vec::with_capacity(records.len());
        let mut positions = Vec::with_capacity(records.len());
        let mut rejected = Vec::new();
        for &r in records {
            match self.row(r.payload.as_deref()) {
                Ok(row) => {
                    rows.push(row);
                    positions.push(r.pos.clone());
                }
                Err((kind, reason)) => rejected.push(reject(r, kind, reason)),
            }
        }
        count_rejects(&self.counters, &rejected);
        self.counters.points.fetch_add(rows.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(DecodedCosts { costs: batch(&rows)?, positions, rejected })
    }

    fn row(&self, payload: Option<&[u8]>) -> std::result::Result<Row, (&'static str, String)> {
        let payload = payload.filter(|p| !p.is_empty()).ok_or(("empty", "empty record".to_string()))?;
        let v: Value = serde_json::from_slice(payload).map_err(|e| ("syntax", format!("not JSON: {e}")))?;
        let Value::Object(obj) = v else { return Err(("type", "a FOCUS row must be a JSON object".into())) };
        let field = |name: &str| -> Option<&Value> {
            obj.get(name).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)).filter(|v| !v.is_null())
        };
        let time = |name: &str| -> std::result::Result<i64, (&'static str, String)> {
            let v = field(name).ok_or(("missing_field", format!("missing {name}")))?;
            parse_time(v).ok_or(("type", format!("{name} is not a date-time (expected e.g. \"2026-01-05T10:00:00Z\"): {v}")))
        };
        let num = |name: &str| -> std::result::Result<Option<f64>, (&'static str, String)> {
            match field(name) {
                None => Ok(None),
                Some(v) => parse_num(v).map(Some).ok_or(("type", format!("{name} is not a number: {v}"))),
            }
        };
        let start = time("ChargePeriodStart")?;
        let end = time("ChargePeriodEnd")?;
        if end <= start {
            return Err(("range", format!("ChargePeriodEnd ({end} ms) is not after ChargePeriodStart ({start} ms)")));
        }
        let cost = num(&self.column)?.ok_or(("missing_field", format!("missing {} (the analysed cost column, `cost.column`)", self.column)))?;
        let mut row = Row { start, end, cost, billed: num("BilledCost")?, effective: num("EffectiveCost")?, list: num("ListCost")?, ..Default::default() };
        for (i, name) in TEXT.iter().enumerate() {
            row.text[i] = field(name).map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        }
        row.tags = match field("Tags") {
            None => Vec::new(),
            Some(Value::Object(m)) => tags(m),
            Some(Value::String(s)) if s.trim().is_empty() => Vec::new(),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(m)) => tags(&m),
                _ => return Err(("type", format!("Tags is a string that does not hold a JSON object: {s}"))),
            },
            Some(other) => return Err(("type", format!("Tags must be a JSON object: {other}"))),
        };
        Ok(row)
    }
}

fn tags(m: &Map<String, Value>) -> Vec<(String, String)> {
    let mut t: Vec<(String, String)> = m
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect();
    t.sort();
    t
}

/// A number, or a string holding one (finite).
fn parse_num(v: &Value) -> Option<f64> {
    let x = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    x.is_finite().then_some(x)
}

/// RFC 3339 (`2026-01-05T10:00:00Z`), `2026-01-05 10:00:00` (UTC), or epoch milliseconds.
fn parse_time(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                return Some(t.timestamp_millis());
            }
            for f in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S%.f"] {
                if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
                    return Some(t.and_utc().timestamp_millis());
                }
            }
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc().timestamp_millis())
        }
        _ => None,
    }
}

fn batch(rows: &[Row]) -> Result<RecordBatch> {
    let n = rows.len();
    let mut start = TimestampMillisecondBuilder::with_capacity(n).with_timezone("+00:00");
    let mut end = TimestampMillisecondBuilder::with_capacity(n).with_timezone("+00:00");
    let mut cost = Float64Builder::with_capacity(n);
    let mut nums: [Float64Builder; 3] = std::array::from_fn(|_| Float64Builder::with_capacity(n));
    let mut text: [StringBuilder; 6] = std::array::from_fn(|_| StringBuilder::new());
    let names = MapFieldNames { entry: "entries".into(), key: "keys".into(), value: "values".into() };
    let mut tags = MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new());
    for r in rows {
        start.append_value(r.start);
        end.append_value(r.end);
        cost.append_value(r.cost);
        for (b, v) in nums.iter_mut().zip([r.billed, r.effective, r.list]) {
            b.append_option(v);
        }
        for (b, v) in text.iter_mut().zip(&r.text) {
            b.append_option(v.as_deref());
        }
        for (k, v) in &r.tags {
            tags.keys().append_value(k);
            tags.values().append_value(v);
        }
        tags.append(true)?;
    }
    let mut cols: Vec<ArrayRef> = vec![Arc::new(start.finish()), Arc::new(end.finish()), Arc::new(cost.finish())];
    cols.extend(nums.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    cols.extend(text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    cols.push(Arc::new(tags.finish()));
    Ok(RecordBatch::try_new(costs_schema(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, TimestampMillisecondType};

    fn raw(payloads: &[&str]) -> Vec<RawRecord> {
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| RawRecord { payload: Some(p.as_bytes().to_vec()), key: None, pos: SourcePos { topic: Arc::from("costs"), partition: 0, offset: i as i64 } })
            .collect()
    }

    fn decode(payloads: &[&str]) -> DecodedCosts {
        let mut d = FocusDecoder::new("EffectiveCost", Arc::new(IngestCounters::default())).unwrap();
        let r = raw(payloads);
        d.decode_refs(&r.iter().collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn focus_rows_decode_with_their_tags_and_bad_rows_are_rejected_with_the_reason() {
        let good = r#"{"BilledCost": 12.5, "EffectiveCost": "11.25", "ListCost": 14, "ChargePeriodStart": "2026-01-05T10:00:00Z",
            "ChargePeriodEnd": "2026-01-05T11:00:00Z", "ServiceName": "Amazon EC2", "ServiceCategory": "Compute", "ResourceId": "i-0abc",
            "ResourceName": "checkout-01", "RegionId": "eu-west-1", "SubAccountName": "prod", "Tags": {"service": "checkout", "team": "commerce"}}"#;
        let string_tags = r#"{"effectivecost": -2, "ChargePeriodStart": "2026-01-05 10:00:00", "ChargePeriodEnd": "2026-01-06", "Tags": "{\"team\":\"x\"}"}"#;
        let out = decode(&[
            good,
            string_tags,
            r#"{"EffectiveCost": 1, "ChargePeriodEnd": "2026-01-05T11:00:00Z"}"#,
            r#"{"EffectiveCost": "n/a", "ChargePeriodStart": "2026-01-05T10:00:00Z", "ChargePeriodEnd": "2026-01-05T11:00:00Z"}"#,
            r#"{"EffectiveCost": 1, "ChargePeriodStart": "2026-01-05T11:00:00Z", "ChargePeriodEnd": "2026-01-05T10:00:00Z"}"#,
            r#"{"BilledCost": 1, "ChargePeriodStart": "2026-01-05T10:00:00Z", "ChargePeriodEnd": "2026-01-05T11:00:00Z"}"#,
            r#"{"EffectiveCost": 1, "ChargePeriodStart": "yesterday", "ChargePeriodEnd": "2026-01-05T11:00:00Z"}"#,
            "not json",
            r#"{"EffectiveCost": 1, "ChargePeriodStart": "2026-01-05T10:00:00Z", "ChargePeriodEnd": "2026-01-05T11:00:00Z", "Tags": [1]}"#,
        ]);
        assert_eq!(out.costs.num_rows(), 2);
        let reasons: Vec<&str> = out.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(out.rejected.len(), 7, "{reasons:?}");
        assert!(reasons[0].contains("missing ChargePeriodStart"), "{reasons:?}");
        assert!(reasons[1].contains("EffectiveCost is not a number"), "{reasons:?}");
        assert!(reasons[2].contains("not after"), "{reasons:?}");
        assert!(reasons[3].contains("missing EffectiveCost"), "{reasons:?}");
        assert!(reasons[4].contains("ChargePeriodStart is not a date-time"), "{reasons:?}");
        assert!(reasons[5].contains("not JSON"), "{reasons:?}");
        assert!(reasons[6].contains("Tags must be a JSON object"), "{reasons:?}");
        assert_eq!(out.rejected[0].pos.offset, 2);
        let b = &out.costs;
        assert_eq!(b.column(2).as_primitive::<Float64Type>().values(), &[11.25, -2.0]);
        assert_eq!(b.column(3).as_primitive::<Float64Type>().value(0), 12.5);
        assert!(b.column(3).is_null(1));
        assert_eq!(b.column(0).as_primitive::<TimestampMillisecondType>().value(0), 1_767_607_200_000);
        assert_eq!(b.column(1).as_primitive::<TimestampMillisecondType>().value(1), 1_767_657_600_000);
        assert_eq!(b.column(9).as_string::<i32>().value(0), "checkout-01");
        let tags = b.column(12).as_map();
        let first = tags.value(0);
        assert_eq!(first.column(0).as_string::<i32>().iter().flatten().collect::<Vec<_>>(), vec!["service", "team"]);
        assert_eq!(first.column(1).as_string::<i32>().value(1), "commerce");
        assert_eq!(tags.value(1).column(1).as_string::<i32>().value(0), "x");
        assert_eq!(out.positions.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn an_unknown_cost_column_is_refused_with_the_choices() {
        let e = FocusDecoder::new("Cost", Arc::new(IngestCounters::default())).unwrap_err();
        assert!(e.contains("EffectiveCost, BilledCost"), "{e}");
    }
}
