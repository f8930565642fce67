//! Decisions that wait for a person: an approval-mode policy holds its decision until an
//! answer on the feedback topic approves it; the answers land in `decision_outcomes`, every
//! step in `decision_log`, and a malformed answer goes to the dead-letter topic with its reason.

use std::time::{Duration, Instant};

use crate::common::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use vigil::Stats;

const T0: i64 = 1_767_571_200_000;

async fn answer(brokers: &str, payload: &str) {
    let p: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    p.send(FutureRecord::<str, str>::to("vigil.feedback").payload(payload), Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_policy_publishes_only_once_approved_on_the_feedback_topic() {
    let kafka = Kafka::start(1);
    let dir = crate::common::Scratch::new("feedback");
    let policies = dir.join("policies.toml");
    std::fs::write(
        &policies,
        "[[policy]]\nname = \"restart_on_spike\"\nwhen = \"direction = 'up'\"\naction = \"restart\"\ntarget = { kind = \"host\", name = \"origin_host\" }\nrisk = \"high\"\napproval = { risk_at_least = \"high\" }\n",
    )
    .unwrap();
    let mut cfg = kafka.config("vigil-feedback");
    cfg.decisions.policies_file = Some(policies);
    // Ten series, a spike on one at window 40.
    let mut input = Vec::new();
    for w in 0..50i64 {
        for s in 0..10 {
            let v = if s == 3 && w == 40 { 0.97 } else { 0.5 + 0.002 * ((w * 7 + s * 3) % 5) as f64 };
            input.push(point(T0 + w * 10_000 + 1_000 + s * 100, "cpu_utilization", &format!("h{s:02}"), "checkout", v));
        }
    }
    kafka.produce(&input).await;
    let tables = tables();
    let mut engine = vigil::Engine::new(&cfg, tables.clone()).await.unwrap();
    let published = step_until(&mut engine, Duration::from_secs(60), |s| Stats::get(&s.windows_closed) >= 48).await;
    assert!(published.is_empty(), "published before approval: {published:#?}");
    let log = rows(&tables, "decision_log");
    let waiting: Vec<_> = log.iter().filter(|r| r["outcome"] == "waiting_for_approval").collect();
    assert_eq!(waiting.len(), 1, "{log:#?}");
    let decision_id = waiting[0]["decision_id"].as_str().unwrap().to_string();
    assert!(waiting[0]["reason"].as_str().unwrap().contains("risk high"), "{:?}", waiting[0]);

    // A malformed answer, then the approval.
    answer(&kafka.brokers, r#"{"decision_id":"x","outcome":"perhaps","by":"alice"}"#).await;
    answer(&kafka.brokers, &format!(r#"{{"decision_id":"{decision_id}","outcome":"approved","by":"alice","note":"go ahead"}}"#)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut approved = Vec::new();
    while approved.is_empty() {
        assert!(Instant::now() < deadline, "the approval was not applied");
        approved.extend(engine.step().await.unwrap());
    }
    assert_eq!(approved.len(), 1);
    let d = &approved[0];
    assert_eq!((d.id.as_str(), d.approval.state.as_str(), d.approval.by.as_deref()), (decision_id.as_str(), "approved", Some("alice")));
    assert_eq!((d.action.as_str(), d.target.name.as_str()), ("restart", "h03"));

    let on_topic = kafka.read_all("vigil.decisions", 1, Duration::from_secs(10));
    assert_eq!(on_topic.len(), 1, "published once, when approved");
    let body: serde_json::Value = serde_json::from_slice(&on_topic[0].payload).unwrap();
    assert_eq!(body["approval"]["state"], "approved");
    assert_eq!(body["approval"]["by"], "alice");

    let outcomes = rows(&tables, "decision_outcomes");
    assert_eq!(outcomes.len(), 1, "{outcomes:#?}");
    assert_eq!(outcomes[0]["policy"], "restart_on_spike");
    assert_eq!(outcomes[0]["outcome"], "approved");
    assert_eq!(outcomes[0]["note"], "go ahead");
    let log = rows(&tables, "decision_log");
    assert!(log.iter().any(|r| r["outcome"] == "approved" && r["decision_id"] == decision_id.as_str()), "{log:#?}");

    let dead = kafka.read_all("vigil.dlq", 1, Duration::from_secs(10));
    assert_eq!(dead.len(), 1);
    assert!(dead[0].header("vigil.error").unwrap_or_default().contains("outcome"), "{:?}", dead[0].headers);
    assert_eq!(Stats::get(&engine.stats().feedback), 2);
}
