//! The processor's decision path without Kafka: signals, incidents, policies, capacity.

use std::time::Duration;

use vigil_ingest::{RawRecord, SourcePos};

use super::Processor;
use crate::config::Config;

const T0: i64 = 1_767_571_200_000;

fn record(offset: i64, ts: i64, name: &str, host: &str, service: &str, value: f64) -> RawRecord {
    RawRecord {
        payload: Some(format!(r#"{{"ts":{ts},"name":"{name}","labels":{{"host":"{host}","service":"{service}"}},"value":{value}}}"#).into_bytes()),
        key: None,
        pos: SourcePos { topic: "metrics".into(), partition: 0, offset },
    }
}

fn config() -> Config {
    let mut c = Config::default();
    c.kafka.input_topics = vec!["metrics".into()];
    c.window.size = Duration::from_secs(10);
    c.window.allowed_lag = Duration::from_secs(0);
    c.fleet.enabled = false;
    c
}

#[tokio::test]
async fn a_disk_climbing_towards_its_limit_becomes_a_capacity_decision_before_it_is_full() {
    let mut cfg = config();
    cfg.forecast.metrics = vec!["disk_used_bytes".into()];
    cfg.forecast.limits.insert("disk_used_bytes".into(), 100.0);
    cfg.forecast.horizon = Duration::from_secs(600);
    cfg.forecast.history = Duration::from_secs(3600);
    cfg.forecast.refit_every = Duration::from_secs(120);
    let mut p = Processor::new(&cfg).await.unwrap();
    let mut decisions = Vec::new();
    let mut offset = 0;
    let mut full_at = None;
    for w in 0..200i64 {
        // 40 -> 100 over 200 windows, with a little noise; a second, flat disk beside it.
        let v = 40.0 + 0.3 * w as f64 + ((w * 7919) % 11) as f64 * 0.02;
        if v >= 100.0 && full_at.is_none() {
            full_at = Some(w);
        }
        let recs = [record(offset, T0 + w * 10_000 + 500, "disk_used_bytes", "db-1", "orders", v), record(offset + 1, T0 + w * 10_000 + 600, "disk_used_bytes", "db-2", "orders", 30.0 + ((w * 31) % 7) as f64 * 0.01)];
        offset += 2;
        p.ingest(&recs).unwrap();
        if let Some(c) = p.close_ready().await.unwrap() {
            decisions.extend(c.decisions.into_iter().map(|d| (w, d)));
        }
        // Deterministic here: wait for each refit, its signals join the next close.
        p.take_forecasts(true).await.unwrap();
    }
    let capacity: Vec<_> = decisions.iter().filter(|(_, d)| d.kind == "capacity.limit_expected").collect();
    assert!(!capacity.is_empty(), "no capacity decision: {decisions:#?}");
    let (at, d) = capacity[0];
    assert!(*at < full_at.unwrap_or(200) - 20, "decided at window {at}, the disk is full at {full_at:?}");
    assert_eq!((d.policy.as_str(), d.action.as_str()), ("capacity_disk", "expand_volume"));
    assert_eq!((d.target.kind.as_str(), d.target.name.as_str()), ("host", "db-1"));
    let cap = d.capacity.as_ref().unwrap();
    assert_eq!(cap.limit, 100.0);
    assert!(cap.series.contains("db-1"));
    assert!(d.parameters["limit"] == serde_json::json!(100.0), "{:?}", d.parameters);
    assert!(d.explanation.contains("limit 100"), "{}", d.explanation);
    assert_eq!(capacity.len(), 1, "one decision for the incident, however many refits see the crossing");
    assert!(decisions.iter().all(|(_, d)| d.target.name != "db-2"), "the flat disk is never decided");
}

#[tokio::test]
async fn a_policy_naming_an_unknown_column_stops_the_processor_at_start() {
    let dir = std::env::temp_dir().join(format!("vigil-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policies.toml");
    std::fs::write(&file, "[[policy]]\nname = \"page_on_call\"\nwhen = \"severity = 'critical' AND servce = 'checkout'\"\naction = \"page\"\n").unwrap();
    let mut cfg = config();
    cfg.decisions.policies_file = Some(file);
    let started = Processor::new(&cfg).await;
    let _ = std::fs::remove_dir_all(&dir);
    let Err(e) = started else { panic!("a bad policy was accepted") };
    let e = e.to_string();
    assert!(e.contains("decisions.policies_file") && e.contains("page_on_call") && e.contains("`servce`"), "{e}");
}

#[tokio::test]
async fn open_incidents_and_a_pending_approval_survive_a_checkpoint_round_trip() {
    use super::state::{SectionReader, SectionWriter};
    use vigil_models::{incidents_batch, Correlator, Gate, IncidentConfig, PolicySet, Signal};
    let set = PolicySet::new("[[policy]]\nname = \"restart\"\nwhen = \"true\"\naction = \"restart\"\nparameters = { n = \"member_count\", why = \"explanation\" }\nmode = \"approval\"\n", "test").await.unwrap();
    let mut corr = Correlator::new(IncidentConfig::default());
    let mut gate = Gate::new(set.specs().to_vec(), 3_600_000, 3_600_000);
    let s = Signal {
        kind: "anomaly.spike".into(),
        series_id: 1,
        series: r#"cpu{host="a",service="x"}"#.into(),
        feature: "mean".into(),
        window_start: T0,
        window_end: T0 + 10_000,
        value: 9.0,
        expected: 1.0,
        band: [0.0, 2.0],
        score: 0.9999,
        z: 20.0,
        confidence: 0.9,
        explanation: "high".into(),
        capacity: None,
    };
    let ch = corr.observe(&[s], T0 + 10_000);
    let m = set.evaluate(&incidents_batch(&ch.incidents).unwrap()).await.unwrap();
    let out = gate.decide(&ch.incidents, &m, T0 + 10_000);
    assert_eq!(out.log[0].outcome, "waiting_for_approval");
    let mut w = SectionWriter::default();
    w.put("incidents", &corr, &|_| true).unwrap();
    w.put("gate", &gate, &|_| true).unwrap();
    let bytes = w.finish().unwrap();
    let r = SectionReader::new("global", &bytes).unwrap();
    let mut corr2 = Correlator::new(IncidentConfig::default());
    let mut gate2 = Gate::new(set.specs().to_vec(), 3_600_000, 3_600_000);
    assert!(r.get("incidents", &mut corr2).unwrap() && r.get("gate", &mut gate2).unwrap());
    assert_eq!(corr2.export(), corr.export());
    let (a, b): (Vec<_>, Vec<_>) = (gate.pending().cloned().collect(), gate2.pending().cloned().collect());
    assert_eq!(a, b);
    assert_eq!(b[0].parameters["n"], serde_json::json!(1));
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 150 windows of three hosts' CPU around 0.5 with a little noise, both halves of each window;
/// host h1 at 0.97 in window 60.
fn cpu_fleet() -> Vec<Vec<RawRecord>> {
    let mut offset = 0;
    (0..150i64)
        .map(|w| {
            let mut out = Vec::new();
            for half in 0..2 {
                for h in 0..3i64 {
                    let noise = (splitmix((w * 6 + h * 2 + half) as u64) % 2001) as f64 * 1e-5 - 0.01;
                    let v = if h == 1 && w == 60 { 0.97 } else { 0.5 + noise };
                    out.push(record(offset, T0 + w * 10_000 + half * 5_000 + h * 100, "cpu_utilization", &format!("h{h}"), "checkout", v));
                    offset += 1;
                }
            }
            out
        })
        .collect()
}

#[tokio::test]
async fn an_incident_inside_a_backlog_closed_at_once_is_decided_as_if_closed_window_by_window() {
    let windows = cpu_fleet();
    // Live: one close per window.
    let mut live = Processor::new(&config()).await.unwrap();
    let mut one_by_one = Vec::new();
    for recs in &windows {
        live.ingest(recs).unwrap();
        if let Some(c) = live.close_ready().await.unwrap() {
            one_by_one.extend(c.decisions);
        }
    }
    let firing: Vec<_> = one_by_one.iter().filter(|d| d.status == "firing").collect();
    assert_eq!(firing.len(), 1, "one decision for the spike: {one_by_one:#?}");
    assert!(firing[0].labels.values().any(|v| v == "h1") || firing[0].explanation.contains("h1"), "{:?}", firing[0]);
    // A backlog: every window in one poll, closed in one go, 89 windows (longer than
    // `resolve_after`) past the spike. The incident opens and resolves inside that close.
    let mut backlog = Processor::new(&config()).await.unwrap();
    let all: Vec<RawRecord> = windows.concat();
    backlog.ingest(&all).unwrap();
    let c = backlog.close_ready().await.unwrap().unwrap();
    assert_eq!(c.windows, 149, "every window but the newest");
    let ids = |d: &[vigil_models::Decision]| d.iter().map(|d| (d.id.clone(), d.status.clone())).collect::<Vec<_>>();
    assert_eq!(ids(&c.decisions), ids(&one_by_one), "the same decisions, ids and order as window by window");
    assert!(c.decisions.iter().any(|d| d.status == "resolved"), "and the incident resolved in the same close: {:?}", c.decisions);
}
