//! OTLP metrics (protobuf and OTLP/JSON), OTLP logs and JSON logs through librdkafka's mock
//! cluster over TCP, next to each other in the same windows: points with rates from cumulative
//! counters, log rows with mined templates in `logs`, log signals among the points and features,
//! and bad records dead-lettered with their topic.

use std::time::Duration;

use crate::common::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use vigil::Stats;

const T0: i64 = 1_767_571_200_000;
const MS: u64 = 1_000_000;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }), ..Default::default() }
}

fn resource(service: &str, host: &str) -> Option<Resource> {
    Some(Resource { attributes: vec![kv("service.name", service), kv("host.name", host)], ..Default::default() })
}

fn number(t_ms: i64, v: f64) -> NumberDataPoint {
    NumberDataPoint {
        time_unix_nano: t_ms as u64 * MS,
        start_time_unix_nano: T0 as u64 * MS - 60_000 * MS,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

/// Second `i`: a gauge and a cumulative counter growing by 100 per second.
fn metrics(i: i64) -> ExportMetricsServiceRequest {
    let t = T0 + i * 1_000;
    let m = |name: &str, data| Metric { name: name.into(), data: Some(data), ..Default::default() };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource("checkout", "h1"),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    m("cpu.utilization", metric::Data::Gauge(Gauge { data_points: vec![number(t, 0.5)] })),
                    m("http.requests", metric::Data::Sum(Sum { data_points: vec![number(t, 100.0 * i as f64)], aggregation_temporality: 2, is_monotonic: true })),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn logs(i: i64) -> ExportLogsServiceRequest {
    let t = (T0 + i * 1_000) as u64 * MS;
    let body = |s: String| Some(AnyValue { value: Some(any_value::Value::StringValue(s)) });
    let mut records = vec![
        LogRecord { time_unix_nano: t, severity_number: 9, body: body(format!("payment {} accepted in {} ms", 4000 + i, 90 + i)), ..Default::default() },
        LogRecord { time_unix_nano: t + 500 * MS, severity_number: 9, body: body(format!("payment {} accepted in {} ms", 5000 + i, 80 + i)), ..Default::default() },
    ];
    if i == 20 {
        records.push(LogRecord { time_unix_nano: t + 700 * MS, severity_number: 17, body: body("card network unreachable".into()), ..Default::default() });
    }
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource("payments", "p1"),
            scope_logs: vec![ScopeLogs { log_records: records, ..Default::default() }],
            ..Default::default()
        }],
    }
}

async fn send(p: &FutureProducer, topic: &str, payload: &[u8]) {
    p.send(FutureRecord::<str, [u8]>::to(topic).payload(payload), Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_metrics_otlp_logs_and_json_logs_feed_points_logs_and_features() {
    let kafka = Kafka::start(1);
    for t in ["otel-metrics", "otel-metrics-json", "otel-logs", "app-logs"] {
        kafka.cluster.create_topic(t, 1, 1).unwrap();
    }
    let p: FutureProducer = ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create().unwrap();
    for i in 0..30 {
        send(&p, "otel-metrics", &metrics(i).encode_to_vec()).await;
        send(&p, "otel-logs", &logs(i).encode_to_vec()).await;
        let line = format!(r#"{{"ts":{},"level":"INFO","service":"search","host":"s1","message":"query {} took {} ms"}}"#, T0 + i * 1_000, i * 7, 10 + i);
        send(&p, "app-logs", line.as_bytes()).await;
    }
    // OTLP/JSON: the OpenTelemetry Python SDK's two consecutive collections (golden fixtures).
    for f in ["metrics-1.json", "metrics-2.json"] {
        let package = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
        let body = std::fs::read(format!("{package}/ingest/tests/fixtures/otlp/{f}")).unwrap();
        send(&p, "otel-metrics-json", &body).await;
    }
    send(&p, "app-logs", b"GET /search 200").await;
    send(&p, "app-logs", br#"{"ts": 1767571229000, "level": "error"}"#).await;
    send(&p, "otel-logs", b"\x0a\xff\xff\xff").await;

    let mut cfg = kafka.config("vigil-otlp");
    cfg.kafka.input_topics = vec!["otel-metrics".into(), "otel-metrics-json".into(), "otel-logs".into(), "app-logs".into()];
    for (t, f) in [("otel-metrics", "otlp_proto"), ("otel-metrics-json", "otlp_json"), ("otel-logs", "otlp_logs_proto"), ("app-logs", "json_logs")] {
        cfg.kafka.input_formats.insert(t.into(), f.into());
    }
    cfg.kafka.log_mappings.insert("app-logs".into(), toml::from_str(r#"attribute_fields = ["host"]"#).unwrap());
    cfg.validate().unwrap();
    let tables = tables();
    let mut engine = vigil::Engine::new(&cfg, tables.clone()).await.unwrap();
    step_until(&mut engine, Duration::from_secs(60), |s| Stats::get(&s.records) >= 95).await;
    engine.drain().await.unwrap();
    assert_eq!(Stats::get(&engine.stats().dead_lettered), 3);

    let sql = vigil_queries::SqlService::new(tables);
    let q = |s: &'static str| {
        let sql = &sql;
        async move { String::from_utf8(sql.query_json(s).await.unwrap()).unwrap() }
    };
    // OTLP metrics: the gauge as sent, the cumulative counter as a rate (its first point is the baseline).
    assert_eq!(
        q("select name, count(*) as n, min(value) as lo, max(value) as hi from points where labels['service.name'] = 'checkout' and name in ('cpu.utilization', 'http.requests') group by name order by name").await,
        r#"[{"name":"cpu.utilization","n":30,"lo":0.5,"hi":0.5},{"name":"http.requests","n":29,"lo":100.0,"hi":100.0}]"#
    );
    // The SDK's two collections: an exponential histogram's interval quantile and a counter rate
    // from the second one, and the up-down counter (a level) from both.
    assert_eq!(
        q("select name, count(*) as n from points where name in ('rpc.latency.p50', 'http.server.requests', 'queue.depth') group by name order by name").await,
        r#"[{"name":"http.server.requests","n":1},{"name":"queue.depth","n":2},{"name":"rpc.latency.p50","n":1}]"#
    );
    // Logs: rows with services, levels and mined templates.
    assert_eq!(
        q("select service, level, count(*) as n from logs group by service, level order by service, level").await,
        r#"[{"service":"payments","level":"error","n":1},{"service":"payments","level":"info","n":60},{"service":"search","level":"info","n":30}]"#
    );
    assert_eq!(
        q("select template, count(*) as n, sum(case when new_template then 1 else 0 end) as created from logs where service = 'payments' group by template order by n desc").await,
        r#"[{"template":"payment <*> accepted in <*> ms","n":60,"created":1},{"template":"card network unreachable","n":1,"created":1}]"#
    );
    assert_eq!(q("select attributes['host'] as host, count(*) as n from logs where service = 'search' group by 1").await, r#"[{"host":"s1","n":30}]"#);
    // Log signals are points, scored as features.
    assert_eq!(
        q("select sum(value) as errors from points where series = 'log_records{level=\"error\",service=\"payments\"}'").await,
        r#"[{"errors":1.0}]"#
    );
    assert_eq!(q("select count(*) as n from features where name = 'log_error_ratio'").await, r#"[{"n":6}]"#);

    let mut dlq = kafka.read_all("vigil.dlq", 3, Duration::from_secs(10));
    dlq.sort_by_key(|r| (r.header("vigil.source.topic").map(str::to_string), r.header("vigil.source.offset").map(str::to_string)));
    let got: Vec<(Option<&str>, Option<&str>)> = dlq.iter().map(|r| (r.header("vigil.source.topic"), r.header("vigil.error.kind"))).collect();
    assert_eq!(got, vec![(Some("app-logs"), Some("syntax")), (Some("app-logs"), Some("missing_field")), (Some("otel-logs"), Some("syntax"))]);
}
