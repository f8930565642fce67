//! One decision to one target over HTTP: the request for the target's kind, and the retries.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;

use super::payloads::{self, ParsedDecision};
use super::run::ForwardStats;
use super::{ConfigProblem, ForwardConfig, ForwardTarget, TargetKind};

/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How much of a refusing receiver's answer is kept in logs and the dead-letter reason.
const MAX_BODY_IN_REASON: usize = 1000;

/// A target ready to send to.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub name: String,
    pub kind: TargetKind,
    url: reqwest::Url,
    headers: HeaderMap,
    routing_key: String,
    generator_url: String,
}

impl Endpoint {
    pub fn new(t: &ForwardTarget) -> Result<Self, ConfigProblem> {
        let bad = |problem: String| ConfigProblem { key: "forward.targets", problem, fix: "check that target's url and headers".into() };
        let url = t.effective_url().ok_or_else(|| bad(format!("target `{}` has no url", t.name)))?;
        let url = reqwest::Url::parse(url).map_err(|e| bad(format!("target `{}`: url `{url}`: {e}", t.name)))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &t.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| bad(format!("target `{}`: header `{k}`: {e}", t.name)))?;
            let mut value = HeaderValue::from_str(v).map_err(|e| bad(format!("target `{}`: header `{k}`: {e}", t.name)))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let routing_key = t.resolve_routing_key()?.unwrap_or_default();
        Ok(Self { name: t.name.clone(), kind: t.kind, url, headers, routing_key, generator_url: t.generator_url.clone() })
    }

    /// The body and the headers of the request that delivers `d` (read from `raw`, with the
    /// Kafka record's `ce_*` headers in `ce`).
    pub fn request(&self, d: &ParsedDecision, raw: &[u8], ce: &[(String, String)]) -> (Vec<u8>, HeaderMap) {
        let mut headers = self.headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let body = match self.kind {
            TargetKind::Alertmanager => to_json(&payloads::alertmanager(&d.decision, &self.name, &self.generator_url)),
            TargetKind::Pagerduty => to_json(&payloads::pagerduty(d, &self.routing_key)),
            TargetKind::Webhook => {
                // CloudEvents HTTP binary mode: the record's `ce_x` attributes as `ce-x` headers.
                for (k, v) in ce {
                    let name = format!("ce-{}", &k[3..]);
                    if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(v)) {
                        headers.entry(n).or_insert(v);
                    }
                }
                raw.to_vec()
            }
        };
        (body, headers)
    }
}

fn to_json(v: &impl serde::Serialize) -> Vec<u8> {
    // The payload types hold only strings, numbers and JSON values: this cannot fail.
    serde_json::to_vec(v).expect("payloads serialise")
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The receiver accepted it (2xx).
    Accepted,
    /// The receiver refused it for good (a 4xx other than 429, or a redirect); the reason.
    Refused(String),
}

/// Exponential backoff with jitter: the n-th wait is drawn from [d/2, d] where
/// d = min(max, min × 2ⁿ), so that many forwarders retrying one receiver spread out.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), attempt: 0 }
    }

    /// The wait before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.min.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(0.5 + 0.5 * random_fraction())
    }
}

/// A number in [0, 1) from the standard library's per-instance random hash keys.
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let h = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After` as seconds or an HTTP date, capped at an hour.
pub(crate) fn retry_after(headers: &HeaderMap, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
            (at.with_timezone(&chrono::Utc) - now).to_std().unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The error and its causes on one line ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn short(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(MAX_BODY_IN_REASON) {
        Some((i, _)) => format!("{}...", &body[..i]),
        None => body.to_string(),
    }
}

/// POSTs `body` to `ep` until it is accepted or refused for good. Connection errors,
/// timeouts, 429 and 5xx are retried forever, with backoff; the caller stops it by dropping
/// the future.
pub(crate) async fn deliver(
    client: &reqwest::Client,
    ep: &Endpoint,
    body: Vec<u8>,
    headers: HeaderMap,
    cfg: &ForwardConfig,
    stats: &ForwardStats,
) -> Outcome {
    let mut backoff = Backoff::new(cfg.min_backoff, cfg.max_backoff);
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        stats.requests.fetch_add(1, Relaxed);
        let sent = client.post(ep.url.clone()).headers(headers.clone()).body(body.clone()).send().await;
        let (wait, why) = match sent {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    if attempt > 1 {
                        tracing::info!(attempt, %status, "accepted after retries");
                    } else {
                        tracing::debug!(%status, "accepted");
                    }
                    return Outcome::Accepted;
                }
                let after = retry_after(resp.headers(), chrono::Utc::now());
                let text = resp.text().await.unwrap_or_default();
                if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                    let wait = after.unwrap_or_else(|| backoff.next_delay());
                    if after.is_some() {
                        backoff.next_delay();
                    }
                    (wait, format!("{status}: {}", short(&text)))
                } else {
                    let reason = format!("target `{}` refused the decision with {status}: {}", ep.name, short(&text));
                    tracing::error!(attempt, %status, body = %short(&text), "refused for good; the record goes to the dead-letter topic");
                    return Outcome::Refused(reason);
                }
            }
            Err(e) => (backoff.next_delay(), error_chain(&e)),
        };
        stats.retries.fetch_add(1, Relaxed);
        tracing::warn!(attempt, error = %why, retry_in = ?wait, "delivery failed; retrying");
        tokio::time::sleep(wait).await;
    }
}

/// The HTTP client shared by every target.
pub(crate) fn client(cfg: &ForwardConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout)
        // A receiver that redirects is misconfigured: a redirected POST may become a GET.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("vigil/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (i, w) in waits.iter().enumerate() {
            let ceiling = Duration::from_millis(100 * (1 << i)).min(Duration::from_secs(1));
            assert!(*w >= ceiling / 2 && *w <= ceiling, "wait {i} is {w:?}, ceiling {ceiling:?}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-05T10:00:00Z").unwrap().with_timezone(&chrono::Utc);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("Mon, 05 Jan 2026 10:00:07 GMT"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&h, now), Some(MAX_RETRY_AFTER));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }
}
