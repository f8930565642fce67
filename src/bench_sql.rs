//! `vigil bench-sql`: query latency over a day of results. Fills the `anomalies` table with one
//! row per series and minute for `hours` hours (10,000 series × 24 h = 14.4 million rows by
//! default), written to hourly Parquet files as the engine's history writer does, the newest
//! minutes left in memory, then times typical queries (a per-series summary of the day, a
//! Grafana time-series panel, one series' day) through the SQL service with its limits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array, UInt64Array};
use vigil_pipeline::history::HistoryWriter;
use vigil_pipeline::ResultTables;
use vigil_queries::{Limits, SqlService};

/// 2026-01-05T00:00:00Z.
const T0: i64 = 1_767_571_200_000;
const MINUTE: i64 = 60_000;

/// One timed query.
#[derive(Debug, Clone)]
pub struct QueryTiming {
    /// What it asks.
    pub name: &'static str,
    /// The SQL.
    pub sql: String,
    /// Rows it returned.
    pub rows: usize,
    /// Latency percentiles over the runs, milliseconds: p50, p99, max.
    pub ms: [f64; 3],
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct SqlBenchReport {
    /// Series.
    pub series: usize,
    /// Hours of data.
    pub hours: usize,
    /// Rows in the table (files and memory).
    pub rows: u64,
    /// Parquet files and their bytes.
    pub files: usize,
    /// Bytes of Parquet.
    pub file_bytes: u64,
    /// Seconds to generate and write the history.
    pub load_s: f64,
    /// Runs per query.
    pub runs: usize,
    /// Query threads (partitions).
    pub threads: usize,
    /// The queries.
    pub queries: Vec<QueryTiming>,
}

impl SqlBenchReport {
    /// A plain-text report.
    pub fn render(&self) -> String {
        let mut s = format!(
            "vigil bench-sql: {} series x {} h of anomalies rows at 1 minute = {} rows ({} Parquet files, {:.1} MB, last 10 minutes in memory), loaded in {:.1} s\n\
             {} runs per query, {} query thread(s), default limits otherwise\n",
            self.series, self.hours, self.rows, self.files, self.file_bytes as f64 / 1e6, self.load_s, self.runs, self.threads
        );
        for q in &self.queries {
            s.push_str(&format!("  {:<28} p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms  ({} rows)\n", q.name, q.ms[0], q.ms[1], q.ms[2], q.rows));
        }
        s
    }
}

fn batch(series: usize, minute: i64) -> RecordBatch {
    let end = T0 + (minute + 1) * MINUTE;
    let n = series;
    let ts = |v: i64| Arc::new(TimestampMillisecondArray::from(vec![v; n]).with_timezone("+00:00")) as ArrayRef;
    let ids: Vec<u64> = (0..n as u64).collect();
    let keys: Vec<String> = (0..n).map(|i| format!("cpu_utilization{{host=\"h{i:05}\",service=\"svc{:02}\"}}", i % 50)).collect();
    let value: Vec<f64> = (0..n).map(|i| 50.0 + 10.0 * (((minute as f64) / 60.0 + i as f64).sin())).collect();
    let score: Vec<f64> = (0..n).map(|i| if (i as i64 + minute) % 997 == 0 { 0.9995 } else { 0.5 }).collect();
    let cols: Vec<ArrayRef> = vec![
        ts(end - MINUTE),
        ts(end),
        Arc::new(UInt64Array::from(ids)),
        Arc::new(StringArray::from(keys)),
        Arc::new(StringArray::from(vec!["cpu_utilization"; n])),
        Arc::new(StringArray::from(vec!["mean"; n])),
        Arc::new(Float64Array::from(value.clone())),
        Arc::new(Float64Array::from(vec![50.0; n])),
        Arc::new(Float64Array::from(vec![35.0; n])),
        Arc::new(Float64Array::from(vec![65.0; n])),
        Arc::new(Float64Array::from(score)),
        Arc::new(Float64Array::from(vec![0.3; n])),
        Arc::new(UInt32Array::from(vec![1u32; n])),
        Arc::new(StringArray::from(vec![""; n])),
        Arc::new(StringArray::from(vec!["level"; n])),
    ];
    RecordBatch::try_new(vigil_models::anomalies_schema(), cols).expect("bench batch matches the anomalies schema")
}

/// Loads the table and times the queries.
pub async fn run(series: usize, hours: usize, runs: usize, threads: usize) -> anyhow::Result<SqlBenchReport> {
    let dir = std::env::temp_dir().join(format!("vigil-bench-sql-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (store, prefix) = vigil_pipeline::history::open_store(&dir.display().to_string(), &BTreeMap::new())?;
    let tables = Arc::new(ResultTables::new());
    let mut writer = HistoryWriter::new(store, &prefix, "bench", Duration::from_secs(30 * 86_400), BTreeMap::new(), &tables);
    tables.create("anomalies", vigil_models::anomalies_schema(), 10 * series);
    let t0 = Instant::now();
    let minutes = hours as i64 * 60;
    for m in 0..minutes {
        tables.append("anomalies", batch(series, m))?;
        // An hourly file per hour, as the engine's checkpoints and compaction leave them; the
        // last 10 minutes stay in memory.
        if ((m + 1) % 60 == 0 && m + 1 < minutes) || m + 1 == minutes - 10 {
            writer.flush(&tables, T0 + m * MINUTE).await?;
        }
    }
    let load_s = t0.elapsed().as_secs_f64();
    let files = tables.files("anomalies");
    let f = vigil_models::sql_functions();
    let limits = Limits { threads, ..Limits::default() };
    let sql = SqlService::build(tables.clone(), f.scalar, f.aggregate, limits, "vigil");
    let from = "TIMESTAMP '2026-01-05T00:00:00Z'";
    let to = format!("TIMESTAMP '2026-01-05T00:00:00Z' + INTERVAL '{hours} hours'");
    let queries: Vec<(&'static str, String)> = vec![
        ("count of the day", format!("select count(*) from anomalies where window_end > {from} and window_end <= {to}")),
        (
            "per-series summary, 24 h",
            format!("select series, avg(value) as mean, max(score) as worst from anomalies where window_end > {from} and window_end <= {to} group by series"),
        ),
        (
            "Grafana panel, 5 min bins",
            format!(
                "select date_bin(INTERVAL '5 minutes', window_end) as time, count(*) as anomalies from anomalies \
                 where score >= 0.999 and window_end between {from} and {to} group by 1 order by 1"
            ),
        ),
        (
            "one series' day",
            format!(
                "select window_end, value, lower, upper, score from anomalies where series = 'cpu_utilization{{host=\"h04242\",service=\"svc42\"}}' \
                 and window_end between {from} and {to} order by window_end"
            ),
        ),
    ];
    let mut timings = Vec::new();
    let mut total_rows = 0;
    for (name, q) in queries {
        let warm = sql.query(&q).await.map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let rows: usize = warm.iter().map(RecordBatch::num_rows).sum();
        if name == "count of the day" {
            total_rows = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(warm[0].column(0)).value(0) as u64;
        }
        let mut ms = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            sql.query(&q).await.map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        let pick = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        timings.push(QueryTiming { name, sql: q, rows, ms: [pick(0.5), pick(0.99), pick(1.0)] });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(SqlBenchReport {
        series,
        hours,
        rows: total_rows,
        files: files.len(),
        file_bytes: files.iter().map(|f| f.bytes).sum(),
        load_s,
        runs,
        threads,
        queries: timings,
    })
}
