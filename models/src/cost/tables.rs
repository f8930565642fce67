//! The `cost_drift`, `budgets` and `efficiency` tables.

use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::{BudgetRow, DriftRow, EfficiencyRow};
use crate::Result;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()))
}
fn tsa(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(v).with_timezone("+00:00"))
}
fn f(v: Vec<Option<f64>>) -> ArrayRef {
    Arc::new(Float64Array::from(v))
}
fn s<T: AsRef<str>>(v: Vec<Option<T>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(v))
}

/// The `cost_drift` schema.
pub fn cost_drift_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("granularity", DataType::Utf8, false),
            Field::new("window_start", ts(), false),
            Field::new("window_end", ts(), false),
            Field::new("scope", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
            Field::new("series", DataType::Utf8, false),
            Field::new("actual", DataType::Float64, false),
            Field::new("expected", DataType::Float64, true),
            Field::new("lower_95", DataType::Float64, true),
            Field::new("upper_95", DataType::Float64, true),
            Field::new("impact", DataType::Float64, true),
            Field::new("impact_percent", DataType::Float64, true),
            Field::new("anomaly", DataType::Boolean, false),
            Field::new("root_causes", DataType::Utf8, false),
            Field::new("method", DataType::Utf8, true),
            Field::new("explanation", DataType::Utf8, false),
        ]))
    })
    .clone()
}

/// `cost_drift` rows.
pub fn cost_drift_batch(rows: &[DriftRow]) -> Result<RecordBatch> {
    let cols: Vec<ArrayRef> = vec![
        s(rows.iter().map(|r| Some(r.granularity)).collect()),
        tsa(rows.iter().map(|r| Some(r.start_ms)).collect()),
        tsa(rows.iter().map(|r| Some(r.end_ms)).collect()),
        s(rows.iter().map(|r| Some(r.scope.as_str())).collect()),
        s(rows.iter().map(|r| Some(r.value.as_str())).collect()),
        s(rows.iter().map(|r| Some(r.series.as_str())).collect()),
        f(rows.iter().map(|r| Some(r.actual)).collect()),
        f(rows.iter().map(|r| r.expected).collect()),
        f(rows.iter().map(|r| r.band.map(|b| b[0])).collect()),
        f(rows.iter().map(|r| r.band.map(|b| b[1])).collect()),
        f(rows.iter().map(|r| r.impact).collect()),
        f(rows.iter().map(|r| r.impact_percent).collect()),
        Arc::new(BooleanArray::from(rows.iter().map(|r| r.anomaly).collect::<Vec<_>>())),
        s(rows.iter().map(|r| Some(serde_json::to_string(&r.root_causes).unwrap_or_else(|_| "[]".into()))).collect()),
        s(rows.iter().map(|r| r.method.as_deref()).collect()),
        s(rows.iter().map(|r| Some(r.explanation.as_str())).collect()),
    ];
    Ok(RecordBatch::try_new(cost_drift_schema(), cols)?)
}

/// The `budgets` schema.
pub fn budgets_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("window_start", ts(), false),
            Field::new("budget", DataType::Utf8, false),
            Field::new("scope", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, false),
            Field::new("period_start", ts(), false),
            Field::new("period_end", ts(), false),
            Field::new("amount", DataType::Float64, false),
            Field::new("spend_to_date", DataType::Float64, false),
            Field::new("burn_rate_per_day", DataType::Float64, false),
            Field::new("projected", DataType::Float64, false),
            Field::new("projected_low", DataType::Float64, true),
            Field::new("projected_high", DataType::Float64, true),
            Field::new("runs_out_at", ts(), true),
            Field::new("status", DataType::Utf8, false),
            Field::new("explanation", DataType::Utf8, false),
        ]))
    })
    .clone()
}

/// `budgets` rows.
pub fn budgets_batch(rows: &[BudgetRow]) -> Result<RecordBatch> {
    let cols: Vec<ArrayRef> = vec![
        tsa(rows.iter().map(|r| Some(r.at_ms)).collect()),
        s(rows.iter().map(|r| Some(r.budget.as_str())).collect()),
        s(rows.iter().map(|r| Some(r.scope.as_str())).collect()),
        s(rows.iter().map(|r| Some(r.value.as_str())).collect()),
        tsa(rows.iter().map(|r| Some(r.period_start_ms)).collect()),
        tsa(rows.iter().map(|r| Some(r.period_end_ms)).collect()),
        f(rows.iter().map(|r| Some(r.amount)).collect()),
        f(rows.iter().map(|r| Some(r.spend_to_date)).collect()),
        f(rows.iter().map(|r| Some(r.burn_rate_per_day)).collect()),
        f(rows.iter().map(|r| Some(r.projected)).collect()),
        f(rows.iter().map(|r| r.projected_low).collect()),
        f(rows.iter().map(|r| r.projected_high).collect()),
        tsa(rows.iter().map(|r| r.runs_out_ms).collect()),
        s(rows.iter().map(|r| Some(r.status)).collect()),
        s(rows.iter().map(|r| Some(r.explanation.as_str())).collect()),
    ];
    Ok(RecordBatch::try_new(budgets_schema(), cols)?)
}

/// The `efficiency` schema.
pub fn efficiency_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("window_start", ts(), false),
            Field::new("resource", DataType::Utf8, false),
            Field::new("service", DataType::Utf8, true),
            Field::new("cost", DataType::Float64, false),
            Field::new("cpu_utilization", DataType::Float64, true),
            Field::new("memory_utilization", DataType::Float64, true),
            Field::new("efficiency", DataType::Float64, true),
            Field::new("idle_hours", DataType::UInt32, false),
            Field::new("idle", DataType::Boolean, false),
            Field::new("recommendation", DataType::Utf8, true),
            Field::new("recommended_size", DataType::Float64, true),
            Field::new("monthly_saving", DataType::Float64, true),
            Field::new("explanation", DataType::Utf8, false),
        ]))
    })
    .clone()
}

/// `efficiency` rows.
pub fn efficiency_batch(rows: &[EfficiencyRow]) -> Result<RecordBatch> {
    let cols: Vec<ArrayRef> = vec![
        tsa(rows.iter().map(|r| Some(r.start_ms)).collect()),
        s(rows.iter().map(|r| Some(r.resource.as_str())).collect()),
        s(rows.iter().map(|r| r.service.as_deref()).collect()),
        f(rows.iter().map(|r| Some(r.cost)).collect()),
        f(rows.iter().map(|r| r.cpu_utilization).collect()),
        f(rows.iter().map(|r| r.memory_utilization).collect()),
        f(rows.iter().map(|r| r.efficiency).collect()),
        Arc::new(UInt32Array::from(rows.iter().map(|r| r.idle_hours).collect::<Vec<_>>())),
        Arc::new(BooleanArray::from(rows.iter().map(|r| r.idle).collect::<Vec<_>>())),
        s(rows.iter().map(|r| r.recommendation).collect()),
        f(rows.iter().map(|r| r.recommended_size).collect()),
        f(rows.iter().map(|r| r.monthly_saving).collect()),
        s(rows.iter().map(|r| Some(r.explanation.as_str())).collect()),
    ];
    Ok(RecordBatch::try_new(efficiency_schema(), cols)?)
}
