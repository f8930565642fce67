//! End to end through librdkafka's mock cluster over TCP: metrics in, one spike, exactly one
//! decision out with every field, offsets committed after the ack, stable ids on replay, and the
//! results answerable over HTTP SQL.



use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::*;
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};
use vigil::Stats;

const SERIES: usize = 30;
const WINDOWS: i64 = 64;
const SPIKE_HOST: usize = 7;
const SPIKE_WINDOW: i64 = 50;
const T0: i64 = 1_767_571_200_000;

fn traffic() -> Vec<(String, Option<Vec<u8>>)> {
    let mut rng = StdRng::seed_from_u64(11);
    let noise = Normal::new(0.0, 0.01).unwrap();
    let mut out = Vec::new();
    for w in 0..WINDOWS {
        for half in 0..2 {
            for s in 0..SERIES {
                let ts = T0 + w * 10_000 + half * 5_000 + (s as i64 * 37) % 4_000;
                let mut v = 0.5 + noise.sample(&mut rng);
                if s == SPIKE_HOST && w == SPIKE_WINDOW {
                    v = 0.97;
                }
                out.push(point(ts, "cpu_utilization", &format!("h{s:02}"), "checkout", v));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_spike_among_many_normal_series_yields_exactly_one_decision_and_replays_identically() {
    let kafka = Kafka::start(3);
    let input = traffic();
    kafka.produce(&input).await;

    let tables = tables();
    let mut engine = vigil::Engine::new(&kafka.config("vigil-e2e"), tables.clone()).await.unwrap();
    // The last window stays open (the watermark, 5 s behind the newest point, has not passed its end).
    let closable = (WINDOWS - 1) as u64;
    let first = step_until(&mut engine, Duration::from_secs(120), |s| Stats::get(&s.windows_closed) >= closable).await;
    engine.commit().await.unwrap();

    // Exactly one decision, about the spiking series.
    let spiking = vigil_ingest::series_key("cpu_utilization", [("host", "h07"), ("service", "checkout")]);
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_eq!(first[0].evidence.series, spiking);
    assert_eq!(first[0].incident.members, std::slice::from_ref(&spiking));

    let on_topic = kafka.read_all("vigil.decisions", 1, Duration::from_secs(10));
    assert_eq!(on_topic.len(), 1, "no decision for any normal series");
    let rec = &on_topic[0];
    assert_eq!(rec.key.as_deref(), Some("checkout"), "keyed by the incident's entity");
    // Every field of the schema (read_all validated the record against it).
    let body: serde_json::Value = serde_json::from_slice(&rec.payload).unwrap();
    assert_eq!((body["kind"].as_str(), body["status"].as_str()), (Some("incident.opened"), Some("firing")));
    assert_eq!(body["incident"]["key"], "checkout");
    assert_eq!(body["incident"]["origin"], spiking.as_str());
    assert_eq!(body["labels"]["alertname"], "saturation");
    assert_eq!(body["labels"]["service"], "checkout");
    assert_eq!((body["policy"].as_str(), body["risk"].as_str(), body["mode"].as_str()), (Some("saturation"), Some("medium"), Some("auto")));
    assert_eq!(body["target"], serde_json::json!({"kind": "service", "name": "checkout"}));
    assert!(body["annotations"]["summary"].as_str().unwrap().contains("scale out"), "{body}");
    let ev = &body["evidence"];
    assert!((ev["value"].as_f64().unwrap() - 0.97).abs() < 1e-9);
    assert!((ev["expected"].as_f64().unwrap() - 0.5).abs() < 0.01);
    assert!(ev["band"][1].as_f64().unwrap() < 0.97 && ev["band"][0].as_f64().unwrap() < 0.5);
    assert!(ev["score"].as_f64().unwrap() >= 0.8);
    let spike_start = chrono::DateTime::from_timestamp_millis(T0 + SPIKE_WINDOW * 10_000).unwrap();
    assert_eq!(ev["window_start"], spike_start.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    assert_eq!(body["action"], "scale_out");
    assert_eq!(body["parameters"]["service"], "checkout");
    let confidence = body["confidence"].as_f64().unwrap();
    assert!(confidence > 0.0 && confidence <= 1.0);
    assert!(body["explanation"].as_str().unwrap().contains("above its recent level"));
    // CloudEvents binary mode.
    assert_eq!(rec.header("ce_specversion"), Some("1.0"));
    assert_eq!(rec.header("ce_id"), body["id"].as_str());
    assert_eq!(rec.header("ce_type"), Some("dev.vigil.incident.opened"));
    assert_eq!(rec.header("ce_source"), Some("/vigil/vigil-e2e"));
    assert_eq!(rec.header("ce_time"), body["time"].as_str());
    assert_eq!(rec.header("content-type"), Some("application/json"));

    // Offsets: committed, but not past the records of the windows still open.
    let committed = engine.committed().unwrap();
    assert_eq!(committed.len(), 3, "{committed:?}");
    let total: i64 = committed.iter().map(|c| c.2).sum();
    assert!(total > 0 && total < input.len() as i64, "committed {total} of {}", input.len());

    // SQL over HTTP, with a real TCP client.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = engine.stats();
    let (h, r) = (stats.clone(), stats.clone());
    let probes = vigil_queries::Probes {
        metrics: vigil::engine::metrics_fn(stats, engine.format_counters()),
        health: std::sync::Arc::new(move || h.health(Duration::from_secs(60))),
        ready: std::sync::Arc::new(move || r.readiness()),
    };
    tokio::spawn(vigil_queries::serve(listener, vigil_queries::SqlService::new(tables.clone()), probes, std::future::pending()));
    let (status, body) = http(addr, "POST", "/sql", "select origin, kind, policy from decisions").await;
    assert_eq!(status, 200, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["origin"], spiking.as_str());
    let (status, body) = http(addr, "POST", "/sql", "select state, key, member_count from incidents").await;
    assert_eq!(status, 200, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rows[0]["state"], "opened", "{rows}");
    let (status, body) = http(addr, "POST", "/sql", "select outcome, policy from decision_log").await;
    assert_eq!(status, 200, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rows[0]["outcome"], "published", "{rows}");
    let (status, body) = http(addr, "POST", "/sql", "select count(*) as n from features").await;
    assert_eq!(status, 200);
    let n = serde_json::from_str::<serde_json::Value>(&body).unwrap()[0]["n"].as_i64().unwrap();
    assert_eq!(n, SERIES as i64 * closable as i64, "one feature row per series per closed window");
    let (status, body) = http(addr, "POST", "/sql", "select nope from decisions").await;
    assert_eq!(status, 400);
    assert!(body.contains("error"), "{body}");
    let (status, body) = http(addr, "GET", "/healthz", "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(addr, "GET", "/readyz", "").await;
    assert_eq!(status, 200, "ready once partitions are assigned: {body}");
    let (_, metrics) = http(addr, "GET", "/metrics", "").await;
    assert!(metrics.contains("vigil_decisions_total 1"), "{metrics}");
    assert!(metrics.contains("# TYPE vigil_window_close_to_ack_seconds histogram"), "{metrics}");
    assert!(metrics.contains("vigil_window_close_to_ack_seconds_count "), "{metrics}");
    assert!(metrics.contains("vigil_watermark_seconds "), "{metrics}");
    assert!(metrics.contains("vigil_format_records_total{format=\"json\"} "), "{metrics}");
    assert_eq!(metrics.matches("# TYPE vigil_format_rejected_total counter").count(), 1, "{metrics}");

    // Replay the same input under another group: the same decision is derived, with the same id,
    // and since the decisions topic already holds that id it is not published a second time.
    let mut replay = vigil::Engine::new(&kafka.config("vigil-e2e-replay"), crate::common::tables()).await.unwrap();
    let second = step_until(&mut replay, Duration::from_secs(120), |s| Stats::get(&s.windows_closed) >= closable).await;
    assert!(second.is_empty(), "republished: {second:?}");
    assert_eq!(Stats::get(&replay.stats().decisions_deduplicated), 1, "the replayed decision had the id already on the topic");
    let on_topic = kafka.read_all("vigil.decisions", 1, Duration::from_secs(10));
    assert_eq!(on_topic.len(), 1);
    assert_eq!(on_topic[0].header("ce_id"), Some(first[0].id.as_str()));
    assert_eq!(engine.stats().records.load(Ordering::Relaxed), input.len() as u64);
}
