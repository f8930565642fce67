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
    let Err(e) = Processor::new(&cfg).await else { panic!("a bad policy was accepted") };
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
