use super::*;
use crate::window::{WindowConfig, Windower};
use arrow::array::{AsArray, Float64Array, Int64Array};
use vigil_ingest::{JsonPointDecoder, RawRecord, SourcePos};

fn window(rows: &[(&str, i64, f64)]) -> Vec<ClosedWindow> {
    let recs: Vec<RawRecord> = rows
        .iter()
        .enumerate()
        .map(|(i, (host, ts, v))| RawRecord {
            payload: Some(format!(r#"{{"ts": {ts}, "name": "cpu", "labels": {{"host": "{host}"}}, "value": {v}}}"#).into_bytes()),
            key: None,
            pos: SourcePos { topic: "m".into(), partition: 0, offset: i as i64 },
        })
        .collect();
    let out = JsonPointDecoder::default().decode(&recs).unwrap();
    let mut w = Windower::new(WindowConfig { size_ms: 10_000, allowed_lag_ms: 0, idle_timeout: std::time::Duration::from_secs(60) });
    w.push(&out.points, &out.positions).unwrap();
    w.take_all()
}

async fn plan_default() -> FeaturePlan {
    FeaturePlan::new(DEFAULT_FEATURES_SQL, "mean").await.unwrap()
}

#[tokio::test]
async fn default_sql_computes_count_mean_min_max_p95_per_series() {
    let plan = plan_default().await;
    let mut rows: Vec<(&str, i64, f64)> = (1..=100).map(|i| ("a", 1_000 + i, i as f64)).collect();
    rows.push(("b", 2_000, 7.0));
    let f = plan.run(&window(&rows)).await.unwrap().features;
    assert_eq!(f.num_rows(), 2);
    let series = f.column_by_name("series").unwrap().as_string::<i32>();
    let i = (0..2).find(|&i| series.value(i) == r#"cpu{host="a"}"#).unwrap();
    let get = |c: &str| f.column_by_name(c).unwrap().as_any().downcast_ref::<Float64Array>().unwrap().value(i);
    assert_eq!(f.column_by_name("count").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().value(i), 100);
    assert_eq!(get("mean"), 50.5);
    assert_eq!((get("min"), get("max")), (1.0, 100.0));
    assert!((get("p95") - 95.0).abs() <= 1.5, "p95 {}", get("p95"));
}

#[tokio::test]
async fn a_window_with_one_point_per_series_past_the_partial_aggregation_probe_is_aggregated() {
    // More rows per partition than DataFusion's probe (100,000) on up to two cores, each its
    // own group: the case in which DataFusion would skip partial aggregation and
    // `percentile_cont` panic (vigil_models' own test covers it on any machine).
    let hosts: Vec<String> = (0..250_000).map(|i| format!("h{i}")).collect();
    let rows: Vec<(&str, i64, f64)> = hosts.iter().enumerate().map(|(i, h)| (h.as_str(), 1_000 + (i % 5_000) as i64, i as f64)).collect();
    let f = plan_default().await.run(&window(&rows)).await.unwrap().features;
    assert_eq!(f.num_rows(), 250_000);
    let p95 = f.column_by_name("p95").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
    let mean = f.column_by_name("mean").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(p95.values(), mean.values(), "one point: its p95 is its value");
}

#[tokio::test]
async fn log_rows_become_signal_points_scored_like_metrics() {
    use vigil_ingest::{DrainConfig, JsonLogDecoder, LogMapping};
    let mut lines = Vec::new();
    for i in 0..8 {
        lines.push(format!(r#"{{"ts": {}, "level": "info", "service": "api", "message": "GET /cart 200 in {i} ms"}}"#, 1_000 + i));
    }
    lines.push(r#"{"ts": 1500, "level": "error", "service": "api", "message": "upstream timed out"}"#.to_string());
    lines.push(r#"{"ts": 1600, "level": "error", "service": "api", "message": "upstream timed out"}"#.to_string());
    let recs: Vec<RawRecord> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| RawRecord { payload: Some(l.clone().into_bytes()), key: None, pos: SourcePos { topic: "logs".into(), partition: 0, offset: i as i64 } })
        .collect();
    let logs = JsonLogDecoder::new(LogMapping::default(), DrainConfig::default(), Default::default()).unwrap().decode(&recs).unwrap();
    let mut w = Windower::new(WindowConfig { size_ms: 10_000, allowed_lag_ms: 0, idle_timeout: std::time::Duration::from_secs(60) });
    w.push_logs(&logs.logs, &logs.positions).unwrap();
    let plan = plan_default().await;
    let out = plan.run(&w.take_all()).await.unwrap();
    assert_eq!(out.logs.num_rows(), 10);
    let series = out.features.column_by_name("series").unwrap().as_string::<i32>();
    let mean = out.features.column_by_name("mean").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
    let get = |k: &str| (0..series.len()).find(|&i| series.value(i) == k).map(|i| mean.value(i));
    assert_eq!(get(r#"log_records{level="info",service="api"}"#), Some(8.0));
    assert_eq!(get(r#"log_records{level="error",service="api"}"#), Some(2.0));
    assert_eq!(get(r#"log_error_ratio{service="api"}"#), Some(0.2));
    assert_eq!(get(r#"log_new_templates{service="api"}"#), Some(2.0));
    let per_template = (0..series.len()).filter(|&i| series.value(i).starts_with("log_template_records{")).count();
    assert_eq!(per_template, 2);
}

/// The features of `sql` over `windows`, planned from scratch over an ordinary in-memory
/// table: what the prepared plan must give.
async fn planned_afresh(sql: &str, windows: &[ClosedWindow], partitions: usize) -> RecordBatch {
    let plan = FeaturePlan::build(sql, DEFAULT_LOG_SIGNALS_SQL, "mean", Vec::new(), Vec::new(), 1).await.unwrap();
    let rows = plan.points_rows(windows).unwrap();
    let ctx = SessionContext::new_with_config(vigil_models::session_config(partitions));
    let parts = deal_evenly(rows, partitions).unwrap();
    ctx.register_table("points", Arc::new(datafusion::datasource::MemTable::try_new(plan.points_schema(), parts).unwrap())).unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    conform(concat_batches(&batches[0].schema(), &batches).unwrap(), &plan.output_schema()).unwrap()
}

/// Equal, but for the last bits of sums added in another order.
fn same_features(got: &RecordBatch, want: &RecordBatch, what: &str) {
    assert_eq!(got.schema(), want.schema(), "{what}");
    assert_eq!(got.num_rows(), want.num_rows(), "{what}");
    for (i, f) in got.schema().fields().iter().enumerate() {
        let (a, b) = (got.column(i), want.column(i));
        if f.data_type() == &DataType::Float64 {
            let (a, b) = (a.as_primitive::<Float64Type>(), b.as_primitive::<Float64Type>());
            for r in 0..a.len() {
                let (x, y) = (a.value(r), b.value(r));
                assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{what}: {} row {r}: {x} against {y}", f.name());
            }
        } else {
            assert_eq!(a, b, "{what}: {}", f.name());
        }
    }
}

fn many_series(seed: u64, hosts: usize, points: usize) -> Vec<ClosedWindow> {
    let names: Vec<String> = (0..hosts).map(|h| format!("h{h}")).collect();
    let rows: Vec<(&str, i64, f64)> = (0..hosts * points)
        .map(|i| (names[i % hosts].as_str(), 1_000 + (i / hosts) as i64 * 7, ((i as u64 * 2_654_435_761 + seed) % 1_000) as f64 / 10.0))
        .collect();
    window(&rows)
}

#[tokio::test]
async fn the_plan_made_once_gives_at_every_close_what_planning_afresh_gives() {
    // The physical plan is made once and re-executed over new rows; its points are dealt out
    // by series. Each close must give exactly what planning the SQL over a plain table does,
    // whatever the row counts (the count(*) of a scalar subquery would be answered from the
    // first rows' statistics if the table had any).
    let sql = "SELECT window_start, window_end, series_id, series, name, count(*) AS count, avg(value) AS mean, \
               max(value) AS max, percentile_cont(value, 0.95) AS p95, (SELECT count(*) FROM points) AS total \
               FROM points GROUP BY window_start, window_end, series_id, series, name ORDER BY window_start, series_id";
    for partitions in [1, 2, 3] {
        let plan = FeaturePlan::build(sql, DEFAULT_LOG_SIGNALS_SQL, "mean", Vec::new(), Vec::new(), partitions).await.unwrap();
        assert!(plan.points.prepared.plan().is_some(), "planned once");
        for (seed, hosts, points) in [(1, 3_000, 4), (2, 50, 30), (3, 9_000, 2), (4, 1, 1)] {
            let windows = many_series(seed, hosts, points);
            let got = plan.run(&windows).await.unwrap().features;
            let want = planned_afresh(sql, &windows, partitions).await;
            assert_eq!(got.num_rows(), hosts, "partitions {partitions}, run {seed}");
            same_features(&got, &want, &format!("partitions {partitions}, run {seed}"));
        }
    }
}

#[tokio::test]
async fn a_plan_grouped_by_series_id_needs_no_shuffle() {
    let plan = FeaturePlan::build(DEFAULT_FEATURES_SQL, DEFAULT_LOG_SIGNALS_SQL, "mean", Vec::new(), Vec::new(), 2).await.unwrap();
    let shown = datafusion::physical_plan::displayable(plan.points.prepared.plan().unwrap().as_ref()).indent(true).to_string();
    assert!(!shown.contains("RepartitionExec"), "{shown}");
    assert!(shown.contains("mode=SinglePartitioned"), "{shown}");
}

#[tokio::test]
async fn sql_calling_now_is_planned_at_every_close() {
    let sql = "SELECT window_start, window_end, series_id, series, name, avg(value) AS mean, \
               CAST(now() AS BIGINT) / 1000000 AS planned_ms \
               FROM points GROUP BY window_start, window_end, series_id, series, name";
    let plan = FeaturePlan::new(sql, "mean").await.unwrap();
    assert!(plan.points.prepared.plan().is_none());
    assert!(plan_default().await.points.prepared.plan().is_some());
    let at = |f: &RecordBatch| f.column_by_name("planned_ms").unwrap().as_primitive::<arrow::datatypes::Int64Type>().value(0);
    let first = at(&plan.run(&window(&[("a", 1_000, 1.0)])).await.unwrap().features);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = at(&plan.run(&window(&[("a", 1_000, 1.0)])).await.unwrap().features);
    assert!(second >= first + 20, "now() of the second close {second}, of the first {first}");
}

#[tokio::test]
async fn log_signal_sql_without_a_required_column_is_refused_naming_it() {
    let err = FeaturePlan::with_log_signals(DEFAULT_FEATURES_SQL, "SELECT window_start, 'x' AS name, 1.0 AS value FROM logs", "mean").await.unwrap_err();
    assert!(err.to_string().contains("`labels`"), "{err}");
}

#[tokio::test]
async fn sql_without_a_required_column_is_refused_naming_it() {
    let err = FeaturePlan::new("SELECT window_start, window_end, series, name, avg(value) AS mean FROM points GROUP BY 1,2,3,4", "mean")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`series_id`"), "{err}");
    let err = FeaturePlan::new("SELEC nonsense", "mean").await.unwrap_err();
    assert!(err.to_string().starts_with("feature plan:"), "{err}");
}
