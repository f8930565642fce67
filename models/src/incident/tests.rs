use super::*;

pub(crate) fn signal(series: &str, start: i64, score: f64) -> Signal {
    Signal {
        kind: "anomaly.spike".into(),
        series_id: xxhash_rust::xxh3::xxh3_64(series.as_bytes()),
        series: series.into(),
        feature: "mean".into(),
        window_start: start,
        window_end: start + 10_000,
        value: 10.0,
        expected: 1.0,
        band: [0.0, 2.0],
        score,
        z: 12.0,
        confidence: 0.9,
        explanation: format!("{series} is high"),
        capacity: None,
    }
}

fn cfg() -> IncidentConfig {
    IncidentConfig { resolve_after_ms: 60_000, ..Default::default() }
}

#[test]
fn two_services_at_once_are_two_incidents() {
    let mut c = Correlator::new(cfg());
    let ch = c.observe(&[signal(r#"cpu{host="a1",service="a"}"#, 0, 0.9995), signal(r#"cpu{host="b1",service="b"}"#, 0, 0.9995)], 10_000);
    assert_eq!(ch.incidents.len(), 2);
    assert!(ch.incidents.iter().all(|i| i.state == "opened"));
    assert_ne!(ch.incidents[0].id, ch.incidents[1].id);
    assert_ne!(ch.incidents[0].fingerprint, ch.incidents[1].fingerprint);
}

#[test]
fn one_services_metrics_and_logs_are_one_incident_with_the_earliest_mover_as_origin() {
    let mut c = Correlator::new(cfg());
    let first = c.observe(&[signal(r#"log_error_ratio{service="auth"}"#, 0, 0.9995)], 10_000);
    assert_eq!(first.incidents.len(), 1);
    let id = first.incidents[0].id.clone();
    // The OTLP name of the same service, a log signal and a metric, a window later.
    let next = c.observe(
        &[
            signal(r#"log_records{level="error",service="auth"}"#, 10_000, 0.99999),
            signal(r#"latency_p99_ms{host.name="auth-1",service.name="auth"}"#, 10_000, 0.9995),
        ],
        20_000,
    );
    assert_eq!(next.incidents.len(), 1);
    let inc = &next.incidents[0];
    assert_eq!((inc.id.as_str(), inc.state.as_str(), inc.members.len()), (id.as_str(), "updated", 3));
    assert_eq!(inc.origin, r#"log_error_ratio{service="auth"}"#);
    assert_eq!(inc.severity, "critical", "the highest of its members");
    // The same signal again changes nothing worth reporting.
    assert!(c.observe(&[signal(r#"log_error_ratio{service="auth"}"#, 20_000, 0.9995)], 30_000).incidents.is_empty());
}

#[test]
fn an_incident_resolves_when_every_member_is_quiet_and_replays_identically() {
    let run = || {
        let mut c = Correlator::new(cfg());
        let mut all = Vec::new();
        for w in 0..20i64 {
            let t = w * 10_000;
            let s: Vec<Signal> = if (2..5).contains(&w) { vec![signal(r#"err{service="pay"}"#, t, 0.9995)] } else { vec![] };
            all.extend(c.observe(&s, t + 10_000).incidents);
        }
        all
    };
    let a = run();
    let states: Vec<&str> = a.iter().map(|i| i.state.as_str()).collect();
    assert_eq!(states, ["opened", "resolved"]);
    // Last signal window ends at 50 s; quiet for 60 s: resolved at the close ending at 110 s.
    assert_eq!(a[1].resolved_ms, Some(110_000));
    assert_eq!(a[0].id, a[1].id);
    assert_eq!(a[0].fingerprint, a[1].fingerprint);
    let b = run();
    assert_eq!(a, b, "a replay yields the same incidents");
    let batch = incidents_batch(&a).unwrap();
    assert_eq!(batch.num_rows(), 2);
    assert_eq!(batch.schema(), incidents_schema());
}

#[test]
fn a_rising_line_reaches_its_limit_and_a_flat_noisy_one_does_not() {
    let rising: Vec<f64> = (0..60).map(|i| 50.0 + 0.5 * i as f64 + ((i * 7919) % 5) as f64 * 0.05).collect();
    // At 79.5 after 60 steps, +0.5 per step: 100 is about 41 steps ahead.
    let c = linear_crossing(&rising, 100.0, 60).unwrap();
    assert!((38..=44).contains(&c.expected.unwrap()), "{c:?}");
    assert!(c.earliest <= c.expected.unwrap() && c.expected.unwrap() <= c.latest.unwrap());
    assert!(linear_crossing(&rising, 100.0, 20).is_none(), "beyond the horizon");
    let flat: Vec<f64> = (0..60).map(|i| 90.0 + ((i * 7919) % 11) as f64 * 0.5).collect();
    assert!(linear_crossing(&flat, 100.0, 60).is_none());
}

#[test]
fn series_without_a_correlation_label_are_their_own_incidents() {
    let mut c = Correlator::new(cfg());
    let ch = c.observe(&[signal(r#"disk{host="x"}"#, 0, 0.9995), signal(r#"cpu{host="x"}"#, 0, 0.9995)], 10_000);
    assert_eq!(ch.incidents.len(), 2);
    assert_eq!(ch.incidents[0].key_label, "series");
}
