//! The gate between a policy's match and the decisions topic: one decision per incident (and one
//! more when the chosen action changes), a resolved event when it closes, and the policy's
//! cooldown, hourly limit, mode and approval rule; suppressions asked for on the feedback topic.
//! Every decision and every suppression becomes a `decision_log` entry with its reason.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{Feedback, Match, PolicySpec};
use crate::decision::{rfc3339, round, Approval, Capacity, Decision, Evidence, IncidentRef, LogEntry, Mode, Outcome, Target};
use crate::incident::Incident;

/// Decisions remembered for feedback (id → what it was), at most.
const INDEX_CAP: usize = 10_000;

/// The firing decision an incident has, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Decided {
    policy: String,
    action: String,
    /// The decision as published (or pending approval); as JSON text, since its parameters are
    /// free-form JSON values, which a checkpoint's compact encoding cannot carry.
    #[serde(with = "as_json")]
    decision: Decision,
    /// False while it waits for approval.
    published: bool,
}

/// What the gate remembers; goes through the checkpoint contract.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GateState {
    /// Per incident id: its current firing decision.
    decided: BTreeMap<String, Decided>,
    /// Per `policy|target`: event time of the last decision.
    last_by_target: BTreeMap<String, i64>,
    /// Per policy: event times of its decisions in the last hour.
    recent: BTreeMap<String, VecDeque<i64>>,
    /// Per fingerprint: suppressed until (event time), and why.
    suppressed: BTreeMap<String, (i64, String)>,
    /// Recent decisions by id: (incident id, fingerprint, policy).
    index: VecDeque<(String, String, String, String)>,
    /// Latest event time seen.
    now_ms: i64,
}

/// What the gate let through and why.
#[derive(Debug, Default)]
pub struct GateOutput {
    /// Decisions to publish.
    pub publish: Vec<Decision>,
    /// Audit entries.
    pub log: Vec<LogEntry>,
    /// Answers recorded (feedback).
    pub outcomes: Vec<Outcome>,
}

/// Applies the policies' limits and modes. See the module docs.
#[derive(Debug)]
pub struct Gate {
    specs: Vec<PolicySpec>,
    state: GateState,
    reject_suppress_ms: i64,
    snooze_ms: i64,
}

fn id_of(parts: &[&str]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(parts.join("|").as_bytes()))
}

impl Gate {
    /// A gate for `specs` (the policy set's, in order). A rejected fingerprint is suppressed
    /// for `reject_suppress_ms`; a snooze without `until` lasts `snooze_ms`.
    pub fn new(specs: Vec<PolicySpec>, reject_suppress_ms: i64, snooze_ms: i64) -> Self {
        Self { specs, state: GateState::default(), reject_suppress_ms, snooze_ms }
    }

    /// The state, for a checkpoint.
    pub fn export(&self) -> GateState {
        self.state.clone()
    }

    /// Takes the state from a checkpoint.
    pub fn import(&mut self, state: GateState) {
        self.state = state;
    }

    /// Decisions waiting for approval.
    pub fn pending(&self) -> impl Iterator<Item = &Decision> {
        self.state.decided.values().filter(|d| !d.published).map(|d| &d.decision)
    }

    fn build(&self, inc: &Incident, m: &Match, spec: &PolicySpec, status: &str, approval: &str) -> Decision {
        let firing = status == "firing";
        let kind = if !firing {
            "incident.resolved".to_string()
        } else {
            // The incident's first decision says it opened, later ones that it changed.
            let first = !self.state.decided.contains_key(&inc.id);
            spec.kind.clone().unwrap_or_else(|| format!("incident.{}", if first { "opened" } else { "updated" }))
        };
        let id = id_of(&["decision", &inc.id, &spec.name, &spec.action, status]);
        let mut labels = BTreeMap::new();
        labels.insert("alertname".to_string(), spec.name.clone());
        labels.insert("severity".to_string(), m.severity.clone());
        labels.insert(if inc.key_label == "series" { "series".to_string() } else { inc.key_label.replace('.', "_") }, inc.key.clone());
        labels.insert("action".to_string(), spec.action.clone());
        labels.insert("target".to_string(), m.target.clone());
        labels.insert("source".to_string(), "vigil".to_string());
        let summary = m.summary.clone().unwrap_or_else(|| {
            format!("{} {}: {} {} {} ({} series)", m.severity, kind, spec.action.replace('_', " "), spec.target.kind, m.target, inc.members.len())
        });
        let mut annotations = BTreeMap::new();
        annotations.insert("summary".to_string(), if firing { summary } else { format!("resolved: {summary}") });
        annotations.insert("description".to_string(), inc.first.explanation.clone());
        if let Some(u) = &m.runbook_url {
            annotations.insert("runbook_url".to_string(), u.clone());
        }
        let f = &inc.first;
        Decision {
            id,
            time: rfc3339(inc.updated_ms),
            kind,
            status: status.into(),
            fingerprint: inc.fingerprint.clone(),
            severity: m.severity.clone(),
            policy: spec.name.clone(),
            risk: spec.risk,
            mode: spec.mode,
            approval: Approval { state: approval.into(), by: None, at: None },
            target: Target { kind: spec.target.kind.clone(), name: m.target.clone() },
            action: spec.action.clone(),
            parameters: m.parameters.clone(),
            confidence: round(inc.first.confidence.max(inc.strongest.confidence), 3),
            incident: IncidentRef {
                id: inc.id.clone(),
                key: inc.key.clone(),
                state: inc.state.clone(),
                opened_at: rfc3339(inc.opened_ms),
                resolved_at: inc.resolved_ms.map(rfc3339),
                origin: inc.origin.clone(),
                members: inc.members.keys().cloned().collect(),
                severity: inc.severity.clone(),
            },
            labels,
            annotations,
            evidence: Evidence {
                series: f.series.clone(),
                feature: f.feature.clone(),
                value: f.value,
                expected: round(f.expected, 6),
                band: [round(f.band[0], 6), round(f.band[1], 6)],
                score: round(f.score, 4),
                z: round(f.z, 3),
                window_start: rfc3339(f.window_start),
                window_end: rfc3339(f.window_end),
            },
            capacity: inc.capacity.as_ref().map(|(s, c)| Capacity {
                series: s.clone(),
                limit: c.limit,
                expected_at: c.expected_ms.map(rfc3339),
                earliest: rfc3339(c.earliest_ms),
                latest: c.latest_ms.map(rfc3339),
                method: c.method.clone(),
            }),
            explanation: inc.first.explanation.clone(),
        }
    }

    fn remember(&mut self, d: &Decision) {
        self.state.index.push_back((d.id.clone(), d.incident.id.clone(), d.fingerprint.clone(), d.policy.clone()));
        while self.state.index.len() > INDEX_CAP {
            self.state.index.pop_front();
        }
    }

    fn entry(time_ms: i64, outcome: &str, reason: String, incident: &str, d: Option<&Decision>) -> LogEntry {
        LogEntry { time_ms, outcome: outcome.into(), reason, decision: d.map(|d| Box::new(d.clone())), incident_id: incident.into() }
    }

    /// Decides on the incidents that changed at event time `now_ms`, given the policies'
    /// matches for the opened and updated ones.
    pub fn decide(&mut self, incidents: &[Incident], matches: &[Match], now_ms: i64) -> GateOutput {
        let mut out = GateOutput::default();
        self.state.now_ms = self.state.now_ms.max(now_ms);
        self.state.suppressed.retain(|_, (until, _)| *until > now_ms);
        let hour_ago = now_ms - 3_600_000;
        for q in self.state.recent.values_mut() {
            while q.front().is_some_and(|t| *t <= hour_ago) {
                q.pop_front();
            }
        }
        // A cooldown that has run out is forgotten (targets come and go).
        let longest = self.specs.iter().map(|s| s.cooldown.as_millis() as i64).max().unwrap_or(0);
        self.state.last_by_target.retain(|_, t| now_ms - *t < longest);
        for inc in incidents {
            if inc.state == "resolved" {
                let Some(prev) = self.state.decided.remove(&inc.id) else { continue };
                if !prev.published {
                    out.log.push(Self::entry(now_ms, "dropped", "the incident resolved before the decision was approved".into(), &inc.id, Some(&prev.decision)));
                    continue;
                }
                let Some(spec) = self.specs.iter().find(|s| s.name == prev.policy).cloned() else { continue };
                let m = Match {
                    incident: inc.id.clone(),
                    policy: 0,
                    target: prev.decision.target.name.clone(),
                    severity: prev.decision.severity.clone(),
                    parameters: prev.decision.parameters.clone(),
                    summary: None,
                    runbook_url: prev.decision.annotations.get("runbook_url").cloned(),
                };
                let mut d = self.build(inc, &m, &spec, "resolved", &prev.decision.approval.state);
                d.approval = prev.decision.approval.clone();
                out.log.push(Self::entry(now_ms, "resolved", format!("every member quiet since {}", rfc3339(inc.last_signal_ms)), &inc.id, Some(&d)));
                self.remember(&d);
                out.publish.push(d);
                continue;
            }
            let Some(m) = matches.iter().find(|m| m.incident == inc.id) else {
                out.log.push(Self::entry(now_ms, "no_policy", "no policy's condition holds for this incident".into(), &inc.id, None));
                continue;
            };
            let spec = self.specs[m.policy].clone();
            if let Some(prev) = self.state.decided.get(&inc.id) {
                if prev.action == spec.action && prev.decision.target.name == m.target {
                    continue; // Same action on the same target as before: nothing new to say.
                }
            }
            let needs_approval = spec.mode == Mode::Approval
                || spec.approval.risk_at_least.is_some_and(|r| spec.risk >= r)
                || spec.approval.confidence_below.is_some_and(|c| inc.first.confidence.max(inc.strongest.confidence) < c);
            let d = self.build(inc, m, &spec, "firing", if needs_approval && spec.mode != Mode::DryRun { "pending" } else { "not_required" });
            let target_key = format!("{}|{}", spec.name, m.target);
            if let Some((until, why)) = self.state.suppressed.get(&inc.fingerprint) {
                out.log.push(Self::entry(now_ms, "snoozed", format!("{why} until {}", rfc3339(*until)), &inc.id, Some(&d)));
                continue;
            }
            if let Some(last) = self.state.last_by_target.get(&target_key).filter(|t| now_ms - **t < spec.cooldown.as_millis() as i64) {
                out.log.push(Self::entry(
                    now_ms,
                    "cooldown",
                    format!("policy {} decided about {} at {}; cooldown {}", spec.name, m.target, rfc3339(*last), humantime::format_duration(spec.cooldown)),
                    &inc.id,
                    Some(&d),
                ));
                continue;
            }
            let recent = self.state.recent.entry(spec.name.clone()).or_default();
            if recent.len() >= spec.max_per_hour as usize {
                out.log.push(Self::entry(now_ms, "rate_limited", format!("policy {} made {} decisions in the last hour (max_per_hour)", spec.name, recent.len()), &inc.id, Some(&d)));
                continue;
            }
            if spec.mode == Mode::DryRun {
                out.log.push(Self::entry(now_ms, "dry_run", format!("policy {} is in dry_run mode: logged, not published", spec.name), &inc.id, Some(&d)));
                continue;
            }
            recent.push_back(now_ms);
            self.state.last_by_target.insert(target_key, now_ms);
            self.remember(&d);
            if needs_approval {
                let why = match spec.mode {
                    Mode::Approval => format!("policy {} requires approval", spec.name),
                    _ => format!("risk {} or confidence {} requires approval", spec.risk.name(), d.confidence),
                };
                out.log.push(Self::entry(now_ms, "waiting_for_approval", why, &inc.id, Some(&d)));
                self.state.decided.insert(inc.id.clone(), Decided { policy: spec.name.clone(), action: spec.action.clone(), decision: d, published: false });
                continue;
            }
            out.log.push(Self::entry(now_ms, "published", format!("policy {}: {}", spec.name, spec.when.trim()), &inc.id, Some(&d)));
            self.state.decided.insert(inc.id.clone(), Decided { policy: spec.name.clone(), action: spec.action.clone(), decision: d.clone(), published: true });
            out.publish.push(d);
        }
        out
    }

    /// Applies an answer from the feedback topic. `now_ms` is used when it carries no time.
    pub fn feedback(&mut self, f: &Feedback) -> GateOutput {
        let mut out = GateOutput::default();
        let time = f.time_ms.unwrap_or(self.state.now_ms);
        // Which decision: by id, else the incident's current one.
        let known = self.state.index.iter().rev().find(|(id, inc, _, _)| f.decision_id.as_deref() == Some(id.as_str()) || (f.decision_id.is_none() && f.incident_id.as_deref() == Some(inc.as_str()))).cloned();
        let (decision_id, incident_id, fingerprint, policy) = match &known {
            Some((d, i, fp, p)) => (Some(d.clone()), Some(i.clone()), Some(fp.clone()), Some(p.clone())),
            None => (f.decision_id.clone(), f.incident_id.clone(), None, None),
        };
        out.outcomes.push(Outcome {
            time_ms: time,
            decision_id: decision_id.clone(),
            incident_id: incident_id.clone(),
            fingerprint: fingerprint.clone(),
            policy: policy.clone(),
            outcome: f.outcome.clone(),
            by: f.by.clone(),
            note: f.note.clone(),
        });
        let pending = incident_id.as_ref().and_then(|i| self.state.decided.get(i)).filter(|d| !d.published && Some(&d.decision.id) == decision_id.as_ref()).cloned();
        let incident = incident_id.clone().unwrap_or_default();
        match f.outcome.as_str() {
            "approved" => match pending {
                Some(mut p) => {
                    p.decision.approval = Approval { state: "approved".into(), by: Some(f.by.clone()), at: Some(rfc3339(time)) };
                    p.published = true;
                    out.log.push(Self::entry(time, "approved", format!("approved by {}{}", f.by, note(&f.note)), &incident, Some(&p.decision)));
                    out.publish.push(p.decision.clone());
                    self.state.decided.insert(incident.clone(), p);
                }
                None => out.log.push(Self::entry(time, "ignored", "approval for a decision that is not waiting for one (unknown, already published or resolved)".into(), &incident, None)),
            },
            "rejected" => {
                if let Some(p) = pending {
                    self.state.decided.remove(&incident);
                    out.log.push(Self::entry(time, "rejected", format!("rejected by {}{}", f.by, note(&f.note)), &incident, Some(&p.decision)));
                }
                if let Some(fp) = &fingerprint {
                    self.state.suppressed.insert(fp.clone(), (time + self.reject_suppress_ms, format!("rejected by {}", f.by)));
                }
            }
            "snoozed" => {
                if let Some(fp) = &fingerprint {
                    let until = f.until_ms.unwrap_or(time + self.snooze_ms);
                    self.state.suppressed.insert(fp.clone(), (until, format!("snoozed by {}", f.by)));
                }
            }
            _ => {}
        }
        out
    }
}

mod as_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(d: &crate::Decision, s: S) -> Result<S::Ok, S::Error> {
        serde_json::to_string(d).map_err(serde::ser::Error::custom)?.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<crate::Decision, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

fn note(n: &str) -> String {
    if n.is_empty() {
        String::new()
    } else {
        format!(": {n}")
    }
}
