//! Late data is kept, not dropped: a point whose window has already closed goes to the late
//! topic with the reason and its source, into `late_points`, and is counted per topic.

use std::time::Duration;

use crate::common::*;
use vigil::Stats;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_behind_the_watermark_goes_to_the_late_topic_and_table_with_its_reason() {
    let kafka = Kafka::start(1);
    let t0 = 1_767_571_200_000i64;
    let mut input: Vec<_> = (0..20i64).map(|w| point(t0 + w * 10_000, "cpu_utilization", "h1", "checkout", 0.5)).collect();
    // 150 s behind the newest point: its window closed long ago.
    input.push(point(t0 + 40_000, "cpu_utilization", "h2", "checkout", 0.7));
    input.push(point(t0 + 200_000, "cpu_utilization", "h1", "checkout", 0.5));
    kafka.produce(&input).await;

    let tables = tables();
    let mut engine = vigil::Engine::new(&kafka.config("vigil-late"), tables.clone()).await.unwrap();
    let stats = engine.stats();
    step_until(&mut engine, Duration::from_secs(60), |s| Stats::get(&s.records) == 22 && Stats::get(&s.windows_closed) >= 19).await;
    assert_eq!(Stats::get(&stats.late), 1);
    assert_eq!(stats.late_by_topic.lock().unwrap().get("metrics"), Some(&1));

    let late = kafka.read_all("vigil.late", 1, Duration::from_secs(10));
    assert_eq!(late.len(), 1);
    let reason = late[0].header("vigil.late.reason").unwrap();
    assert!(reason.contains("window had closed") && reason.contains("2026-01-05T00:03:05.000Z"), "{reason}");
    assert_eq!(late[0].header("vigil.source.offset"), Some("20"));
    let row: serde_json::Value = serde_json::from_slice(&late[0].payload).unwrap();
    assert_eq!(row["value"], 0.7);
    assert_eq!(row["labels"]["host"], "h2");

    let snap = tables.snapshot("late_points").unwrap();
    assert_eq!(snap.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let sql = vigil_queries::SqlService::new(tables.clone());
    let rows = sql.query_json("select series, reason, \"offset\" from late_points").await.unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&rows).unwrap();
    assert_eq!(rows[0]["offset"], 20);
    assert!(rows[0]["series"].as_str().unwrap().contains("h2"));
}
