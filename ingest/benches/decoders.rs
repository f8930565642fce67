//! Decoder throughput per format, one core: records per second for a batch of realistic records
//! (the bytes per record are printed, so MB/s follows). Run with
//! `cargo bench -p vigil-ingest --bench decoders`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use vigil_ingest::{
    DrainConfig, InfluxDecoder, JsonLogDecoder, JsonMapping, JsonPointDecoder, LogMapping, MappedJsonDecoder, OtlpEncoding, OtlpLogsDecoder,
    OtlpMetricsDecoder, Precision, RawRecord, SourcePos,
};

const N: usize = 10_000;
const T0: i64 = 1_767_571_200_000;

fn records(payloads: impl Iterator<Item = Vec<u8>>) -> Vec<RawRecord> {
    let topic: Arc<str> = "bench".into();
    payloads.enumerate().map(|(i, p)| RawRecord { payload: Some(p), key: None, pos: SourcePos { topic: topic.clone(), partition: 0, offset: i as i64 } }).collect()
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }), ..Default::default() }
}

/// One OTLP request per host: 10 gauges with one data point each, as a Collector batches them.
fn otlp_metrics(i: usize) -> ExportMetricsServiceRequest {
    let t = (T0 + i as i64 * 10) as u64 * 1_000_000;
    let metrics = (0..10)
        .map(|m| Metric {
            name: format!("system.metric_{m}"),
            data: Some(metric::Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint { time_unix_nano: t, value: Some(number_data_point::Value::AsDouble(0.5 + m as f64)), attributes: vec![kv("state", "used")], ..Default::default() }],
            })),
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: vec![kv("service.name", "checkout"), kv("host.name", &format!("h{}", i % 300))], ..Default::default() }),
            scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// One OTLP logs request: 10 log records of one service.
fn otlp_logs(i: usize) -> ExportLogsServiceRequest {
    let t = (T0 + i as i64 * 10) as u64 * 1_000_000;
    let log_records = (0..10)
        .map(|k| LogRecord {
            time_unix_nano: t + k,
            severity_number: if k == 9 { 17 } else { 9 },
            body: Some(AnyValue { value: Some(any_value::Value::StringValue(format!("GET /api/items/{} 200 in {} ms", i * 10 + k as usize, k + 3))) }),
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource { attributes: vec![kv("service.name", "checkout"), kv("host.name", "h1")], ..Default::default() }),
            scope_logs: vec![ScopeLogs { log_records, ..Default::default() }],
            ..Default::default()
        }],
    }
}

fn bench(c: &mut Criterion) {
    let json = records((0..N).map(|i| {
        format!(r#"{{"ts":{},"name":"cpu_utilization","labels":{{"host":"h{}","service":"checkout"}},"value":{}}}"#, T0 + i as i64, i % 300, 0.5 + (i % 7) as f64 / 10.0).into_bytes()
    }));
    // The same points with an escape in a label: arrow-json's general decoder reads these.
    let json_general = records((0..N).map(|i| {
        format!(r#"{{"ts":{},"name":"cpu_utilization","labels":{{"host":"h{}","service":"check\/out"}},"value":{}}}"#, T0 + i as i64, i % 300, 0.5 + (i % 7) as f64 / 10.0).into_bytes()
    }));
    let influx = records((0..N).map(|i| format!("cpu,host=h{},service=checkout usage_user={},usage_system={} {}", i % 300, 0.5, 0.25, (T0 + i as i64) * 1_000_000).into_bytes()));
    let mapped = records((0..N).map(|i| {
        format!(
            r#"{{"metric_stream_name":"s","account_id":"1","region":"eu-west-1","namespace":"AWS/EC2","metric_name":"CPUUtilization","dimensions":{{"InstanceId":"i-{}"}},"timestamp":{},"value":{{"max":12.5,"min":1,"sum":30,"count":3}},"unit":"Percent"}}"#,
            i % 300,
            T0 + i as i64
        )
        .into_bytes()
    }));
    let otlp_pb = records((0..N / 10).map(|i| otlp_metrics(i).encode_to_vec()));
    let otlp_json = records((0..N / 10).map(|i| serde_json::to_vec(&otlp_metrics(i)).unwrap()));
    let logs_pb = records((0..N / 10).map(|i| otlp_logs(i).encode_to_vec()));
    let json_logs = records((0..N).map(|i| {
        format!(r#"{{"ts":{},"level":"info","service":"checkout","host":"h{}","message":"GET /api/items/{} 200 in {} ms"}}"#, T0 + i as i64, i % 300, i, i % 90).into_bytes()
    }));

    let mut g = c.benchmark_group("decode");
    g.sample_size(20);
    let mut run = |name: &str, recs: &[RawRecord], per_record: usize, f: &mut dyn FnMut(&[RawRecord]) -> usize| {
        let bytes: usize = recs.iter().map(|r| r.payload.as_ref().map_or(0, Vec::len)).sum();
        let rows = f(recs);
        eprintln!("{name}: {} records, {:.0} bytes/record, {} rows out ({per_record} per record expected)", recs.len(), bytes as f64 / recs.len() as f64, rows);
        g.throughput(Throughput::Elements(recs.len() as u64));
        g.bench_function(name, |b| b.iter(|| black_box(f(black_box(recs)))));
    };
    let mut d = JsonPointDecoder::default();
    run("json", &json, 1, &mut |r| d.decode(r).unwrap().points.num_rows());
    let mut d = JsonPointDecoder::default();
    run("json_general", &json_general, 1, &mut |r| d.decode(r).unwrap().points.num_rows());
    let mut d = InfluxDecoder::new(Precision::Nanoseconds, Arc::default());
    run("influx", &influx, 2, &mut |r| d.decode(r).unwrap().points.num_rows());
    let mapping = JsonMapping {
        time_field: "timestamp".into(),
        time_unit: "ms".into(),
        name_field: Some("metric_name".into()),
        name: None,
        value_fields: vec!["value.max".into(), "value.sum".into()],
        label_fields: vec!["namespace".into(), "dimensions.InstanceId".into()],
    };
    let mut d = MappedJsonDecoder::new(mapping, Arc::default()).unwrap();
    run("mapped", &mapped, 2, &mut |r| d.decode(r).unwrap().points.num_rows());
    let mut d = OtlpMetricsDecoder::new(OtlpEncoding::Proto, Arc::default());
    run("otlp_proto", &otlp_pb, 10, &mut |r| d.decode(r).unwrap().points.num_rows());
    let mut d = OtlpMetricsDecoder::new(OtlpEncoding::Json, Arc::default());
    run("otlp_json", &otlp_json, 10, &mut |r| d.decode(r).unwrap().points.num_rows());
    let mut d = OtlpLogsDecoder::new(OtlpEncoding::Proto, DrainConfig::default(), Arc::default());
    run("otlp_logs_proto", &logs_pb, 10, &mut |r| d.decode(r).unwrap().logs.num_rows());
    let mut d = JsonLogDecoder::new(LogMapping { attribute_fields: vec!["host".into()], ..Default::default() }, DrainConfig::default(), Arc::default()).unwrap();
    run("json_logs", &json_logs, 1, &mut |r| d.decode(r).unwrap().logs.num_rows());
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
