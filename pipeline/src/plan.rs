//! The feature plan: user-editable SQL over the rows of closed windows.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, TimestampMillisecondArray};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::window::ClosedWindow;
use crate::{Error, Result};

/// The feature SQL shipped with Vigil (`sql/features.sql`).
pub const DEFAULT_FEATURES_SQL: &str = include_str!("../../sql/features.sql");

/// Columns every feature plan must produce for the detector.
const REQUIRED: [&str; 5] = ["window_start", "window_end", "series_id", "series", "name"];

/// Runs the feature SQL over closed windows. The rows of the windows closing together are one
/// `points` table with `window_start` and `window_end` columns added, so the plan is planned and
/// run once per close, however many windows close at once.
pub struct FeaturePlan {
    ctx: SessionContext,
    sql: String,
    points_schema: SchemaRef,
    output_schema: SchemaRef,
}

impl std::fmt::Debug for FeaturePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeaturePlan").field("sql", &self.sql).finish()
    }
}

fn window_ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()))
}

impl FeaturePlan {
    /// Plans `sql` against an empty `points` table to check it before any data flows; the output
    /// must contain the columns the detector needs plus `feature`.
    pub async fn new(sql: &str, feature: &str) -> Result<Self> {
        let base = vigil_ingest::points_schema();
        let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("window_start", window_ts_type(), false));
        fields.push(Field::new("window_end", window_ts_type(), false));
        let points_schema = Arc::new(Schema::new(fields));
        // One partition: a window's table is small, and the engine's loop is the unit of
        // parallelism (one per consumer), so spreading a plan over every core only adds overhead.
        let ctx = SessionContext::new_with_config(datafusion::prelude::SessionConfig::new().with_target_partitions(1));
        let mut plan = Self { ctx, sql: sql.to_string(), points_schema: points_schema.clone(), output_schema: points_schema };
        let out = plan.execute(RecordBatch::new_empty(plan.points_schema.clone())).await?;
        plan.output_schema = out.schema();
        for c in REQUIRED.iter().chain(std::iter::once(&feature)) {
            if plan.output_schema.field_with_name(c).is_err() {
                return Err(Error::Plan(format!(
                    "the feature SQL must return a column named `{c}`; it returns {:?}",
                    plan.output_schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                )));
            }
        }
        match plan.output_schema.field_with_name(feature).map(|f| f.data_type().clone()) {
            Ok(DataType::Float64) => {}
            Ok(other) => {
                return Err(Error::Plan(format!("feature column `{feature}` must be DOUBLE (Float64), it is {other}")))
            }
            Err(_) => unreachable!("checked above"),
        }
        Ok(plan)
    }

    /// The schema of the plan's output (the `features` table).
    pub fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    /// The schema of the `points` table the SQL sees.
    pub fn points_schema(&self) -> SchemaRef {
        self.points_schema.clone()
    }

    /// Runs the plan over `windows`; returns the `points` rows it saw and the features.
    pub async fn run(&self, windows: &[ClosedWindow]) -> Result<(RecordBatch, RecordBatch)> {
        let mut parts = Vec::new();
        for w in windows {
            for b in &w.batches {
                let n = b.num_rows();
                let mut cols: Vec<ArrayRef> = b.columns().to_vec();
                cols.push(Arc::new(TimestampMillisecondArray::from_value(w.start_ms, n).with_timezone("+00:00")));
                cols.push(Arc::new(TimestampMillisecondArray::from_value(w.end_ms, n).with_timezone("+00:00")));
                parts.push(RecordBatch::try_new(self.points_schema.clone(), cols)?);
            }
        }
        let points = concat_batches(&self.points_schema, &parts)?;
        let features = self.execute(points.clone()).await?;
        Ok((points, features))
    }

    async fn execute(&self, points: RecordBatch) -> Result<RecordBatch> {
        let table = MemTable::try_new(points.schema(), vec![vec![points]])?;
        self.ctx.deregister_table("points")?;
        self.ctx.register_table("points", Arc::new(table))?;
        let df = self.ctx.sql(&self.sql).await.map_err(|e| Error::Plan(e.to_string()))?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok(concat_batches(&schema, &batches)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{WindowConfig, Windower};
    use arrow::array::{AsArray, Float64Array, Int64Array};
    use vigil_ingest::{JsonPointDecoder, RawRecord, SourcePos};

    fn window(rows: &[(&str, i64, f64)]) -> Vec<ClosedWindow> {
        let recs: Vec<RawRecord> = rows
            .iter()
            .enumerate()
            .map(|(i, (host, ts, v))| RawRecord {
                payload: Some(format!(r#"{{"ts": {ts}, "name": "cpu", "labels": {{"host": "{host}"}}, "value": {v}}}"#).into_bytes()),
                key: None,
                pos: SourcePos { topic: "m".into(), partition: 0, offset: i as i64 },
            })
            .collect();
        let out = JsonPointDecoder::default().decode(&recs).unwrap();
        let mut w = Windower::new(WindowConfig { size_ms: 10_000, allowed_lag_ms: 0, idle_timeout: std::time::Duration::from_secs(60) });
        w.push(&out.points, &out.positions).unwrap();
        w.take_all()
    }

    #[tokio::test]
    async fn default_sql_computes_count_mean_min_max_p95_per_series() {
        let plan = FeaturePlan::new(DEFAULT_FEATURES_SQL, "mean").await.unwrap();
        let mut rows: Vec<(&str, i64, f64)> = (1..=100).map(|i| ("a", 1_000 + i, i as f64)).collect();
        rows.push(("b", 2_000, 7.0));
        let (_, f) = plan.run(&window(&rows)).await.unwrap();
        assert_eq!(f.num_rows(), 2);
        let series = f.column_by_name("series").unwrap().as_string::<i32>();
        let i = (0..2).find(|&i| series.value(i) == r#"cpu{host="a"}"#).unwrap();
        let get = |c: &str| f.column_by_name(c).unwrap().as_any().downcast_ref::<Float64Array>().unwrap().value(i);
        assert_eq!(f.column_by_name("count").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().value(i), 100);
        assert_eq!(get("mean"), 50.5);
        assert_eq!((get("min"), get("max")), (1.0, 100.0));
        assert!((get("p95") - 95.0).abs() <= 1.5, "p95 {}", get("p95"));
    }

    #[tokio::test]
    async fn sql_without_a_required_column_is_refused_naming_it() {
        let err = FeaturePlan::new("SELECT window_start, window_end, series, name, avg(value) AS mean FROM points GROUP BY 1,2,3,4", "mean")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("`series_id`"), "{err}");
        let err = FeaturePlan::new("SELEC nonsense", "mean").await.unwrap_err();
        assert!(err.to_string().starts_with("feature plan:"), "{err}");
    }
}
