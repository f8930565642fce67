//! Cost drift: actual spend against the forecaster's expectation, with root causes.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{CostConfig, CostOutput, Day, Model, ScopeHour, ScopeSeries, FORECAST_HOURS, HOUR_MS, MAX_HISTORY_HOURS, REFIT_HOURS};
use crate::Signal;

/// Impact and impact % (AWS Cost Anomaly Detection): `impact = actual - expected`,
/// `impact % = impact / expected × 100`, absent when nothing was expected.
pub fn impact(actual: f64, expected: f64) -> (f64, Option<f64>) {
    let i = actual - expected;
    (i, (expected > 0.0).then(|| 100.0 * i / expected))
}

/// A dimension value's part in a drift.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RootCause {
    /// Dimension (`resource`, `cloud_service`, `region`, ...).
    pub dimension: String,
    /// Its value.
    pub value: String,
    /// Its spend minus its usual share of the expected spend.
    pub impact: f64,
    /// Its share of the impact (of the parts that moved the same way), 0..1.
    pub share: f64,
}

/// The root causes of `impact`: each part's (`dimension=value`) impact is its actual spend minus
/// its usual share of the expected spend (`baseline_share`: part → share of the scope's spend);
/// within each dimension that has more than one value, the values that moved the same way as
/// the total get their share of that dimension's movement. The largest `top` are returned.
pub fn root_causes(impact: f64, expected: f64, actual_parts: &BTreeMap<String, f64>, baseline_share: &BTreeMap<String, f64>, top: usize) -> Vec<RootCause> {
    if impact == 0.0 {
        return Vec::new();
    }
    // Per dimension: each value's impact, and its share of the dimension's same-signed impact.
    let mut dims: BTreeMap<&str, Vec<(&str, f64)>> = BTreeMap::new();
    let mut names: Vec<&String> = actual_parts.keys().chain(baseline_share.keys()).collect();
    names.sort();
    names.dedup();
    for n in &names {
        let (d, v) = n.split_once('=').unwrap_or((n.as_str(), ""));
        let a = actual_parts.get(*n).copied().unwrap_or(0.0);
        let b = expected * baseline_share.get(*n).copied().unwrap_or(0.0);
        dims.entry(d).or_default().push((v, a - b));
    }
    let mut out: Vec<RootCause> = Vec::new();
    for (d, values) in dims {
        // A dimension with one value (one region, say) explains nothing.
        if values.len() < 2 {
            continue;
        }
        let moved: Vec<(&str, f64)> = values.into_iter().filter(|(_, i)| i * impact > 0.0).collect();
        let sum: f64 = moved.iter().map(|(_, i)| i).sum();
        for (v, i) in moved {
            out.push(RootCause { dimension: d.to_string(), value: v.to_string(), impact: round2(i), share: if sum != 0.0 { (i / sum * 1000.0).round() / 1000.0 } else { 0.0 } });
        }
    }
    out.sort_by(|a, b| b.impact.abs().total_cmp(&a.impact.abs()).then(b.share.total_cmp(&a.share)).then(a.value.cmp(&b.value)));
    out.truncate(top);
    out
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A `cost_drift` row.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftRow {
    /// `hour` or `day`.
    pub granularity: &'static str,
    /// Start, epoch ms.
    pub start_ms: i64,
    /// End.
    pub end_ms: i64,
    /// Scope (`service`, `team`, ...).
    pub scope: String,
    /// The scope's value.
    pub value: String,
    /// Series key (`cost{service="checkout"}`).
    pub series: String,
    /// Actual spend.
    pub actual: f64,
    /// Expected spend.
    pub expected: Option<f64>,
    /// 95% interval of the expectation.
    pub band: Option<[f64; 2]>,
    /// actual - expected.
    pub impact: Option<f64>,
    /// impact / expected × 100.
    pub impact_percent: Option<f64>,
    /// Whether it passed both thresholds.
    pub anomaly: bool,
    /// Root causes.
    pub root_causes: Vec<RootCause>,
    /// Forecasting method.
    pub method: Option<String>,
    /// One sentence.
    pub explanation: String,
}

/// Closes hour `h` of one scope value: its drift row(s) and signal, then its history.
#[allow(clippy::too_many_arguments)]
pub(super) fn close_series(cfg: &CostConfig, key: &str, s: &mut ScopeSeries, h: i64, sh: &ScopeHour, min_history: usize, now: i64, hold: i64, out: &mut CostOutput) {
    // Hours with no rows at all between the last one and this one are gaps, not zero spend.
    if !s.history.is_empty() {
        let gap = ((h - s.last_hour_ms) / HOUR_MS - 1).clamp(0, MAX_HISTORY_HOURS as i64);
        for _ in 0..gap {
            s.history.push_back(f64::NAN);
        }
    }
    let finite = s.history.iter().filter(|v| v.is_finite()).count();
    // Refit once a day, on the history before this hour.
    let stale = s.model.as_ref().is_none_or(|m| h - m.origin_ms >= REFIT_HOURS * HOUR_MS || m.at(h).is_none());
    if stale && finite >= min_history {
        let y: Vec<f64> = s.history.iter().copied().collect();
        let f = crate::forecast::forecast_seasonal(&y, &[24, 168], FORECAST_HOURS);
        s.model = Some(Model {
            origin_ms: h,
            method: f.method.name().to_string(),
            point: f.point.iter().map(|v| v.max(0.0)).collect(),
            lower_80: f.lower_80.iter().map(|v| v.max(0.0)).collect(),
            upper_80: f.upper_80,
            lower_95: f.lower_95.iter().map(|v| v.max(0.0)).collect(),
            upper_95: f.upper_95,
        });
    }
    let (scope, value) = key.split_once('=').unwrap_or((key, ""));
    let series = super::scope_series("cost", key);
    let actual = sh.total;
    let fitted = s.model.as_ref().filter(|_| finite >= min_history).and_then(|m| m.at(h).map(|k| (m, k)));
    let share: BTreeMap<String, f64> = if s.share_total > 0.0 { s.shares.iter().map(|(k, v)| (k.clone(), v / s.share_total)).collect() } else { BTreeMap::new() };
    let mut row = DriftRow {
        granularity: "hour",
        start_ms: h,
        end_ms: h + HOUR_MS,
        scope: scope.to_string(),
        value: value.to_string(),
        series: series.clone(),
        actual: round2(actual),
        expected: None,
        band: None,
        impact: None,
        impact_percent: None,
        anomaly: false,
        root_causes: Vec::new(),
        method: None,
        explanation: format!("{series} spent {:.2}; no expectation yet ({finite} of {min_history} hours of history)", actual),
    };
    if let Some((m, k)) = fitted {
        let expected = m.point[k];
        let sigma = ((m.upper_95[k] - m.point[k]) / 1.96).max(1e-9);
        let (imp, pct) = impact(actual, expected);
        row.expected = Some(round2(expected));
        row.band = Some([round2(m.lower_95[k]), round2(m.upper_95[k])]);
        row.impact = Some(round2(imp));
        row.impact_percent = pct.map(round2);
        row.method = Some(m.method.clone());
        row.root_causes = root_causes(imp, expected, &sh.parts, &share, 3);
        row.anomaly = is_anomaly(cfg, imp, pct);
        row.explanation = explain(&series, "hour", actual, expected, imp, pct, &row.root_causes);
        if row.anomaly {
            out.signals.push(signal(&row, imp / sigma, now, hold));
        }
        s.residuals.push_back(imp);
        while s.residuals.len() > 6 {
            s.residuals.pop_front();
        }
        // The day's row adds up its hours.
        let day_start = h.div_euclid(24 * HOUR_MS) * 24 * HOUR_MS;
        let day = s.day.get_or_insert_with(|| Day { start_ms: day_start, ..Default::default() });
        if day.start_ms != day_start {
            *day = Day { start_ms: day_start, ..Default::default() };
        }
        day.actual += actual;
        day.expected += expected;
        day.expected_hours += 1;
        day.sigma2 += sigma * sigma;
        for (p, v) in &sh.parts {
            *day.parts.entry(p.clone()).or_default() += v;
        }
        if h + HOUR_MS == day_start + 24 * HOUR_MS && day.expected_hours == 24 {
            let (imp, pct) = impact(day.actual, day.expected);
            let mut d = DriftRow {
                granularity: "day",
                start_ms: day_start,
                end_ms: day_start + 24 * HOUR_MS,
                actual: round2(day.actual),
                expected: Some(round2(day.expected)),
                band: Some([round2((day.expected - 1.96 * day.sigma2.sqrt()).max(0.0)), round2(day.expected + 1.96 * day.sigma2.sqrt())]),
                impact: Some(round2(imp)),
                impact_percent: pct.map(round2),
                anomaly: is_anomaly(cfg, imp, pct),
                root_causes: root_causes(imp, day.expected, &day.parts, &share, 3),
                method: row.method.clone(),
                explanation: String::new(),
                ..row.clone()
            };
            d.explanation = explain(&series, "day", day.actual, day.expected, imp, pct, &d.root_causes);
            if d.anomaly {
                out.signals.push(signal(&d, imp / day.sigma2.sqrt().max(1e-9), now, hold));
            }
            out.drift.push(d);
            s.day = None;
        }
    } else {
        s.day = None;
    }
    out.drift.push(row);
    // Learn: the usual shares of the parts (about a week's memory), then the history.
    let decay = 1.0 - 1.0 / 168.0;
    for v in s.shares.values_mut() {
        *v *= decay;
    }
    s.share_total = s.share_total * decay + actual;
    for (p, v) in &sh.parts {
        *s.shares.entry(p.clone()).or_default() += v;
    }
    if s.shares.len() > 200 {
        let mut v: Vec<(String, f64)> = std::mem::take(&mut s.shares).into_iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.truncate(200);
        s.shares = v.into_iter().collect();
    }
    s.history.push_back(actual);
    while s.history.len() > MAX_HISTORY_HOURS {
        s.history.pop_front();
    }
    s.last_hour_ms = h;
}

fn is_anomaly(cfg: &CostConfig, imp: f64, pct: Option<f64>) -> bool {
    imp >= cfg.anomaly_min_impact && imp > 0.0 && pct.is_none_or(|p| p >= cfg.anomaly_min_impact_percent)
}

fn explain(series: &str, granularity: &str, actual: f64, expected: f64, imp: f64, pct: Option<f64>, causes: &[RootCause]) -> String {
    let pct = pct.map(|p| format!(" ({p:+.1}%)")).unwrap_or_default();
    let mut s = format!("{series} spent {actual:.2} this {granularity} against {expected:.2} expected: impact {imp:+.2}{pct}");
    if !causes.is_empty() {
        let c: Vec<String> = causes.iter().map(|c| format!("{}={} {:+.2} ({:.0}%)", c.dimension, c.value, c.impact, 100.0 * c.share)).collect();
        s.push_str("; root causes: ");
        s.push_str(&c.join(", "));
    }
    s
}

fn signal(row: &DriftRow, z: f64, now: i64, hold: i64) -> Signal {
    let pct = row.impact_percent.unwrap_or(100.0);
    let score = if pct >= 50.0 { 0.9999 } else { 0.999 };
    Signal {
        kind: "cost.anomaly".into(),
        series_id: xxhash_rust::xxh3::xxh3_64(row.series.as_bytes()),
        series: row.series.clone(),
        feature: format!("spend_per_{}", row.granularity),
        window_start: row.start_ms,
        window_end: now.max(row.end_ms) + hold,
        value: row.actual,
        expected: row.expected.unwrap_or(0.0),
        band: row.band.unwrap_or([0.0, 0.0]),
        score,
        z: z.max(0.0),
        confidence: 0.9,
        explanation: row.explanation.clone(),
        capacity: None,
    }
}
