//! The feature plan: user-editable SQL over the rows of closed windows.

mod streamed;

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, MapBuilder, RecordBatch, StringBuilder, TimestampMillisecondArray, TimestampMillisecondBuilder,
    UInt64Builder,
};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::prelude::SessionContext;

use vigil_models::prepared::{deal_evenly, Prepared, SwappedTable};

use crate::window::ClosedWindow;
use crate::{Error, Result};

/// The feature SQL shipped with Vigil (`sql/features.sql`).
pub const DEFAULT_FEATURES_SQL: &str = include_str!("../../../sql/features.sql");

/// The log-signal SQL shipped with Vigil (`sql/log_signals.sql`).
pub const DEFAULT_LOG_SIGNALS_SQL: &str = include_str!("../../../sql/log_signals.sql");

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
    /// The compute the plan spent on windows whose rows it was sent as they arrived
    /// ([`FeaturePlan::feed_window`]), before this run.
    pub streamed_compute: std::time::Duration,
}

/// Columns every feature plan must produce for the detector.
const REQUIRED: [&str; 5] = ["window_start", "window_end", "series_id", "series", "name"];

/// Runs the feature SQL over closed windows. The rows of the windows closing together are one
/// `points` table with `window_start` and `window_end` columns added, so the plan runs once per
/// close, however many windows close at once.
///
/// Both SQL texts are parsed, optimised and planned once, when the plan is made; every close
/// re-executes the same physical plan over the new rows. A text calling a function DataFusion
/// folds to a constant at planning time (`now()`, `current_date()`) is planned at every close
/// instead, so that it sees the time of that close.
pub struct FeaturePlan {
    ctx: SessionContext,
    /// The context of the windows' runs while they are open, on one partition.
    stream_ctx: SessionContext,
    points_schema: SchemaRef,
    logs_schema: SchemaRef,
    output_schema: SchemaRef,
    points: Query,
    /// The points query of the windows' runs while they are open ([`Self::feed_window`]);
    /// `None` for a text that reads only what the other context has (windows then run at
    /// their close).
    streamed: Option<Query>,
    logs: Query,
    /// One run at a time: a run fills the tables its plan reads.
    running: tokio::sync::Mutex<()>,
    /// Whether a window can have a run while it is open ([`Self::feed_window`]).
    streamable: bool,
    streams: streamed::Streams,
}

/// One SQL text over one swapped table, planned once where it can be.
struct Query {
    table: SwappedTable,
    prepared: Prepared,
}

impl std::fmt::Debug for FeaturePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeaturePlan").field("sql", &self.points.prepared.sql()).field("log_sql", &self.logs.prepared.sql()).finish()
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
        // Every core aggregates a closed window's rows (the plan's own tasks, on the engine's
        // runtime).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::build(sql, log_sql, feature, scalar, aggregate, cores).await
    }

    async fn build(
        sql: &str,
        log_sql: &str,
        feature: &str,
        scalar: Vec<datafusion::logical_expr::ScalarUDF>,
        aggregate: Vec<datafusion::logical_expr::AggregateUDF>,
        cores: usize,
    ) -> Result<Self> {
        let windowed = |base: SchemaRef| {
            let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new("window_start", window_ts_type(), false));
            fields.push(Field::new("window_end", window_ts_type(), false));
            Arc::new(Schema::new(fields))
        };
        let points_schema = windowed(vigil_ingest::points_schema());
        let logs_schema = windowed(vigil_ingest::logs_schema());
        let context = |partitions: usize| {
            let mut config = vigil_models::session_config(partitions);
            vigil_models::prepared::reusable_plans(&mut config);
            // The points arrive dealt out by `series_id`: grouping by it (and more) needs no
            // shuffle, on any number of cores.
            config.options_mut().optimizer.subset_repartition_threshold = 1;
            let ctx = SessionContext::new_with_config(config);
            for f in &scalar {
                ctx.register_udf(f.clone());
            }
            for f in &aggregate {
                ctx.register_udaf(f.clone());
            }
            ctx
        };
        let ctx = context(cores);
        // A window's run while it is open takes a poll's rows at a time, beside decoding and
        // scoring: on one partition, it does not hash every row to deal it out to a partition
        // per core and copy each partition's rows (measured on the 5M-event file: the engine's
        // CPU 2.01-2.04 -> 1.86-1.89 s, close to ack with 100,000 series unchanged).
        let stream_ctx = context(1);
        let log_err = |e| match e {
            Error::Plan(m) => Error::Plan(format!("log signals: {m}")),
            e => e,
        };
        let points_table = SwappedTable::new(points_schema.clone(), cores, Some("series_id"));
        let logs_table = SwappedTable::new(logs_schema.clone(), cores, None);
        let logs = Query::new(&ctx, "logs", logs_table, log_sql).await.map_err(log_err)?;
        let points = Query::new(&ctx, "points", points_table, sql).await?;
        // The text is checked against the main context below; one that plans there but not
        // here (it reads a table only the main context holds) runs every window at its close.
        let streamed = Query::new(&stream_ctx, "points", SwappedTable::new(points_schema.clone(), 1, Some("series_id")), sql).await.ok();
        let mut plan = Self {
            ctx,
            stream_ctx,
            points_schema: points_schema.clone(),
            logs_schema,
            output_schema: points_schema,
            points,
            streamed,
            logs,
            running: tokio::sync::Mutex::new(()),
            streamable: false,
            streams: streamed::Streams::default(),
        };
        let signals = plan.query(&plan.logs, vec![RecordBatch::new_empty(plan.logs_schema.clone())]).await.map_err(log_err)?;
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
        plan.streamable = plan.streamed.as_ref().is_some_and(|q| q.prepared.plan().is_some_and(|p| q.table.scanned_once_by(p)));
        Ok(plan)
    }

    /// Whether the plan can run a window's rows while it is open ([`Self::feed_window`]): it is
    /// planned once and reads `points` once.
    pub fn streams(&self) -> bool {
        self.streamable
    }

    /// Sends the batches of window `[start_ms, end_ms)`'s points that its own run of the plan
    /// has not seen (all of `batches`, the window's points so far, starting the run, the first
    /// time): the aggregation works through the rows while the window is open, and
    /// [`Self::run`] at the close only waits for its output. A window's batches are only ever
    /// appended to; one whose rows were removed must have its run dropped
    /// ([`Self::forget_streams`]), and a run that missed rows is not used at the close.
    pub fn feed_window(&self, start_ms: i64, end_ms: i64, batches: &[RecordBatch]) -> Result<()> {
        if !self.streamable {
            return Ok(());
        }
        let seen = self.streams.sent(start_ms);
        for b in batches.get(seen..).unwrap_or_default() {
            let b = with_window_span(&self.points_schema, b, start_ms, end_ms)?;
            self.streams.feed(start_ms, end_ms, b, || match &self.streamed {
                Some(q) => Ok(q.prepared.stream(&self.stream_ctx, &q.table)?),
                None => Ok(None),
            })?;
        }
        Ok(())
    }

    /// Drops the runs of the open windows: rows left them other than by a close.
    pub fn forget_streams(&self) {
        self.streams.clear();
    }

    /// How many open windows have a run under way.
    pub fn streaming_windows(&self) -> usize {
        self.streams.len()
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

    /// The windows' points as the `points` table holds them (with `window_start` and
    /// `window_end`), before the log signals join them.
    pub fn points_rows(&self, windows: &[ClosedWindow]) -> Result<Vec<RecordBatch>> {
        windows.iter().flat_map(|w| w.batches.iter().map(move |b| with_window(&self.points_schema, b, w))).collect()
    }

    /// Runs the plan over `windows`: log signals first (they join the points), then the features.
    pub async fn run(&self, windows: &[ClosedWindow]) -> Result<PlanOutput> {
        let _one = self.running.lock().await;
        // Each window's points with their window columns, and its run if it saw them all.
        let per_window = windows
            .iter()
            .zip(self.streams.take(windows))
            .map(|(w, run)| match run {
                Some(r) => Ok((r.fed, Some(r.run))),
                None => Ok((self.points_rows(std::slice::from_ref(w))?, None)),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut parts: Vec<RecordBatch> = per_window.iter().flat_map(|(rows, _)| rows.iter().cloned()).collect();
        let log_parts = windows.iter().flat_map(|w| w.logs.iter().map(move |b| with_window(&self.logs_schema, b, w))).collect::<Result<Vec<_>>>()?;
        let logs = concat_batches(&self.logs_schema, &log_parts)?;
        let mut signals = None;
        if logs.num_rows() > 0 {
            let signal_rows = self.query(&self.logs, vec![logs.clone()]).await?;
            let signal_points = self.signal_points(&signal_rows)?;
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
            signals = Some(RecordBatch::try_new(self.points_schema.clone(), cols)?);
            parts.extend(signals.clone());
        }
        if parts.is_empty() {
            parts.push(RecordBatch::new_empty(self.points_schema.clone()));
        }
        if per_window.iter().all(|(_, run)| run.is_none()) {
            let features = conform(self.execute(parts.clone()).await?, &self.output_schema)?;
            return Ok(PlanOutput { points: parts, logs, features, streamed_compute: std::time::Duration::ZERO });
        }
        // Windows whose run saw all their rows: the log signals of each join its run, and the
        // run's output is that window's features. The others run from their rows, together.
        let mut outputs = Vec::new();
        let mut rest: Vec<RecordBatch> = Vec::new();
        let mut streamed_compute = std::time::Duration::ZERO;
        for (w, (rows, run)) in windows.iter().zip(per_window) {
            let signals = signals.as_ref().map(|s| of_window(s, w.start_ms)).transpose()?.filter(|s| s.num_rows() > 0);
            match run {
                Some(mut run) => {
                    if let Some(s) = signals {
                        // A run that stopped reports why from `finish`.
                        let _ = run.send(&s);
                    }
                    let (batches, planned, compute) = run.finish().await?;
                    streamed_compute += compute;
                    let schema = batches.first().map(|b| b.schema()).unwrap_or(planned);
                    outputs.push(conform(concat_columns(&schema, &batches)?, &self.output_schema)?);
                }
                None => {
                    rest.extend(rows);
                    rest.extend(signals);
                }
            }
        }
        if !rest.is_empty() {
            outputs.push(conform(self.execute(rest).await?, &self.output_schema)?);
        }
        let features = match outputs.len() {
            1 => outputs.pop().expect("one"),
            _ => concat_columns(&self.output_schema, &outputs)?,
        };
        Ok(PlanOutput { points: parts, logs, features, streamed_compute })
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
        self.query(&self.points, points).await
    }

    async fn query(&self, q: &Query, rows: Vec<RecordBatch>) -> Result<RecordBatch> {
        let table = &q.table;
        let parts = match table.hashed_by() {
            Some(_) => vec![rows],
            None => deal_evenly(rows, table.partitions())?,
        };
        table.set(parts);
        let result = async {
            let (batches, planned) = q.prepared.execute(&self.ctx).await?;
            // Execution may pick other physical string types than planning (e.g. Utf8View inside
            // a map built by `map()`): the batches' own schema is the truth.
            let schema = batches.first().map(|b| b.schema()).unwrap_or(planned);
            Ok(concat_batches(&schema, &batches)?)
        }
        .await;
        table.clear();
        result
    }
}

impl Query {
    /// Registers `table` as `name` and plans `sql` over it (once, where it can be).
    async fn new(ctx: &SessionContext, name: &str, table: SwappedTable, sql: &str) -> Result<Self> {
        ctx.register_table(name, Arc::new(table.clone()))?;
        let prepared = Prepared::new(ctx, sql).await.map_err(|e| Error::Plan(e.to_string()))?;
        Ok(Self { table, prepared })
    }
}

/// `b`, a batch of window `w`, with the window's `window_start` and `window_end` columns.
fn with_window(schema: &SchemaRef, b: &RecordBatch, w: &ClosedWindow) -> Result<RecordBatch> {
    with_window_span(schema, b, w.start_ms, w.end_ms)
}

/// `b` with `window_start` and `window_end` columns of the window `[start_ms, end_ms)`.
fn with_window_span(schema: &SchemaRef, b: &RecordBatch, start_ms: i64, end_ms: i64) -> Result<RecordBatch> {
    let n = b.num_rows();
    let mut cols: Vec<ArrayRef> = b.columns().to_vec();
    cols.push(Arc::new(TimestampMillisecondArray::from_value(start_ms, n).with_timezone("+00:00")));
    cols.push(Arc::new(TimestampMillisecondArray::from_value(end_ms, n).with_timezone("+00:00")));
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// The rows of `points` (points schema with the window columns) in the window starting at
/// `start_ms`.
fn of_window(points: &RecordBatch, start_ms: i64) -> Result<RecordBatch> {
    let starts = points.column(points.num_columns() - 2).as_primitive::<TimestampMillisecondType>();
    let mask: arrow::array::BooleanArray = starts.values().iter().map(|s| Some(*s == start_ms)).collect();
    Ok(arrow::compute::filter_record_batch(points, &mask)?)
}

/// `concat_batches` with each column copied on a core of its own: a close waits for its
/// features, 100,000 rows of a dozen columns in one batch per partition of the plan.
fn concat_columns(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    use rayon::prelude::*;
    match batches {
        [] => return Ok(RecordBatch::new_empty(schema.clone())),
        [one] if one.schema() == *schema => return Ok(one.clone()),
        _ => {}
    }
    let columns = (0..schema.fields().len())
        .into_par_iter()
        .map(|i| {
            let arrays: Vec<&dyn arrow::array::Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
            arrow::compute::concat(&arrays)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?)
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
mod tests;
