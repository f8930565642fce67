use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, a Thursday

fn row(start: i64, hours: i64, cost: f64, dims: &[(&str, &str)]) -> CostRow {
    CostRow { start_ms: start, end_ms: start + hours * HOUR_MS, cost, dims: dims.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
}

#[test]
fn impact_and_impact_percent_follow_aws_definitions() {
    // Spent 150 against 120 expected: +30, +25%.
    assert_eq!(impact(150.0, 120.0), (30.0, Some(25.0)));
    // Under: 90 against 120: -30, -25%.
    assert_eq!(impact(90.0, 120.0), (-30.0, Some(-25.0)));
    // Nothing expected: no percentage.
    assert_eq!(impact(5.0, 0.0), (5.0, None));
}

#[test]
fn root_causes_are_the_parts_that_moved_with_their_share_of_the_impact() {
    // Expected 100, usually 60% compute and 40% storage. This hour: compute 60, storage 40,
    // and a new resource at 50: impact +50, all of it the new resource.
    let usual: BTreeMap<String, f64> = [("resource=i-a".to_string(), 0.6), ("resource=vol-b".to_string(), 0.4)].into();
    let actual: BTreeMap<String, f64> = [("resource=i-a".to_string(), 60.0), ("resource=vol-b".to_string(), 40.0), ("resource=i-zombie".to_string(), 50.0)].into();
    let rc = root_causes(50.0, 100.0, &actual, &usual, 3);
    assert_eq!(rc, vec![RootCause { dimension: "resource".into(), value: "i-zombie".into(), impact: 50.0, share: 1.0 }]);
    // Compute +30 (90 against 60) and storage +10 (50 against 40): 75% and 25%.
    let actual: BTreeMap<String, f64> = [("resource=i-a".to_string(), 90.0), ("resource=vol-b".to_string(), 50.0)].into();
    let rc = root_causes(40.0, 100.0, &actual, &usual, 3);
    assert_eq!(rc.iter().map(|r| (r.value.as_str(), r.impact, r.share)).collect::<Vec<_>>(), vec![("i-a", 30.0, 0.75), ("vol-b", 10.0, 0.25)]);
    // A drop: the part that fell is the cause, the one that rose is not counted.
    let actual: BTreeMap<String, f64> = [("resource=i-a".to_string(), 20.0), ("resource=vol-b".to_string(), 45.0)].into();
    let rc = root_causes(-35.0, 100.0, &actual, &usual, 3);
    assert_eq!(rc.iter().map(|r| (r.value.as_str(), r.impact, r.share)).collect::<Vec<_>>(), vec![("i-a", -40.0, 1.0)]);
}

#[test]
fn the_projection_adds_the_remaining_hours_and_finds_when_the_budget_runs_out() {
    // 600 spent; 10 hours left at 50 each with a bias of +10: 600 + 10 × 60 = 1,200. Budget
    // 1,000: reached after 7 hours (600 + 7 × 60 = 1,020), at the end of the 7th hour.
    let from = T0;
    let p = project(600.0, from, &[50.0; 10], Some((&[40.0; 10], &[70.0; 10])), 10.0, 1_000.0);
    assert!((p.projected - 1_200.0).abs() < 1e-9);
    assert_eq!(p.interval, Some([600.0 + 500.0, 600.0 + 800.0]));
    assert_eq!(p.runs_out_ms, Some(from + 7 * HOUR_MS));
    // Not reached within the period.
    let p = project(100.0, from, &[10.0; 5], None, 0.0, 1_000.0);
    assert_eq!((p.projected, p.interval, p.runs_out_ms), (150.0, None, None));
}

fn engine(min_history_h: u64) -> CostEngine {
    let cfg = CostConfig {
        scopes: vec!["service".into()],
        allowed_lag: Duration::from_secs(3600),
        min_history: Duration::from_secs(min_history_h * 3600),
        anomaly_min_impact: 5.0,
        anomaly_min_impact_percent: 20.0,
        budgets: vec![BudgetConfig {
            name: "checkout-monthly".into(),
            scope: "service".into(),
            value: "checkout".into(),
            amount: 1_000.0,
            period: "month".into(),
            start: None,
            end: None,
            warn_at: 0.8,
        }],
        efficiency: EfficiencyConfig { cpu_utilization: Some("cpu".into()), idle_for: Duration::from_secs(2 * 3600), ..Default::default() },
        ..Default::default()
    };
    CostEngine::new(cfg)
}

#[test]
fn hours_close_on_the_cost_clock_and_rows_for_closed_hours_are_late() {
    let mut e = engine(48);
    let svc = [("service", "checkout"), ("resource", "i-a")];
    // Hour 0: nothing closes until rows end an hour (the lag) after it.
    assert!(e.push(&[row(T0, 1, 1.0, &svc)]).is_empty());
    assert!(!e.ready(None));
    assert_eq!(e.close_ready(None).hours, 0);
    // Rows for hours 1 and 2 (the last ends at 3h): the clock is 2h, hours 0 and 1 close.
    e.push(&[row(T0 + HOUR_MS, 1, 1.0, &svc), row(T0 + 2 * HOUR_MS, 1, 1.0, &svc)]);
    let out = e.close_ready(None);
    assert_eq!(out.hours, 2);
    assert_eq!(out.drift.iter().map(|d| (d.start_ms - T0) / HOUR_MS).collect::<Vec<_>>(), vec![0, 1]);
    // Hour 1 is closed: a row for it is late, one for hour 2 is not.
    assert_eq!(e.push(&[row(T0 + HOUR_MS, 1, 5.0, &svc), row(T0 + 2 * HOUR_MS, 1, 1.0, &svc)]), vec![0]);
    // The metrics' clock closes hour 2 once it is `max_delay` (24 h) past it, with no more rows.
    assert!(!e.ready(Some(T0 + 20 * HOUR_MS)));
    assert!(e.ready(Some(T0 + 27 * HOUR_MS)));
    let out = e.close_ready(Some(T0 + 27 * HOUR_MS));
    assert_eq!(out.drift.len(), 1);
    assert_eq!(out.drift[0].actual, 2.0);
}

#[test]
fn a_daily_row_is_spread_over_its_hours() {
    let mut e = engine(48);
    e.push(&[row(T0, 24, 48.0, &[("service", "checkout")]), row(T0 + 25 * HOUR_MS, 1, 0.0, &[("service", "checkout")])]);
    let out = e.close_ready(None);
    assert_eq!(out.hours, 24);
    assert!(out.drift.iter().all(|d| (d.actual - 2.0).abs() < 1e-9));
}

/// Three weeks of a daily pattern, then an hour 50% over with a new resource: the drift row
/// says so, names the new resource as the root cause, and the signal is a cost anomaly.
#[test]
fn a_jump_after_weeks_of_history_is_a_cost_anomaly_with_its_root_cause() {
    let mut e = engine(48);
    let level = |h: i64| 20.0 + 5.0 * ((h % 24) as f64 / 24.0 * std::f64::consts::TAU).sin();
    let hours = 21 * 24;
    for h in 0..hours {
        e.push(&[row(T0 + h * HOUR_MS, 1, level(h) * 0.7, &[("service", "checkout"), ("resource", "i-a")]), row(T0 + h * HOUR_MS, 1, level(h) * 0.3, &[("service", "checkout"), ("resource", "vol-b")])]);
    }
    let quiet = e.close_ready(None);
    assert!(quiet.signals.iter().all(|s| s.kind != "cost.anomaly"), "no anomaly in the regular history: {:?}", quiet.signals.iter().map(|s| &s.explanation).collect::<Vec<_>>());
    let h = hours;
    e.push(&[
        row(T0 + h * HOUR_MS, 1, level(h) * 0.7, &[("service", "checkout"), ("resource", "i-a")]),
        row(T0 + h * HOUR_MS, 1, level(h) * 0.3, &[("service", "checkout"), ("resource", "vol-b")]),
        row(T0 + h * HOUR_MS, 1, level(h) * 0.5, &[("service", "checkout"), ("resource", "i-zombie")]),
        row(T0 + (h + 1) * HOUR_MS, 1, 0.0, &[("service", "other")]),
    ]);
    let out = e.close_ready(Some(T0 + (h + 2) * HOUR_MS));
    let d = out.drift.iter().find(|d| d.start_ms == T0 + h * HOUR_MS && d.value == "checkout" && d.granularity == "hour").unwrap();
    assert!(d.anomaly, "{d:?}");
    let pct = d.impact_percent.unwrap();
    assert!((40.0..60.0).contains(&pct), "{d:?}");
    assert_eq!(d.root_causes[0].value, "i-zombie");
    assert!(d.root_causes[0].share > 0.8, "{d:?}");
    let s = out.signals.iter().find(|s| s.kind == "cost.anomaly").unwrap();
    assert_eq!(s.series, "cost{service=\"checkout\"}");
    // It keeps its incident open until the next hour can confirm it.
    assert!(s.window_end > T0 + (h + 2) * HOUR_MS);
}

#[test]
fn a_budget_reports_spend_projection_and_status() {
    let mut e = engine(10_000); // no forecast: the projection is the burn rate
    // 31 days of January at 1/hour = 744 against a budget of 1,000: ok (74%). At 2/hour from
    // day 10 on: 9 × 24 + 22 × 48 = 1,272: exceeded before the end.
    for h in 0..(9 * 24) {
        e.push(&[row(T0 + h * HOUR_MS, 1, 1.0, &[("service", "checkout")])]);
    }
    e.push(&[row(T0 + 9 * 24 * HOUR_MS + HOUR_MS, 1, 0.0, &[("service", "other")])]);
    let out = e.close_ready(None);
    let last = out.budgets.last().unwrap();
    // Spent 216 after 9 days; burning 24 a day; 22 days left: 216 + 528 = 744.
    assert_eq!((last.spend_to_date, last.burn_rate_per_day, last.projected, last.status), (216.0, 24.0, 744.0, "ok"));
    assert!(out.signals.is_empty());
    for h in (9 * 24)..(16 * 24) {
        e.push(&[row(T0 + h * HOUR_MS, 1, 2.0, &[("service", "checkout")])]);
    }
    e.push(&[row(T0 + 16 * 24 * HOUR_MS + HOUR_MS, 1, 0.0, &[("service", "other")])]);
    let out = e.close_ready(None);
    let last = out.budgets.last().unwrap();
    // 216 + 7 × 48 = 552 spent; 48 a day for 15 days: 552 + 720 = 1,272; it runs out after
    // (1,000 - 552) / 2 = 224 more hours: 16 days + 224 h = Jan 26 08:00.
    assert_eq!((last.spend_to_date, last.projected, last.status), (552.0, 1_272.0, "at_risk"));
    assert_eq!(last.runs_out_ms, Some(T0 + 16 * 24 * HOUR_MS + 224 * HOUR_MS));
    assert!(out.signals.iter().any(|s| s.kind == "budget.at_risk" && s.series == "budget{budget=\"checkout-monthly\"}"));
}

#[test]
fn an_idle_resource_is_found_after_idle_for_with_its_monthly_saving() {
    let mut e = engine(48);
    let dims = [("service", "checkout"), ("resource", "checkout-idle-01")];
    for h in 0..3 {
        e.observe_usage(T0 + h * HOUR_MS, "checkout-idle-01", Some("checkout"), ResourceUse { cpu_utilization: (0.02, 1), ..Default::default() });
        e.push(&[row(T0 + h * HOUR_MS, 1, 0.5, &dims)]);
    }
    e.push(&[row(T0 + 4 * HOUR_MS, 1, 0.0, &[("service", "other")])]);
    let out = e.close_ready(None);
    let rows: Vec<&EfficiencyRow> = out.efficiency.iter().filter(|r| r.resource == "checkout-idle-01").collect();
    assert_eq!(rows.iter().map(|r| (r.idle_hours, r.idle)).collect::<Vec<_>>(), vec![(1, false), (2, true), (3, true)]);
    // 0.5 an hour × 730 hours.
    assert_eq!(rows[1].monthly_saving, Some(365.0));
    assert_eq!(rows[1].recommendation, Some("terminate"));
    let s = out.signals.iter().find(|s| s.kind == "cost.idle_resource").unwrap();
    assert_eq!(s.series, "idle_resource{resource=\"checkout-idle-01\",service=\"checkout\"}");
}

#[test]
fn rightsizing_needs_a_day_of_low_peaks() {
    let cfg = EfficiencyConfig::default();
    let low: std::collections::VecDeque<f64> = vec![0.1; 24].into();
    // Peak 0.1 against a 0.6 target: 1/6 of the size, rounded up to a quarter; saves 75%.
    assert_eq!(efficiency::recommend(&cfg, false, &low, 1.0), Some(("rightsize", 0.25, 547.5)));
    let short: std::collections::VecDeque<f64> = vec![0.1; 12].into();
    assert_eq!(efficiency::recommend(&cfg, false, &short, 1.0), None);
    let busy: std::collections::VecDeque<f64> = vec![0.4; 24].into();
    assert_eq!(efficiency::recommend(&cfg, false, &busy, 1.0), None);
}

#[test]
fn cost_rows_come_from_the_costs_batch_with_tags_as_dimensions() {
    use arrow::array::{ArrayRef, Float64Array, MapBuilder, MapFieldNames, RecordBatch, StringArray, StringBuilder, TimestampMillisecondArray};
    use std::sync::Arc;
    let names = MapFieldNames { entry: "entries".into(), key: "keys".into(), value: "values".into() };
    let mut tags = MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new());
    tags.keys().append_value("team");
    tags.values().append_value("commerce");
    tags.append(true).unwrap();
    let ts = |v: i64| Arc::new(TimestampMillisecondArray::from(vec![v]).with_timezone("+00:00")) as ArrayRef;
    let s = |v: Option<&str>| Arc::new(StringArray::from(vec![v])) as ArrayRef;
    let f = |v: Option<f64>| Arc::new(Float64Array::from(vec![v])) as ArrayRef;
    let cols = vec![ts(T0), ts(T0 + HOUR_MS), f(Some(3.0)), f(None), f(Some(3.0)), f(None), s(Some("Amazon EC2")), s(Some("Compute")), s(Some("i-1")), s(None), s(Some("eu-west-1")), s(Some("prod")), Arc::new(tags.finish())];
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("charge_start", cols[0].data_type().clone(), false),
        arrow::datatypes::Field::new("charge_end", cols[1].data_type().clone(), false),
        arrow::datatypes::Field::new("cost", arrow::datatypes::DataType::Float64, false),
        arrow::datatypes::Field::new("billed_cost", arrow::datatypes::DataType::Float64, true),
        arrow::datatypes::Field::new("effective_cost", arrow::datatypes::DataType::Float64, true),
        arrow::datatypes::Field::new("list_cost", arrow::datatypes::DataType::Float64, true),
        arrow::datatypes::Field::new("service_name", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new("service_category", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new("resource_id", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new("resource_name", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new("region", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new("account", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new("tags", cols[12].data_type().clone(), false),
    ]));
    let b = RecordBatch::try_new(schema, cols).unwrap();
    let rows = cost_rows(&b).unwrap();
    assert_eq!(rows[0].dim("team"), Some("commerce"));
    assert_eq!(rows[0].dim("resource"), Some("i-1"), "no ResourceName: the id");
    assert_eq!(rows[0].dim("cloud_service"), Some("Amazon EC2"));
    assert_eq!(rows[0].dim("account"), Some("prod"));
    assert_eq!(rows[0].dim("all"), Some("all"));
}
