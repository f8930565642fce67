//! Cost, budgets, efficiency, SLOs and health end to end through the mock cluster: three weeks
//! of FOCUS rows on their own topic, then an hour with an idle instance that raises checkout's
//! spend by half, while checkout's error rate burns its SLO. Bad FOCUS rows go to the
//! dead-letter topic with the reason; a row for an hour already closed goes to the late topic.

use std::time::Duration;

use crate::common::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use vigil::Stats;

const T0: i64 = 1_767_571_200_000; // 2026-01-05T00:00:00Z
const HOUR: i64 = 3_600_000;

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn focus(hour: i64, cost: f64, resource: &str) -> String {
    serde_json::json!({
        "BilledCost": cost, "EffectiveCost": cost, "ListCost": cost * 1.2,
        "ChargePeriodStart": iso(hour), "ChargePeriodEnd": iso(hour + HOUR),
        "ServiceName": "Amazon EC2", "ServiceCategory": "Compute", "ResourceId": format!("i-{resource}"), "ResourceName": resource,
        "RegionId": "eu-west-1", "SubAccountName": "prod", "Tags": {"service": "checkout", "team": "commerce"}
    })
    .to_string()
}

async fn produce_costs(brokers: &str, payloads: &[String]) {
    let p: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").create().unwrap();
    let futs = payloads.iter().map(|v| p.send(FutureRecord::<str, str>::to("costs").key("focus").payload(v.as_str()), Duration::from_secs(10)));
    for r in futures::future::join_all(futs).await {
        r.expect("produce acked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_a_budget_at_risk_and_an_slo_burn_become_decisions_with_their_tables() {
    let kafka = Kafka::start(1);
    kafka.cluster.create_topic("costs", 1, 1).unwrap();
    let mut cfg = kafka.config("vigil-cost");
    cfg.kafka.input_topics.push("costs".into());
    cfg.kafka.input_formats.insert("costs".into(), "focus".into());
    cfg.cost.scopes = vec!["service".into()];
    // The idle instance adds 5 an hour to 10: impact +5, +50%.
    cfg.cost.anomaly_min_impact = 3.0;
    cfg.cost.allowed_lag = Duration::from_secs(1800);
    cfg.cost.efficiency.cpu_utilization = Some("cpu_utilization".into());
    cfg.cost.efficiency.idle_for = Duration::from_secs(3600);
    cfg.cost.budgets = toml::from_str::<toml::Table>("[[b]]\nname = \"checkout-monthly\"\nscope = \"service\"\nvalue = \"checkout\"\namount = 5000.0\n")
        .unwrap()["b"]
        .clone()
        .try_into()
        .unwrap();
    cfg.slo = toml::from_str::<toml::Table>("[[s]]\nname = \"checkout-errors\"\nservice = \"checkout\"\nobjective = 99.9\nratio = \"error_rate\"\n").unwrap()["s"]
        .clone()
        .try_into()
        .unwrap();
    cfg.validate().unwrap();

    // 40 minutes of metrics: checkout's error rate at 0.05% (burn 0.5), then 10% for the last
    // ten minutes (burn 100 over 5 minutes, 25 over the hour); the idle instance at 1% CPU.
    let mut metrics = Vec::new();
    for w in 0..240i64 {
        let t = T0 + w * 10_000 + 500;
        let err = if w >= 180 { 0.10 } else { 0.0005 + 0.00001 * (w % 7) as f64 };
        metrics.push(point(t, "error_rate", "checkout-01", "checkout", err));
        metrics.push(point(t + 1, "cpu_utilization", "checkout-01", "checkout", 0.5 + 0.01 * (w % 5) as f64));
        metrics.push(point(t + 2, "cpu_utilization", "checkout-idle-01", "checkout", 0.01));
    }
    kafka.produce(&metrics).await;
    let tables = tables();
    let mut engine = vigil::Engine::new(&cfg, tables.clone()).await.unwrap();
    let mut published = step_until(&mut engine, Duration::from_secs(60), |s| Stats::get(&s.windows_closed) >= 230).await;

    // Three weeks of hourly cost (a daily cycle), a bad row of each kind, then the idle
    // instance's hour and the hour after it (which closes it on the cost clock).
    let mut costs = Vec::new();
    for h in (1..=21 * 24).rev() {
        let hour = T0 - h * HOUR;
        let daily = 10.0 + 2.0 * ((hour / HOUR % 24) as f64 / 24.0 * std::f64::consts::TAU).sin();
        costs.push(focus(hour, (daily * (1.0 + 0.01 * ((h * 7) % 3) as f64) * 100.0).round() / 100.0, "checkout-asg"));
    }
    costs.push(r#"{"EffectiveCost": 1.0, "ChargePeriodEnd": "2026-01-05T01:00:00Z"}"#.into());
    costs.push(r#"{"EffectiveCost": "n/a", "ChargePeriodStart": "2026-01-05T00:00:00Z", "ChargePeriodEnd": "2026-01-05T01:00:00Z"}"#.into());
    costs.push(focus(T0, 10.0, "checkout-asg"));
    costs.push(focus(T0, 5.0, "checkout-idle-01"));
    costs.push(focus(T0 + HOUR, 10.0, "checkout-asg"));
    produce_costs(&kafka.brokers, &costs).await;
    published.extend(step_until(&mut engine, Duration::from_secs(120), |s| Stats::get(&s.cost_hours) > 21 * 24).await);
    // A row for an hour that has closed: late.
    produce_costs(&kafka.brokers, &[focus(T0 - 5 * HOUR, 3.0, "checkout-asg")]).await;
    published.extend(step_until(&mut engine, Duration::from_secs(30), |s| Stats::get(&s.late) >= 1).await);
    // More metrics, so that the watermark moves and the SLO and health are evaluated again.
    let more: Vec<_> = (240..250i64).map(|w| point(T0 + w * 10_000 + 500, "error_rate", "checkout-01", "checkout", 0.10)).collect();
    kafka.produce(&more).await;
    published.extend(step_until(&mut engine, Duration::from_secs(30), |s| Stats::get(&s.windows_closed) >= 240).await);

    // The drift: the idle instance's hour is a cost anomaly with it as the root cause.
    let drift = rows(&tables, "cost_drift");
    let hour = drift.iter().find(|r| r["granularity"] == "hour" && r["window_start"].as_str().unwrap().starts_with("2026-01-05T00:00:00")).expect("the idle hour's drift row");
    assert_eq!(hour["anomaly"], true, "{hour:#}");
    let pct = hour["impact_percent"].as_f64().unwrap();
    assert!((35.0..70.0).contains(&pct), "{hour:#}");
    assert!(hour["root_causes"].as_str().unwrap().contains("checkout-idle-01"), "{hour:#}");
    assert!(drift.iter().filter(|r| r["granularity"] == "hour").count() >= 21 * 24, "every hour of history has a row");
    // Efficiency: the idle instance, with its monthly saving (5 an hour × 730).
    let eff = rows(&tables, "efficiency");
    let idle = eff.iter().find(|r| r["resource"] == "checkout-idle-01").expect("an efficiency row for the idle instance");
    assert_eq!((idle["idle"].as_bool(), idle["monthly_saving"].as_f64()), (Some(true), Some(3650.0)), "{idle:#}");
    // The budget: 5,000 for January, the projection far above it.
    let budgets = rows(&tables, "budgets");
    let last = budgets.last().expect("budget rows");
    assert_eq!(last["status"], "at_risk", "{last:#}");
    assert!(last["projected_low"].as_f64().unwrap() > 5000.0, "{last:#}");
    // The SLO pages, and health shows it.
    let slo = rows(&tables, "slo");
    assert!(slo.iter().any(|r| r["alert"] == "page"), "{:#?}", slo.last());
    let health = rows(&tables, "health");
    let worst = health.iter().filter(|r| r["service"] == "checkout").map(|r| r["score"].as_f64().unwrap()).fold(100.0, f64::min);
    assert!(worst < 80.0, "checkout's health should drop below healthy: {:#?}", health.last());

    // Decisions: the idle instances (cost incident), the budget, and the page.
    let kinds: Vec<(String, String)> = published.iter().filter(|d| d.status == "firing").map(|d| (d.kind.clone(), d.action.clone())).collect();
    for want in [("cost.idle_resource", "stop_idle_resources"), ("budget.at_risk", "notify_budget_owner"), ("slo.burn", "page")] {
        assert!(kinds.iter().any(|(k, a)| k == want.0 && a == want.1), "no {want:?} among {kinds:?}");
    }
    let on_topic = kafka.read_all("vigil.decisions", kinds.len(), Duration::from_secs(10));
    assert!(on_topic.iter().any(|r| r.header("ce_type") == Some("dev.vigil.budget.at_risk")), "budget decision on the topic");

    // Bad rows on the dead-letter topic with the reason; the late row on the late topic.
    let dlq = kafka.read_all("vigil.dlq", 2, Duration::from_secs(10));
    let reasons: Vec<&str> = dlq.iter().filter_map(|r| r.header("vigil.error")).collect();
    assert!(reasons.iter().any(|r| r.contains("missing ChargePeriodStart")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("EffectiveCost is not a number")), "{reasons:?}");
    let late = kafka.read_all("vigil.late", 1, Duration::from_secs(10));
    assert_eq!(late.len(), 1);
    assert!(String::from_utf8_lossy(&late[0].payload).contains("2026-01-04T19:00:00"), "{:?}", String::from_utf8_lossy(&late[0].payload));
}
