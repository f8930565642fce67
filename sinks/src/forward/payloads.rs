//! The decision as the forwarder reads it, and the three payloads made from it.
//!
//! Field names follow the receivers' own documentation exactly: Alertmanager's webhook payload
//! version 4 (`groupKey`, `truncatedAlerts`, `externalURL`, `startsAt`, `generatorURL`, ...)
//! and PagerDuty's Events API v2 (`routing_key`, `event_action`, `dedup_key`, `payload`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// What Alertmanager writes as `endsAt` of an alert that is still firing.
pub const FIRING_ENDS_AT: &str = "0001-01-01T00:00:00Z";

/// PagerDuty's limit on `payload.summary`, in characters.
pub const PAGERDUTY_SUMMARY_MAX: usize = 1024;

/// Whether the condition a decision reports holds or has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The condition holds.
    Firing,
    /// The condition has ended.
    Resolved,
}

impl Status {
    /// `firing` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// What the decision is about.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DecisionTarget {
    /// `service`, `host`, `resource` or `series`.
    pub kind: Option<String>,
    /// Its name, e.g. `checkout`.
    pub name: Option<String>,
}

/// The incident a decision belongs to.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Incident {
    /// Incident id.
    pub id: Option<String>,
    /// What the incident is grouped by, e.g. the service.
    pub key: Option<String>,
    /// When it opened (RFC 3339).
    pub opened_at: Option<String>,
    /// When it was resolved (RFC 3339), if it was.
    pub resolved_at: Option<String>,
    /// The series key it started from.
    pub origin: Option<String>,
    /// Series keys taking part.
    pub members: Vec<String>,
}

/// A decision record as the forwarder reads it: only `id`, `status` and `fingerprint` are
/// required, everything else may be missing (or `null`), and unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Decision {
    /// Decision id (the CloudEvents `ce_id`).
    pub id: String,
    /// `firing` or `resolved`.
    pub status: Status,
    /// Stable per incident: the same for its opening, updates and resolution.
    pub fingerprint: String,
    /// When the decision was made (RFC 3339).
    #[serde(default)]
    pub time: Option<String>,
    /// E.g. `incident.opened`, `incident.resolved`, `capacity.limit_expected`.
    #[serde(default)]
    pub kind: Option<String>,
    /// `critical`, `warning` or `info`.
    #[serde(default)]
    pub severity: Option<String>,
    /// Name of the policy that made it.
    #[serde(default)]
    pub policy: Option<String>,
    /// What it is about.
    #[serde(default)]
    pub target: Option<DecisionTarget>,
    /// Recommended action, e.g. `scale_out`.
    #[serde(default)]
    pub action: Option<String>,
    /// The incident it belongs to.
    #[serde(default)]
    pub incident: Option<Incident>,
    /// Alert labels (`alertname`, `severity`, `service`, ...); values that are not strings are
    /// written as JSON.
    #[serde(default, deserialize_with = "string_map")]
    pub labels: BTreeMap<String, String>,
    /// Alert annotations (`summary`, `description`, `runbook_url`, ...).
    #[serde(default, deserialize_with = "string_map")]
    pub annotations: BTreeMap<String, String>,
    /// Why, in words.
    #[serde(default)]
    pub explanation: Option<String>,
}

fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let m: Option<BTreeMap<String, Value>> = Option::deserialize(d)?;
    Ok(m.unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::Null => None,
            Value::String(s) => Some((k, s)),
            other => Some((k, other.to_string())),
        })
        .collect())
}

/// A decision and the JSON it came as (kept whole for `custom_details` and webhooks).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedDecision {
    /// The fields the payloads use.
    pub decision: Decision,
    /// The whole record.
    pub json: Value,
}

/// Reads a decision record; the error is the reason it is malformed (for the dead-letter
/// header): not JSON, not an object, or `id`, `status` or `fingerprint` missing or empty.
pub fn parse_decision(payload: &[u8]) -> Result<ParsedDecision, String> {
    if payload.is_empty() {
        return Err("empty record: not a decision".into());
    }
    let json: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    if !json.is_object() {
        return Err("not a JSON object: not a decision".into());
    }
    let decision = Decision::deserialize(&json).map_err(|e| format!("not a decision: {e}"))?;
    for (field, v) in [("id", &decision.id), ("fingerprint", &decision.fingerprint)] {
        if v.trim().is_empty() {
            return Err(format!("not a decision: `{field}` is empty"));
        }
    }
    Ok(ParsedDecision { decision, json })
}

impl Decision {
    fn target_name(&self) -> Option<&str> {
        self.target.as_ref().and_then(|t| t.name.as_deref()).filter(|s| !s.is_empty())
    }

    fn incident_field(&self, f: impl Fn(&Incident) -> Option<&String>) -> Option<&str> {
        self.incident.as_ref().and_then(f).map(String::as_str).filter(|s| !s.is_empty())
    }

    /// When the condition began: the incident's `opened_at`, else the decision's `time`.
    pub fn starts_at(&self) -> Option<&str> {
        self.incident_field(|i| i.opened_at.as_ref()).or(self.time.as_deref())
    }

    /// When it ended, for a resolved decision: the incident's `resolved_at`, else `time`.
    pub fn ends_at(&self) -> Option<&str> {
        match self.status {
            Status::Firing => None,
            Status::Resolved => self.incident_field(|i| i.resolved_at.as_ref()).or(self.time.as_deref()),
        }
    }

    /// A one-line summary: the `summary` annotation, else the explanation, else kind and target.
    pub fn summary(&self) -> String {
        if let Some(s) = self.annotations.get("summary").filter(|s| !s.trim().is_empty()) {
            return s.clone();
        }
        if let Some(s) = self.explanation.as_ref().filter(|s| !s.trim().is_empty()) {
            return s.clone();
        }
        format!("{} {}", self.kind.as_deref().unwrap_or("vigil decision"), self.target_name().unwrap_or("")).trim_end().to_string()
    }
}

/// One alert of an Alertmanager webhook payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerAlert {
    /// `firing` or `resolved`.
    pub status: &'static str,
    /// The decision's labels (`alertname` added when missing).
    pub labels: BTreeMap<String, String>,
    /// The decision's annotations.
    pub annotations: BTreeMap<String, String>,
    /// When the incident opened.
    pub starts_at: String,
    /// When it was resolved; `0001-01-01T00:00:00Z` while firing.
    pub ends_at: String,
    /// Link back to Vigil (may be empty).
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    /// The decision's fingerprint.
    pub fingerprint: String,
}

/// The webhook payload Alertmanager POSTs to its receivers, version 4, with one alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerPayload {
    /// Always `"4"`.
    pub version: &'static str,
    /// One group per incident: `{}:{fingerprint="<fingerprint>"}`.
    pub group_key: String,
    /// Always 0 (one alert per notification).
    pub truncated_alerts: u32,
    /// `firing` or `resolved`.
    pub status: &'static str,
    /// The target's name.
    pub receiver: String,
    /// Always empty.
    pub group_labels: BTreeMap<String, String>,
    /// The alert's labels.
    pub common_labels: BTreeMap<String, String>,
    /// The alert's annotations.
    pub common_annotations: BTreeMap<String, String>,
    /// Link back to Vigil (may be empty).
    #[serde(rename = "externalURL")]
    pub external_url: String,
    /// The one alert.
    pub alerts: Vec<AlertmanagerAlert>,
}

/// The Alertmanager webhook payload for `d`, as receiver `receiver`.
pub fn alertmanager(d: &Decision, receiver: &str, generator_url: &str) -> AlertmanagerPayload {
    let mut labels = d.labels.clone();
    if !labels.contains_key("alertname") {
        // Every Alertmanager alert has one; receivers title and group by it.
        let name = d.policy.clone().or_else(|| d.kind.clone()).unwrap_or_else(|| "VigilDecision".into());
        labels.insert("alertname".into(), name);
    }
    let status = d.status.as_str();
    let alert = AlertmanagerAlert {
        status,
        labels: labels.clone(),
        annotations: d.annotations.clone(),
        starts_at: d.starts_at().unwrap_or(FIRING_ENDS_AT).to_string(),
        ends_at: d.ends_at().unwrap_or(FIRING_ENDS_AT).to_string(),
        generator_url: generator_url.to_string(),
        fingerprint: d.fingerprint.clone(),
    };
    AlertmanagerPayload {
        version: "4",
        group_key: format!("{{}}:{{fingerprint=\"{}\"}}", d.fingerprint),
        truncated_alerts: 0,
        status,
        receiver: receiver.to_string(),
        group_labels: BTreeMap::new(),
        common_labels: labels,
        common_annotations: d.annotations.clone(),
        external_url: generator_url.to_string(),
        alerts: vec![alert],
    }
}

/// `payload` of a PagerDuty trigger event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PagerDutyDetails {
    /// The summary annotation, at most 1024 characters.
    pub summary: String,
    /// The target's name.
    pub source: String,
    /// `critical`, `error`, `warning` or `info`.
    pub severity: &'static str,
    /// When the decision was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// The target's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// The incident's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The decision's kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// The whole decision.
    pub custom_details: Value,
}

/// A PagerDuty Events API v2 event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PagerDutyEvent {
    /// The service's integration key.
    pub routing_key: String,
    /// `trigger` or `resolve`.
    pub event_action: &'static str,
    /// The decision's fingerprint: the trigger and the resolve of one incident share it.
    pub dedup_key: String,
    /// Only on triggers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<PagerDutyDetails>,
}

/// PagerDuty's severity for a decision's: `critical`, `warning`, `info`, else `error`.
pub fn pagerduty_severity(severity: Option<&str>) -> &'static str {
    match severity {
        Some("critical") => "critical",
        Some("warning") => "warning",
        Some("info") => "info",
        _ => "error",
    }
}

/// At most `max` characters of `s`.
fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// The PagerDuty event for `parsed`: a trigger for a firing decision, a resolve for a resolved one.
pub fn pagerduty(parsed: &ParsedDecision, routing_key: &str) -> PagerDutyEvent {
    let d = &parsed.decision;
    let payload = match d.status {
        Status::Resolved => None,
        Status::Firing => Some(PagerDutyDetails {
            summary: truncate_chars(&d.summary(), PAGERDUTY_SUMMARY_MAX),
            source: d.target_name().or(d.incident_field(|i| i.origin.as_ref())).unwrap_or("vigil").to_string(),
            severity: pagerduty_severity(d.severity.as_deref()),
            timestamp: d.time.clone(),
            component: d.target_name().map(String::from),
            group: d.incident_field(|i| i.key.as_ref()).map(String::from),
            class: d.kind.clone(),
            custom_details: parsed.json.clone(),
        }),
    };
    PagerDutyEvent {
        routing_key: routing_key.to_string(),
        event_action: match d.status {
            Status::Firing => "trigger",
            Status::Resolved => "resolve",
        },
        dedup_key: d.fingerprint.clone(),
        payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn firing() -> Value {
        json!({
            "id": "0123456789abcdef0123456789abcdef", "time": "2026-01-05T10:00:30Z", "kind": "incident.opened",
            "status": "firing", "fingerprint": "a1b2c3d4e5f60718", "severity": "critical", "policy": "checkout-latency",
            "risk": "low", "mode": "auto", "target": {"kind": "service", "name": "checkout"},
            "action": "scale_out", "parameters": {"replicas": 2},
            "incident": {"id": "inc-1", "key": "checkout", "opened_at": "2026-01-05T10:00:00Z", "resolved_at": null,
                         "origin": "latency_p99{service=\"checkout\"}", "members": ["a", "b"]},
            "labels": {"alertname": "CheckoutLatency", "severity": "critical", "service": "checkout"},
            "annotations": {"summary": "checkout p99 latency 4x its usual level", "description": "d", "runbook_url": "https://r"},
            "explanation": "because"
        })
    }

    fn resolved() -> Value {
        let mut v = firing();
        v["status"] = json!("resolved");
        v["kind"] = json!("incident.resolved");
        v["time"] = json!("2026-01-05T10:20:00Z");
        v["incident"]["resolved_at"] = json!("2026-01-05T10:19:50Z");
        v
    }

    fn parse(v: &Value) -> ParsedDecision {
        parse_decision(&serde_json::to_vec(v).unwrap()).unwrap()
    }

    #[test]
    fn alertmanager_v4_firing_has_every_field_alertmanager_sends() {
        let p = parse(&firing());
        let v = serde_json::to_value(alertmanager(&p.decision, "keep", "http://vigil:7878")).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = vec!["version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels", "commonLabels", "commonAnnotations", "externalURL", "alerts"];
        expected.sort();
        assert_eq!(keys, expected);
        assert_eq!(v["version"], "4");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["receiver"], "keep");
        assert_eq!(v["truncatedAlerts"], 0);
        assert_eq!(v["groupLabels"], json!({}));
        assert_eq!(v["groupKey"], "{}:{fingerprint=\"a1b2c3d4e5f60718\"}");
        assert_eq!(v["externalURL"], "http://vigil:7878");
        assert_eq!(v["commonLabels"]["alertname"], "CheckoutLatency");
        assert_eq!(v["commonAnnotations"]["summary"], "checkout p99 latency 4x its usual level");
        let a = &v["alerts"][0];
        let keys: Vec<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = vec!["status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"];
        expected.sort();
        assert_eq!(keys, expected);
        assert_eq!(a["status"], "firing");
        assert_eq!(a["labels"], json!({"alertname": "CheckoutLatency", "severity": "critical", "service": "checkout"}));
        assert_eq!(a["annotations"]["runbook_url"], "https://r");
        assert_eq!(a["startsAt"], "2026-01-05T10:00:00Z");
        assert_eq!(a["endsAt"], FIRING_ENDS_AT);
        assert_eq!(a["generatorURL"], "http://vigil:7878");
        assert_eq!(a["fingerprint"], "a1b2c3d4e5f60718");
    }

    #[test]
    fn alertmanager_resolved_ends_when_the_incident_was_resolved() {
        let p = parse(&resolved());
        let v = serde_json::to_value(alertmanager(&p.decision, "r", "")).unwrap();
        assert_eq!(v["status"], "resolved");
        assert_eq!(v["alerts"][0]["status"], "resolved");
        assert_eq!(v["alerts"][0]["startsAt"], "2026-01-05T10:00:00Z");
        assert_eq!(v["alerts"][0]["endsAt"], "2026-01-05T10:19:50Z");
        assert_eq!(v["alerts"][0]["generatorURL"], "");
        // Without an incident, the decision's own time stands in.
        let mut bare = resolved();
        bare.as_object_mut().unwrap().remove("incident");
        bare.as_object_mut().unwrap().remove("labels");
        let v = serde_json::to_value(alertmanager(&parse(&bare).decision, "r", "")).unwrap();
        assert_eq!(v["alerts"][0]["startsAt"], "2026-01-05T10:20:00Z");
        assert_eq!(v["alerts"][0]["endsAt"], "2026-01-05T10:20:00Z");
        assert_eq!(v["alerts"][0]["labels"]["alertname"], "checkout-latency", "an alertname is always there");
    }

    #[test]
    fn pagerduty_trigger_maps_every_payload_field() {
        let p = parse(&firing());
        let v = serde_json::to_value(pagerduty(&p, "R0UT1NG")).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["dedup_key", "event_action", "payload", "routing_key"]);
        assert_eq!(v["routing_key"], "R0UT1NG");
        assert_eq!(v["event_action"], "trigger");
        assert_eq!(v["dedup_key"], "a1b2c3d4e5f60718");
        let pl = &v["payload"];
        assert_eq!(pl["summary"], "checkout p99 latency 4x its usual level");
        assert_eq!(pl["source"], "checkout");
        assert_eq!(pl["severity"], "critical");
        assert_eq!(pl["timestamp"], "2026-01-05T10:00:30Z");
        assert_eq!(pl["component"], "checkout");
        assert_eq!(pl["group"], "checkout");
        assert_eq!(pl["class"], "incident.opened");
        assert_eq!(pl["custom_details"], firing(), "the whole decision");
    }

    #[test]
    fn pagerduty_resolve_carries_only_key_action_and_dedup_key() {
        let v = serde_json::to_value(pagerduty(&parse(&resolved()), "R")).unwrap();
        assert_eq!(v, json!({"routing_key": "R", "event_action": "resolve", "dedup_key": "a1b2c3d4e5f60718"}));
    }

    #[test]
    fn pagerduty_severity_and_summary_limits() {
        assert_eq!(pagerduty_severity(Some("warning")), "warning");
        assert_eq!(pagerduty_severity(Some("info")), "info");
        assert_eq!(pagerduty_severity(Some("major")), "error");
        assert_eq!(pagerduty_severity(None), "error");
        let mut v = firing();
        v["annotations"]["summary"] = json!("é".repeat(3000));
        v["severity"] = json!("page");
        let ev = pagerduty(&parse(&v), "R");
        let pl = ev.payload.unwrap();
        assert_eq!(pl.summary.chars().count(), PAGERDUTY_SUMMARY_MAX);
        assert_eq!(pl.severity, "error");
        // No summary annotation: the explanation.
        v["annotations"] = json!({});
        assert_eq!(pagerduty(&parse(&v), "R").payload.unwrap().summary, "because");
    }

    #[test]
    fn lenient_on_optional_fields_strict_on_the_required_ones() {
        let d = parse(&json!({"id": "x", "status": "firing", "fingerprint": "f", "labels": {"n": 3, "gone": null}, "severity": null, "extra": [1]}));
        assert_eq!(d.decision.labels, BTreeMap::from([("n".to_string(), "3".to_string())]));
        assert_eq!(d.decision.severity, None);
        let ev = pagerduty(&d, "R");
        assert_eq!(ev.payload.as_ref().unwrap().source, "vigil");
        assert_eq!(ev.payload.as_ref().unwrap().summary, "vigil decision");
        assert!(parse_decision(b"not json").unwrap_err().starts_with("not JSON"));
        assert!(parse_decision(b"").unwrap_err().contains("empty"));
        assert!(parse_decision(b"[1]").unwrap_err().contains("not a JSON object"));
        let e = parse_decision(br#"{"id": "x", "status": "firing"}"#).unwrap_err();
        assert!(e.contains("fingerprint"), "{e}");
        let e = parse_decision(br#"{"id": "x", "status": "pending", "fingerprint": "f"}"#).unwrap_err();
        assert!(e.contains("pending"), "{e}");
        let e = parse_decision(br#"{"status": "firing", "fingerprint": "f"}"#).unwrap_err();
        assert!(e.contains("`id`"), "{e}");
        assert!(parse_decision(br#"{"id": "", "status": "firing", "fingerprint": "f"}"#).unwrap_err().contains("`id` is empty"));
    }
}
