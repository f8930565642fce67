//! Decision rule: anomalies at or above a score become decisions for remediation executors.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, AsArray, Float64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef, TimeUnit, UInt32Type, UInt64Type};
use arrow::datatypes::TimestampMillisecondType;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()))
}

/// Schema of the `anomalies` table.
pub fn anomalies_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("window_start", ts_type(), false),
            Field::new("window_end", ts_type(), false),
            Field::new("series_id", DataType::UInt64, false),
            Field::new("series", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("feature", DataType::Utf8, false),
            Field::new("value", DataType::Float64, false),
            Field::new("expected", DataType::Float64, false),
            Field::new("lower", DataType::Float64, false),
            Field::new("upper", DataType::Float64, false),
            Field::new("score", DataType::Float64, false),
            Field::new("z", DataType::Float64, false),
            Field::new("support", DataType::UInt32, false),
            Field::new("explanation", DataType::Utf8, false),
            Field::new("part", DataType::Utf8, false),
        ]))
    })
    .clone()
}

/// Schema of the `decisions` table.
pub fn decisions_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("time", ts_type(), false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("severity", DataType::Utf8, false),
            Field::new("series", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("labels", DataType::Utf8, false),
            Field::new("value", DataType::Float64, false),
            Field::new("expected", DataType::Float64, false),
            Field::new("lower", DataType::Float64, false),
            Field::new("upper", DataType::Float64, false),
            Field::new("score", DataType::Float64, false),
            Field::new("confidence", DataType::Float64, false),
            Field::new("action", DataType::Utf8, false),
            Field::new("parameters", DataType::Utf8, false),
            Field::new("explanation", DataType::Utf8, false),
        ]))
    })
    .clone()
}

/// Settings of the decision rule.
#[derive(Debug, Clone)]
pub struct DecisionConfig {
    /// Anomalies scoring at or above this become decisions.
    pub threshold: f64,
    /// And only when |z| (robust standard deviations from the expectation of the part that
    /// fired) is at least this.
    pub min_deviation: f64,
    /// After a decision about a series, further anomalies of that series within this many
    /// milliseconds of its last anomalous window are the same incident and produce no decision.
    pub rearm_ms: i64,
    /// Baseline size of a fully warmed-up series (for the confidence figure).
    pub full_support: u32,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        Self { threshold: 0.999, min_deviation: 8.0, rearm_ms: 300_000, full_support: 120 }
    }
}

/// The series a decision is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesRef {
    /// Canonical series key, `name{k="v",...}`.
    pub key: String,
    /// Metric name.
    pub name: String,
    /// Labels, sorted by key.
    pub labels: BTreeMap<String, String>,
}

/// What was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The feature scored (e.g. `mean`).
    pub feature: String,
    /// Its value in the window.
    pub value: f64,
    /// What the baseline expected.
    pub expected: f64,
    /// Normal band `[lower, upper]`.
    pub band: [f64; 2],
    /// Anomaly score in [0, 1].
    pub score: f64,
    /// Robust z-score.
    pub z: f64,
    /// Window start (RFC 3339).
    pub window_start: String,
    /// Window end (RFC 3339).
    pub window_end: String,
}

/// What an executor should do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Action name: `scale_out`, `open_incident`, `run_runbook` or `investigate`.
    pub action: String,
    /// Parameters of the action.
    pub parameters: BTreeMap<String, serde_json::Value>,
}

/// A decision, as published to the decisions topic (JSON) and kept in the `decisions` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Deterministic id: hash of rule, series and window, so a replay yields the same id.
    pub id: String,
    /// When it applies: the end of the window it was made from (RFC 3339).
    pub time: String,
    /// `anomaly.spike` (above the band) or `anomaly.drop` (below it).
    pub kind: String,
    /// `critical` (score >= 0.95) or `warning`.
    pub severity: String,
    /// The rule that made it.
    pub rule: String,
    /// The series concerned.
    pub series: SeriesRef,
    /// What was measured.
    pub evidence: Evidence,
    /// How sure: the score discounted by how much history backs the baseline.
    pub confidence: f64,
    /// What to do.
    pub recommendation: Recommendation,
    /// One sentence for a person.
    pub explanation: String,
}

impl Decision {
    /// The entity a decision is keyed by on Kafka: the canonical series key, so every decision
    /// about one series lands in one partition, in order.
    pub fn entity(&self) -> &str {
        &self.series.key
    }
}

/// Turns anomalies into decisions; holds per-series "already firing" state.
#[derive(Debug)]
pub struct DecisionRule {
    cfg: DecisionConfig,
    /// Per series: window start of its last anomaly at or above the threshold.
    last_high: HashMap<u64, i64>,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// Parses a canonical series key back into name and labels.
pub(crate) fn parse_series_key(key: &str) -> (String, BTreeMap<String, String>) {
    let Some(open) = key.find('{') else { return (key.to_string(), BTreeMap::new()) };
    let name = key[..open].to_string();
    let body = key[open + 1..].strip_suffix('}').unwrap_or(&key[open + 1..]);
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let k: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if k.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut v = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => v.push('\n'),
                    Some(o) => v.push(o),
                    None => break,
                },
                '"' => break,
                c => v.push(c),
            }
        }
        labels.insert(k, v);
        if chars.next() != Some(',') {
            break;
        }
    }
    (name, labels)
}

fn recommend(name: &str, labels: &BTreeMap<String, String>, up: bool, severity: &str, key: &str) -> Recommendation {
    let n = name.to_ascii_lowercase();
    let target = labels.get("service").or_else(|| labels.get("host")).cloned().unwrap_or_else(|| key.to_string());
    let mut p = BTreeMap::new();
    let action = if up && (n.contains("error") || n.contains("5xx") || n.contains("fail")) {
        p.insert("service".into(), target.into());
        p.insert("severity".into(), severity.into());
        "open_incident"
    } else if up && (n.contains("latency") || n.contains("cpu") || n.contains("utilization") || n.contains("saturation") || n.contains("queue")) {
        p.insert("service".into(), target.into());
        p.insert("replicas_delta".into(), (if severity == "critical" { 2 } else { 1 }).into());
        "scale_out"
    } else if up && (n.contains("memory") || n.contains("disk") || n.contains("heap")) {
        let rb = if n.contains("disk") { "disk-pressure" } else { "memory-pressure" };
        p.insert("runbook".into(), rb.into());
        if let Some(h) = labels.get("host") {
            p.insert("host".into(), h.clone().into());
        }
        p.insert("service".into(), target.into());
        "run_runbook"
    } else {
        p.insert("series".into(), key.into());
        "investigate"
    };
    Recommendation { action: action.into(), parameters: p }
}

impl DecisionRule {
    /// The rule's name, part of every decision id.
    pub const NAME: &'static str = "anomaly_score";

    /// A rule with no state.
    pub fn new(cfg: DecisionConfig) -> Self {
        Self { cfg, last_high: HashMap::new() }
    }

    /// Per series (of those `keep` selects): window start of its last anomaly at or above the
    /// threshold, for a checkpoint.
    pub fn export(&self, keep: &dyn Fn(u64) -> bool) -> Vec<(u64, i64)> {
        self.last_high.iter().filter(|(id, _)| keep(**id)).map(|(id, t)| (*id, *t)).collect()
    }

    /// Takes "already firing" state from a checkpoint.
    pub fn import(&mut self, last_high: Vec<(u64, i64)>) {
        self.last_high.extend(last_high);
    }

    /// Forgets the series `drop` selects.
    pub fn forget(&mut self, drop: &dyn Fn(u64) -> bool) {
        self.last_high.retain(|id, _| !drop(*id));
    }

    /// Schema of the `decisions` table.
    pub fn table_schema() -> SchemaRef {
        decisions_schema()
    }

    /// Decides on an `anomalies` batch (rows in window order). Returns the new decisions.
    pub fn decide(&mut self, anomalies: &RecordBatch) -> Result<Vec<Decision>> {
        if anomalies.schema() != anomalies_schema() {
            return Err(Error::Input("decide() takes a batch in the anomalies schema".into()));
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
            let sid = ids.value(i);
            let start = ws.value(i);
            let previous = self.last_high.insert(sid, start);
            if let Some(prev) = previous {
                // Same window (several parts or the fleet check fired on it), or the same
                // incident still going: one decision (its id is rule + series + window).
                if start >= prev && start - prev <= self.cfg.rearm_ms {
                    continue;
                }
            }
            let key = series.value(i);
            let (name, labels) = parse_series_key(key);
            let up = z.value(i) >= 0.0;
            // Scores are one minus a tail probability: 0.9999 is one in ten thousand.
            let severity = if s >= 0.9999 { "critical" } else { "warning" };
            let id_src = format!("{}|{sid:016x}|{start}", Self::NAME);
            let id = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(id_src.as_bytes()));
            let warm = (support.value(i) as f64 / self.cfg.full_support.max(1) as f64).min(1.0);
            out.push(Decision {
                id,
                time: rfc3339(we.value(i)),
                kind: match (part.value(i), up) {
                    ("shift", true) => "anomaly.shift_up",
                    ("shift", false) => "anomaly.shift_down",
                    ("fleet", _) => "anomaly.fleet_outlier",
                    (_, true) => "anomaly.spike",
                    (_, false) => "anomaly.drop",
                }
                .into(),
                severity: severity.into(),
                rule: format!("{} >= {}", Self::NAME, self.cfg.threshold),
                recommendation: recommend(&name, &labels, up, severity, key),
                series: SeriesRef { key: key.to_string(), name, labels },
                evidence: Evidence {
                    feature: feature.value(i).to_string(),
                    value: value.value(i),
                    expected: round(expected.value(i), 6),
                    band: [round(lower.value(i), 6), round(upper.value(i), 6)],
                    score: round(s, 4),
                    z: round(z.value(i), 3),
                    window_start: rfc3339(start),
                    window_end: rfc3339(we.value(i)),
                },
                confidence: round(s * (0.5 + 0.5 * warm), 3),
                explanation: explanation.value(i).to_string(),
            });
        }
        Ok(out)
    }

    /// The decisions as a batch in the `decisions` table schema.
    pub fn to_batch(decisions: &[Decision]) -> Result<RecordBatch> {
        let n = decisions.len();
        let mut s: Vec<StringBuilder> = (0..9).map(|_| StringBuilder::with_capacity(n, n * 32)).collect();
        let mut fl: Vec<Float64Builder> = (0..6).map(|_| Float64Builder::with_capacity(n)).collect();
        let mut time = TimestampMillisecondBuilder::with_capacity(n).with_timezone("+00:00");
        for d in decisions {
            let t = chrono::DateTime::parse_from_rfc3339(&d.time).map(|t| t.timestamp_millis()).unwrap_or(0);
            time.append_value(t);
            s[0].append_value(&d.id);
            s[1].append_value(&d.kind);
            s[2].append_value(&d.severity);
            s[3].append_value(&d.series.key);
            s[4].append_value(&d.series.name);
            s[5].append_value(serde_json::to_string(&d.series.labels).unwrap_or_default());
            s[6].append_value(&d.recommendation.action);
            s[7].append_value(serde_json::to_string(&d.recommendation.parameters).unwrap_or_default());
            s[8].append_value(&d.explanation);
            let e = &d.evidence;
            for (b, v) in fl.iter_mut().zip([e.value, e.expected, e.band[0], e.band[1], e.score, d.confidence]) {
                b.append_value(v);
            }
        }
        let mut s: Vec<_> = s.into_iter().map(|mut b| Arc::new(b.finish()) as Arc<dyn Array>).collect();
        let mut fl: Vec<_> = fl.into_iter().map(|mut b| Arc::new(b.finish()) as Arc<dyn Array>).collect();
        let cols = vec![
            s.remove(0),
            Arc::new(time.finish()) as Arc<dyn Array>,
            s.remove(0),
            s.remove(0),
            s.remove(0),
            s.remove(0),
            s.remove(0),
            fl.remove(0),
            fl.remove(0),
            fl.remove(0),
            fl.remove(0),
            fl.remove(0),
            fl.remove(0),
            s.remove(0),
            s.remove(0),
            s.remove(0),
        ];
        Ok(RecordBatch::try_new(decisions_schema(), cols)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::{Detector, DetectorConfig};

    fn features(window: i64, rows: &[(u64, &str, f64)]) -> RecordBatch {
        crate::columns::test_features(window, rows)
    }

    #[test]
    fn series_keys_round_trip() {
        let (n, l) = parse_series_key(r#"cpu{host="h\"1",service="checkout"}"#);
        assert_eq!(n, "cpu");
        assert_eq!(l["host"], "h\"1");
        assert_eq!(l["service"], "checkout");
        assert_eq!(parse_series_key("up"), ("up".to_string(), BTreeMap::new()));
    }

    #[test]
    fn persistent_anomaly_makes_one_decision_with_a_stable_id() {
        let run = || {
            let mut det = Detector::new(DetectorConfig::default());
            let mut rule = DecisionRule::new(DecisionConfig::default());
            let key = r#"cpu_utilization{host="h1",service="checkout"}"#;
            let mut all = Vec::new();
            for w in 0..60i64 {
                let v = if w >= 50 { 0.95 } else { 0.40 + 0.01 * ((w * 7) % 5) as f64 };
                let a = det.score_batch(&features(w * 10_000, &[(42, key, v), (43, "other", 1.0 + (w % 3) as f64 * 0.01)]), "mean").unwrap();
                all.extend(rule.decide(&a).unwrap());
            }
            all
        };
        let a = run();
        assert_eq!(a.len(), 1, "{a:#?}");
        let d = &a[0];
        assert_eq!(d.kind, "anomaly.spike");
        assert_eq!(d.severity, "critical");
        assert_eq!(d.series.labels["service"], "checkout");
        assert_eq!(d.recommendation.action, "scale_out");
        assert_eq!(d.evidence.window_start, "1970-01-01T00:08:20.000Z");
        assert_eq!(d.time, "1970-01-01T00:08:30.000Z");
        assert!(d.evidence.band[1] < 0.95 && d.evidence.expected > 0.39);
        assert!(d.confidence > 0.5 && d.confidence <= 1.0);
        assert_eq!(run()[0].id, d.id, "a replay yields the same id");
        // The fleet check firing on the same series and window adds no second decision (it
        // would carry the same id).
        let mut rule = DecisionRule::new(DecisionConfig::default());
        let mut det = Detector::new(DetectorConfig::default());
        let key = r#"cpu_utilization{host="h1",service="checkout"}"#;
        let mut first = None;
        for w in 0..60i64 {
            let v = if w >= 50 { 0.95 } else { 0.40 + 0.01 * ((w * 7) % 5) as f64 };
            let a = det.score_batch(&features(w * 10_000, &[(42, key, v)]), "mean").unwrap();
            if a.num_rows() > 0 && first.is_none() {
                first = Some(a);
            }
        }
        let once = first.unwrap();
        let twice = arrow::compute::concat_batches(&once.schema(), [&once, &once]).unwrap();
        assert_eq!(rule.decide(&twice).unwrap().len(), 1);
        let b = DecisionRule::to_batch(&a).unwrap();
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.schema(), decisions_schema());
    }
}
