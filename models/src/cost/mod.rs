//! Cost: spend against its expectation (`cost_drift`), against its budget (`budgets`), and
//! against what it buys (`efficiency`).
//!
//! Cost rows (FOCUS rows from a topic, and OpenCost-style hourly cost metrics turned into
//! spend) land in hourly buckets by charge period; a row covering several hours (a daily
//! export) is spread evenly over them. Cost runs on its own clock: an hour closes once rows
//! whose charge period ends `allowed_lag` after it have been seen (or, when the cost stream has
//! stopped, once the metrics' event time is `max_delay` past it), so cost never holds back the
//! metrics' watermark and metrics never hold back cost. A row for an hour that has closed is
//! late: it is returned to the caller for the late topic, with the reason.
//!
//! When an hour closes, every tracked scope value (`service=checkout`, `team=commerce`, ...)
//! gets a `cost_drift` row: the actual spend, the expected spend from the forecaster (MSTL with
//! daily and weekly seasonality over the scope's hourly history, refitted once a day), the
//! impact (actual - expected) and impact % (impact / expected × 100, AWS Cost Anomaly
//! Detection's definitions), and the root causes: the dimension values whose spend moved most,
//! each with its share of the impact. Each closed day gets a daily row the same way. An impact
//! above both the absolute and the percentage threshold is a `cost.anomaly` signal. Budgets and
//! efficiency are computed at the same close (the `budget` and `efficiency` modules).

mod budget;
mod config;
mod drift;
mod efficiency;
mod tables;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMillisecondType};
use serde::{Deserialize, Serialize};

pub use budget::{project, BudgetRow, Projection};
pub use config::{budget_period, BudgetConfig, CostConfig, EfficiencyConfig};
pub use drift::{impact, root_causes, DriftRow, RootCause};
pub use efficiency::{EfficiencyRow, ResourceUse};
pub use tables::{budgets_batch, budgets_schema, cost_drift_batch, cost_drift_schema, efficiency_batch, efficiency_schema};

use crate::{Result, Signal};

/// One hour, in ms.
pub const HOUR_MS: i64 = 3_600_000;
/// History kept per scope value: six weeks of hours.
pub const MAX_HISTORY_HOURS: usize = 6 * 7 * 24;
/// A forecast is refitted after this many hours.
const REFIT_HOURS: i64 = 24;
/// Hours a forecast covers (budgets read it to the end of the month).
const FORECAST_HOURS: usize = 33 * 24;

/// A cost row: its charge period, the analysed cost, and its dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct CostRow {
    /// Charge period start, epoch ms.
    pub start_ms: i64,
    /// Charge period end, epoch ms (exclusive).
    pub end_ms: i64,
    /// The analysed cost.
    pub cost: f64,
    /// Dimension name → value: `account`, `resource`, `resource_id`, `region`,
    /// `cloud_service`, `category`, and every tag.
    pub dims: BTreeMap<String, String>,
}

impl CostRow {
    /// The value of a dimension (`all` is always `all`).
    pub fn dim(&self, name: &str) -> Option<&str> {
        if name == "all" {
            return Some("all");
        }
        self.dims.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// The rows of a batch in the `costs` schema (see `vigil_ingest::costs_schema`).
pub fn cost_rows(batch: &RecordBatch) -> Result<Vec<CostRow>> {
    let col = |n: &str| batch.column_by_name(n).ok_or_else(|| crate::Error::Input(format!("cost rows need a `{n}` column")));
    let start = col("charge_start")?.as_primitive_opt::<TimestampMillisecondType>().ok_or_else(|| crate::Error::Input("charge_start must be a timestamp".into()))?;
    let end = col("charge_end")?.as_primitive_opt::<TimestampMillisecondType>().ok_or_else(|| crate::Error::Input("charge_end must be a timestamp".into()))?;
    let cost = col("cost")?.as_primitive_opt::<Float64Type>().ok_or_else(|| crate::Error::Input("cost must be a double".into()))?;
    let text: Vec<(&str, arrow::array::StringArray)> = [
        ("cloud_service", "service_name"),
        ("category", "service_category"),
        ("resource_id", "resource_id"),
        ("resource", "resource_name"),
        ("region", "region"),
        ("account", "account"),
    ]
    .iter()
    .filter_map(|(dim, c)| batch.column_by_name(c).and_then(|a| a.as_string_opt::<i32>().cloned()).map(|a| (*dim, a)))
    .collect();
    let tags = batch.column_by_name("tags").and_then(|c| c.as_map_opt().cloned());
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut dims = BTreeMap::new();
        if let Some(t) = &tags {
            let e = t.value(i);
            let (k, v) = (e.column(0).as_string::<i32>(), e.column(1).as_string::<i32>());
            for j in 0..e.len() {
                if !v.is_null(j) {
                    dims.insert(k.value(j).to_string(), v.value(j).to_string());
                }
            }
        }
        for (dim, a) in &text {
            if !a.is_null(i) {
                dims.insert(dim.to_string(), a.value(i).to_string());
            }
        }
        // The resource is its name, else its id.
        if !dims.contains_key("resource") {
            if let Some(id) = dims.get("resource_id").cloned() {
                dims.insert("resource".into(), id);
            }
        }
        out.push(CostRow { start_ms: start.value(i), end_ms: end.value(i), cost: cost.value(i), dims });
    }
    Ok(out)
}

/// The spend of one scope value in one hour, with its parts by root-cause dimension.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ScopeHour {
    total: f64,
    /// `dimension=value` → spend.
    parts: BTreeMap<String, f64>,
}

/// An open hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Hour {
    /// `scope=value` → its spend.
    scopes: BTreeMap<String, ScopeHour>,
    /// Resource → (spend, service).
    resources: BTreeMap<String, (f64, Option<String>)>,
    rows: u64,
}

/// A fitted forecast of a scope's hourly spend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Model {
    /// The first hour it forecasts, epoch ms.
    origin_ms: i64,
    point: Vec<f64>,
    lower_80: Vec<f64>,
    upper_80: Vec<f64>,
    lower_95: Vec<f64>,
    upper_95: Vec<f64>,
    method: String,
}

impl Model {
    fn at(&self, t_ms: i64) -> Option<usize> {
        let k = (t_ms - self.origin_ms).div_euclid(HOUR_MS);
        (k >= 0 && (k as usize) < self.point.len()).then_some(k as usize)
    }
}

/// A day being accumulated for its daily row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Day {
    start_ms: i64,
    actual: f64,
    expected: f64,
    expected_hours: u32,
    sigma2: f64,
    parts: BTreeMap<String, f64>,
}

/// One tracked scope value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ScopeSeries {
    /// Hourly spend, oldest first; the last is the hour at `last_hour_ms`.
    history: VecDeque<f64>,
    last_hour_ms: i64,
    model: Option<Model>,
    /// Exponentially weighted spend per part (a week's half-life), for root-cause baselines.
    shares: BTreeMap<String, f64>,
    share_total: f64,
    /// Recent residuals (actual - expected), newest last.
    residuals: VecDeque<f64>,
    day: Option<Day>,
}

impl ScopeSeries {
    /// Spend in the closed hours of [from, to), epoch ms.
    fn spend_between(&self, from: i64, to: i64) -> f64 {
        let n = self.history.len() as i64;
        (0..n)
            .filter_map(|k| {
                let t = self.last_hour_ms - (n - 1 - k) * HOUR_MS;
                (t >= from && t < to).then(|| self.history[k as usize]).filter(|v| v.is_finite())
            })
            .sum()
    }
}

/// Per-budget state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct BudgetState {
    period_start: i64,
    exhausted_ms: Option<i64>,
}

/// The cost analysis' state, checkpointed as one section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CostState {
    open: BTreeMap<i64, Hour>,
    /// Newest charge period end seen, epoch ms.
    newest_end: Option<i64>,
    /// Every hour before this has closed.
    closed_until: Option<i64>,
    series: BTreeMap<String, ScopeSeries>,
    budgets: BTreeMap<String, BudgetState>,
    resources: BTreeMap<String, efficiency::ResourceState>,
    /// Utilisation per hour and resource, from the metrics.
    usage: BTreeMap<i64, BTreeMap<String, ResourceUse>>,
}

/// What closing cost hours produced.
#[derive(Debug, Default)]
pub struct CostOutput {
    /// Hours closed.
    pub hours: usize,
    /// `cost_drift` rows.
    pub drift: Vec<DriftRow>,
    /// `budgets` rows.
    pub budgets: Vec<BudgetRow>,
    /// `efficiency` rows.
    pub efficiency: Vec<EfficiencyRow>,
    /// Signals for the correlator.
    pub signals: Vec<Signal>,
}

/// Cost rows in, cost drift, budgets, efficiency and their signals out.
#[derive(Debug)]
pub struct CostEngine {
    cfg: CostConfig,
    state: CostState,
}

impl CostEngine {
    /// An engine with nothing seen.
    pub fn new(cfg: CostConfig) -> Self {
        Self { cfg, state: CostState::default() }
    }

    /// Its settings.
    pub fn config(&self) -> &CostConfig {
        &self.cfg
    }

    /// The scopes tracked: the configured ones and the budgets'.
    fn scopes(&self) -> Vec<String> {
        let mut s = self.cfg.scopes.clone();
        for b in &self.cfg.budgets {
            if !s.contains(&b.scope) {
                s.push(b.scope.clone());
            }
        }
        s
    }

    /// Adds rows to their hours. Returns the indices of the rows that were late (their first
    /// hour had closed): they are not counted.
    pub fn push(&mut self, rows: &[CostRow]) -> Vec<usize> {
        let scopes = self.scopes();
        let mut late = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            if !(r.end_ms > r.start_ms && r.cost.is_finite()) {
                late.push(i);
                continue;
            }
            let first = r.start_ms.div_euclid(HOUR_MS) * HOUR_MS;
            if self.state.closed_until.is_some_and(|c| first < c) {
                late.push(i);
                continue;
            }
            let span = (r.end_ms - r.start_ms) as f64;
            let mut h = first;
            while h < r.end_ms {
                let overlap = (r.end_ms.min(h + HOUR_MS) - r.start_ms.max(h)) as f64;
                let amount = r.cost * overlap / span;
                let hour = self.state.open.entry(h).or_default();
                hour.rows += 1;
                for scope in &scopes {
                    let Some(v) = r.dim(scope) else { continue };
                    let sh = hour.scopes.entry(format!("{scope}={v}")).or_default();
                    sh.total += amount;
                    for d in &self.cfg.root_cause_dimensions {
                        if d != scope {
                            if let Some(dv) = r.dim(d) {
                                *sh.parts.entry(format!("{d}={dv}")).or_default() += amount;
                            }
                        }
                    }
                }
                if let Some(res) = r.dim("resource") {
                    let e = hour.resources.entry(res.to_string()).or_insert((0.0, None));
                    e.0 += amount;
                    if e.1.is_none() {
                        e.1 = r.dim("service").map(str::to_string);
                    }
                }
                h += HOUR_MS;
            }
            self.state.newest_end = Some(self.state.newest_end.map_or(r.end_ms, |e| e.max(r.end_ms)));
        }
        late
    }

    /// Notes utilisation from the metrics (see the `efficiency` module).
    pub fn observe_usage(&mut self, hour_ms: i64, resource: &str, service: Option<&str>, u: ResourceUse) {
        let hour = hour_ms.div_euclid(HOUR_MS) * HOUR_MS;
        if self.state.closed_until.is_some_and(|c| hour < c) {
            return;
        }
        let e = self.state.usage.entry(hour).or_default().entry(resource.to_string()).or_default();
        e.merge(&u);
        if e.service.is_none() {
            e.service = service.map(str::to_string);
        }
    }

    /// Reads the cost and utilisation metrics of a `features` batch: a metric in `cost.metrics`
    /// (a cost per hour) adds `mean × window / 1 h` of spend at its window, with its labels as
    /// dimensions (`node` or `instance`, else the resource label, is the resource; the metric's
    /// name is the `cloud_service`); the efficiency metrics add utilisation to their resource's
    /// hour. `correlate_by` names the labels that give a resource's service. Returns how many
    /// cost points fell in hours that had already closed on the cost clock (not counted).
    pub fn observe_metrics(&mut self, features: &RecordBatch, correlate_by: &[String]) -> Result<usize> {
        let e = self.cfg.efficiency.clone();
        let usage_metrics: Vec<&str> =
            [&e.cpu_utilization, &e.cpu_used, &e.cpu_allocated, &e.memory_used, &e.memory_allocated].into_iter().flatten().map(String::as_str).collect();
        if features.num_rows() == 0 || (self.cfg.metrics.is_empty() && usage_metrics.is_empty()) {
            return Ok(0);
        }
        let col = |n: &str| features.column_by_name(n).ok_or_else(|| crate::Error::Input(format!("cost needs the feature column `{n}`")));
        let name = col("name")?.as_string::<i32>().clone();
        let series = col("series")?.as_string::<i32>().clone();
        let start = col("window_start")?.as_primitive::<TimestampMillisecondType>().clone();
        let end = col("window_end")?.as_primitive::<TimestampMillisecondType>().clone();
        let mean = col("mean")?.as_primitive::<Float64Type>().clone();
        let mut rows = Vec::new();
        for i in 0..features.num_rows() {
            let n = name.value(i);
            let is_cost = self.cfg.metrics.iter().any(|m| m == n);
            let is_usage = usage_metrics.contains(&n);
            if !(is_cost || is_usage) || mean.is_null(i) || !mean.value(i).is_finite() {
                continue;
            }
            let labels = crate::decision::parse_series_key(series.value(i)).1;
            let v = mean.value(i);
            if is_cost {
                let mut dims: BTreeMap<String, String> = labels.clone();
                dims.insert("cloud_service".into(), n.to_string());
                if let Some(r) = labels.get("node").or_else(|| labels.get("instance")).or_else(|| labels.get(&e.resource_label)) {
                    dims.insert("resource".into(), r.clone());
                }
                if let Some(svc) = correlate_by.iter().find_map(|l| labels.get(l)) {
                    dims.entry("service".into()).or_insert_with(|| svc.clone());
                }
                let (s, t) = (start.value(i), end.value(i));
                rows.push(CostRow { start_ms: s, end_ms: t, cost: v * (t - s) as f64 / HOUR_MS as f64, dims });
            }
            if is_usage {
                let Some(res) = labels.get(&e.resource_label) else { continue };
                let svc = correlate_by.iter().find_map(|l| labels.get(l)).map(String::as_str);
                let one = (v, 1);
                let mut u = ResourceUse::default();
                for (m, slot) in [
                    (&e.cpu_utilization, &mut u.cpu_utilization),
                    (&e.cpu_used, &mut u.cpu_used),
                    (&e.cpu_allocated, &mut u.cpu_allocated),
                    (&e.memory_used, &mut u.memory_used),
                    (&e.memory_allocated, &mut u.memory_allocated),
                ] {
                    if m.as_deref() == Some(n) {
                        *slot = one;
                    }
                }
                self.observe_usage(start.value(i), res, svc, u);
            }
        }
        Ok(if rows.is_empty() { 0 } else { self.push(&rows).len() })
    }

    /// The time up to which cost hours may close, given the metrics' event time.
    fn clock(&self, metrics_now: Option<i64>) -> Option<i64> {
        let by_rows = self.state.newest_end.map(|e| e - self.cfg.allowed_lag.as_millis() as i64);
        let by_metrics = metrics_now.map(|m| m - self.cfg.max_delay.as_millis() as i64);
        by_rows.max(by_metrics)
    }

    /// Whether an hour can close.
    pub fn ready(&self, metrics_now: Option<i64>) -> bool {
        match (self.state.open.keys().next(), self.clock(metrics_now)) {
            (Some(h), Some(c)) => h + HOUR_MS <= c,
            _ => false,
        }
    }

    /// Closes the hours the cost clock has passed. `now_ms` is the event time decisions are
    /// made at (the metrics' watermark, when there is one): signals stay active for an hour
    /// and the lateness after it, until the next hour can confirm or clear them.
    pub fn close_ready(&mut self, metrics_now: Option<i64>) -> CostOutput {
        let mut out = CostOutput::default();
        let Some(clock) = self.clock(metrics_now) else { return out };
        let ready: Vec<i64> = self.state.open.keys().copied().take_while(|h| h + HOUR_MS <= clock).collect();
        for h in ready {
            let hour = self.state.open.remove(&h).unwrap_or_default();
            let now = metrics_now.unwrap_or(h + HOUR_MS).max(h + HOUR_MS);
            self.close_hour(h, hour, now, &mut out);
            self.state.closed_until = Some(h + HOUR_MS);
            out.hours += 1;
        }
        // Utilisation of hours that can no longer be matched with cost.
        if let Some(c) = self.state.closed_until {
            self.state.usage.retain(|h, _| *h >= c - 2 * HOUR_MS);
        }
        out
    }

    /// How long a cost signal keeps its incident open after it is made.
    fn hold_ms(&self) -> i64 {
        HOUR_MS + self.cfg.allowed_lag.as_millis() as i64 + 10 * 60_000
    }

    fn close_hour(&mut self, h: i64, hour: Hour, now: i64, out: &mut CostOutput) {
        let hold = self.hold_ms();
        // An hour more than `max_delay` behind the decision clock is backfill (history loaded
        // at start, a late export): it gets its rows, but no signals: nobody should act on it.
        let backfill = now - (h + HOUR_MS) > self.cfg.max_delay.as_millis() as i64;
        let signals_before = out.signals.len();
        let min_history = (self.cfg.min_history.as_millis() as i64 / HOUR_MS).max(8) as usize;
        // Every scope value seen in the last week gets a row (no rows this hour = no spend).
        let mut keys: Vec<String> = hour.scopes.keys().cloned().collect();
        for (k, s) in &self.state.series {
            if !hour.scopes.contains_key(k) && h - s.last_hour_ms <= 7 * 24 * HOUR_MS {
                keys.push(k.clone());
            }
        }
        keys.sort();
        for key in keys {
            let sh = hour.scopes.get(&key).cloned().unwrap_or_default();
            let s = self.state.series.entry(key.clone()).or_default();
            drift::close_series(&self.cfg, &key, s, h, &sh, min_history, now, hold, out);
        }
        // Bound the number of scope values: drop the least recently seen.
        if self.state.series.len() > self.cfg.max_series {
            let mut by_age: Vec<(i64, String)> = self.state.series.iter().map(|(k, s)| (s.last_hour_ms, k.clone())).collect();
            by_age.sort();
            let extra = self.state.series.len() - self.cfg.max_series;
            for (_, k) in by_age.into_iter().take(extra) {
                self.state.series.remove(&k);
            }
        }
        for b in &self.cfg.budgets {
            let key = format!("{}={}", b.scope, if b.scope == "all" { "all" } else { &b.value });
            let Some(s) = self.state.series.get(&key) else { continue };
            let st = self.state.budgets.entry(b.name.clone()).or_default();
            if let Some(row) = budget::close_budget(b, s, st, h, now, hold, &mut out.signals) {
                out.budgets.push(row);
            }
        }
        let usage = self.state.usage.remove(&h).unwrap_or_default();
        efficiency::close_hour(&self.cfg.efficiency, &mut self.state.resources, h, &hour.resources, &usage, now, hold, out);
        if backfill {
            out.signals.truncate(signals_before);
        }
    }

    /// The state, for a checkpoint.
    pub fn export(&self) -> CostState {
        self.state.clone()
    }

    /// Restores a checkpoint's state (replacing what is held: cost state is global).
    pub fn import(&mut self, state: CostState) {
        self.state = state;
    }

    /// Every hour before this has closed (the cost clock's progress).
    pub fn closed_until(&self) -> Option<i64> {
        self.state.closed_until
    }

    /// Scope values tracked.
    pub fn series(&self) -> usize {
        self.state.series.len()
    }
}

/// The series key of a scope value in tables and signals: `cost{service="checkout"}`.
pub fn scope_series(name: &str, key: &str) -> String {
    let (scope, value) = key.split_once('=').unwrap_or((key, ""));
    format!("{name}{{{scope}=\"{value}\"}}")
}
