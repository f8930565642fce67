//! Incidents: the signals of one entity (a service, by default) that overlap in time are one
//! problem, not one alert per series.
//!
//! A *signal* is an anomaly row at or above the decision threshold (spike, drop, shift, fleet
//! outlier) or a forecast whose 95% upper bound reaches a configured limit within the horizon.
//! Signals whose series share a correlation key (the first of `correlate_by`'s labels a series
//! carries; the series itself when it carries none) join the key's open incident, or open one.
//! An incident is resolved once every member has been quiet for `resolve_after` of event time.
//! Everything is in event time, so a replay of the same input yields the same incidents, ids
//! and fingerprints.

mod table;
pub use table::{incidents_batch, incidents_schema};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType, UInt32Type, UInt64Type};
use serde::{Deserialize, Serialize};

use crate::decision::parse_series_key;
use crate::{Error, Result};

/// Settings of the correlator.
#[derive(Debug, Clone)]
pub struct IncidentConfig {
    /// Labels naming the entity an incident is about, tried in order; their values are treated
    /// as one name space (`service="cart"` and `service.name="cart"` are the same entity).
    pub correlate_by: Vec<String>,
    /// An incident resolves once its members have been quiet this long (event time, ms). It is
    /// also the correlation span: a signal within it of the incident's last one joins it.
    pub resolve_after_ms: i64,
    /// Anomalies scoring at or above this are signals.
    pub threshold: f64,
    /// And only when |z| is at least this.
    pub min_deviation: f64,
    /// Baseline size of a fully warmed-up series (for the confidence figure).
    pub full_support: u32,
    /// Open incidents held at most (the oldest-updated is resolved beyond it).
    pub max_open: usize,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self {
            correlate_by: vec!["service".into(), "service.name".into(), "k8s.namespace.name".into()],
            resolve_after_ms: 600_000,
            threshold: 0.999,
            min_deviation: 8.0,
            full_support: 120,
            max_open: 10_000,
        }
    }
}

/// A forecast reaching a limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityForecast {
    /// The configured limit.
    pub limit: f64,
    /// When the point forecast reaches it (epoch ms), if within the horizon.
    pub expected_ms: Option<i64>,
    /// When the 95% upper bound first reaches it (the earliest it may happen).
    pub earliest_ms: i64,
    /// When the whole 95% interval is past it, if within the horizon.
    pub latest_ms: Option<i64>,
    /// The forecasting method.
    pub method: String,
}

/// Something that may open or feed an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// `anomaly.spike`, `anomaly.drop`, `anomaly.shift_up`, `anomaly.shift_down`,
    /// `anomaly.fleet_outlier` or `capacity.limit_expected`.
    pub kind: String,
    /// Series id.
    pub series_id: u64,
    /// Canonical series key.
    pub series: String,
    /// The feature scored.
    pub feature: String,
    /// Window (or forecast origin) start and end, epoch ms.
    pub window_start: i64,
    /// End.
    pub window_end: i64,
    /// Observed value (for a capacity signal: the next window's forecast).
    pub value: f64,
    /// Expected value (for a capacity signal: the limit).
    pub expected: f64,
    /// Normal band.
    pub band: [f64; 2],
    /// Score in [0, 1].
    pub score: f64,
    /// Robust z.
    pub z: f64,
    /// Score discounted by how much history backs it.
    pub confidence: f64,
    /// One sentence.
    pub explanation: String,
    /// For a capacity signal.
    pub capacity: Option<CapacityForecast>,
}

impl Signal {
    /// `critical` (anomaly score >= 0.9999, or a limit expected to be reached) or `warning`.
    pub fn severity(&self) -> &'static str {
        match &self.capacity {
            Some(c) if c.expected_ms.is_some() => "critical",
            Some(_) => "warning",
            None if self.score >= 0.9999 => "critical",
            None => "warning",
        }
    }
}

/// A member series of an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Metric name.
    pub name: String,
    /// First and last signal window start, epoch ms.
    pub first_ms: i64,
    /// Last.
    pub last_ms: i64,
    /// Signals seen.
    pub signals: u32,
    /// Highest score.
    pub score: f64,
    /// Whether any of its signals was above what was expected (a capacity signal is).
    pub up: bool,
    /// Whether any of its signals was below what was expected.
    pub down: bool,
}

/// An incident, as held and as shown in the `incidents` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Stable id: key and first window.
    pub id: String,
    /// Stable across occurrences of the same problem: key and the origin's metric name.
    pub fingerprint: String,
    /// Correlation key (the entity's name).
    pub key: String,
    /// Label the key came from (`service`, ...), or `series`.
    pub key_label: String,
    /// `opened`, `updated` or `resolved`.
    pub state: String,
    /// First signal's window start, epoch ms.
    pub opened_ms: i64,
    /// Last change, epoch ms (event time).
    pub updated_ms: i64,
    /// Last signal's window end, epoch ms.
    pub last_signal_ms: i64,
    /// When resolved, epoch ms.
    pub resolved_ms: Option<i64>,
    /// `critical` or `warning`: the highest of its signals.
    pub severity: String,
    /// The earliest mover: the member whose signal opened the incident.
    pub origin: String,
    /// Members by series key.
    pub members: BTreeMap<String, Member>,
    /// Kinds of the signals seen.
    pub kinds: BTreeSet<String>,
    /// The origin's first signal (evidence and explanation).
    pub first: Signal,
    /// The strongest signal seen.
    pub strongest: Signal,
    /// The latest capacity forecast among the members, if any.
    pub capacity: Option<(String, CapacityForecast)>,
    /// Signals seen.
    pub signals: u32,
}

impl Incident {
    /// Labels of the origin series.
    pub fn origin_labels(&self) -> BTreeMap<String, String> {
        parse_series_key(&self.origin).1
    }

    /// `up` when any member rose above what was expected, else `down`.
    pub fn direction(&self) -> &'static str {
        if self.members.values().any(|m| m.up) {
            "up"
        } else {
            "down"
        }
    }

    /// Series keys of the members that rose (`true`) or fell, comma-separated.
    pub fn moving(&self, up: bool) -> String {
        self.members.iter().filter(|(_, m)| if up { m.up } else { m.down }).map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(",")
    }
}

/// Correlates signals into incidents; holds the open ones.
#[derive(Debug)]
pub struct Correlator {
    cfg: IncidentConfig,
    open: HashMap<String, Incident>,
}

/// What a batch of signals did to the incidents.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Incidents opened or updated (their state says which), and resolved ones, in order.
    pub incidents: Vec<Incident>,
}

/// The domain of a signal kind whose incidents are kept apart from operational ones for the same
/// entity: cost, budget and efficiency signals open `cost` incidents (a service's spend drifting
/// is not its latency spiking); everything else, SLO burns included, shares the entity's
/// operational incident.
pub(crate) fn domain(kind: &str) -> Option<&'static str> {
    (kind.starts_with("cost.") || kind.starts_with("budget.")).then_some("cost")
}

/// Where an incident is held: its key, prefixed with its domain.
fn slot(kind: &str, key: &str) -> String {
    match domain(kind) {
        Some(d) => format!("{d}:{key}"),
        None => key.to_string(),
    }
}

fn hex128(s: &str) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(s.as_bytes()))
}

impl Correlator {
    /// A correlator with nothing open.
    pub fn new(cfg: IncidentConfig) -> Self {
        Self { cfg, open: HashMap::new() }
    }

    /// The correlation key of a series: (label, value).
    pub fn key_of(&self, series: &str) -> (String, String) {
        let (_, labels) = parse_series_key(series);
        for l in &self.cfg.correlate_by {
            if let Some(v) = labels.get(l).filter(|v| !v.is_empty()) {
                return (l.clone(), v.clone());
            }
        }
        ("series".into(), series.to_string())
    }

    /// The signals of an `anomalies` batch: rows at or above the threshold and minimum
    /// deviation.
    pub fn anomaly_signals(&self, anomalies: &RecordBatch) -> Result<Vec<Signal>> {
        if anomalies.schema() != crate::anomalies_schema() {
            return Err(Error::Input("anomaly_signals() takes a batch in the anomalies schema".into()));
        }
        let c = |i: usize| anomalies.column(i);
        let ws = c(0).as_primitive::<TimestampMillisecondType>();
        let we = c(1).as_primitive::<TimestampMillisecondType>();
        let ids = c(2).as_primitive::<UInt64Type>();
        let series = c(3).as_string::<i32>();
        let feature = c(5).as_string::<i32>();
        let f = |i: usize| c(i).as_primitive::<Float64Type>();
        let (value, expected, lower, upper, score, z) = (f(6), f(7), f(8), f(9), f(10), f(11));
        let support = c(12).as_primitive::<UInt32Type>();
        let explanation = c(13).as_string::<i32>();
        let part = c(14).as_string::<i32>();
        let mut out = Vec::new();
        for i in 0..anomalies.num_rows() {
            let s = score.value(i);
            if s < self.cfg.threshold || z.value(i).abs() < self.cfg.min_deviation {
                continue;
            }
            let up = z.value(i) >= 0.0;
            let warm = (support.value(i) as f64 / self.cfg.full_support.max(1) as f64).min(1.0);
            out.push(Signal {
                kind: match (part.value(i), up) {
                    ("shift", true) => "anomaly.shift_up",
                    ("shift", false) => "anomaly.shift_down",
                    ("fleet", _) => "anomaly.fleet_outlier",
                    (_, true) => "anomaly.spike",
                    (_, false) => "anomaly.drop",
                }
                .into(),
                series_id: ids.value(i),
                series: series.value(i).to_string(),
                feature: feature.value(i).to_string(),
                window_start: ws.value(i),
                window_end: we.value(i),
                value: value.value(i),
                expected: expected.value(i),
                band: [lower.value(i), upper.value(i)],
                score: s,
                z: z.value(i),
                confidence: round(s * (0.5 + 0.5 * warm), 3),
                explanation: explanation.value(i).to_string(),
                capacity: None,
            });
        }
        Ok(out)
    }

    /// The signals of a `forecasts` batch: one per series whose 95% upper bound reaches its
    /// limit within the horizon.
    pub fn capacity_signals(forecasts: &RecordBatch) -> Result<Vec<Signal>> {
        if forecasts.schema() != crate::forecasts_schema() {
            return Err(Error::Input("capacity_signals() takes a batch in the forecasts schema".into()));
        }
        let col = |n: &str| forecasts.column_by_name(n).expect("forecasts schema");
        let ts = |n: &str| col(n).as_primitive::<TimestampMillisecondType>().clone();
        let f = |n: &str| col(n).as_primitive::<Float64Type>().clone();
        let (made, early, exp, late) = (ts("made_at"), ts("crosses_earliest"), ts("crosses_expected"), ts("crosses_latest"));
        let (point, l95, u95, limit) = (f("point"), f("lower_95"), f("upper_95"), f("limit"));
        let ids = col("series_id").as_primitive::<UInt64Type>();
        let series = col("series").as_string::<i32>();
        let method = col("method").as_string::<i32>();
        let step = col("step").as_primitive::<arrow::datatypes::Int64Type>();
        let mut out = Vec::new();
        for i in 0..forecasts.num_rows() {
            // The first step of each series' forecast carries the crossing.
            if step.value(i) != 1 || early.is_null(i) || limit.is_null(i) {
                continue;
            }
            let lim = limit.value(i);
            let e = early.value(i);
            let expected = (!exp.is_null(i)).then(|| exp.value(i));
            let latest = (!late.is_null(i)).then(|| late.value(i));
            out.push(capacity_signal(
                ids.value(i),
                series.value(i),
                made.value(i),
                [point.value(i), l95.value(i), u95.value(i)],
                lim,
                CapacityForecast { limit: lim, expected_ms: expected, earliest_ms: e, latest_ms: latest, method: method.value(i).to_string() },
            ));
        }
        Ok(out)
    }

    /// Feeds signals (in window order) and resolves the incidents quiet since `now_ms - resolve_after`.
    pub fn observe(&mut self, signals: &[Signal], now_ms: i64) -> Changes {
        let mut changed: Vec<String> = Vec::new();
        let note = |changed: &mut Vec<String>, k: &str| {
            if !changed.iter().any(|c| c == k) {
                changed.push(k.to_string());
            }
        };
        for s in signals {
            // A forecast keeps its incident open until the limit may be reached.
            let active_until = s.capacity.as_ref().map_or(s.window_end, |c| c.earliest_ms.max(s.window_end));
            let (label, key) = self.key_of(&s.series);
            let name = parse_series_key(&s.series).0;
            let sev = s.severity();
            let up = s.z >= 0.0 || s.capacity.is_some();
            let held = slot(&s.kind, &key);
            match self.open.get_mut(&held) {
                Some(inc) => {
                    let mut grew = false;
                    let m = inc.members.entry(s.series.clone()).or_insert_with(|| {
                        grew = true;
                        Member { name: name.clone(), first_ms: s.window_start, last_ms: s.window_start, signals: 0, score: 0.0, up, down: !up }
                    });
                    m.last_ms = m.last_ms.max(s.window_start);
                    m.signals += 1;
                    m.score = m.score.max(s.score);
                    // Directions are sticky: a member that rose stays among the rising ones, so a
                    // dip after a spike does not change the incident's decision.
                    if (up && !m.up) || (!up && !m.down) {
                        m.up |= up;
                        m.down |= !up;
                        grew = true;
                    }
                    inc.signals += 1;
                    inc.last_signal_ms = inc.last_signal_ms.max(active_until);
                    grew |= inc.kinds.insert(s.kind.clone());
                    if rank(sev) > rank(&inc.severity) {
                        inc.severity = sev.into();
                        grew = true;
                    }
                    if s.score > inc.strongest.score {
                        inc.strongest = s.clone();
                    }
                    if let Some(c) = &s.capacity {
                        grew |= inc.capacity.is_none();
                        inc.capacity = Some((s.series.clone(), c.clone()));
                    }
                    if grew {
                        // Opened in this same call: it is still news that it opened.
                        if !changed.iter().any(|c| c == &held) || inc.state != "opened" {
                            inc.state = "updated".into();
                        }
                        inc.updated_ms = s.window_end;
                        note(&mut changed, &held);
                    }
                }
                None => {
                    let id = hex128(&format!("incident|{key}|{}|{}", s.window_start, s.series));
                    let fingerprint = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(format!("{label}={key}|{name}").as_bytes()));
                    let mut members = BTreeMap::new();
                    members.insert(s.series.clone(), Member { name, first_ms: s.window_start, last_ms: s.window_start, signals: 1, score: s.score, up, down: !up });
                    let inc = Incident {
                        id,
                        fingerprint,
                        key: key.clone(),
                        key_label: label,
                        state: "opened".into(),
                        opened_ms: s.window_start,
                        updated_ms: s.window_end,
                        last_signal_ms: active_until,
                        resolved_ms: None,
                        severity: sev.into(),
                        origin: s.series.clone(),
                        members,
                        kinds: [s.kind.clone()].into(),
                        first: s.clone(),
                        strongest: s.clone(),
                        capacity: s.capacity.clone().map(|c| (s.series.clone(), c)),
                        signals: 1,
                    };
                    self.open.insert(held.clone(), inc);
                    note(&mut changed, &held);
                }
            }
        }
        let mut out: Vec<Incident> = changed.iter().filter_map(|k| self.open.get(k).cloned()).collect();
        // Resolution: every member quiet for `resolve_after`.
        let mut done: Vec<String> =
            self.open.iter().filter(|(_, i)| now_ms - i.last_signal_ms >= self.cfg.resolve_after_ms).map(|(k, _)| k.clone()).collect();
        if self.open.len() - done.len() > self.cfg.max_open {
            let mut rest: Vec<(&String, i64)> = self.open.iter().filter(|(k, _)| !done.contains(k)).map(|(k, i)| (k, i.last_signal_ms)).collect();
            rest.sort_by_key(|(k, t)| (*t, (*k).clone()));
            let extra = self.open.len() - done.len() - self.cfg.max_open;
            done.extend(rest.into_iter().take(extra).map(|(k, _)| k.clone()));
        }
        done.sort();
        for k in done {
            if let Some(mut inc) = self.open.remove(&k) {
                inc.state = "resolved".into();
                inc.resolved_ms = Some(now_ms.max(inc.last_signal_ms));
                inc.updated_ms = now_ms;
                out.retain(|o| o.id != inc.id);
                out.push(inc);
            }
        }
        Changes { incidents: out }
    }

    /// The open incidents, for a checkpoint.
    pub fn export(&self) -> Vec<Incident> {
        let mut v: Vec<Incident> = self.open.values().cloned().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Takes open incidents from a checkpoint.
    pub fn import(&mut self, incidents: Vec<Incident>) {
        for i in incidents {
            self.open.insert(slot(&i.first.kind, &i.key), i);
        }
    }

    /// The open incidents.
    pub fn open(&self) -> Vec<&Incident> {
        let mut v: Vec<&Incident> = self.open.values().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key).then(a.id.cmp(&b.id)));
        v
    }
}

/// A capacity signal: `next` is the next window's forecast and its 95% interval.
pub(crate) fn capacity_signal(series_id: u64, series: &str, made_ms: i64, next: [f64; 3], limit: f64, c: CapacityForecast) -> Signal {
    let at = |ms: i64| crate::decision::rfc3339(ms);
    let lim = crate::detector::fmt(limit);
    let explanation = match c.expected_ms {
        Some(x) => format!(
            "{series} is forecast ({}) to reach its limit {lim} at {} (95% interval: from {}{})",
            c.method,
            at(x),
            at(c.earliest_ms),
            c.latest_ms.map(|l| format!(" to {}", at(l))).unwrap_or_else(|| " to beyond the horizon".into())
        ),
        None => format!(
            "{series} may reach its limit {lim} as early as {}: the 95% upper bound of its forecast ({}) crosses it within the horizon",
            at(c.earliest_ms),
            c.method
        ),
    };
    let sure = c.expected_ms.is_some();
    Signal {
        kind: "capacity.limit_expected".into(),
        series_id,
        series: series.to_string(),
        feature: "forecast".into(),
        window_start: made_ms,
        window_end: made_ms,
        value: next[0],
        expected: limit,
        band: [next[1], next[2]],
        score: if sure { 0.99 } else { 0.95 },
        z: 0.0,
        confidence: if sure { 0.9 } else { 0.6 },
        explanation,
        capacity: Some(c),
    }
}

/// Where a linear trend reaches a limit: steps ahead (1 = the next window).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LinearCrossing {
    /// The next window's forecast and its 95% interval.
    pub next: [f64; 3],
    /// First step whose 95% upper bound reaches the limit.
    pub earliest: usize,
    /// First step whose point forecast does.
    pub expected: Option<usize>,
    /// First step whose 95% lower bound does.
    pub latest: Option<usize>,
}

/// Fits a line to `y` (one value per window) and says when its 95% prediction interval reaches
/// `limit` within `horizon` steps. Only a rising trend clearly above the noise (slope at least
/// four standard errors) counts: a flat series near its limit is not a forecast crossing.
pub(crate) fn linear_crossing(y: &[f64], limit: f64, horizon: usize) -> Option<LinearCrossing> {
    let n = y.len();
    if n < 8 || horizon == 0 {
        return None;
    }
    let nf = n as f64;
    let mx = (nf - 1.0) / 2.0;
    let my = y.iter().sum::<f64>() / nf;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, v) in y.iter().enumerate() {
        let dx = i as f64 - mx;
        sxy += dx * (v - my);
        sxx += dx * dx;
    }
    let b = sxy / sxx;
    let a = my - b * mx;
    let sse: f64 = y.iter().enumerate().map(|(i, v)| (v - a - b * i as f64).powi(2)).sum();
    let s = (sse / (nf - 2.0)).sqrt();
    if b.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !b.is_finite() || b < 4.0 * s / sxx.sqrt() {
        return None;
    }
    let at = |h: usize| {
        let x = (n - 1 + h) as f64;
        let half = 1.96 * s * (1.0 + 1.0 / nf + (x - mx).powi(2) / sxx).sqrt();
        let p = a + b * x;
        [p, p - half, p + half]
    };
    let earliest = (1..=horizon).find(|h| at(*h)[2] >= limit)?;
    Some(LinearCrossing {
        next: at(1),
        earliest,
        expected: (earliest..=horizon).find(|h| at(*h)[0] >= limit),
        latest: (earliest..=horizon).find(|h| at(*h)[1] >= limit),
    })
}

fn rank(severity: &str) -> u8 {
    match severity {
        "critical" => 3,
        "warning" => 2,
        _ => 1,
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

#[cfg(test)]
pub(crate) mod tests;
