//! The engine's forecaster: each forecast series' recent windows, refits handed to the
//! background on their schedule, and the `forecasts` batch they produce.

use super::*;

/// One series' history, handed to a background refit.
#[derive(Debug, Clone)]
pub struct ForecastJob {
    /// Series id.
    pub series_id: u64,
    /// Series key.
    pub series: String,
    /// Metric name.
    pub name: String,
    /// Start of the last window in `values`, epoch ms.
    pub last_window_ms: i64,
    /// One value per window, oldest first (gaps carry the previous value).
    pub values: Vec<f64>,
    /// Upper limit to read the forecast against, if the metric has one.
    pub limit: Option<f64>,
}

/// One series' forecast history, as a checkpoint holds it (see [`Forecaster::export`]).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct History {
    series: String,
    name: String,
    last_window_ms: i64,
    values: std::collections::VecDeque<f64>,
}

/// Per-series history of the forecast metrics, fed from the `features` of each close (cheap),
/// and snapshots of it for refits, which run elsewhere (never on the window-close path).
#[derive(Debug)]
pub struct Forecaster {
    metrics: std::collections::HashMap<String, Option<f64>>,
    window_ms: i64,
    max_history: usize,
    refit_every_ms: i64,
    next_refit_ms: Option<i64>,
    series: std::collections::HashMap<u64, History>,
}

impl Forecaster {
    /// Forecasts `metrics` (name → optional upper limit) for windows of `window_ms`, keeping at
    /// most `max_history` windows per series and offering a refit every `refit_every_ms` of
    /// event time.
    pub fn new(metrics: impl IntoIterator<Item = (String, Option<f64>)>, window_ms: i64, max_history: usize, refit_every_ms: i64) -> Self {
        Self {
            metrics: metrics.into_iter().collect(),
            window_ms: window_ms.max(1),
            max_history: max_history.max(8),
            refit_every_ms: refit_every_ms.max(window_ms.max(1)),
            next_refit_ms: None,
            series: Default::default(),
        }
    }

    /// The histories of the series `keep` selects, for a checkpoint.
    pub fn export(&self, keep: &dyn Fn(u64) -> bool) -> Vec<(u64, History)> {
        self.series.iter().filter(|(id, _)| keep(**id)).map(|(id, h)| (*id, h.clone())).collect()
    }

    /// The histories of every series `part_of` places in one of `n` parts, in one pass.
    pub fn export_split(&self, part_of: &(dyn Fn(u64) -> Option<usize> + Sync), n: usize) -> Vec<Vec<(u64, History)>> {
        let mut parts: Vec<Vec<(u64, History)>> = (0..n).map(|_| Vec::new()).collect();
        for (id, h) in &self.series {
            if let Some(part) = part_of(*id).and_then(|i| parts.get_mut(i)) {
                part.push((*id, h.clone()));
            }
        }
        parts
    }

    /// Takes histories from a checkpoint (replacing what is held for those series).
    pub fn import(&mut self, series: Vec<(u64, History)>) {
        self.series.extend(series);
    }

    /// Forgets the series `drop` selects.
    pub fn forget(&mut self, drop: &dyn Fn(u64) -> bool) {
        self.series.retain(|id, _| !drop(*id));
    }

    /// Event time of the next refit (`None` before any value), for a checkpoint.
    pub fn next_refit(&self) -> Option<i64> {
        self.next_refit_ms
    }

    /// Restores the event time of the next refit.
    pub fn set_next_refit(&mut self, at: Option<i64>) {
        if at.is_some() {
            self.next_refit_ms = at;
        }
    }

    /// Whether any metric is forecast.
    pub fn enabled(&self) -> bool {
        !self.metrics.is_empty()
    }

    /// Series with history.
    pub fn series(&self) -> usize {
        self.series.len()
    }

    /// Adds the `feature` value of every forecast metric's row of a `features` batch.
    pub fn observe(&mut self, features: &arrow::array::RecordBatch, feature: &str) {
        use arrow::array::{Array, AsArray};
        use arrow::datatypes::{Float64Type, TimestampMillisecondType, UInt64Type};
        if self.metrics.is_empty() || features.num_rows() == 0 {
            return;
        }
        let (Some(ids), Some(series), Some(names), Some(ws), Some(vals)) = (
            features.column_by_name("series_id").and_then(|c| c.as_primitive_opt::<UInt64Type>()),
            features.column_by_name("series").and_then(|c| c.as_string_opt::<i32>()),
            features.column_by_name("name").and_then(|c| c.as_string_opt::<i32>()),
            features.column_by_name("window_start").and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>()),
            features.column_by_name(feature).and_then(|c| c.as_primitive_opt::<Float64Type>()),
        ) else {
            return;
        };
        for i in 0..features.num_rows() {
            if !self.metrics.contains_key(names.value(i)) || vals.is_null(i) {
                continue;
            }
            let h = self.series.entry(ids.value(i)).or_insert_with(|| History {
                series: series.value(i).to_string(),
                name: names.value(i).to_string(),
                last_window_ms: i64::MIN,
                values: Default::default(),
            });
            let t = ws.value(i);
            if h.last_window_ms != i64::MIN {
                if t <= h.last_window_ms {
                    continue;
                }
                // Windows without a value carry the previous one (at most a day of them).
                let gap = ((t - h.last_window_ms) / self.window_ms - 1).clamp(0, 8_640) as usize;
                let prev = h.values.back().copied().unwrap_or(vals.value(i));
                for _ in 0..gap {
                    h.values.push_back(prev);
                }
            }
            h.values.push_back(vals.value(i));
            while h.values.len() > self.max_history {
                h.values.pop_front();
            }
            h.last_window_ms = t;
            self.next_refit_ms.get_or_insert(t + self.refit_every_ms);
        }
    }

    /// Capacity signals from a linear trend, checked at every close for the series with a
    /// limit that got a window at or after `since_ms` (Prometheus' `predict_linear`, with a 95%
    /// prediction interval): cheap and immediate, so a steady climb is decided without waiting
    /// for the next model refit. The trend is fitted over the last `horizon` windows (at least 30).
    pub fn trend_signals(&self, since_ms: i64, horizon: usize) -> Vec<crate::Signal> {
        let mut out = Vec::new();
        for (id, h) in &self.series {
            if h.last_window_ms < since_ms {
                continue;
            }
            let Some(Some(limit)) = self.metrics.get(&h.name) else { continue };
            let n = h.values.len().min(horizon.max(30));
            if n < 30 {
                continue;
            }
            let y: Vec<f64> = h.values.range(h.values.len() - n..).copied().collect();
            let Some(c) = crate::incident::linear_crossing(&y, *limit, horizon) else { continue };
            let at = |step: usize| h.last_window_ms + step as i64 * self.window_ms;
            let made = h.last_window_ms + self.window_ms;
            out.push(crate::incident::capacity_signal(
                *id,
                &h.series,
                made,
                c.next,
                *limit,
                crate::CapacityForecast { limit: *limit, expected_ms: c.expected.map(at), earliest_ms: at(c.earliest), latest_ms: c.latest.map(at), method: "linear_trend".into() },
            ));
        }
        out
    }

    /// When a refit is due at event time `now_ms`: a snapshot of every series' history.
    pub fn due(&mut self, now_ms: i64) -> Option<Vec<ForecastJob>> {
        let next = self.next_refit_ms?;
        if now_ms < next {
            return None;
        }
        self.next_refit_ms = Some(now_ms + self.refit_every_ms);
        Some(
            self.series
                .iter()
                .map(|(id, h)| ForecastJob {
                    series_id: *id,
                    series: h.series.clone(),
                    name: h.name.clone(),
                    last_window_ms: h.last_window_ms,
                    values: h.values.iter().copied().collect(),
                    limit: self.metrics.get(&h.name).copied().flatten(),
                })
                .collect(),
        )
    }

    /// Moves the next refit forward to now (a change point was seen: the fitted model describes
    /// a level the series has left). Returns whether `series_id` is forecast at all.
    pub fn refit_soon(&mut self, series_id: u64) -> bool {
        if !self.series.contains_key(&series_id) {
            return false;
        }
        if let Some(next) = self.next_refit_ms.as_mut() {
            *next = i64::MIN;
        }
        true
    }

    /// Window length, ms.
    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }
}

/// The schema of the `forecasts` table: one row per series and step ahead.
pub fn forecasts_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()));
    std::sync::Arc::new(Schema::new(vec![
        Field::new("made_at", ts(), false),
        Field::new("series_id", DataType::UInt64, false),
        Field::new("series", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("method", DataType::Utf8, false),
        Field::new("period", DataType::Int64, true),
        Field::new("step", DataType::Int64, false),
        Field::new("ts", ts(), false),
        Field::new("point", DataType::Float64, false),
        Field::new("lower_80", DataType::Float64, false),
        Field::new("upper_80", DataType::Float64, false),
        Field::new("lower_95", DataType::Float64, false),
        Field::new("upper_95", DataType::Float64, false),
        Field::new("limit", DataType::Float64, true),
        Field::new("crosses_earliest", ts(), true),
        Field::new("crosses_expected", ts(), true),
        Field::new("crosses_latest", ts(), true),
    ]))
}

/// Fits every job (the slow part: run it off the window-close path) into `forecasts` rows.
pub fn run_forecasts(jobs: &[ForecastJob], cfg: &ForecastConfig, window_ms: i64) -> crate::Result<arrow::array::RecordBatch> {
    use arrow::array::{ArrayRef, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder, UInt64Builder};
    let ts = || TimestampMillisecondBuilder::new().with_timezone("+00:00");
    let (mut made, mut id, mut series, mut name, mut method, mut period, mut step, mut at) =
        (ts(), UInt64Builder::new(), StringBuilder::new(), StringBuilder::new(), StringBuilder::new(), Int64Builder::new(), Int64Builder::new(), ts());
    let (mut point, mut l80, mut u80, mut l95, mut u95, mut limit) =
        (Float64Builder::new(), Float64Builder::new(), Float64Builder::new(), Float64Builder::new(), Float64Builder::new(), Float64Builder::new());
    let (mut c_early, mut c_exp, mut c_late) = (ts(), ts(), ts());
    for j in jobs {
        if j.values.is_empty() {
            continue;
        }
        let f = forecast(&j.values, cfg);
        let last = *j.values.last().expect("not empty");
        let crossing = j.limit.and_then(|l| time_to_threshold(&f, last, l));
        let at_step = |s: usize| j.last_window_ms + s as i64 * window_ms;
        for k in 0..f.point.len() {
            made.append_value(j.last_window_ms + window_ms);
            id.append_value(j.series_id);
            series.append_value(&j.series);
            name.append_value(&j.name);
            method.append_value(f.method.name());
            period.append_option(f.period.map(|p| p as i64));
            step.append_value(k as i64 + 1);
            at.append_value(at_step(k + 1));
            point.append_value(f.point[k]);
            l80.append_value(f.lower_80[k]);
            u80.append_value(f.upper_80[k]);
            l95.append_value(f.lower_95[k]);
            u95.append_value(f.upper_95[k]);
            limit.append_option(j.limit);
            c_early.append_option(crossing.map(|c| at_step(c.earliest)));
            c_exp.append_option(crossing.and_then(|c| c.expected).map(at_step));
            c_late.append_option(crossing.and_then(|c| c.latest).map(at_step));
        }
    }
    let cols: Vec<ArrayRef> = vec![
        std::sync::Arc::new(made.finish()),
        std::sync::Arc::new(id.finish()),
        std::sync::Arc::new(series.finish()),
        std::sync::Arc::new(name.finish()),
        std::sync::Arc::new(method.finish()),
        std::sync::Arc::new(period.finish()),
        std::sync::Arc::new(step.finish()),
        std::sync::Arc::new(at.finish()),
        std::sync::Arc::new(point.finish()),
        std::sync::Arc::new(l80.finish()),
        std::sync::Arc::new(u80.finish()),
        std::sync::Arc::new(l95.finish()),
        std::sync::Arc::new(u95.finish()),
        std::sync::Arc::new(limit.finish()),
        std::sync::Arc::new(c_early.finish()),
        std::sync::Arc::new(c_exp.finish()),
        std::sync::Arc::new(c_late.finish()),
    ];
    Ok(arrow::array::RecordBatch::try_new(forecasts_schema(), cols)?)
}
