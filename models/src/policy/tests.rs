use super::*;
use crate::incident::tests::signal;
use crate::incident::{incidents_batch, Correlator, IncidentConfig, Signal};

/// Runs signals through correlator, policies and gate, one close per entry of `closes`.
async fn run(set: &PolicySet, gate: &mut Gate, closes: &[(i64, Vec<Signal>)]) -> GateOutput {
    let mut c = Correlator::new(IncidentConfig { resolve_after_ms: 60_000, ..Default::default() });
    let mut all = GateOutput::default();
    for (now, signals) in closes {
        let changes = c.observe(signals, *now);
        let live: Vec<_> = changes.incidents.iter().filter(|i| i.state != "resolved").cloned().collect();
        let matches = set.evaluate(&incidents_batch(&live).unwrap()).await.unwrap();
        let out = gate.decide(&changes.incidents, &matches, *now);
        all.publish.extend(out.publish);
        all.log.extend(out.log);
    }
    all
}

fn gate(set: &PolicySet) -> Gate {
    Gate::new(set.specs().to_vec(), 3_600_000, 1_800_000)
}

#[tokio::test]
async fn the_defaults_plan_and_reproduce_the_old_actions() {
    let set = PolicySet::defaults().await.unwrap();
    let mut g = gate(&set);
    let out = run(
        &set,
        &mut g,
        &[
            (10_000, vec![signal(r#"latency_p99_ms{host="c1",service="checkout"}"#, 0, 0.99999)]),
            (10_000, vec![signal(r#"error_rate{host="p1",service="payments"}"#, 0, 0.9995)]),
            (10_000, vec![signal(r#"memory_used_bytes{host="s1",service="search"}"#, 0, 0.9995)]),
            (10_000, vec![signal(r#"requests_per_s{host="a1",service="auth"}"#, 0, 0.9995)]),
        ],
    )
    .await;
    let by: BTreeMap<&str, (&str, &str)> = out.publish.iter().map(|d| (d.incident.key.as_str(), (d.policy.as_str(), d.action.as_str()))).collect();
    assert_eq!(by["checkout"], ("saturation", "scale_out"));
    assert_eq!(by["payments"], ("errors", "open_incident"));
    assert_eq!(by["search"], ("resource_pressure", "run_runbook"));
    assert_eq!(by["auth"], ("investigate", "investigate"));
    let checkout = out.publish.iter().find(|d| d.incident.key == "checkout").unwrap();
    assert_eq!(checkout.parameters["replicas_delta"], serde_json::json!(2), "critical: two replicas, a number");
    assert_eq!(checkout.labels["alertname"], "saturation");
    assert_eq!(checkout.labels["service"], "checkout");
    assert_eq!((checkout.status.as_str(), checkout.kind.as_str()), ("firing", "incident.opened"));
    let search = out.publish.iter().find(|d| d.incident.key == "search").unwrap();
    assert_eq!((search.target.kind.as_str(), search.target.name.as_str()), ("host", "s1"));
    assert_eq!(search.parameters["runbook"], "memory-pressure");
}

#[tokio::test]
async fn a_policy_naming_an_unknown_column_is_refused_naming_the_policy_and_the_column() {
    let text = r#"
[[policy]]
name = "fine"
when = "severity = 'critical'"
action = "page"

[[policy]]
name = "typo"
when = "severty = 'critical'"
action = "page"
"#;
    let e = PolicySet::new(text, "test").await.unwrap_err().to_string();
    assert!(e.contains("policy `typo`") && e.contains("when") && e.contains("unknown column `severty`"), "{e}");
    let e = PolicySet::new(&text.replace("severty = 'critical'", "severity = 'critical'").replace("action = \"page\"\n\n", "action = \"page\"\nparameters = { n = \"membrs + 1\" }\n\n"), "test")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("policy `fine`") && e.contains("parameters.n") && e.contains("`membrs`"), "{e}");
    let e = PolicySet::new(&text.replace("severty = 'critical'", "severity = = 'critical'"), "test").await.unwrap_err().to_string();
    assert!(e.contains("policy `typo`") && e.contains("when"), "{e}");
    let e = PolicySet::new("[[policy]]\nname = \"x\"\nwhen = \"true\"\naction = \"a\"\nrisk = \"extreme\"\n", "test").await.unwrap_err().to_string();
    assert!(e.contains("extreme") && e.contains("low"), "{e}");
}

const ONE: &str = r#"
[[policy]]
name = "page"
when = "true"
action = "page"
cooldown = "5m"
max_per_hour = 2
"#;

#[tokio::test]
async fn cooldown_and_rate_limit_withhold_decisions_and_say_why() {
    let set = PolicySet::new(ONE, "test").await.unwrap();
    let mut g = gate(&set);
    let s = |svc: &str, t: i64| signal(&format!(r#"cpu{{service="{svc}"}}"#), t, 0.9995);
    let out = run(
        &set,
        &mut g,
        &[
            (10_000, vec![s("a", 0)]),
            // Resolved at 80 s; a new incident for the same target inside the 5 min cooldown.
            (80_000, vec![]),
            (100_000, vec![s("a", 90_000)]),
            // Other targets: the second passes, the third exceeds max_per_hour = 2.
            (110_000, vec![s("b", 100_000)]),
            (120_000, vec![s("c", 110_000)]),
        ],
    )
    .await;
    let outcomes: Vec<&str> = out.log.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(outcomes, ["published", "resolved", "cooldown", "published", "rate_limited"], "{:#?}", out.log);
    assert!(out.log[2].reason.contains("cooldown 5m"), "{}", out.log[2].reason);
    assert!(out.log[4].reason.contains("max_per_hour"), "{}", out.log[4].reason);
    assert_eq!(out.publish.len(), 3, "two firing, one resolved");
    assert_eq!(out.publish[1].status, "resolved");
    assert_eq!(out.publish[0].fingerprint, out.publish[1].fingerprint);
}

#[tokio::test]
async fn an_approval_policy_publishes_once_approved_and_a_rejection_suppresses_the_fingerprint() {
    let set = PolicySet::new(&ONE.replace("max_per_hour = 2", "mode = \"approval\"\nrisk = \"high\""), "test").await.unwrap();
    let mut g = gate(&set);
    let out = run(&set, &mut g, &[(10_000, vec![signal(r#"cpu{service="a"}"#, 0, 0.9995)])]).await;
    assert!(out.publish.is_empty());
    assert_eq!(out.log[0].outcome, "waiting_for_approval");
    let pending = g.pending().next().unwrap().clone();
    assert_eq!(pending.approval.state, "pending");
    let fb = Feedback::parse(format!(r#"{{"decision_id":"{}","outcome":"approved","by":"alice","note":"go"}}"#, pending.id).as_bytes()).unwrap();
    let approved = g.feedback(&fb);
    assert_eq!(approved.publish.len(), 1);
    let d = &approved.publish[0];
    assert_eq!((d.id.as_str(), d.approval.state.as_str(), d.approval.by.as_deref()), (pending.id.as_str(), "approved", Some("alice")));
    assert_eq!(approved.outcomes[0].policy.as_deref(), Some("page"));
    assert!(g.pending().next().is_none());
    // Approving again does nothing.
    assert!(g.feedback(&fb).publish.is_empty());

    // A rejection drops the pending decision and suppresses the fingerprint.
    let mut g = gate(&set);
    let sig = |t: i64| signal(r#"cpu{service="b"}"#, t, 0.9995);
    run(&set, &mut g, &[(10_000, vec![sig(0)])]).await;
    let pending = g.pending().next().unwrap().clone();
    let fb = Feedback::parse(format!(r#"{{"incident_id":"{}","outcome":"rejected","by":"bob","time":10000}}"#, pending.incident.id).as_bytes()).unwrap();
    let r = g.feedback(&fb);
    assert!(r.publish.is_empty() && r.log[0].outcome == "rejected");
    assert!(g.pending().next().is_none());
    // The same problem again within the hour: snoozed.
    let out = run(&set, &mut g, &[(20_000, vec![sig(10_000)])]).await;
    assert!(out.publish.is_empty());
    assert_eq!(out.log[0].outcome, "snoozed", "{:#?}", out.log);
}

#[tokio::test]
async fn a_dry_run_policy_logs_and_never_publishes() {
    let set = PolicySet::new(&ONE.replace("max_per_hour = 2", "mode = \"dry_run\""), "test").await.unwrap();
    let mut g = gate(&set);
    let out = run(&set, &mut g, &[(10_000, vec![signal(r#"cpu{service="a"}"#, 0, 0.9995)])]).await;
    assert!(out.publish.is_empty());
    assert_eq!(out.log[0].outcome, "dry_run");
    assert_eq!(out.log[0].decision.as_ref().unwrap().policy, "page");
}

#[test]
fn malformed_feedback_is_refused_with_a_reason() {
    assert!(Feedback::parse(b"nope").unwrap_err().0.contains("not a feedback object"));
    assert!(Feedback::parse(br#"{"outcome":"approved","by":"a"}"#).unwrap_err().0.contains("decision_id"));
    assert!(Feedback::parse(br#"{"decision_id":"x","outcome":"maybe","by":"a"}"#).unwrap_err().0.contains("approved, rejected"));
    assert!(Feedback::parse(br#"{"decision_id":"x","outcome":"snoozed","by":"a","until":"tomorrow"}"#).unwrap_err().0.contains("until"));
    let f = Feedback::parse(br#"{"decision_id":"x","outcome":"snoozed","by":"a","until":"2026-01-05T10:00:00Z"}"#).unwrap();
    assert_eq!(f.until_ms, Some(1_767_607_200_000));
}

#[tokio::test]
async fn an_error_rate_rising_in_an_incident_opened_by_a_drop_changes_the_action() {
    let set = PolicySet::defaults().await.unwrap();
    let mut g = gate(&set);
    let mut drop = signal(r#"cpu_utilization{host="p2",service="payments"}"#, 0, 0.9993);
    drop.z = -9.0;
    drop.kind = "anomaly.drop".into();
    let out = run(
        &set,
        &mut g,
        &[(10_000, vec![drop]), (60_000, vec![signal(r#"error_rate{host="p5",service="payments"}"#, 50_000, 0.99999)])],
    )
    .await;
    let got: Vec<(&str, &str, &str)> = out.publish.iter().map(|d| (d.kind.as_str(), d.policy.as_str(), d.action.as_str())).collect();
    assert_eq!(got, [("incident.opened", "investigate", "investigate"), ("incident.updated", "errors", "open_incident")]);
    assert_eq!(out.publish[0].incident.id, out.publish[1].incident.id, "one incident");

    // A spike followed by a dip of the same series: still the spike's decision, no second one.
    let mut g = gate(&set);
    let spike = signal(r#"latency_p99_ms{host="c1",service="checkout"}"#, 0, 0.99999);
    let mut dip = signal(r#"latency_p99_ms{host="c1",service="checkout"}"#, 10_000, 0.9995);
    dip.z = -9.0;
    let out = run(&set, &mut g, &[(10_000, vec![spike]), (20_000, vec![dip])]).await;
    assert_eq!(out.publish.iter().map(|d| d.action.as_str()).collect::<Vec<_>>(), ["scale_out"]);
}
