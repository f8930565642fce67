//! Decisions as executors read them: the payload published to the decisions topic (CloudEvents
//! binary mode; the JSON carries `status`, `fingerprint`, `labels` and `annotations` so that
//! Alertmanager- and Keep-style receivers map it without code), and the tables `decisions`,
//! `decision_log` (every decision and every suppression, with its reason) and
//! `decision_outcomes` (what executors and people answered).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, Float64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::Result;

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

/// Epoch ms as RFC 3339 (UTC, milliseconds).
pub(crate) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

pub(crate) fn round(x: f64, digits: i32) -> f64 {
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


/// How much harm a wrong action can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Reversible and cheap (open a ticket, page).
    #[default]
    Low,
    /// Changes the system, reversibly (scale out, run a runbook).
    Medium,
    /// Hard to reverse or disruptive (restart, fail over, delete).
    High,
}

impl Risk {
    /// `low`, `medium` or `high`.
    pub fn name(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
        }
    }
}

/// What happens to a policy's decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Published for executors to act on.
    #[default]
    Auto,
    /// Held until approved on the feedback topic, then published.
    Approval,
    /// Logged in `decision_log`, never published.
    DryRun,
}

impl Mode {
    /// `auto`, `approval` or `dry_run`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Approval => "approval",
            Mode::DryRun => "dry_run",
        }
    }
}

/// What to act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// `service`, `host`, `resource` or `series`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// The incident a decision is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentRef {
    /// Incident id.
    pub id: String,
    /// Correlation key (the entity).
    pub key: String,
    /// `opened`, `updated` or `resolved`.
    pub state: String,
    /// When its first signal's window started (RFC 3339).
    pub opened_at: String,
    /// When it resolved (RFC 3339), once it has.
    pub resolved_at: Option<String>,
    /// The earliest mover (series key).
    pub origin: String,
    /// Member series.
    pub members: Vec<String>,
    /// Highest severity of its signals.
    pub severity: String,
}

/// What was measured (the incident's first signal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The series.
    pub series: String,
    /// The feature scored (e.g. `mean`; `forecast` for a capacity signal).
    pub feature: String,
    /// Its value in the window.
    pub value: f64,
    /// What the baseline expected (for a capacity signal: the limit).
    pub expected: f64,
    /// Normal band `[lower, upper]` (for a capacity signal: the 95% interval of the next window).
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

/// When a forecast says a limit will be reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// The series forecast.
    pub series: String,
    /// The limit.
    pub limit: f64,
    /// When the point forecast reaches it (RFC 3339), if within the horizon.
    pub expected_at: Option<String>,
    /// The 95% interval of when: from (the earliest it may happen) ...
    pub earliest: String,
    /// ... to (by then it almost surely has), if within the horizon.
    pub latest: Option<String>,
    /// Forecasting method.
    pub method: String,
}

/// The approval state of a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// `not_required`, `pending` or `approved`.
    pub state: String,
    /// Who approved (null unless approved).
    pub by: Option<String>,
    /// When (RFC 3339; null unless approved).
    pub at: Option<String>,
}

/// A decision, as published to the decisions topic (JSON) and kept in the `decisions` table.
/// The JSON Schema is `docs/schemas/decision.schema.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Deterministic id: incident, policy, action and status, so a replay yields the same id.
    pub id: String,
    /// Event time it was made (RFC 3339).
    pub time: String,
    /// `incident.opened`, `incident.updated`, `incident.resolved`, `capacity.limit_expected`, or
    /// the policy's own kind.
    pub kind: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// Stable for the problem: the same on its firing and resolved events (PagerDuty's
    /// `dedup_key`, Alertmanager's fingerprint).
    pub fingerprint: String,
    /// `critical`, `warning` or `info`.
    pub severity: String,
    /// The policy that made it.
    pub policy: String,
    /// The policy's risk.
    pub risk: Risk,
    /// The policy's mode.
    pub mode: Mode,
    /// Approval state.
    pub approval: Approval,
    /// What to act on.
    pub target: Target,
    /// What to do.
    pub action: String,
    /// Parameters of the action.
    pub parameters: BTreeMap<String, serde_json::Value>,
    /// How sure, in [0, 1].
    pub confidence: f64,
    /// The incident.
    pub incident: IncidentRef,
    /// Alertmanager-style labels: `alertname` (the policy), `severity`, the correlation label,
    /// `action`, `target`.
    pub labels: BTreeMap<String, String>,
    /// `summary`, `description`, and `runbook_url` when the policy has one.
    pub annotations: BTreeMap<String, String>,
    /// The incident's first signal.
    pub evidence: Evidence,
    /// When a forecast says a limit will be reached (null otherwise).
    pub capacity: Option<Capacity>,
    /// One sentence for a person.
    pub explanation: String,
}

impl Decision {
    /// The Kafka key: the incident's correlation key, so every decision about one entity lands
    /// in one partition, in order.
    pub fn entity(&self) -> &str {
        &self.incident.key
    }

    /// The CloudEvents type: `dev.vigil.<kind>`.
    pub fn ce_type(&self) -> String {
        format!("dev.vigil.{}", self.kind)
    }
}

fn ts_field(name: &str, nullable: bool) -> Field {
    Field::new(name, ts_type(), nullable)
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

/// Schema of the `decisions` table.
pub fn decisions_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        let mut f = vec![ts_field("time", false)];
        f.extend(DECISION_TEXT.iter().map(|n| utf8(n)));
        f.push(Field::new("confidence", DataType::Float64, false));
        Arc::new(Schema::new(f))
    })
    .clone()
}

const DECISION_TEXT: [&str; 20] = [
    "id", "kind", "status", "fingerprint", "incident_id", "incident_key", "incident_state", "policy", "severity", "risk", "mode", "approval",
    "target_kind", "target", "action", "parameters", "origin", "members", "labels", "explanation",
];

fn decision_text(d: &Decision) -> [String; 20] {
    [
        d.id.clone(),
        d.kind.clone(),
        d.status.clone(),
        d.fingerprint.clone(),
        d.incident.id.clone(),
        d.incident.key.clone(),
        d.incident.state.clone(),
        d.policy.clone(),
        d.severity.clone(),
        d.risk.name().into(),
        d.mode.name().into(),
        d.approval.state.clone(),
        d.target.kind.clone(),
        d.target.name.clone(),
        d.action.clone(),
        json(&d.parameters),
        d.incident.origin.clone(),
        d.incident.members.join(","),
        json(&d.labels),
        d.explanation.clone(),
    ]
}

/// JSON text of a map (for the table's text columns).
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn ms(rfc: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc).map(|t| t.timestamp_millis()).unwrap_or(0)
}

/// Decisions as rows of the `decisions` table.
pub fn decisions_batch(decisions: &[Decision]) -> Result<RecordBatch> {
    let mut time = TimestampMillisecondBuilder::with_capacity(decisions.len()).with_timezone("+00:00");
    let mut text: Vec<StringBuilder> = (0..DECISION_TEXT.len()).map(|_| StringBuilder::new()).collect();
    let mut conf = Float64Builder::with_capacity(decisions.len());
    for d in decisions {
        time.append_value(ms(&d.time));
        for (b, v) in text.iter_mut().zip(decision_text(d)) {
            b.append_value(v);
        }
        conf.append_value(d.confidence);
    }
    let mut cols: Vec<ArrayRef> = vec![Arc::new(time.finish())];
    cols.extend(text.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef));
    cols.push(Arc::new(conf.finish()));
    Ok(RecordBatch::try_new(decisions_schema(), cols)?)
}

/// One line of the audit log: a decision made, or one not made, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Event time, epoch ms.
    pub time_ms: i64,
    /// `published`, `resolved`, `approved`, `dry_run`, `waiting_for_approval`, `cooldown`,
    /// `rate_limited`, `snoozed`, `rejected`, `dropped` or `no_policy`.
    pub outcome: String,
    /// Why, for a person.
    pub reason: String,
    /// The decision made or withheld (its id, policy, action, ...), if one was formed.
    pub decision: Option<Box<Decision>>,
    /// The incident.
    pub incident_id: String,
}

/// Schema of the `decision_log` table.
pub fn decision_log_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            ts_field("time", false),
            utf8("outcome"),
            utf8("reason"),
            utf8("incident_id"),
            Field::new("decision_id", DataType::Utf8, true),
            Field::new("fingerprint", DataType::Utf8, true),
            Field::new("policy", DataType::Utf8, true),
            Field::new("action", DataType::Utf8, true),
            Field::new("target", DataType::Utf8, true),
            Field::new("decision", DataType::Utf8, true),
        ]))
    })
    .clone()
}

/// Log entries as rows of the `decision_log` table.
pub fn decision_log_batch(entries: &[LogEntry]) -> Result<RecordBatch> {
    let mut time = TimestampMillisecondBuilder::with_capacity(entries.len()).with_timezone("+00:00");
    let mut text: Vec<StringBuilder> = (0..9).map(|_| StringBuilder::new()).collect();
    for e in entries {
        time.append_value(e.time_ms);
        text[0].append_value(&e.outcome);
        text[1].append_value(&e.reason);
        text[2].append_value(&e.incident_id);
        let d = e.decision.as_deref();
        text[3].append_option(d.map(|d| d.id.as_str()));
        text[4].append_option(d.map(|d| d.fingerprint.as_str()));
        text[5].append_option(d.map(|d| d.policy.as_str()));
        text[6].append_option(d.map(|d| d.action.as_str()));
        text[7].append_option(d.map(|d| d.target.name.as_str()));
        text[8].append_option(d.map(|d| serde_json::to_string(d).unwrap_or_default()));
    }
    let mut cols: Vec<ArrayRef> = vec![Arc::new(time.finish())];
    cols.extend(text.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef));
    Ok(RecordBatch::try_new(decision_log_schema(), cols)?)
}

/// An answer about a decision, as stored in `decision_outcomes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// When it was given (the feedback's `time`), epoch ms.
    pub time_ms: i64,
    /// The decision answered (if known).
    pub decision_id: Option<String>,
    /// The incident.
    pub incident_id: Option<String>,
    /// The decision's fingerprint, if known.
    pub fingerprint: Option<String>,
    /// The decision's policy, if known.
    pub policy: Option<String>,
    /// `approved`, `rejected`, `executed`, `failed` or `snoozed`.
    pub outcome: String,
    /// Who.
    pub by: String,
    /// Free text.
    pub note: String,
}

/// Schema of the `decision_outcomes` table.
pub fn outcomes_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            ts_field("time", false),
            Field::new("decision_id", DataType::Utf8, true),
            Field::new("incident_id", DataType::Utf8, true),
            Field::new("fingerprint", DataType::Utf8, true),
            Field::new("policy", DataType::Utf8, true),
            utf8("outcome"),
            utf8("by"),
            utf8("note"),
        ]))
    })
    .clone()
}

/// Outcomes as rows of the `decision_outcomes` table.
pub fn outcomes_batch(outcomes: &[Outcome]) -> Result<RecordBatch> {
    let mut time = TimestampMillisecondBuilder::with_capacity(outcomes.len()).with_timezone("+00:00");
    let mut text: Vec<StringBuilder> = (0..7).map(|_| StringBuilder::new()).collect();
    for o in outcomes {
        time.append_value(o.time_ms);
        text[0].append_option(o.decision_id.as_deref());
        text[1].append_option(o.incident_id.as_deref());
        text[2].append_option(o.fingerprint.as_deref());
        text[3].append_option(o.policy.as_deref());
        text[4].append_value(&o.outcome);
        text[5].append_value(&o.by);
        text[6].append_value(&o.note);
    }
    let mut cols: Vec<ArrayRef> = vec![Arc::new(time.finish())];
    cols.extend(text.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef));
    Ok(RecordBatch::try_new(outcomes_schema(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_keys_round_trip() {
        let (n, l) = parse_series_key(r#"cpu{host="h\"1",service="checkout"}"#);
        assert_eq!(n, "cpu");
        assert_eq!(l["host"], "h\"1");
        assert_eq!(l["service"], "checkout");
        assert_eq!(parse_series_key("up"), ("up".to_string(), BTreeMap::new()));
    }
}
