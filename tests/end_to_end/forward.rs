//! `vigil forward` through librdkafka's mock cluster and real HTTP receivers on 127.0.0.1:
//! decisions become an Alertmanager v4 payload, PagerDuty trigger and resolve events and an
//! unchanged webhook body; failed attempts (503, 429 with Retry-After) are retried; a
//! malformed record is dead-lettered; the group's offsets reach the end of the topic only after
//! every receiver accepted, and never pass a record a receiver has not accepted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use vigil_sinks::forward::{ForwardConfig, ForwardCounts, ForwardTarget, Forwarder, StartFrom, TargetKind};
use vigil_sinks::KafkaSinkConfig;

use crate::common::*;

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    /// What the receiver answered.
    status: u16,
    at: Instant,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{} sent no JSON ({e}): {:?}", self.path, String::from_utf8_lossy(&self.body)))
    }
}

/// Per path, the answers to the first requests: status and `Retry-After`.
type Script = HashMap<String, Vec<(u16, Option<&'static str>)>>;

/// A receiver: per path, the answers to give to the first requests (status, Retry-After),
/// then `ok`; or 503 while `down` is set.
#[derive(Default)]
struct Receiver {
    seen: Mutex<Vec<Seen>>,
    script: Mutex<Script>,
    ok: HashMap<String, u16>,
    down: AtomicBool,
}

impl Receiver {
    fn requests(&self, path: &str) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|s| s.path == path).cloned().collect()
    }
    fn accepted(&self, path: &str) -> Vec<Seen> {
        self.requests(path).into_iter().filter(|s| s.status < 300).collect()
    }
}

async fn receive(State(r): State<Arc<Receiver>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let (status, retry_after) = if path == "/down" && r.down.load(Ordering::SeqCst) {
        (503, None)
    } else {
        let mut script = r.script.lock().unwrap();
        match script.get_mut(&path).filter(|s| !s.is_empty()) {
            Some(s) => s.remove(0),
            None => (*r.ok.get(&path).unwrap_or(&200), None),
        }
    };
    let headers = headers.iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
    r.seen.lock().unwrap().push(Seen { path, headers, body: body.to_vec(), status, at: Instant::now() });
    let status = StatusCode::from_u16(status).unwrap();
    match retry_after {
        Some(v) => (status, [("retry-after", v)], "slow down").into_response(),
        None => (status, if status.is_success() { "{\"status\":\"success\"}" } else { "unavailable" }).into_response(),
    }
}

/// Starts `receiver` on 127.0.0.1 (a free port); returns its base URL.
async fn serve(receiver: Arc<Receiver>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(receive).with_state(receiver);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn decision(status: &str) -> Value {
    let resolved = status == "resolved";
    json!({
        "id": if resolved { "9f1c0e5d2b7a4c83a6e1d0f2b3c4d5e6" } else { "5e0c9a7b3d2f4e1a8b6c0d9e2f1a3b4c" },
        "time": if resolved { "2026-01-05T10:20:00Z" } else { "2026-01-05T10:00:30Z" },
        "kind": if resolved { "incident.resolved" } else { "incident.opened" },
        "status": status,
        "fingerprint": "a1b2c3d4e5f60718",
        "severity": "critical", "policy": "checkout-latency", "risk": "low", "mode": "approval",
        "target": {"kind": "service", "name": "checkout"},
        "action": "scale_out", "parameters": {"service": "checkout", "replicas": 2},
        "incident": {"id": "inc-7", "key": "checkout", "opened_at": "2026-01-05T10:00:00Z",
                     "resolved_at": if resolved { json!("2026-01-05T10:19:50Z") } else { Value::Null },
                     "origin": "latency_p99{service=\"checkout\"}", "members": ["latency_p99{service=\"checkout\"}"]},
        "labels": {"alertname": "CheckoutLatency", "severity": "critical", "service": "checkout"},
        "annotations": {"summary": "checkout p99 latency is 4x its usual level", "description": "p99 1.2 s, usually 0.3 s",
                        "runbook_url": "https://runbooks.example/checkout"},
        "explanation": "latency_p99 of checkout is far above its recent level"
    })
}

/// Produces `(key, payload)` to the decisions topic with CloudEvents headers; waits for the acks.
async fn produce_decisions(kafka: &Kafka, records: &[(&str, Vec<u8>)]) {
    let p: FutureProducer = ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().unwrap();
    for (key, body) in records {
        let id = serde_json::from_slice::<Value>(body).ok().and_then(|v| v["id"].as_str().map(String::from)).unwrap_or_else(|| "none".into());
        let headers = OwnedHeaders::new()
            .insert(Header { key: "ce_specversion", value: Some("1.0") })
            .insert(Header { key: "ce_id", value: Some(id.as_str()) })
            .insert(Header { key: "ce_type", value: Some("dev.vigil.decision.incident") })
            .insert(Header { key: "ce_source", value: Some("/vigil/test") })
            .insert(Header { key: "content-type", value: Some("application/json") });
        // One at a time: the order on the partition is the order given.
        p.send(FutureRecord::to("vigil.decisions").key(*key).payload(body.as_slice()).headers(headers), Duration::from_secs(10)).await.expect("produce acked");
    }
}

/// Per partition of the decisions topic: (committed offset of `group`, end of the partition).
fn committed_and_end(kafka: &Kafka, group: &str) -> Vec<(i64, i64)> {
    let c = reader(&kafka.brokers, group, &[]);
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition("vigil.decisions", p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
    (0..2)
        .map(|p| {
            let at = match committed.find_partition("vigil.decisions", p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            };
            let (_, end) = c.fetch_watermarks("vigil.decisions", p, Duration::from_secs(5)).unwrap();
            (at, end)
        })
        .collect()
}

fn target(name: &str, kind: TargetKind, url: String) -> ForwardTarget {
    ForwardTarget { name: name.into(), kind, url: Some(url), routing_key: None, routing_key_env: None, headers: Default::default(), generator_url: String::new() }
}

fn config(group: &str, targets: Vec<ForwardTarget>) -> ForwardConfig {
    ForwardConfig {
        group_id: group.into(),
        start_from: StartFrom::Earliest,
        timeout: Duration::from_secs(3),
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        targets,
        ..Default::default()
    }
}

/// Starts the forwarder in the background; send on the returned channel to stop it.
fn start(kafka: &Kafka, cfg: &ForwardConfig) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<ForwardCounts>) {
    let sink = KafkaSinkConfig { brokers: kafka.brokers.clone(), delivery_timeout: Duration::from_secs(10), properties: Default::default() };
    let consumer = [("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "500")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let fwd = Forwarder::new(cfg, &sink, &consumer).expect("forwarder starts");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        fwd.run(async {
            let _ = rx.await;
        })
        .await
        .expect("the forwarder runs until stopped")
    });
    (tx, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_reach_alertmanager_pagerduty_and_a_webhook_after_retries_and_bad_records_are_dead_lettered() {
    init_tracing();
    let kafka = Kafka::start(1);
    let receiver = Arc::new(Receiver {
        script: Mutex::new(HashMap::from([
            ("/am".to_string(), vec![(503, None)]),
            ("/pd".to_string(), vec![(503, None), (429, Some("1"))]),
            ("/hook".to_string(), vec![(503, None)]),
        ])),
        ok: HashMap::from([("/pd".to_string(), 202)]),
        ..Default::default()
    });
    let base = serve(receiver.clone()).await;

    let firing = serde_json::to_vec(&decision("firing")).unwrap();
    let resolved = serde_json::to_vec(&decision("resolved")).unwrap();
    let malformed = br#"{"id": "0000", "status": "firing", "kind": "#.to_vec();
    produce_decisions(&kafka, &[("checkout", firing.clone()), ("checkout", malformed.clone()), ("checkout", resolved.clone())]).await;

    let mut am = target("oncall", TargetKind::Alertmanager, format!("{base}/am"));
    am.generator_url = "http://vigil.example:7878".into();
    let mut pd = target("pagerduty", TargetKind::Pagerduty, format!("{base}/pd"));
    pd.routing_key = Some("R0UT1NGKEY".into());
    let mut hook = target("executor", TargetKind::Webhook, format!("{base}/hook"));
    hook.headers.insert("Authorization".into(), "Bearer t0ken".into());
    let group = "vigil-forward-e2e";
    let (stop, run) = start(&kafka, &config(group, vec![am, pd, hook]));

    // Watch the group's committed offsets until they reach the end of the topic.
    let deadline = Instant::now() + Duration::from_secs(20);
    let caught_up_at = loop {
        let offsets = committed_and_end(&kafka, group);
        if offsets.iter().all(|(at, end)| at == end) && offsets.iter().any(|(_, end)| *end == 3) {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "offsets never reached the end: {offsets:?}; requests {:?}", receiver.seen.lock().unwrap().len());
        assert!(!run.is_finished(), "the forwarder stopped on its own");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.send(()).unwrap();
    let counts = tokio::time::timeout(Duration::from_secs(10), run).await.expect("stops promptly").unwrap();
    assert_eq!((counts.records, counts.delivered, counts.malformed, counts.refused, counts.dead_lettered, counts.done), (3, 2, 1, 0, 1, 3), "{counts:?}");
    assert_eq!(counts.retries, 4, "one 503 per target and PagerDuty's 429: {counts:?}");

    // Alertmanager: the first attempt failed, then the firing and the resolved notifications.
    let am = receiver.requests("/am");
    assert_eq!(am.iter().map(|s| s.status).collect::<Vec<_>>(), [503, 200, 200], "{am:?}");
    assert_eq!(am[0].body, am[1].body, "the failed attempt was retried unchanged");
    let (f, r) = (am[1].json(), am[2].json());
    assert_eq!(am[1].headers["content-type"], "application/json");
    assert_eq!(f["version"], "4");
    assert_eq!(f["status"], "firing");
    assert_eq!(f["receiver"], "oncall");
    assert_eq!(f["truncatedAlerts"], 0);
    assert_eq!(f["groupLabels"], json!({}));
    assert_eq!(f["externalURL"], "http://vigil.example:7878");
    assert_eq!(f["commonLabels"], json!({"alertname": "CheckoutLatency", "severity": "critical", "service": "checkout"}));
    assert_eq!(f["commonAnnotations"]["summary"], "checkout p99 latency is 4x its usual level");
    let alert = &f["alerts"][0];
    assert_eq!(f["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["labels"]["alertname"], "CheckoutLatency");
    assert_eq!(alert["annotations"]["runbook_url"], "https://runbooks.example/checkout");
    assert_eq!(alert["fingerprint"], "a1b2c3d4e5f60718");
    assert_eq!(alert["startsAt"], "2026-01-05T10:00:00Z");
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(alert["generatorURL"], "http://vigil.example:7878");
    assert_eq!(r["status"], "resolved");
    assert_eq!(r["groupKey"], f["groupKey"], "one group per incident");
    assert_eq!(r["alerts"][0]["status"], "resolved");
    assert_eq!(r["alerts"][0]["fingerprint"], "a1b2c3d4e5f60718");
    assert_eq!(r["alerts"][0]["startsAt"], "2026-01-05T10:00:00Z");
    assert_eq!(r["alerts"][0]["endsAt"], "2026-01-05T10:19:50Z");

    // PagerDuty: 503, then 429 with Retry-After: 1 (honoured), then a trigger and a resolve.
    let pd = receiver.requests("/pd");
    assert_eq!(pd.iter().map(|s| s.status).collect::<Vec<_>>(), [503, 429, 202, 202], "{pd:?}");
    assert!(pd[2].at - pd[1].at >= Duration::from_millis(950), "Retry-After: 1 not honoured: {:?}", pd[2].at - pd[1].at);
    let (t, res) = (pd[2].json(), pd[3].json());
    assert_eq!(t["routing_key"], "R0UT1NGKEY");
    assert_eq!(t["event_action"], "trigger");
    assert_eq!(t["dedup_key"], "a1b2c3d4e5f60718");
    assert_eq!(t["payload"]["summary"], "checkout p99 latency is 4x its usual level");
    assert_eq!(t["payload"]["source"], "checkout");
    assert_eq!(t["payload"]["severity"], "critical");
    assert_eq!(t["payload"]["timestamp"], "2026-01-05T10:00:30Z");
    assert_eq!(t["payload"]["component"], "checkout");
    assert_eq!(t["payload"]["group"], "checkout");
    assert_eq!(t["payload"]["class"], "incident.opened");
    assert_eq!(t["payload"]["custom_details"], decision("firing"));
    assert_eq!(res, json!({"routing_key": "R0UT1NGKEY", "event_action": "resolve", "dedup_key": "a1b2c3d4e5f60718"}));

    // The webhook: the decision bytes unchanged, the configured header, the CloudEvents attributes.
    let hook = receiver.requests("/hook");
    assert_eq!(hook.iter().map(|s| s.status).collect::<Vec<_>>(), [503, 200, 200], "{hook:?}");
    assert_eq!(hook[1].body, firing);
    assert_eq!(hook[2].body, resolved);
    assert_eq!(hook[1].headers["authorization"], "Bearer t0ken");
    assert_eq!(hook[1].headers["content-type"], "application/json");
    assert_eq!(hook[1].headers["ce-id"], "5e0c9a7b3d2f4e1a8b6c0d9e2f1a3b4c");
    assert_eq!(hook[1].headers["ce-specversion"], "1.0");

    // The malformed record: on the dead-letter topic, unchanged, with the reason; nothing sent for it.
    assert_eq!(receiver.seen.lock().unwrap().len(), 3 + 4 + 3);
    let dlq = kafka.read_all("vigil.dlq", 1, Duration::from_secs(10));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].payload, malformed);
    assert_eq!(dlq[0].key.as_deref(), Some("checkout"));
    assert!(dlq[0].header("vigil.error").unwrap().starts_with("not JSON"), "{dlq:?}");
    assert_eq!(dlq[0].header("vigil.error.kind"), Some("malformed_decision"));
    assert_eq!(dlq[0].header("vigil.source.topic"), Some("vigil.decisions"));
    assert_eq!(dlq[0].header("vigil.source.offset"), Some("1"));
    assert_eq!(dlq[0].header("ce_specversion"), Some("1.0"), "the record's own headers are kept");

    // The offsets reached the end only after the last receiver accepted the last record.
    let last_accepted = ["/am", "/pd", "/hook"].iter().map(|p| receiver.accepted(p).last().unwrap().at).max().unwrap();
    assert!(caught_up_at >= last_accepted, "committed before delivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_holds_the_committed_offset_until_it_recovers() {
    init_tracing();
    let kafka = Kafka::start(1);
    let receiver = Arc::new(Receiver::default());
    receiver.down.store(true, Ordering::SeqCst);
    let base = serve(receiver.clone()).await;
    let mut first = decision("firing");
    first["fingerprint"] = json!("00000000000000f1");
    let second = decision("resolved");
    let (first, second) = (serde_json::to_vec(&first).unwrap(), serde_json::to_vec(&second).unwrap());
    produce_decisions(&kafka, &[("checkout", first.clone()), ("checkout", second.clone())]).await;
    let group = "vigil-forward-down";
    let (stop, run) = start(&kafka, &config(group, vec![target("executor", TargetKind::Webhook, format!("{base}/down"))]));

    // While the receiver answers 503, the first record is retried and nothing is committed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.requests("/down").len() < 6 {
        assert!(Instant::now() < deadline, "not retried: {:?}", receiver.requests("/down").len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!run.is_finished(), "the forwarder gave up instead of retrying");
    let offsets = committed_and_end(&kafka, group);
    assert_eq!(offsets.iter().map(|(_, end)| end).sum::<i64>(), 2);
    assert!(offsets.iter().all(|(at, _)| *at == 0), "committed past an undelivered record: {offsets:?}");
    let attempts = receiver.requests("/down");
    assert!(attempts.iter().all(|s| s.body == first && s.status == 503), "skipped ahead while the first record was undelivered");

    // The receiver recovers: both records arrive, in order, and the offset reaches the end.
    receiver.down.store(false, Ordering::SeqCst);
    loop {
        let offsets = committed_and_end(&kafka, group);
        if offsets.iter().all(|(at, end)| at == end) {
            break;
        }
        assert!(Instant::now() < deadline + Duration::from_secs(5), "offsets never advanced after recovery: {offsets:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accepted: Vec<Vec<u8>> = receiver.accepted("/down").into_iter().map(|s| s.body).collect();
    assert_eq!(accepted, [first, second]);
    stop.send(()).unwrap();
    let counts = tokio::time::timeout(Duration::from_secs(10), run).await.expect("stops promptly").unwrap();
    assert_eq!((counts.records, counts.delivered, counts.dead_lettered), (2, 2, 0), "{counts:?}");
    assert!(counts.retries >= 5, "{counts:?}");
}

/// The contract between the engine and the forwarder: decisions made by the real correlator,
/// policies and gate (firing and resolved) match the JSON Schema and map to Alertmanager and
/// PagerDuty payloads with the incident's fingerprint.
#[tokio::test]
async fn engine_made_decisions_match_the_schema_and_map_to_receiver_payloads() {
    use vigil_models::{incidents_batch, Correlator, Gate, IncidentConfig, PolicySet, Signal};
    use vigil_sinks::forward::payloads::{alertmanager, pagerduty, parse_decision};
    let set = PolicySet::defaults().await.unwrap();
    let mut corr = Correlator::new(IncidentConfig { resolve_after_ms: 60_000, ..Default::default() });
    let mut gate = Gate::new(set.specs().to_vec(), 3_600_000, 3_600_000);
    let t0 = 1_767_571_200_000;
    let signal = Signal {
        kind: "anomaly.spike".into(),
        series_id: 7,
        series: r#"latency_p99_ms{host="c3",service="checkout"}"#.into(),
        feature: "mean".into(),
        window_start: t0,
        window_end: t0 + 10_000,
        value: 220.0,
        expected: 90.0,
        band: [80.0, 100.0],
        score: 0.99999,
        z: 40.0,
        confidence: 0.97,
        explanation: "latency is high".into(),
        capacity: None,
    };
    let mut made = Vec::new();
    for (now, signals) in [(t0 + 10_000, vec![signal]), (t0 + 200_000, vec![])] {
        let ch = corr.observe(&signals, now);
        let live: Vec<_> = ch.incidents.iter().filter(|i| i.state != "resolved").cloned().collect();
        let m = set.evaluate(&incidents_batch(&live).unwrap()).await.unwrap();
        made.extend(gate.decide(&ch.incidents, &m, now).publish);
    }
    assert_eq!(made.iter().map(|d| d.status.as_str()).collect::<Vec<_>>(), ["firing", "resolved"]);
    for d in &made {
        let bytes = serde_json::to_vec(d).unwrap();
        crate::common::validate_decision(&bytes);
        let parsed = parse_decision(&bytes).unwrap();
        let am = serde_json::to_value(alertmanager(&parsed.decision, "am", "")).unwrap();
        assert_eq!(am["version"], "4");
        assert_eq!(am["status"], d.status.as_str());
        assert_eq!(am["alerts"][0]["fingerprint"], d.fingerprint.as_str());
        assert_eq!(am["alerts"][0]["labels"]["alertname"], "saturation");
        assert_eq!(am["alerts"][0]["labels"]["service"], "checkout");
        let pd = serde_json::to_value(pagerduty(&parsed, "KEY")).unwrap();
        assert_eq!(pd["dedup_key"], d.fingerprint.as_str());
        assert_eq!(pd["event_action"], if d.status == "firing" { "trigger" } else { "resolve" });
    }
    assert_eq!(made[0].fingerprint, made[1].fingerprint);
}
