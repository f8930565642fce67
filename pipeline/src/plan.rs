//! The feature plan: user-editable SQL over the rows of closed windows.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, MapBuilder, RecordBatch, StringBuilder, TimestampMillisecondArray, TimestampMillisecondBuilder,
    UInt64Builder,
};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::window::ClosedWindow;
use crate::{Error, Result};

/// The feature SQL shipped with Vigil (`sql/features.sql`).
pub const DEFAULT_FEATURES_SQL: &str = include_str!("../../sql/features.sql");

/// The log-signal SQL shipped with Vigil (`sql/log_signals.sql`).
pub const DEFAULT_LOG_SIGNALS_SQL: &str = include_str!("../../sql/log_signals.sql");

/// Columns the log-signal SQL must produce.
const LOG_REQUIRED: [&str; 4] = ["window_start", "name", "labels", "value"];

/// What one run of the plan produced.
#[derive(Debug, Clone)]
pub struct PlanOutput {
    /// The `points` rows the feature SQL saw: the windows' points and the log signals, in the
    /// batches they arrived in (not copied into one).
    pub points: Vec<RecordBatch>,
    /// The windows' log rows, with `window_start` and `window_end`.
    pub logs: RecordBatch,
    /// The features.
    pub features: RecordBatch,
}

/// Columns every feature plan must produce for the detector.
const REQUIRED: [&str; 5] = ["window_start", "window_end", "series_id", "series", "name"];

/// Runs the feature SQL over closed windows. The rows of the windows closing together are one
/// `points` table with `window_start` and `window_end` columns added, so the plan is planned and
/// run once per close, however many windows close at once.
pub struct FeaturePlan {
    ctx: SessionContext,
    sql: String,
    log_sql: String,
    points_schema: SchemaRef,
    logs_schema: SchemaRef,
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
    /// must contain the columns the detector needs plus `feature`. Log signals come from
    /// [`DEFAULT_LOG_SIGNALS_SQL`].
    pub async fn new(sql: &str, feature: &str) -> Result<Self> {
        Self::with_log_signals(sql, DEFAULT_LOG_SIGNALS_SQL, feature).await
    }

    /// Like [`Self::new`], with the SQL that turns the `logs` table into signal points.
    pub async fn with_log_signals(sql: &str, log_sql: &str, feature: &str) -> Result<Self> {
        Self::with_functions(sql, log_sql, feature, Vec::new(), Vec::new()).await
    }

    /// Like [`Self::with_log_signals`], with functions both SQL texts may call (the model
    /// functions, registered by the binary).
    pub async fn with_functions(
        sql: &str,
        log_sql: &str,
        feature: &str,
        scalar: Vec<datafusion::logical_expr::ScalarUDF>,
        aggregate: Vec<datafusion::logical_expr::AggregateUDF>,
    ) -> Result<Self> {
        let with_window = |base: SchemaRef| {
            let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new("window_start", window_ts_type(), false));
            fields.push(Field::new("window_end", window_ts_type(), false));
            Arc::new(Schema::new(fields))
        };
        let points_schema = with_window(vigil_ingest::points_schema());
        let logs_schema = with_window(vigil_ingest::logs_schema());
        // Every core aggregates a closed window's rows (the plan's own tasks, on the engine's
        // runtime); a small table stays in one partition (see `query`).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let ctx = SessionContext::new_with_config(vigil_models::session_config(cores));
        for f in scalar {
            ctx.register_udf(f);
        }
        for f in aggregate {
            ctx.register_udaf(f);
        }
        let mut plan = Self {
            ctx,
            sql: sql.to_string(),
            log_sql: log_sql.to_string(),
            points_schema: points_schema.clone(),
            logs_schema,
            output_schema: points_schema,
        };
        let signals = plan.query("logs", vec![RecordBatch::new_empty(plan.logs_schema.clone())], &plan.log_sql).await.map_err(|e| match e {
            Error::Plan(m) => Error::Plan(format!("log signals: {m}")),
            e => e,
        })?;
        for c in LOG_REQUIRED {
            if signals.schema().field_with_name(c).is_err() {
                return Err(Error::Plan(format!(
                    "the log-signal SQL must return a column named `{c}`; it returns {:?}",
                    signals.schema().fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                )));
            }
        }
        plan.signal_points(&signals)?;
        let out = plan.execute(vec![RecordBatch::new_empty(plan.points_schema.clone())]).await?;
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

    /// The schema of the `logs` table the log-signal SQL sees.
    pub fn logs_schema(&self) -> SchemaRef {
        self.logs_schema.clone()
    }

    /// Runs the plan over `windows`: log signals first (they join the points), then the features.
    pub async fn run(&self, windows: &[ClosedWindow]) -> Result<PlanOutput> {
        let with_window = |schema: &SchemaRef, b: &RecordBatch, w: &ClosedWindow| -> Result<RecordBatch> {
            let n = b.num_rows();
            let mut cols: Vec<ArrayRef> = b.columns().to_vec();
            cols.push(Arc::new(TimestampMillisecondArray::from_value(w.start_ms, n).with_timezone("+00:00")));
            cols.push(Arc::new(TimestampMillisecondArray::from_value(w.end_ms, n).with_timezone("+00:00")));
            Ok(RecordBatch::try_new(schema.clone(), cols)?)
        };
        let mut parts = Vec::new();
        let mut log_parts = Vec::new();
        for w in windows {
            for b in &w.batches {
                parts.push(with_window(&self.points_schema, b, w)?);
            }
            for b in &w.logs {
                log_parts.push(with_window(&self.logs_schema, b, w)?);
            }
        }
        let logs = concat_batches(&self.logs_schema, &log_parts)?;
        if logs.num_rows() > 0 {
            let signals = self.query("logs", vec![logs.clone()], &self.log_sql).await?;
            let signal_points = self.signal_points(&signals)?;
            // Each signal belongs to the window it was computed for.
            let mut starts = windows.iter().map(|w| (w.start_ms, w.end_ms)).collect::<Vec<_>>();
            starts.sort_unstable();
            let ts = signal_points.column(0).as_primitive::<TimestampMillisecondType>();
            let ends: TimestampMillisecondArray = ts
                .values()
                .iter()
                .map(|t| starts.iter().find(|(s, _)| s == t).map(|(_, e)| *e))
                .collect::<TimestampMillisecondArray>()
                .with_timezone("+00:00");
            if ends.null_count() > 0 {
                return Err(Error::Plan("log signals: `window_start` must be the window_start of the logs rows".into()));
            }
            let mut cols: Vec<ArrayRef> = signal_points.columns().to_vec();
            cols.push(signal_points.column(0).clone());
            cols.push(Arc::new(ends));
            parts.push(RecordBatch::try_new(self.points_schema.clone(), cols)?);
        }
        if parts.is_empty() {
            parts.push(RecordBatch::new_empty(self.points_schema.clone()));
        }
        let features = conform(self.execute(parts.clone()).await?, &self.output_schema)?;
        Ok(PlanOutput { points: parts, logs, features })
    }

    /// Turns the log-signal rows into points (points schema, without the window columns).
    fn signal_points(&self, signals: &RecordBatch) -> Result<RecordBatch> {
        let n = signals.num_rows();
        let col = |c: &str| signals.column_by_name(c).expect("checked when planned");
        let bad = |c: &str, want: &str| Error::Plan(format!("log signals: column `{c}` must be {want}, it is {}", col(c).data_type()));
        let ts = cast(col("window_start"), &window_ts_type()).map_err(|_| bad("window_start", "a timestamp"))?;
        let ts = ts.as_primitive::<TimestampMillisecondType>();
        let names = cast(col("name"), &DataType::Utf8).map_err(|_| bad("name", "a string"))?;
        let names = names.as_string::<i32>();
        let values = cast(col("value"), &DataType::Float64).map_err(|_| bad("value", "a number"))?;
        let values = values.as_primitive::<Float64Type>();
        let labels = col("labels").as_map_opt().ok_or_else(|| bad("labels", "a map of string to string"))?;
        let keys = cast(labels.keys(), &DataType::Utf8).map_err(|_| bad("labels", "a map of string to string"))?;
        let vals = cast(labels.values(), &DataType::Utf8).map_err(|_| bad("labels", "a map of string to string"))?;
        let (keys, vals) = (keys.as_string::<i32>(), vals.as_string::<i32>());
        let offsets = labels.value_offsets();

        let mut b_ts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("+00:00");
        let mut b_id = UInt64Builder::with_capacity(n);
        let mut b_series = StringBuilder::new();
        let mut b_name = StringBuilder::new();
        let mut b_labels = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        let mut b_value = Float64Builder::with_capacity(n);
        for i in 0..n {
            if ts.is_null(i) || names.is_null(i) || values.is_null(i) || !values.value(i).is_finite() {
                continue;
            }
            let pairs: Vec<(&str, &str)> = if labels.is_null(i) {
                Vec::new()
            } else {
                (offsets[i] as usize..offsets[i + 1] as usize)
                    .filter(|&j| !keys.is_null(j))
                    .map(|j| (keys.value(j), if vals.is_null(j) { "" } else { vals.value(j) }))
                    .collect()
            };
            let key = vigil_ingest::series_key(names.value(i), pairs.iter().copied());
            b_ts.append_value(ts.value(i));
            b_id.append_value(vigil_ingest::series_id(&key));
            b_series.append_value(&key);
            b_name.append_value(names.value(i));
            for (k, v) in &pairs {
                b_labels.keys().append_value(k);
                b_labels.values().append_value(v);
            }
            b_labels.append(true)?;
            b_value.append_value(values.value(i));
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(b_ts.finish()),
            Arc::new(b_id.finish()),
            Arc::new(b_series.finish()),
            Arc::new(b_name.finish()),
            Arc::new(b_labels.finish()),
            Arc::new(b_value.finish()),
        ];
        Ok(RecordBatch::try_new(vigil_ingest::points_schema(), cols)?)
    }

    async fn execute(&self, points: Vec<RecordBatch>) -> Result<RecordBatch> {
        self.query("points", points, &self.sql).await
    }

    async fn query(&self, table: &str, rows: Vec<RecordBatch>, sql: &str) -> Result<RecordBatch> {
        // The batches dealt out to one partition per core (in order within each), so that every
        // core aggregates; a small table stays in one partition.
        let schema = rows.first().map(RecordBatch::schema).ok_or_else(|| Error::Plan(format!("no batch for `{table}`")))?;
        let k = self.ctx.state().config().target_partitions().max(1);
        let n: usize = rows.iter().map(RecordBatch::num_rows).sum();
        let parts: Vec<Vec<RecordBatch>> = if k == 1 || n < 4096 * k {
            vec![rows]
        } else if rows.len() >= 2 * k {
            let mut parts = vec![Vec::new(); k];
            let mut filled = vec![0usize; k];
            for b in rows {
                let i = (0..k).min_by_key(|i| filled[*i]).expect("k >= 1");
                filled[i] += b.num_rows();
                parts[i].push(b);
            }
            parts
        } else {
            let all = concat_batches(&schema, &rows)?;
            (0..k).map(|i| vec![all.slice(i * n / k, (i + 1) * n / k - i * n / k)]).collect()
        };
        let mem = MemTable::try_new(schema, parts)?;
        self.ctx.deregister_table(table)?;
        self.ctx.register_table(table, Arc::new(mem))?;
        let df = self.ctx.sql(sql).await.map_err(|e| Error::Plan(e.to_string()))?;
        let planned: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        // Execution may pick other physical string types than planning (e.g. Utf8View inside
        // a map built by `map()`): the batches' own schema is the truth.
        let schema = batches.first().map(|b| b.schema()).unwrap_or(planned);
        Ok(concat_batches(&schema, &batches)?)
    }
}

/// Gives `batch` exactly `schema` (the one the `features` table was created with), casting
/// columns whose physical type differs between planning an empty table and running a full one.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema() == *schema {
        return Ok(batch);
    }
    if batch.num_columns() != schema.fields().len() {
        return Err(Error::Plan(format!("the feature SQL returned {} columns, planned {}", batch.num_columns(), schema.fields().len())));
    }
    let cols = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c.clone()) } else { cast(c, f.data_type()) })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let fields: Vec<Field> = schema.fields().iter().zip(&cols).map(|(f, c)| f.as_ref().clone().with_nullable(f.is_nullable() || c.null_count() > 0)).collect();
    if fields.iter().zip(schema.fields()).any(|(a, b)| a.is_nullable() != b.is_nullable()) {
        return Err(Error::Plan("the feature SQL returned nulls in a column planned as non-null".into()));
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
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

    async fn plan_default() -> FeaturePlan {
        FeaturePlan::new(DEFAULT_FEATURES_SQL, "mean").await.unwrap()
    }

    #[tokio::test]
    async fn default_sql_computes_count_mean_min_max_p95_per_series() {
        let plan = plan_default().await;
        let mut rows: Vec<(&str, i64, f64)> = (1..=100).map(|i| ("a", 1_000 + i, i as f64)).collect();
        rows.push(("b", 2_000, 7.0));
        let f = plan.run(&window(&rows)).await.unwrap().features;
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
    async fn a_window_with_one_point_per_series_past_the_partial_aggregation_probe_is_aggregated() {
        // More rows per partition than DataFusion's probe (100,000) on up to two cores, each its
        // own group: the case in which DataFusion would skip partial aggregation and
        // `percentile_cont` panic (vigil_models' own test covers it on any machine).
        let hosts: Vec<String> = (0..250_000).map(|i| format!("h{i}")).collect();
        let rows: Vec<(&str, i64, f64)> = hosts.iter().enumerate().map(|(i, h)| (h.as_str(), 1_000 + (i % 5_000) as i64, i as f64)).collect();
        let f = plan_default().await.run(&window(&rows)).await.unwrap().features;
        assert_eq!(f.num_rows(), 250_000);
        let p95 = f.column_by_name("p95").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
        let mean = f.column_by_name("mean").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(p95.values(), mean.values(), "one point: its p95 is its value");
    }

    #[tokio::test]
    async fn log_rows_become_signal_points_scored_like_metrics() {
        use vigil_ingest::{DrainConfig, JsonLogDecoder, LogMapping};
        let mut lines = Vec::new();
        for i in 0..8 {
            lines.push(format!(r#"{{"ts": {}, "level": "info", "service": "api", "message": "GET /cart 200 in {i} ms"}}"#, 1_000 + i));
        }
        lines.push(r#"{"ts": 1500, "level": "error", "service": "api", "message": "upstream timed out"}"#.to_string());
        lines.push(r#"{"ts": 1600, "level": "error", "service": "api", "message": "upstream timed out"}"#.to_string());
        let recs: Vec<RawRecord> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| RawRecord { payload: Some(l.clone().into_bytes()), key: None, pos: SourcePos { topic: "logs".into(), partition: 0, offset: i as i64 } })
            .collect();
        let logs = JsonLogDecoder::new(LogMapping::default(), DrainConfig::default(), Default::default()).unwrap().decode(&recs).unwrap();
        let mut w = Windower::new(WindowConfig { size_ms: 10_000, allowed_lag_ms: 0, idle_timeout: std::time::Duration::from_secs(60) });
        w.push_logs(&logs.logs, &logs.positions).unwrap();
        let plan = plan_default().await;
        let out = plan.run(&w.take_all()).await.unwrap();
        assert_eq!(out.logs.num_rows(), 10);
        let series = out.features.column_by_name("series").unwrap().as_string::<i32>();
        let mean = out.features.column_by_name("mean").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
        let get = |k: &str| (0..series.len()).find(|&i| series.value(i) == k).map(|i| mean.value(i));
        assert_eq!(get(r#"log_records{level="info",service="api"}"#), Some(8.0));
        assert_eq!(get(r#"log_records{level="error",service="api"}"#), Some(2.0));
        assert_eq!(get(r#"log_error_ratio{service="api"}"#), Some(0.2));
        assert_eq!(get(r#"log_new_templates{service="api"}"#), Some(2.0));
        let per_template = (0..series.len()).filter(|&i| series.value(i).starts_with("log_template_records{")).count();
        assert_eq!(per_template, 2);
    }

    #[tokio::test]
    async fn log_signal_sql_without_a_required_column_is_refused_naming_it() {
        let err = FeaturePlan::with_log_signals(DEFAULT_FEATURES_SQL, "SELECT window_start, 'x' AS name, 1.0 AS value FROM logs", "mean").await.unwrap_err();
        assert!(err.to_string().contains("`labels`"), "{err}");
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
