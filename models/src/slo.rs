//! Service level objectives: error budgets and multiwindow, multi-burn-rate alerts (the SRE
//! workbook's).
//!
//! An SLO (`[[slo]]`) names a service, an objective (e.g. 99.9%) over a period (30 days) and
//! its indicator, one of:
//! - `good` or `bad`, with `total`: counts per window (requests under a latency threshold from a
//!   histogram bucket, errors, requests); each window adds `mean × count` of each metric;
//! - `ratio`: a bad-event ratio per window (an error rate), each series' window one slice;
//! - `metric` with `threshold`: windows-based, each series' window is good when the metric (a
//!   latency quantile, say) is at or under the threshold.
//!
//! Burn rate over a window = bad ratio over it / (1 - objective). Alerts fire only when both
//! windows of a pair burn faster than the rate: page at 14.4 (1 h and 5 m) or 6 (6 h and 30 m),
//! ticket at 1 (3 d and 6 h). The windows scale with the period (period / 30 days), as Pyrra
//! does; a window is judged once a tenth of it holds data. Error budget remaining = 1 - bad
//! ratio over the period / (1 - objective) × (time held / period, at most 1): errors so far
//! against what the whole period allows.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType};
use serde::{Deserialize, Serialize};

use crate::decision::parse_series_key;
use crate::{Result, Signal};

/// `[[slo]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    /// Name.
    pub name: String,
    /// The service (a value of one of `incidents.correlate_by`'s labels).
    pub service: String,
    /// Objective, percent (99.9).
    pub objective: f64,
    /// Period.
    #[serde(default = "thirty_days", with = "humantime_serde")]
    pub period: Duration,
    /// Windows-based indicator: this metric...
    #[serde(default)]
    pub metric: Option<String>,
    /// ...at or under this is good.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// A bad-event ratio per window.
    #[serde(default)]
    pub ratio: Option<String>,
    /// Good events (counts).
    #[serde(default)]
    pub good: Option<String>,
    /// Bad events (counts).
    #[serde(default)]
    pub bad: Option<String>,
    /// All events (counts).
    #[serde(default)]
    pub total: Option<String>,
}

fn thirty_days() -> Duration {
    Duration::from_secs(30 * 86_400)
}

impl SloConfig {
    /// Checks one SLO; the error is (problem, fix).
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        if !(self.objective > 0.0 && self.objective < 100.0) {
            return Err((format!("slo `{}`: objective {} is not a percentage between 0 and 100", self.name, self.objective), "e.g. objective = 99.9".into()));
        }
        if self.period.as_secs() < 3600 {
            return Err((format!("slo `{}`: period shorter than an hour", self.name), "e.g. period = \"30d\"".into()));
        }
        let kinds = [self.metric.is_some(), self.ratio.is_some(), self.good.is_some() || self.bad.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err((format!("slo `{}` needs exactly one indicator", self.name), "set metric + threshold, or ratio, or good/bad + total".into()));
        }
        if self.metric.is_some() && self.threshold.is_none() {
            return Err((format!("slo `{}`: metric without threshold", self.name), "add threshold = <value that is still good>".into()));
        }
        if (self.good.is_some() || self.bad.is_some()) && (self.total.is_none() || (self.good.is_some() && self.bad.is_some())) {
            return Err((format!("slo `{}`: counts need one of good or bad, and total", self.name), "set good (or bad) and total".into()));
        }
        Ok(())
    }

    fn budget(&self) -> f64 {
        1.0 - self.objective / 100.0
    }

    /// Window `base` scaled to the period.
    fn window(&self, base_ms: i64) -> i64 {
        ((base_ms as f64) * self.period.as_secs_f64() / (30.0 * 86_400.0)).max(60_000.0) as i64
    }
}

/// Burn rate: bad ratio / (1 - objective).
pub fn burn_rate(bad: f64, total: f64, objective_percent: f64) -> Option<f64> {
    (total > 0.0).then(|| (bad / total) / (1.0 - objective_percent / 100.0))
}

/// The alert pairs: (severity, long window, short window, burn rate), 30-day bases.
pub const ALERTS: [(&str, i64, i64, f64); 3] = [("page", 3_600_000, 300_000, 14.4), ("page", 6 * 3_600_000, 1_800_000, 6.0), ("ticket", 3 * 86_400_000, 6 * 3_600_000, 1.0)];

/// Which alert fires given the burn rate over each window (ms → rate), the first that does.
pub fn alert(burn: &dyn Fn(i64) -> Option<f64>, scale: &dyn Fn(i64) -> i64) -> Option<(&'static str, i64, i64, f64)> {
    ALERTS.iter().copied().find(|(_, long, short, rate)| {
        let (l, s) = (burn(scale(*long)), burn(scale(*short)));
        l.is_some_and(|l| l > *rate) && s.is_some_and(|s| s > *rate)
    })
}

/// Per-minute and per-hour sums of bad and total events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SloState {
    /// (minute start, bad, total), oldest first.
    minutes: VecDeque<(i64, f64, f64)>,
    /// (hour start, bad, total), oldest first.
    hours: VecDeque<(i64, f64, f64)>,
}

fn add(q: &mut VecDeque<(i64, f64, f64)>, at: i64, bad: f64, total: f64) {
    match q.iter_mut().rev().find(|e| e.0 == at) {
        Some(e) => {
            e.1 += bad;
            e.2 += total;
        }
        None => {
            let pos = q.iter().rposition(|e| e.0 < at).map_or(0, |p| p + 1);
            q.insert(pos, (at, bad, total));
        }
    }
}

impl SloState {
    /// Adds events at `t_ms`.
    pub fn add(&mut self, t_ms: i64, bad: f64, total: f64) {
        add(&mut self.minutes, t_ms.div_euclid(60_000) * 60_000, bad, total);
        add(&mut self.hours, t_ms.div_euclid(3_600_000) * 3_600_000, bad, total);
    }

    /// Since when events are held (the oldest bucket), epoch ms.
    pub fn since(&self) -> Option<i64> {
        match (self.minutes.front(), self.hours.front()) {
            (Some(m), Some(h)) => Some(m.0.min(h.0)),
            (m, h) => m.or(h).map(|e| e.0),
        }
    }

    /// (bad, total) over [now - window, now).
    pub fn sums(&self, now: i64, window: i64) -> (f64, f64) {
        let from = now - window;
        let src = if window <= 3 * 86_400_000 + 60_000 { &self.minutes } else { &self.hours };
        src.iter().filter(|e| e.0 >= from && e.0 < now).fold((0.0, 0.0), |a, e| (a.0 + e.1, a.1 + e.2))
    }

    fn trim(&mut self, now: i64, minutes_ms: i64, hours_ms: i64) {
        while self.minutes.front().is_some_and(|e| e.0 < now - minutes_ms) {
            self.minutes.pop_front();
        }
        while self.hours.front().is_some_and(|e| e.0 < now - hours_ms) {
            self.hours.pop_front();
        }
    }
}

/// One evaluation of an SLO (a row of `slo`).
#[derive(Debug, Clone, PartialEq)]
pub struct SloRow {
    /// Evaluated at, epoch ms.
    pub at_ms: i64,
    /// SLO name.
    pub slo: String,
    /// Service.
    pub service: String,
    /// Objective, percent.
    pub objective: f64,
    /// Good share over the history held (at most the period), percent.
    pub sli: Option<f64>,
    /// Burn rates over 5m, 30m, 1h, 6h, 3d (scaled to the period).
    pub burn: [Option<f64>; 5],
    /// Error budget remaining (1 = untouched, below 0 = overspent).
    pub budget_remaining: Option<f64>,
    /// `page` or `ticket`.
    pub alert: Option<&'static str>,
    /// The windows that fired, e.g. `1h/5m`.
    pub alert_windows: Option<String>,
    /// One sentence.
    pub explanation: String,
}

/// Tracks the SLOs over the closed windows.
#[derive(Debug)]
pub struct SloTracker {
    slos: Vec<SloConfig>,
    states: BTreeMap<String, SloState>,
    correlate_by: Vec<String>,
    feature: String,
}

fn human(ms: i64) -> String {
    humantime::format_duration(Duration::from_millis(ms as u64)).to_string().replace(' ', "")
}

impl SloTracker {
    /// A tracker for `slos`; services are matched on the `correlate_by` labels; windows-based
    /// and ratio indicators read the feature `feature`.
    pub fn new(slos: Vec<SloConfig>, correlate_by: Vec<String>, feature: &str) -> Self {
        Self { slos, states: BTreeMap::new(), correlate_by, feature: feature.to_string() }
    }

    /// Whether any SLO is configured.
    pub fn enabled(&self) -> bool {
        !self.slos.is_empty()
    }

    /// The configured SLOs.
    pub fn slos(&self) -> &[SloConfig] {
        &self.slos
    }

    /// Adds the events of a `features` batch (window_start, series_id, series, count, mean and
    /// the tracker's feature).
    pub fn observe(&mut self, features: &RecordBatch) -> Result<()> {
        if self.slos.is_empty() || features.num_rows() == 0 {
            return Ok(());
        }
        let col = |n: &str| features.column_by_name(n).ok_or_else(|| crate::Error::Input(format!("SLOs need the feature column `{n}`")));
        let ws = col("window_start")?.as_primitive::<TimestampMillisecondType>().clone();
        let series = col("series")?.as_string::<i32>().clone();
        let count = features.column_by_name("count").map(|c| arrow::compute::cast(c, &DataType::Float64)).transpose()?;
        let count = count.as_ref().map(|c| c.as_primitive::<Float64Type>().clone());
        let mean = features.column_by_name("mean").map(|c| c.as_primitive::<Float64Type>().clone());
        let feat = col(&self.feature)?.as_primitive::<Float64Type>().clone();
        // Per window: per SLO (bad, total).
        let mut parsed: std::collections::HashMap<&str, (String, Option<String>)> = Default::default();
        let mut sums: BTreeMap<(usize, i64), (f64, f64, f64)> = BTreeMap::new();
        for i in 0..features.num_rows() {
            if series.is_null(i) || feat.is_null(i) {
                continue;
            }
            let key = series.value(i);
            let (name, service) = parsed
                .entry(key)
                .or_insert_with(|| {
                    let (n, labels) = parse_series_key(key);
                    let svc = self.correlate_by.iter().find_map(|l| labels.get(l).cloned());
                    (n, svc)
                })
                .clone();
            let Some(service) = service else { continue };
            let v = feat.value(i);
            let sum = mean.as_ref().zip(count.as_ref()).map(|(m, c)| m.value(i) * c.value(i)).unwrap_or(v);
            for (k, slo) in self.slos.iter().enumerate() {
                if slo.service != service {
                    continue;
                }
                let e = sums.entry((k, ws.value(i))).or_default();
                if slo.metric.as_deref() == Some(name.as_str()) {
                    e.0 += if v > slo.threshold.unwrap_or(f64::INFINITY) { 1.0 } else { 0.0 };
                    e.1 += 1.0;
                } else if slo.ratio.as_deref() == Some(name.as_str()) {
                    e.0 += v.clamp(0.0, 1.0);
                    e.1 += 1.0;
                } else if slo.bad.as_deref() == Some(name.as_str()) {
                    e.0 += sum;
                } else if slo.good.as_deref() == Some(name.as_str()) {
                    e.2 += sum;
                } else if slo.total.as_deref() == Some(name.as_str()) {
                    e.1 += sum;
                }
            }
        }
        for ((k, t), (bad, total, good)) in sums {
            let slo = &self.slos[k];
            let bad = if slo.good.is_some() { (total - good).max(0.0) } else { bad };
            self.states.entry(slo.name.clone()).or_default().add(t, bad, total);
        }
        Ok(())
    }

    /// Evaluates every SLO at `now_ms`: rows, and signals for the alerts that fire.
    pub fn evaluate(&mut self, now_ms: i64) -> (Vec<SloRow>, Vec<Signal>) {
        let mut rows = Vec::new();
        let mut signals = Vec::new();
        for slo in &self.slos {
            let st = self.states.entry(slo.name.clone()).or_default();
            let longest_minutes = slo.window(3 * 86_400_000) + 60_000;
            st.trim(now_ms, longest_minutes, slo.period.as_millis() as i64);
            // A window is judged once a tenth of it holds data: right after a start, a 3-day
            // window holding ten minutes is not a 3-day burn rate.
            let held = st.since().map_or(0, |s| now_ms - s);
            let burn = |w: i64| {
                if held * 10 < w {
                    return None;
                }
                let (b, t) = st.sums(now_ms, w);
                burn_rate(b, t, slo.objective)
            };
            let scale = |w: i64| slo.window(w);
            let bases = [300_000, 1_800_000, 3_600_000, 6 * 3_600_000, 3 * 86_400_000];
            let rates: [Option<f64>; 5] = bases.map(|w| burn(scale(w)).map(|r| (r * 1000.0).round() / 1000.0));
            // The budget is the period's: errors so far against what the whole period allows at
            // the rate events arrive (held time / period of it, once less than a period is held).
            let period = slo.period.as_millis() as i64;
            let (pb, pt) = st.sums(now_ms, period + 3_600_000);
            let spent_share = (held.max(60_000) as f64 / period as f64).min(1.0);
            let remaining = (pt > 0.0).then(|| 1.0 - (pb / pt) / slo.budget() * spent_share);
            let fired = alert(&burn, &scale);
            let windows = fired.map(|(_, l, s, _)| format!("{}/{}", human(scale(l)), human(scale(s))));
            let explanation = match fired {
                Some((sev, l, s, rate)) => format!(
                    "{} ({}% of {} for {}) burns its error budget {:.1}x over {} and {:.1}x over {}, above {rate}: {sev}; {} of the budget left",
                    slo.name,
                    slo.objective,
                    human(slo.period.as_millis() as i64),
                    slo.service,
                    burn(scale(l)).unwrap_or(0.0),
                    human(scale(l)),
                    burn(scale(s)).unwrap_or(0.0),
                    human(scale(s)),
                    remaining.map_or("n/a".into(), |r| format!("{:.1}%", 100.0 * r))
                ),
                None => format!(
                    "{} ({}% for {}): burn {:.2}x over 1h; {} of the error budget left",
                    slo.name,
                    slo.objective,
                    slo.service,
                    rates[2].unwrap_or(0.0),
                    remaining.map_or("n/a".into(), |r| format!("{:.1}%", 100.0 * r))
                ),
            };
            let row = SloRow {
                at_ms: now_ms,
                slo: slo.name.clone(),
                service: slo.service.clone(),
                objective: slo.objective,
                sli: (pt > 0.0).then(|| 100.0 * (1.0 - pb / pt)),
                burn: rates,
                budget_remaining: remaining.map(|r| (r * 10_000.0).round() / 10_000.0),
                alert: fired.map(|f| f.0),
                alert_windows: windows,
                explanation,
            };
            if let Some((sev, l, _, rate)) = fired {
                let series = format!("slo_burn{{service=\"{}\",slo=\"{}\"}}", slo.service, slo.name);
                signals.push(Signal {
                    kind: format!("slo.burn_{sev}"),
                    series_id: xxhash_rust::xxh3::xxh3_64(series.as_bytes()),
                    series,
                    feature: "burn_rate".into(),
                    window_start: now_ms - 60_000,
                    window_end: now_ms,
                    value: burn(scale(l)).unwrap_or(0.0),
                    expected: rate,
                    band: [0.0, rate],
                    score: if sev == "page" { 0.99995 } else { 0.995 },
                    z: 1.0,
                    confidence: 0.9,
                    explanation: row.explanation.clone(),
                    capacity: None,
                });
            }
            rows.push(row);
        }
        (rows, signals)
    }

    /// The event sums per SLO, for a checkpoint.
    pub fn export(&self) -> BTreeMap<String, SloState> {
        self.states.clone()
    }

    /// Restores a checkpoint's state.
    pub fn import(&mut self, states: BTreeMap<String, SloState>) {
        self.states = states;
    }
}

/// The `slo` schema.
pub fn slo_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()));
        Arc::new(Schema::new(vec![
            Field::new("window_end", ts, false),
            Field::new("slo", DataType::Utf8, false),
            Field::new("service", DataType::Utf8, false),
            Field::new("objective", DataType::Float64, false),
            Field::new("sli", DataType::Float64, true),
            Field::new("burn_5m", DataType::Float64, true),
            Field::new("burn_30m", DataType::Float64, true),
            Field::new("burn_1h", DataType::Float64, true),
            Field::new("burn_6h", DataType::Float64, true),
            Field::new("burn_3d", DataType::Float64, true),
            Field::new("budget_remaining", DataType::Float64, true),
            Field::new("alert", DataType::Utf8, true),
            Field::new("alert_windows", DataType::Utf8, true),
            Field::new("explanation", DataType::Utf8, false),
        ]))
    })
    .clone()
}

/// `slo` rows.
pub fn slo_batch(rows: &[SloRow]) -> Result<RecordBatch> {
    let f = |v: Vec<Option<f64>>| Arc::new(Float64Array::from(v)) as ArrayRef;
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from(rows.iter().map(|r| r.at_ms).collect::<Vec<_>>()).with_timezone("+00:00")),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.slo.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.service.as_str()))),
        f(rows.iter().map(|r| Some(r.objective)).collect()),
        f(rows.iter().map(|r| r.sli).collect()),
    ];
    for k in 0..5 {
        cols.push(f(rows.iter().map(|r| r.burn[k]).collect()));
    }
    cols.push(f(rows.iter().map(|r| r.budget_remaining).collect()));
    cols.push(Arc::new(StringArray::from_iter(rows.iter().map(|r| r.alert))));
    cols.push(Arc::new(StringArray::from_iter(rows.iter().map(|r| r.alert_windows.as_deref()))));
    cols.push(Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.explanation.as_str()))));
    Ok(RecordBatch::try_new(slo_schema(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slo(objective: f64) -> SloConfig {
        SloConfig {
            name: "checkout-availability".into(),
            service: "checkout".into(),
            objective,
            period: thirty_days(),
            metric: None,
            threshold: None,
            ratio: Some("error_rate".into()),
            good: None,
            bad: None,
            total: None,
        }
    }

    #[test]
    fn burn_rate_is_the_error_ratio_over_the_budget() {
        // 1.44% errors against a 99.9% objective: 14.4x.
        assert!((burn_rate(144.0, 10_000.0, 99.9).unwrap() - 14.4).abs() < 1e-9);
        // 0.5% errors against 99%: 0.5x.
        assert!((burn_rate(5.0, 1_000.0, 99.0).unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(burn_rate(1.0, 0.0, 99.9), None);
    }

    fn fired(st: &SloState, cfg: &SloConfig, now: i64) -> Option<(&'static str, i64, i64, f64)> {
        let burn = |w: i64| {
            let (b, t) = st.sums(now, w);
            burn_rate(b, t, cfg.objective)
        };
        alert(&burn, &|w| cfg.window(w))
    }

    fn burn_over(st: &SloState, cfg: &SloConfig, now: i64, w: i64) -> f64 {
        let (b, t) = st.sums(now, w);
        burn_rate(b, t, cfg.objective).unwrap()
    }

    /// Each pair fires only when both of its windows burn above the rate.
    #[test]
    fn each_window_pair_fires_only_when_both_windows_exceed_its_rate() {
        let cfg = slo(99.9);
        let now = 100 * 86_400_000;
        // Four days of one event per minute, `ratio(m)` of it bad `m` minutes ago.
        let history = |ratio: &dyn Fn(i64) -> f64| {
            let mut st = SloState::default();
            for m in 1..=4 * 1440 {
                st.add(now - m * 60_000, ratio(m), 1.0);
            }
            st
        };
        // A steady 0.09% error ratio: burn 0.9, nothing fires.
        let st = history(&|_| 0.0009);
        assert!((burn_over(&st, &cfg, now, 3_600_000) - 0.9).abs() < 1e-9);
        assert_eq!(fired(&st, &cfg, now), None);
        // 0.15% for 4 days: 1.5x on 3d and 6h: a ticket.
        let st = history(&|_| 0.0015);
        assert_eq!(fired(&st, &cfg, now).map(|a| (a.0, a.3)), Some(("ticket", 1.0)));
        // 1% in the last 6 hours (10x), none before: 1h burns 10 < 14.4, but 6h and 30m burn
        // 10 > 6: page on 6h/30m.
        let st = history(&|m| if m <= 360 { 0.01 } else { 0.0 });
        let a = fired(&st, &cfg, now).unwrap();
        assert_eq!((a.0, a.1, a.2, a.3), ("page", 6 * 3_600_000, 1_800_000, 6.0));
        // 20% in the last 10 minutes only: 5m burns 200x, 1h burns 33.3x, 6h only 5.6x: page
        // on 1h/5m.
        let st = history(&|m| if m <= 10 { 0.2 } else { 0.0 });
        assert!((burn_over(&st, &cfg, now, 3_600_000) - 2.0 / 60.0 / 0.001).abs() < 1e-6);
        assert!(burn_over(&st, &cfg, now, 6 * 3_600_000) < 6.0);
        let a = fired(&st, &cfg, now).unwrap();
        assert_eq!((a.0, a.1, a.2), ("page", 3_600_000, 300_000));
        // The same burst 20 minutes ago: 1h still burns 33x, but the 5m window is clean: nothing.
        let st = history(&|m| if (21..=30).contains(&m) { 0.2 } else { 0.0 });
        assert!(burn_over(&st, &cfg, now, 3_600_000) > 14.4);
        assert_eq!(fired(&st, &cfg, now), None);
    }

    #[test]
    fn windows_scale_with_the_period_and_budget_remaining_counts_the_period() {
        let mut cfg = slo(99.0);
        cfg.period = Duration::from_secs(7 * 86_400);
        // 7 days / 30 days of an hour is 14 minutes.
        assert_eq!(cfg.window(3_600_000), 840_000);
        let mut t = SloTracker::new(vec![cfg], vec!["service".into()], "mean");
        let st = t.states.entry("checkout-availability".into()).or_default();
        // 2 days at 0.5% errors against a 99% objective: burning at 0.5x, so 2 of the 7 days
        // have spent half of their share of the budget: 1 - 0.5 × 2/7 is left.
        let now = 10 * 86_400_000;
        for m in 1..=2 * 1440 {
            st.add(now - m * 60_000, 0.005, 1.0);
        }
        let (rows, signals) = t.evaluate(now);
        assert!((rows[0].budget_remaining.unwrap() - (1.0 - 0.5 * 2.0 / 7.0)).abs() < 1e-4, "{:?}", rows[0]);
        assert!((rows[0].sli.unwrap() - 99.5).abs() < 1e-9);
        assert!(signals.is_empty());
    }

    #[test]
    fn a_bad_slo_names_the_problem() {
        let mut s = slo(100.0);
        assert!(s.validate().unwrap_err().0.contains("objective"));
        s.objective = 99.9;
        s.metric = Some("latency".into());
        assert!(s.validate().unwrap_err().0.contains("exactly one indicator"));
        s.ratio = None;
        assert!(s.validate().unwrap_err().0.contains("threshold"));
    }
}
