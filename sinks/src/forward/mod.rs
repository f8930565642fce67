//! `vigil forward`: delivers the decisions on the decisions topic to HTTP receivers that
//! remediation and paging tools already read.
//!
//! - [`TargetKind::Alertmanager`]: the webhook payload Alertmanager POSTs to its receivers
//!   (version 4), which Keep, Grafana OnCall and other Alertmanager webhook receivers accept.
//! - [`TargetKind::Pagerduty`]: PagerDuty Events API v2 (`trigger` and `resolve`, deduplicated
//!   on the decision's fingerprint).
//! - [`TargetKind::Webhook`]: the decision JSON unchanged, with the record's CloudEvents
//!   attributes as `ce-*` headers and any configured headers.
//!
//! A [`Forwarder`] reads the topic as a consumer group and commits a record's offset only once
//! every target has accepted it, or once it has been dead-lettered because it can never be
//! delivered (not a decision, or refused by a receiver with a 4xx other than 429). Connection
//! errors, timeouts, 429 and 5xx are retried with exponential backoff and jitter, honouring
//! `Retry-After`, until the receiver answers or a stop is requested: nothing is skipped and
//! nothing is lost. Delivery is at least once; receivers deduplicate on the fingerprint
//! (Alertmanager `fingerprint`, PagerDuty `dedup_key`) or the decision id.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod deliver;
pub mod payloads;
mod run;

pub use run::{ForwardCounts, ForwardError, ForwardStats, Forwarder};

/// The PagerDuty Events API v2 endpoint, the default `url` of a `pagerduty` target.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// `[forward]`: what `vigil forward` reads and where it delivers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Consumer group of the forwarder; its committed offsets mark what every target has
    /// accepted.
    pub group_id: String,
    /// Topic the decisions are read from.
    pub topic: String,
    /// Where records go that can never be delivered (not a decision, or refused by a
    /// receiver), unchanged, with the reason in the `vigil.error` header.
    pub dlq_topic: String,
    /// Where a group without committed offsets starts reading: `latest` (decisions published
    /// from now on) or `earliest` (everything still on the topic).
    pub start_from: StartFrom,
    /// Time limit of one HTTP request, connecting included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Wait before the first retry of a failed request; it doubles with each further retry.
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    /// Longest wait between two retries (a receiver's `Retry-After` is honoured up to an hour).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// The receivers; every decision goes to each of them (`[[forward.targets]]`).
    pub targets: Vec<ForwardTarget>,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            group_id: "vigil-forward".into(),
            topic: "vigil.decisions".into(),
            dlq_topic: "vigil.dlq".into(),
            start_from: StartFrom::Latest,
            timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            targets: Vec::new(),
        }
    }
}

/// Where a consumer group without committed offsets starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// Only decisions published after the group first joins.
    Latest,
    /// Every decision still on the topic.
    Earliest,
}

/// What a target receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Alertmanager's webhook payload, version 4.
    Alertmanager,
    /// PagerDuty Events API v2.
    Pagerduty,
    /// The decision JSON unchanged.
    Webhook,
}

impl TargetKind {
    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Alertmanager => "alertmanager",
            TargetKind::Pagerduty => "pagerduty",
            TargetKind::Webhook => "webhook",
        }
    }
}

/// One receiver (`[[forward.targets]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardTarget {
    /// Name in logs and dead-letter reasons; an Alertmanager payload's `receiver`.
    pub name: String,
    /// `alertmanager`, `pagerduty` or `webhook`.
    pub kind: TargetKind,
    /// Where to POST. Required for `alertmanager` and `webhook`; `pagerduty` defaults to
    /// `https://events.pagerduty.com/v2/enqueue`.
    #[serde(default)]
    pub url: Option<String>,
    /// PagerDuty integration (routing) key of the service to page.
    #[serde(default)]
    pub routing_key: Option<String>,
    /// Instead of `routing_key`: the environment variable that holds it, so the key stays out
    /// of the file.
    #[serde(default)]
    pub routing_key_env: Option<String>,
    /// Extra HTTP headers on every request, e.g. `{ Authorization = "Bearer ..." }`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Link back to Vigil in Alertmanager payloads (`externalURL` and each alert's
    /// `generatorURL`); may be empty.
    #[serde(default)]
    pub generator_url: String,
}

impl ForwardTarget {
    /// The URL requests go to: the configured one, or PagerDuty's for a `pagerduty` target.
    pub fn effective_url(&self) -> Option<&str> {
        match (&self.url, self.kind) {
            (Some(u), _) => Some(u.as_str()),
            (None, TargetKind::Pagerduty) => Some(PAGERDUTY_EVENTS_URL),
            (None, _) => None,
        }
    }

    /// The PagerDuty routing key: `routing_key`, or the variable `routing_key_env` names.
    pub fn resolve_routing_key(&self) -> Result<Option<String>, ConfigProblem> {
        if let Some(k) = self.routing_key.as_ref().filter(|k| !k.trim().is_empty()) {
            return Ok(Some(k.clone()));
        }
        let Some(var) = &self.routing_key_env else { return Ok(None) };
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(v)),
            _ => Err(ConfigProblem::new(
                "forward.targets",
                format!("target `{}`: routing_key_env names `{var}`, which is not set or empty", self.name),
                format!("export {var}=<the PagerDuty integration key>, or set routing_key"),
            )),
        }
    }
}

/// A problem in `[forward]`: the key, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("config key `{key}`: {problem}; {fix}")]
pub struct ConfigProblem {
    /// Dotted key, e.g. `forward.targets`.
    pub key: &'static str,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

impl ConfigProblem {
    fn new(key: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { key, problem: problem.into(), fix: fix.into() }
    }
}

impl ForwardConfig {
    /// Checks the section as written. An empty `targets` list is valid here (the engine does
    /// not need one); [`Self::validate_for_run`] refuses it.
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        for (key, v) in [("forward.group_id", &self.group_id), ("forward.topic", &self.topic), ("forward.dlq_topic", &self.dlq_topic)] {
            if v.trim().is_empty() {
                return Err(ConfigProblem::new(key, "is empty", "name it, or remove the key for its default"));
            }
        }
        if self.topic == self.dlq_topic {
            return Err(ConfigProblem::new("forward.dlq_topic", format!("is the topic read, `{}`", self.topic), "use a dead-letter topic of its own, e.g. \"vigil.dlq\""));
        }
        if self.timeout < Duration::from_millis(10) {
            return Err(ConfigProblem::new("forward.timeout", "is under 10 ms", "allow a receiver time to answer, e.g. \"10s\""));
        }
        if self.min_backoff < Duration::from_millis(1) {
            return Err(ConfigProblem::new("forward.min_backoff", "is under a millisecond", "wait before retrying, e.g. \"500ms\""));
        }
        if self.max_backoff < self.min_backoff {
            return Err(ConfigProblem::new("forward.max_backoff", format!("{:?} is below forward.min_backoff {:?}", self.max_backoff, self.min_backoff), "use at least min_backoff, e.g. \"60s\""));
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &self.targets {
            if t.name.trim().is_empty() {
                return Err(ConfigProblem::new("forward.targets", "a target has an empty name", "name every target, e.g. name = \"oncall\""));
            }
            if !names.insert(t.name.as_str()) {
                return Err(ConfigProblem::new("forward.targets", format!("two targets are named `{}`", t.name), "give each target a name of its own"));
            }
            let Some(url) = t.effective_url() else {
                return Err(ConfigProblem::new("forward.targets",
                    format!("target `{}` (kind {}) has no url", t.name, t.kind.as_str()),
                    "set url to the receiver's address, e.g. url = \"http://keep:8080/alerts/event/prometheus\"",
                ));
            };
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                _ => return Err(ConfigProblem::new("forward.targets", format!("target `{}`: url `{url}` is not an http(s) address", t.name), "use http://host:port/path or https://...")),
            }
            if t.kind == TargetKind::Pagerduty {
                let has_key = t.routing_key.as_ref().is_some_and(|k| !k.trim().is_empty()) || t.routing_key_env.as_ref().is_some_and(|v| !v.trim().is_empty());
                if !has_key {
                    return Err(ConfigProblem::new("forward.targets",
                        format!("target `{}` (kind pagerduty) has no routing_key", t.name),
                        "set routing_key to the service's integration key, or routing_key_env to the variable holding it",
                    ));
                }
            } else if t.routing_key.is_some() || t.routing_key_env.is_some() {
                return Err(ConfigProblem::new("forward.targets", format!("target `{}` (kind {}) has a routing key", t.name, t.kind.as_str()), "routing keys are for kind = \"pagerduty\"; remove it"));
            }
            for (k, v) in &t.headers {
                if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() || reqwest::header::HeaderValue::from_str(v).is_err() {
                    return Err(ConfigProblem::new("forward.targets", format!("target `{}`: header `{k}` is not a valid HTTP header", t.name), "use a token name (e.g. Authorization) and a visible ASCII value"));
                }
            }
        }
        Ok(())
    }

    /// What `vigil forward` needs on top of [`Self::validate`]: at least one target, and every
    /// routing key found (including those read from the environment).
    pub fn validate_for_run(&self) -> Result<(), ConfigProblem> {
        self.validate()?;
        if self.targets.is_empty() {
            return Err(ConfigProblem::new(
                "forward.targets",
                "lists no target",
                "add one or more [[forward.targets]] with name, kind (alertmanager, pagerduty or webhook) and url",
            ));
        }
        for t in &self.targets {
            t.resolve_routing_key()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: TargetKind, url: Option<&str>) -> ForwardTarget {
        ForwardTarget {
            name: "t".into(),
            kind,
            url: url.map(Into::into),
            routing_key: None,
            routing_key_env: None,
            headers: BTreeMap::new(),
            generator_url: String::new(),
        }
    }

    #[test]
    fn defaults_are_valid_but_running_needs_a_target() {
        let c = ForwardConfig::default();
        c.validate().unwrap();
        let e = c.validate_for_run().unwrap_err();
        assert_eq!(e.key, "forward.targets");
        assert!(e.problem.contains("no target"), "{e}");
    }

    #[test]
    fn targets_are_checked_by_kind() {
        let mut c = ForwardConfig { targets: vec![target(TargetKind::Webhook, None)], ..Default::default() };
        assert!(c.validate().unwrap_err().problem.contains("has no url"));
        c.targets = vec![target(TargetKind::Alertmanager, Some("ftp://x"))];
        assert!(c.validate().unwrap_err().problem.contains("not an http(s) address"));
        c.targets = vec![target(TargetKind::Pagerduty, None)];
        let e = c.validate().unwrap_err();
        assert!(e.problem.contains("no routing_key") && e.fix.contains("routing_key_env"), "{e}");
        c.targets[0].routing_key = Some("R".into());
        c.validate_for_run().unwrap();
        assert_eq!(c.targets[0].effective_url(), Some(PAGERDUTY_EVENTS_URL));
        c.targets[0].routing_key = None;
        c.targets[0].routing_key_env = Some("VIGIL_TEST_UNSET_ROUTING_KEY_VARIABLE".into());
        c.validate().unwrap();
        assert!(c.validate_for_run().unwrap_err().problem.contains("not set"));
        c.targets = vec![target(TargetKind::Webhook, Some("http://a")), target(TargetKind::Webhook, Some("http://b"))];
        assert!(c.validate().unwrap_err().problem.contains("two targets"));
    }
}
