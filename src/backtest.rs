//! `vigil backtest`: the live detector and forecaster on a user's own history, before they trust
//! them on a live stream.
//!
//! 1. **Read.** Every `.csv` and `.parquet` file given (a file, or every such file in a folder) is
//!    scanned with polars' lazy readers. A file is either *long* — columns `timestamp`, `series`
//!    (or `name`) and `value`, any number of series — or *two-column* — `timestamp` and `value`,
//!    one series named after the file stem (NAB's layout). Timestamps may be strings (the format
//!    is inferred, e.g. `2014-04-01 00:05:00`; RFC 3339 offsets are converted to UTC), integers
//!    (epoch milliseconds) or datetimes; values any numeric type, or strings holding numbers.
//!    Rows with an empty timestamp or value are skipped; a value that cannot be read is an error
//!    naming the file, the column, the row and the value.
//! 2. **Resample.** Each series is cut into tumbling windows of `window.size`, aligned on the
//!    epoch like the live windows, with the mean of each window (`group_by_dynamic`). Windows
//!    with no point between a series' first and last one are added and carry the previous
//!    window's value (forward fill, as the live forecaster fills its history); they are counted.
//! 3. **Score.** The windows with data go, oldest first, through one [`Detector`] built
//!    from `[detector]`, one value at a time, exactly as the engine feeds it; filled windows are
//!    not scored (the live detector never sees a window without data). Scores at or above
//!    `detector.anomaly_threshold` are anomalies.
//! 4. **Forecast.** From the end of each series, [`vigil_models::forecast`] on the last
//!    `forecast.history` windows, `forecast.horizon` windows ahead, looking for periods up to
//!    `forecast.max_period` — the same settings the engine's refits use.
//! 5. **Report.** `report.md` (inputs, settings, a table per series, the top anomalies) and one
//!    PNG chart per series: the series, the detector's normal band, the anomalies, and the
//!    forecast with its 80% and 95% intervals.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use polars::prelude::{
    col, concat, lit, ClosedWindow, DataFrame, DataType, DynamicGroupOptions, FillNullStrategy, Int64Chunked, IntoColumn, IntoLazy, IntoSeries, Label, LazyCsvReader,
    LazyFileListReader, LazyFrame, PlRefPath, PolarsError, PolarsUpsample, ScanArgsParquet, SortMultipleOptions, StartBy, StrptimeOptions, TimeUnit, UnionArgs,
    NULL,
};
use vigil_models::{Detector, ForecastConfig, SeriesForecast};

use crate::config::Config;

/// How many anomalies per series the report lists (the highest scores).
pub const TOP_ANOMALIES: usize = 10;

mod chart;
mod report;

#[cfg(test)]
use report::fmt_time;
use report::{render_report, unique_file_name};

/// Most windows a backtest will build (all series together) before it refuses.
const MAX_WINDOWS: usize = 20_000_000;

/// Errors of a backtest. Each names the file, and the column where there is one.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    /// The input path does not exist or cannot be listed.
    #[error("reading {path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The input holds no `.csv` or `.parquet` file.
    #[error("{path}: no .csv or .parquet file to backtest")]
    NoInput {
        /// The path given.
        path: PathBuf,
    },
    /// A required column is missing.
    #[error("{path}: no column `{column}` (columns: {found}); {hint}")]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The column looked for.
        column: &'static str,
        /// The columns the file has, comma-separated.
        found: String,
        /// What the file should look like.
        hint: &'static str,
    },
    /// A column has a type that cannot be read as what it should hold.
    #[error("{path}: column `{column}` has type {dtype}; {expected}")]
    ColumnType {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// Its type.
        dtype: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// A value of a column cannot be parsed.
    #[error("{path}: column `{column}`, data row {row}: cannot read {value} as {expected}")]
    Unparsable {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// Data row, 1-based (the header is not counted).
        row: usize,
        /// The value as found.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// Polars failed on a file (unreadable, malformed, or a value it could not parse).
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Polars' error.
        error: PolarsError,
    },
    /// Polars failed while resampling.
    #[error("resampling to {window:?} windows: {error}")]
    Resample {
        /// The window size.
        window: Duration,
        /// Polars' error.
        error: PolarsError,
    },
    /// The inputs hold no row with both a timestamp and a value.
    #[error("no row with both a timestamp and a value in {files} file(s)")]
    Empty {
        /// Files read.
        files: usize,
    },
    /// The window size is far smaller than the span of the data.
    #[error("{windows} windows of {window:?} to build (series `{series}` alone spans {span}); set `window.size` to about the data's interval")]
    TooManyWindows {
        /// Windows the resampling would build.
        windows: usize,
        /// The window size.
        window: Duration,
        /// The longest series.
        series: String,
        /// Its span.
        span: String,
    },
    /// The report or a chart could not be written.
    #[error("writing {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// One anomaly: a window whose score reached `detector.anomaly_threshold`.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    /// Window start, epoch ms (UTC).
    pub time_ms: i64,
    /// The window's mean.
    pub value: f64,
    /// What the detector expected (the baseline median).
    pub expected: f64,
    /// Lower edge of the normal band.
    pub lower: f64,
    /// Upper edge of the normal band.
    pub upper: f64,
    /// Anomaly score in [0, 1].
    pub score: f64,
    /// Robust z-score of the part that fired.
    pub z: f64,
    /// The detector part that fired (level, seasonal, shift, forecast).
    pub part: &'static str,
}

/// What the backtest found for one series.
#[derive(Debug, Clone)]
pub struct SeriesSummary {
    /// Series name (the `series`/`name` column, or the file stem).
    pub name: String,
    /// Input rows with a timestamp and a value.
    pub points: usize,
    /// Windows from the first to the last point, filled ones included.
    pub windows: usize,
    /// Windows without data that were filled (forward fill).
    pub gaps_filled: usize,
    /// Windows the detector scored (after its warm-up).
    pub scored: usize,
    /// Every anomaly, in time order.
    pub anomalies: Vec<Anomaly>,
    /// The dominant period found in the forecast history, in windows.
    pub period: Option<usize>,
    /// The forecast from the end of the series.
    pub forecast: SeriesForecast,
    /// Start of the last window, epoch ms (the forecast's step 1 is the window after it).
    pub last_window_ms: i64,
    /// The chart, relative to the report folder.
    pub chart: String,
}

impl SeriesSummary {
    /// The `n` anomalies with the highest scores, highest first; scores saturate at 1, so ties
    /// go to the larger |z|, then to the earlier.
    pub fn top_anomalies(&self, n: usize) -> Vec<&Anomaly> {
        let mut v: Vec<&Anomaly> = self.anomalies.iter().collect();
        v.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.z.abs().total_cmp(&a.z.abs())).then(a.time_ms.cmp(&b.time_ms)));
        v.truncate(n);
        v
    }
}

/// The result of [`run`].
#[derive(Debug, Clone)]
pub struct BacktestSummary {
    /// The files read, in order.
    pub inputs: Vec<PathBuf>,
    /// The window size.
    pub window: Duration,
    /// The anomaly threshold applied.
    pub threshold: f64,
    /// Forecast settings, in windows.
    pub forecast: ForecastConfig,
    /// Most windows fitted on per forecast.
    pub forecast_history: usize,
    /// One entry per series, by name.
    pub series: Vec<SeriesSummary>,
    /// The Markdown report.
    pub report: PathBuf,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl BacktestSummary {
    /// Anomalies over every series.
    pub fn anomalies(&self) -> usize {
        self.series.iter().map(|s| s.anomalies.len()).sum()
    }

    /// A few lines for the terminal.
    pub fn render(&self) -> String {
        let mut out = format!(
            "backtest: {} file(s), {} series, window {}, {} anomalies, report {} ({:.1} s)\n",
            self.inputs.len(),
            self.series.len(),
            humantime::format_duration(self.window),
            self.anomalies(),
            self.report.display(),
            self.elapsed.as_secs_f64()
        );
        for s in &self.series {
            let _ = writeln!(
                out,
                "  {:<32} points {:>7}  windows {:>7}  filled {:>6}  anomalies {:>4}  period {:>6}  forecast {}",
                s.name,
                s.points,
                s.windows,
                s.gaps_filled,
                s.anomalies.len(),
                s.period.map_or("-".to_string(), |p| p.to_string()),
                s.forecast.method.name()
            );
        }
        out
    }
}

/// Lists the inputs: `input` itself if it is a file, else every `.csv` and `.parquet` file
/// directly in the folder, by name.
pub fn input_files(input: &Path) -> Result<Vec<PathBuf>, BacktestError> {
    let io = |error| BacktestError::Io { path: input.to_path_buf(), error };
    let meta = std::fs::metadata(input).map_err(io)?;
    if meta.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(input).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() && format_of(&path).is_some() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(BacktestError::NoInput { path: input.to_path_buf() });
    }
    Ok(files)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Parquet,
}

fn format_of(path: &Path) -> Option<Format> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "csv" => Some(Format::Csv),
        "parquet" | "pq" => Some(Format::Parquet),
        _ => None,
    }
}

fn scan(path: &Path) -> Result<LazyFrame, PolarsError> {
    let p = PlRefPath::try_from_path(path)?;
    match format_of(path) {
        Some(Format::Parquet) => LazyFrame::scan_parquet(p, ScanArgsParquet::default()),
        // Every row is used to infer the column types, so a late odd value is reported as
        // such rather than failing the read.
        _ => LazyCsvReader::new(p).with_infer_schema_length(None).finish(),
    }
}

/// Reads one file into `series` (String), `ts` (Datetime ms) and `value` (Float64), rows with a
/// timestamp and a finite value only.
fn read_file(path: &Path) -> Result<DataFrame, BacktestError> {
    let read = |error| BacktestError::Read { path: path.to_path_buf(), error };
    let mut lf = scan(path).map_err(read)?;
    let schema = lf.collect_schema().map_err(read)?;
    let found = || schema.iter_names().map(|n| n.as_str()).collect::<Vec<_>>().join(", ");
    const HINT: &str = "expected `timestamp,series,value` (or `name` for `series`), or `timestamp,value` with one series per file";
    let Some(ts_type) = schema.get("timestamp") else {
        return Err(BacktestError::MissingColumn { path: path.to_path_buf(), column: "timestamp", found: found(), hint: HINT });
    };
    let Some(value_type) = schema.get("value") else {
        return Err(BacktestError::MissingColumn { path: path.to_path_buf(), column: "value", found: found(), hint: HINT });
    };
    let type_err = |column: &str, dtype: &DataType, expected| BacktestError::ColumnType {
        path: path.to_path_buf(),
        column: column.to_string(),
        dtype: dtype.to_string(),
        expected,
    };
    let ms = DataType::Datetime(TimeUnit::Milliseconds, None);
    // Strings with a UTC offset (RFC 3339, `...Z`, `...+02:00`) are converted to UTC here, after
    // the scan: polars reads them as naive local times unless built with time zone support.
    let mut offsets = false;
    let ts = match ts_type {
        DataType::String => {
            let first = lf.clone().select([col("timestamp")]).drop_nulls(None).limit(1).collect().map_err(read)?;
            let first = first.column("timestamp").map_err(read)?.str().map_err(read)?.get(0).map(str::to_owned);
            offsets = first.as_deref().and_then(parse_with_offset).is_some();
            let opts = StrptimeOptions { strict: false, ..Default::default() };
            if offsets {
                lit(NULL).cast(ms.clone())
            } else {
                col("timestamp").str().to_datetime(Some(TimeUnit::Milliseconds), None, opts, lit("raise"))
            }
        }
        DataType::Datetime(_, _) => col("timestamp").dt().timestamp(TimeUnit::Milliseconds).cast(ms.clone()),
        t if t.is_integer() => col("timestamp").cast(DataType::Int64).cast(ms.clone()),
        t => return Err(type_err("timestamp", t, "expected date-time strings, epoch milliseconds or datetimes")),
    };
    let value = match value_type {
        t if t.is_primitive_numeric() || matches!(t, DataType::String) => col("value").cast(DataType::Float64),
        t => return Err(type_err("value", t, "expected numbers")),
    };
    let series = match ["series", "name"].into_iter().find(|c| schema.contains(c)) {
        Some(c) => col(c).cast(DataType::String),
        None => lit(path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()),
    };
    let df = lf
        .select([
            col("timestamp").alias("ts_raw"),
            ts.alias("ts"),
            col("value").alias("value_raw"),
            value.alias("value"),
            series.alias("series"),
        ])
        .collect()
        .map_err(read)?;
    let mut df = df;
    if offsets {
        let raw = df.column("ts_raw").map_err(read)?.str().map_err(read)?;
        let parsed: Int64Chunked = raw.iter().map(|v| v.and_then(parse_with_offset)).collect();
        let ts = parsed.with_name("ts".into()).into_series().cast(&ms).map_err(read)?;
        df.with_column(ts.into_column()).map_err(read)?;
    }
    for (raw, parsed, column, expected) in [("ts_raw", "ts", "timestamp", "a date-time"), ("value_raw", "value", "value", "a number")] {
        let bad = df.column(parsed).map_err(read)?.is_null() & df.column(raw).map_err(read)?.is_not_null();
        let first_bad = bad.iter().position(|b| b == Some(true));
        if let Some(i) = first_bad {
            let v = df.column(raw).map_err(read)?.get(i).map_err(read)?;
            return Err(BacktestError::Unparsable { path: path.to_path_buf(), column: column.into(), row: i + 1, value: v.to_string(), expected });
        }
    }
    let rows = df.height();
    let out = df
        .lazy()
        .select([col("series"), col("ts"), col("value")])
        // Null, NaN and infinite values fail both comparisons.
        .filter(col("ts").is_not_null().and(col("series").is_not_null()).and(col("value").gt(lit(f64::NEG_INFINITY))).and(col("value").lt(lit(f64::INFINITY))))
        .collect()
        .map_err(read)?;
    if out.height() < rows {
        tracing::debug!(file = %path.display(), skipped = rows - out.height(), "rows without a timestamp, series or value skipped");
    }
    Ok(out)
}

/// Epoch ms of a date-time string with a UTC offset: RFC 3339 (`2026-01-05T00:00:00Z`,
/// `2026-01-05T01:00:00.5+01:00`) or the same with a space for the `T`.
fn parse_with_offset(s: &str) -> Option<i64> {
    let s = s.trim();
    chrono::DateTime::parse_from_rfc3339(s)
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%#z"))
        .ok()
        .map(|t| t.timestamp_millis())
}

/// One series after resampling: a window every `window_ms` from the first to the last.
#[derive(Debug, Clone)]
struct Resampled {
    name: String,
    points: usize,
    /// Window starts, epoch ms.
    ts: Vec<i64>,
    /// Window means, filled windows carrying the previous value.
    values: Vec<f64>,
    /// Whether each window was filled.
    filled: Vec<bool>,
}

fn resample(frames: Vec<DataFrame>, window: Duration) -> Result<Vec<Resampled>, BacktestError> {
    let window_ms = window.as_millis() as i64;
    let err = |error| BacktestError::Resample { window, error };
    let every = polars::prelude::Duration::try_parse(&format!("{window_ms}ms")).map_err(err)?;
    let zero = polars::prelude::Duration::try_parse("0ms").map_err(err)?;
    let all = concat(frames.into_iter().map(|d| d.lazy()).collect::<Vec<_>>(), UnionArgs::default()).map_err(err)?;
    let windows = all
        .sort(["series", "ts"], SortMultipleOptions::default())
        .group_by_dynamic(
            col("ts"),
            [col("series")],
            DynamicGroupOptions {
                every,
                period: every,
                offset: zero,
                label: Label::Left,
                include_boundaries: false,
                closed_window: ClosedWindow::Left,
                start_by: StartBy::WindowBound,
                ..Default::default()
            },
        )
        .agg([col("value").mean().alias("value"), col("value").count().cast(DataType::Int64).alias("points")])
        .sort(["series", "ts"], SortMultipleOptions::default())
        .collect()
        .map_err(err)?;
    // Refuse a resampling that would build an absurd number of windows (a tiny window.size on
    // a long history) before building it.
    let spans = windows
        .clone()
        .lazy()
        .group_by([col("series")])
        .agg([col("ts").min().alias("first"), col("ts").max().alias("last")])
        .select([col("series"), (col("last").cast(DataType::Int64) - col("first").cast(DataType::Int64)).alias("span")])
        .collect()
        .map_err(err)?;
    let span_names = spans.column("series").map_err(err)?.str().map_err(err)?;
    let span_ms = spans.column("span").map_err(err)?.i64().map_err(err)?;
    let mut total = 0usize;
    let mut longest = (0i64, String::new());
    for (name, span) in span_names.iter().zip(span_ms.iter()) {
        let span = span.unwrap_or(0);
        total = total.saturating_add((span / window_ms.max(1)) as usize + 1);
        if span >= longest.0 {
            longest = (span, name.unwrap_or_default().to_string());
        }
    }
    if total > MAX_WINDOWS {
        return Err(BacktestError::TooManyWindows {
            windows: total,
            window,
            series: longest.1,
            span: humantime::format_duration(Duration::from_millis(longest.0.max(0) as u64)).to_string(),
        });
    }
    let forward_fill = col("value").fill_null_with_strategy(FillNullStrategy::Forward(None)).over([col("series")]).map_err(err)?;
    let filled = windows
        .upsample_stable(["series"], "ts", every)
        .map_err(err)?
        .lazy()
        .with_columns([
            col("points").is_null().alias("filled"),
            forward_fill,
        ])
        .sort(["series", "ts"], SortMultipleOptions::default())
        .select([col("series"), col("ts").cast(DataType::Int64), col("value"), col("points").fill_null(lit(0i64)), col("filled")])
        .collect()
        .map_err(err)?;
    let names = filled.column("series").map_err(err)?.str().map_err(err)?;
    let ts = filled.column("ts").map_err(err)?.i64().map_err(err)?;
    let values = filled.column("value").map_err(err)?.f64().map_err(err)?;
    let points = filled.column("points").map_err(err)?.i64().map_err(err)?;
    let is_filled = filled.column("filled").map_err(err)?.bool().map_err(err)?;
    let mut out: Vec<Resampled> = Vec::new();
    for ((((name, t), v), n), f) in names.iter().zip(ts.iter()).zip(values.iter()).zip(points.iter()).zip(is_filled.iter()) {
        let (Some(name), Some(t), Some(v)) = (name, t, v) else { continue };
        if out.last().is_none_or(|s| s.name != name) {
            out.push(Resampled { name: name.to_string(), points: 0, ts: Vec::new(), values: Vec::new(), filled: Vec::new() });
        }
        let s = out.last_mut().expect("pushed above");
        s.points += n.unwrap_or(0).max(0) as usize;
        s.ts.push(t);
        s.values.push(v);
        s.filled.push(f.unwrap_or(false));
    }
    Ok(out)
}

/// Runs the backtest on `input` (a CSV or Parquet file, or a folder of them) with the window,
/// detector and forecast settings of `cfg`, and writes `report.md` and one chart per series into
/// `out` (created if needed).
pub fn run(input: &Path, out: &Path, cfg: &Config) -> Result<BacktestSummary, BacktestError> {
    let began = Instant::now();
    let files = input_files(input)?;
    let window = cfg.window.size;
    let window_ms = (window.as_millis() as i64).max(1);
    let mut frames = Vec::with_capacity(files.len());
    for f in &files {
        let df = read_file(f)?;
        tracing::info!(file = %f.display(), rows = df.height(), "read");
        frames.push(df);
    }
    if frames.iter().all(|d| d.height() == 0) {
        return Err(BacktestError::Empty { files: files.len() });
    }
    let resampled = resample(frames, window)?;

    let windows = |d: Duration| (d.as_millis() as i64 / window_ms).max(1) as usize;
    let fc = ForecastConfig { horizon: windows(cfg.forecast.horizon), max_period: windows(cfg.forecast.max_period) };
    let history = windows(cfg.forecast.history);
    let threshold = cfg.detector.anomaly_threshold;
    let mut detector = Detector::new(cfg.detector.model_config(cfg.window.size));

    std::fs::create_dir_all(out).map_err(|e| BacktestError::Write { path: out.to_path_buf(), message: e.to_string() })?;
    let mut chart_names = BTreeMap::new();
    let mut series = Vec::with_capacity(resampled.len());
    for (id, r) in resampled.iter().enumerate() {
        let mut scores = Vec::with_capacity(r.values.len());
        let mut anomalies = Vec::new();
        for ((&t, &v), &filled) in r.ts.iter().zip(&r.values).zip(&r.filled) {
            let s = if filled { None } else { detector.observe(id as u64, v) };
            if let Some(s) = &s {
                if s.score >= threshold {
                    anomalies.push(Anomaly { time_ms: t, value: v, expected: s.expected, lower: s.lower, upper: s.upper, score: s.score, z: s.z, part: s.part.name() });
                }
            }
            scores.push(s.map(|s| (s.lower, s.upper)));
        }
        let hist = &r.values[r.values.len().saturating_sub(history)..];
        let forecast = vigil_models::forecast(hist, &fc);
        let period = vigil_models::detect_period(hist, fc.max_period);
        let gaps_filled = r.filled.iter().filter(|f| **f).count();
        if gaps_filled * 2 > r.ts.len() {
            tracing::warn!(
                series = %r.name,
                "{gaps_filled} of {} windows had no data: the points are further apart than window.size ({}); \
                 backtest at the data's interval (a config file with [window] size, or VIGIL_WINDOW_SIZE)",
                r.ts.len(),
                humantime::format_duration(window)
            );
        }
        let chart = unique_file_name(&r.name, &mut chart_names);
        let last_window_ms = *r.ts.last().unwrap_or(&0);
        let summary = SeriesSummary {
            name: r.name.clone(),
            points: r.points,
            windows: r.ts.len(),
            gaps_filled,
            scored: scores.iter().filter(|s| s.is_some()).count(),
            anomalies,
            period,
            forecast,
            last_window_ms,
            chart,
        };
        let path = out.join(&summary.chart);
        chart::draw(&path, r, &scores, &summary, window_ms).map_err(|message| BacktestError::Write { path: path.clone(), message })?;
        tracing::info!(series = %summary.name, windows = summary.windows, filled = summary.gaps_filled, anomalies = summary.anomalies.len(), method = summary.forecast.method.name(), "backtested");
        series.push(summary);
    }
    let mut summary = BacktestSummary {
        inputs: files,
        window,
        threshold,
        forecast: fc,
        forecast_history: history,
        series,
        report: out.join("report.md"),
        elapsed: Duration::ZERO,
    };
    let text = render_report(&summary);
    std::fs::write(&summary.report, text).map_err(|e| BacktestError::Write { path: summary.report.clone(), message: e.to_string() })?;
    summary.elapsed = began.elapsed();
    Ok(summary)
}

#[cfg(test)]
mod tests;
