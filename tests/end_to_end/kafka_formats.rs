//! Per-topic input formats through librdkafka's mock cluster over TCP: Influx line protocol (as
//! Telegraf's Kafka output writes it) and mapped JSON (CloudWatch metric streams' shape) next to
//! JSON points, all ending up in `points` and `features`, with bad records dead-lettered.



use std::time::Duration;

use crate::common::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use vigil::Stats;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influx_line_protocol_and_json_topics_feed_the_same_windows() {
    let kafka = Kafka::start(1);
    kafka.cluster.create_topic("telegraf", 1, 1).unwrap();
    kafka.cluster.create_topic("cloudwatch", 1, 1).unwrap();
    let t0 = 1_767_571_200_000i64;
    // JSON on `metrics`.
    let json: Vec<_> = (0..30).map(|i| point(t0 + i * 1_000, "cpu_utilization", "h1", "checkout", 0.5)).collect();
    kafka.produce(&json).await;
    // Line protocol on `telegraf`, nanosecond timestamps, two fields per line, one bad record.
    let p: FutureProducer = ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().unwrap();
    let mut lines: Vec<String> = (0..30)
        .map(|i| format!("mem,host=h1,service=checkout used_percent={},available=1024i {}", 40 + i % 3, (t0 + i * 1_000) * 1_000_000))
        .collect();
    lines.push("mem,host=h1 used_percent=oops 1767571230000000000".into());
    for l in &lines {
        p.send(FutureRecord::<str, str>::to("telegraf").payload(l), Duration::from_secs(5)).await.unwrap();
    }

    // CloudWatch metric stream records on `cloudwatch`, one with a missing name.
    for i in 0..30i64 {
        let body = format!(
            r#"{{"namespace":"AWS/EC2","metric_name":"CPUUtilization","dimensions":{{"InstanceId":"i-1"}},"timestamp":{},"value":{{"max":{},"sum":9}},"unit":"Percent"}}"#,
            t0 + i * 1_000,
            20 + i % 4
        );
        p.send(FutureRecord::<str, str>::to("cloudwatch").payload(&body), Duration::from_secs(5)).await.unwrap();
    }
    p.send(FutureRecord::<str, str>::to("cloudwatch").payload(r#"{"timestamp":1767571230000,"value":{"max":1}}"#), Duration::from_secs(5))
        .await
        .unwrap();

    let mut cfg = kafka.config("vigil-formats");
    cfg.kafka.input_topics = vec!["metrics".into(), "telegraf".into(), "cloudwatch".into()];
    cfg.kafka.input_formats.insert("telegraf".into(), "influx".into());
    cfg.kafka.input_formats.insert("cloudwatch".into(), "mapped".into());
    cfg.kafka.mappings.insert(
        "cloudwatch".into(),
        toml::from_str(
            r#"
            time_field = "timestamp"
            name_field = "metric_name"
            value_fields = ["value.max", "value.sum"]
            label_fields = ["namespace", "dimensions.InstanceId"]
            "#,
        )
        .unwrap(),
    );
    cfg.validate().unwrap();
    let tables = tables();
    let mut engine = vigil::Engine::new(&cfg, tables.clone()).await.unwrap();
    step_until(&mut engine, Duration::from_secs(60), |s| Stats::get(&s.records) >= 92).await;
    engine.drain().await.unwrap();
    assert_eq!(Stats::get(&engine.stats().dead_lettered), 2);

    let sql = vigil_queries::SqlService::new(tables);
    let out = sql.query_json("select name, count(*) as n from points group by name order by name").await.unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"[{"name":"CPUUtilization_max","n":30},{"name":"CPUUtilization_sum","n":30},{"name":"cpu_utilization","n":30},{"name":"mem_available","n":30},{"name":"mem_used_percent","n":30}]"#
    );
    let out = sql
        .query_json("select sum(count) as n from features where series = 'mem_used_percent{host=\"h1\",service=\"checkout\"}'")
        .await
        .unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), r#"[{"n":30}]"#);
    let out = sql.query_json("select labels['InstanceId'] as id, max(value) as m from points where name = 'CPUUtilization_max' group by 1").await.unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), r#"[{"id":"i-1","m":23.0}]"#);
    let mut dlq = kafka.read_all("vigil.dlq", 2, Duration::from_secs(10));
    dlq.sort_by_key(|r| r.header("vigil.source.topic").map(str::to_string));
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0].header("vigil.source.topic"), Some("cloudwatch"));
    assert!(dlq[0].header("vigil.error").unwrap().contains("`metric_name`"), "{:?}", dlq[0]);
    assert_eq!(dlq[1].header("vigil.source.topic"), Some("telegraf"));
    assert!(dlq[1].header("vigil.error").unwrap().contains("`oops`"), "{:?}", dlq[1]);
}
