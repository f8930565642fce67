//! Answers from executors and people, read from the feedback topic.
//!
//! ```json
//! {"decision_id": "3f2a...", "outcome": "approved", "by": "alice", "note": "go", "time": "2026-01-05T10:00:00Z"}
//! ```
//! `decision_id` or `incident_id` (or both) name what is answered; `outcome` is `approved`,
//! `rejected`, `executed`, `failed` or `snoozed`; `by` is required; `note`, `time` (RFC 3339 or
//! epoch milliseconds; default: the engine's event time) and, for a snooze, `until` are optional.

use serde::Deserialize;

/// A feedback record that cannot be used, and why (the reason goes to the dead-letter topic).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("feedback: {0}")]
pub struct FeedbackError(pub String);

/// One answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    /// The decision answered.
    pub decision_id: Option<String>,
    /// The incident answered (its current decision).
    pub incident_id: Option<String>,
    /// `approved`, `rejected`, `executed`, `failed` or `snoozed`.
    pub outcome: String,
    /// Who answered.
    pub by: String,
    /// Free text.
    pub note: String,
    /// When, epoch ms.
    pub time_ms: Option<i64>,
    /// For a snooze: until when, epoch ms.
    pub until_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    decision_id: Option<String>,
    incident_id: Option<String>,
    outcome: String,
    by: String,
    #[serde(default)]
    note: String,
    time: Option<serde_json::Value>,
    until: Option<serde_json::Value>,
}

/// Outcomes feedback may carry.
pub const OUTCOMES: [&str; 5] = ["approved", "rejected", "executed", "failed", "snoozed"];

fn time(field: &str, v: &serde_json::Value) -> Result<i64, FeedbackError> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().ok_or_else(|| FeedbackError(format!("`{field}` must be epoch milliseconds or RFC 3339"))),
        serde_json::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|e| FeedbackError(format!("`{field}` is not RFC 3339 ({e}): {s:?}"))),
        _ => Err(FeedbackError(format!("`{field}` must be epoch milliseconds or an RFC 3339 string"))),
    }
}

impl Feedback {
    /// Parses one record's payload.
    pub fn parse(payload: &[u8]) -> Result<Self, FeedbackError> {
        let raw: Raw = serde_json::from_slice(payload).map_err(|e| FeedbackError(format!("not a feedback object: {e}")))?;
        if raw.decision_id.as_deref().unwrap_or("").is_empty() && raw.incident_id.as_deref().unwrap_or("").is_empty() {
            return Err(FeedbackError("needs `decision_id` or `incident_id`".into()));
        }
        if !OUTCOMES.contains(&raw.outcome.as_str()) {
            return Err(FeedbackError(format!("`outcome` is {:?}; use one of {}", raw.outcome, OUTCOMES.join(", "))));
        }
        if raw.by.trim().is_empty() {
            return Err(FeedbackError("`by` is empty; say who answered".into()));
        }
        Ok(Self {
            decision_id: raw.decision_id.filter(|s| !s.is_empty()),
            incident_id: raw.incident_id.filter(|s| !s.is_empty()),
            outcome: raw.outcome,
            by: raw.by,
            note: raw.note,
            time_ms: raw.time.as_ref().map(|v| time("time", v)).transpose()?,
            until_ms: raw.until.as_ref().map(|v| time("until", v)).transpose()?,
        })
    }
}
