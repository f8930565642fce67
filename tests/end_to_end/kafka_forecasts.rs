//! Forecasts end to end through librdkafka's mock cluster: a disk filling up at a steady rate
//! is forecast in the background, and the `forecasts` table says when it will be full; the same
//! forecaster answers from SQL as `vigil_forecast`.

use std::time::Duration;

use crate::common::*;
use vigil::Stats;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_disk_is_forecast_to_reach_its_limit() {
    let kafka = Kafka::start(1);
    let t0 = 1_767_571_200_000i64;
    // One point per 10 s window for 400 windows: 40% rising by 0.05 points per window, so 90%
    // is reached about 1000 windows after the start, some 600 windows after the last point.
    let records: Vec<_> = (0..400i64)
        .map(|i| point(t0 + i * 10_000 + 1_000, "disk_used_percent", "db1", "orders", 40.0 + 0.05 * i as f64 + 0.2 * ((i * 7) % 5) as f64 / 5.0))
        .collect();
    kafka.produce(&records).await;

    let mut cfg = kafka.config("vigil-forecast");
    cfg.forecast.metrics = vec!["disk_used_percent".into()];
    cfg.forecast.limits.insert("disk_used_percent".into(), 90.0);
    cfg.forecast.horizon = Duration::from_secs(3 * 3600);
    cfg.forecast.refit_every = Duration::from_secs(1200);
    cfg.validate().unwrap();
    let tables = tables();
    let mut engine = vigil::Engine::new(&cfg, tables.clone()).await.unwrap();
    step_until(&mut engine, Duration::from_secs(60), |s| Stats::get(&s.records) >= 400).await;
    engine.drain().await.unwrap();
    assert!(Stats::get(&engine.stats().forecasts) > 0, "at least one refit finished");

    let functions = vigil_models::sql_functions();
    let sql = vigil_queries::SqlService::with_functions(tables, functions.scalar, functions.aggregate);
    let out = sql
        .query_json(
            "select count(distinct made_at) as refits, max(step) as steps, \
             bool_and(lower_95 <= point and point <= upper_95) as ordered \
             from forecasts where series = 'disk_used_percent{host=\"db1\",service=\"orders\"}'",
        )
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(v[0]["refits"].as_i64().unwrap() >= 1, "{v}");
    assert_eq!(v[0]["steps"], 1080, "three hours of 10 s windows");
    assert_eq!(v[0]["ordered"], true);
    // The latest forecast expects the limit about 600 windows after its last point.
    let out = sql
        .query_json(
            "select (arrow_cast(crosses_expected, 'Int64') - arrow_cast(made_at, 'Int64')) / 10000 as windows_to_full, method \
             from forecasts where made_at = (select max(made_at) from forecasts) and step = 1",
        )
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let w = v[0]["windows_to_full"].as_i64().unwrap_or_else(|| panic!("no crossing: {v}"));
    assert!((450..=800).contains(&w), "{v}");

    // The same forecaster, called from SQL over the points.
    let out = sql
        .query_json("select vigil_forecast(array_agg(value order by ts), 2) as f, robust_sigma(value) > 0 as spread from points")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let f = v[0]["f"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(f.len(), 2);
    assert!(f[0].as_f64().unwrap() > 59.0 && f[0].as_f64().unwrap() < 61.0, "{v}");
    assert_eq!(v[0]["spread"], true);
}
