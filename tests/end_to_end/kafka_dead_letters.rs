//! Bad records through librdkafka's mock cluster over TCP: each lands on the dead-letter topic
//! with its reason and source position, the counts are right, and the good records of the same
//! batches are still processed.



use std::time::Duration;

use crate::common::*;
use vigil::Stats;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_truncated_mistyped_and_incomplete_records_go_to_the_dlq_and_good_ones_survive() {
    let kafka = Kafka::start(1);
    let t0 = 1_767_571_200_000i64;
    let mut input = Vec::new();
    let mut bad_kinds = Vec::new();
    let bad: [(&str, Option<&[u8]>); 6] = [
        ("syntax", Some(b"not json at all")),
        ("syntax", Some(br#"{"ts": 1767571200000, "name": "cpu", "val"#)),
        ("type", Some(br#"{"ts": 1767571200000, "name": "cpu", "value": "high"}"#)),
        ("missing_field", Some(br#"{"ts": 1767571200000, "value": 1.0}"#)),
        ("syntax", Some(b"")),
        ("syntax", None),
    ];
    for i in 0..120i64 {
        input.push(point(t0 + i * 1_000, "cpu_utilization", "h1", "checkout", 0.5));
        if i % 20 == 10 {
            let (kind, payload) = bad[(i / 20) as usize];
            input.push((format!("bad-{i}"), payload.map(<[u8]>::to_vec)));
            bad_kinds.push(kind);
        }
    }
    kafka.produce(&input).await;

    let tables = tables();
    let mut engine = vigil::Engine::new(&kafka.config("vigil-dlq"), tables.clone()).await.unwrap();
    let total = input.len() as u64;
    step_until(&mut engine, Duration::from_secs(60), |s| Stats::get(&s.records) >= total).await;
    engine.drain().await.unwrap();

    let stats = engine.stats();
    assert_eq!(Stats::get(&stats.dead_lettered), 6);
    let ingest = engine.ingest_counters();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(ingest.rejected.load(Relaxed), 6);
    assert_eq!(ingest.rejected_syntax.load(Relaxed), 4);
    assert_eq!(ingest.rejected_type.load(Relaxed), 1);
    assert_eq!(ingest.rejected_missing.load(Relaxed), 1);
    assert_eq!(ingest.points.load(Relaxed), 120);

    let dlq = kafka.read_all("vigil.dlq", 6, Duration::from_secs(10));
    assert_eq!(dlq.len(), 6);
    for (rec, kind) in dlq.iter().zip(&bad_kinds) {
        assert_eq!(rec.header("vigil.error.kind"), Some(*kind), "{rec:?}");
        assert!(!rec.header("vigil.error").unwrap_or("").is_empty());
        assert_eq!(rec.header("vigil.source.topic"), Some("metrics"));
        assert_eq!(rec.header("vigil.source.partition"), Some("0"));
        let offset: i64 = rec.header("vigil.source.offset").unwrap().parse().unwrap();
        let original = &input[offset as usize];
        assert_eq!(rec.key.as_deref(), Some(original.0.as_str()), "original key kept");
        assert_eq!(rec.payload, original.1.clone().unwrap_or_default(), "original payload kept");
    }
    assert!(dlq[2].header("vigil.error").unwrap().contains("value"), "{:?}", dlq[2]);
    assert!(dlq[3].header("vigil.error").unwrap().contains("`name`"), "{:?}", dlq[3]);

    // Every good record, including those sharing a poll with bad ones, reached `points`.
    let sql = vigil_queries::SqlService::new(tables);
    let out = sql.query_json("select count(*) as n, sum(value) as s from points").await.unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), r#"[{"n":120,"s":60.0}]"#);
    // Everything consumed is committed once drained: nothing is lost or re-read.
    assert_eq!(engine.committed().unwrap(), vec![("metrics".to_string(), 0, total as i64)]);
}
