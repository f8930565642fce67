use super::*;
use crate::SourcePos;
use arrow::array::{AsArray, Float64Array};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, Metric, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

const T0: u64 = 1_767_571_200_000_000_000;
const S: u64 = 1_000_000_000;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }), ..Default::default() }
}

fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: vec![kv("service.name", "checkout"), kv("host.name", "h1")], ..Default::default() }),
            scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
            ..Default::default()
        }],
    }
}

fn num(t: u64, start: u64, v: f64, attrs: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint { time_unix_nano: t, start_time_unix_nano: start, value: Some(number_data_point::Value::AsDouble(v)), attributes: attrs, ..Default::default() }
}

fn metric(name: &str, data: metric::Data) -> Metric {
    Metric { name: name.into(), data: Some(data), ..Default::default() }
}

fn rec(offset: i64, req: &ExportMetricsServiceRequest) -> RawRecord {
    RawRecord { payload: Some(req.encode_to_vec()), key: None, pos: SourcePos { topic: "otlp".into(), partition: 0, offset } }
}

fn rows(b: &DecodedBatch) -> Vec<(String, f64)> {
    let names = b.points.column(2).as_string::<i32>();
    let vals = b.points.column(5).as_any().downcast_ref::<Float64Array>().unwrap();
    (0..b.points.num_rows()).map(|i| (names.value(i).to_string(), vals.value(i))).collect()
}

#[test]
fn gauge_points_carry_resource_and_point_attributes_as_labels() {
    let req = request(vec![metric("cpu.utilization", metric::Data::Gauge(Gauge { data_points: vec![num(T0, 0, 0.93, vec![kv("cpu", "0")])] }))]);
    let mut d = OtlpMetricsDecoder::new(OtlpEncoding::Proto, Default::default());
    let b = d.decode(&[rec(0, &req)]).unwrap();
    assert_eq!(rows(&b), vec![(r#"cpu.utilization{cpu="0",host.name="h1",service.name="checkout"}"#.to_string(), 0.93)]);
    assert!(b.rejected.is_empty());
}

#[test]
fn cumulative_counters_become_rates_and_resets_are_handled() {
    let sum = |t: u64, start: u64, v: f64| {
        request(vec![metric(
            "http.requests",
            metric::Data::Sum(Sum { data_points: vec![num(t, start, v, vec![])], aggregation_temporality: CUMULATIVE, is_monotonic: true }),
        )])
    };
    let mut d = OtlpMetricsDecoder::new(OtlpEncoding::Proto, Default::default());
    let start = T0 - 100 * S;
    // Baseline, then +100 over 10 s, then +50 over 10 s.
    let b = d.decode(&[rec(0, &sum(T0, start, 1000.0)), rec(1, &sum(T0 + 10 * S, start, 1100.0)), rec(2, &sum(T0 + 20 * S, start, 1150.0))]).unwrap();
    let r = rows(&b);
    assert_eq!(r.len(), 2, "{r:?}");
    assert!((r[0].1 - 10.0).abs() < 1e-9 && (r[1].1 - 5.0).abs() < 1e-9, "{r:?}");
    // The process restarts at T0+25 s: the counter starts over; 30 counted in 5 s since the new start.
    let b = d.decode(&[rec(3, &sum(T0 + 30 * S, T0 + 25 * S, 30.0))]).unwrap();
    let r = rows(&b);
    assert!((r[0].1 - 6.0).abs() < 1e-9, "{r:?}");
    assert_eq!(d.otlp_counters().resets.load(Ordering::Relaxed), 1);
    assert_eq!(d.otlp_counters().baselines.load(Ordering::Relaxed), 1);
}

#[test]
fn up_down_counters_are_levels_and_delta_counters_are_rates() {
    let req = request(vec![
        metric("queue.size", metric::Data::Sum(Sum { data_points: vec![num(T0, T0 - 10 * S, 42.0, vec![])], aggregation_temporality: CUMULATIVE, is_monotonic: false })),
        metric("bytes.sent", metric::Data::Sum(Sum { data_points: vec![num(T0, T0 - 10 * S, 500.0, vec![])], aggregation_temporality: DELTA, is_monotonic: true })),
    ]);
    let mut d = OtlpMetricsDecoder::new(OtlpEncoding::Proto, Default::default());
    let r = rows(&d.decode(&[rec(0, &req)]).unwrap());
    assert_eq!(r.len(), 2);
    assert!(r[0].0.starts_with("queue.size{") && r[0].1 == 42.0);
    assert!(r[1].0.starts_with("bytes.sent{") && r[1].1 == 50.0);
}

#[test]
fn histogram_quantiles_come_from_the_buckets_of_the_interval() {
    let h = |t: u64, counts: Vec<u64>, sum: f64| {
        let count = counts.iter().sum();
        request(vec![metric(
            "http.duration",
            metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    time_unix_nano: t,
                    start_time_unix_nano: T0 - 60 * S,
                    count,
                    sum: Some(sum),
                    bucket_counts: counts,
                    explicit_bounds: vec![0.1, 0.5, 1.0],
                    ..Default::default()
                }],
                aggregation_temporality: CUMULATIVE,
            }),
        )])
    };
    let mut d = OtlpMetricsDecoder::new(OtlpEncoding::Proto, Default::default());
    // Baseline: 100 fast requests. Interval: 100 requests all in (0.5, 1.0].
    let b = d.decode(&[rec(0, &h(T0, vec![100, 0, 0, 0], 5.0)), rec(1, &h(T0 + 10 * S, vec![100, 0, 100, 0], 80.0))]).unwrap();
    let r: std::collections::BTreeMap<String, f64> = rows(&b).into_iter().map(|(k, v)| (k.split('{').next().unwrap().to_string(), v)).collect();
    assert!((r["http.duration.count"] - 10.0).abs() < 1e-9, "{r:?}");
    assert!((r["http.duration.sum"] - 7.5).abs() < 1e-9, "{r:?}");
    assert!((r["http.duration.p50"] - 0.75).abs() < 1e-9, "{r:?}");
    assert!(r["http.duration.p99"] > 0.99 && r["http.duration.p99"] <= 1.0, "{r:?}");
}

#[test]
fn exponential_histogram_quantiles_land_in_the_right_bucket() {
    // scale 0: base 2; positive offset 3 => buckets (8,16], (16,32].
    let p = ExponentialHistogramDataPoint {
        time_unix_nano: T0,
        start_time_unix_nano: T0 - 10 * S,
        count: 10,
        sum: Some(200.0),
        scale: 0,
        positive: Some(exponential_histogram_data_point::Buckets { offset: 3, bucket_counts: vec![5, 5] }),
        ..Default::default()
    };
    let b = exp_hist_parts(&p).unwrap().layout.buckets();
    let q50 = b.quantile(&b.counts, 0.5).unwrap();
    let q99 = b.quantile(&b.counts, 0.99).unwrap();
    assert!((q50 - 16.0).abs() < 1e-9, "{q50}");
    assert!(q99 > 16.0 && q99 <= 32.0, "{q99}");
}

#[test]
fn exponential_histograms_rescaled_between_points_are_differenced_at_the_coarser_scale() {
    // Earlier: scale 1, index 6 ((8, 11.3]) holds 5. Later: scale 0, index 3 ((8, 16]) holds 5,
    // index 5 ((32, 64]) holds 10. At scale 0 index 6 >> 1 = 3, so the interval's new values
    // are the 10 in (32, 64].
    let earlier = ExpBuckets { scale: 1, zero_threshold: 0.0, zero: 0, pos: vec![(6, 5)], neg: vec![] };
    let later = ExpBuckets { scale: 0, zero_threshold: 0.0, zero: 0, pos: vec![(3, 5), (5, 10)], neg: vec![] };
    let d = Layout::Exp(later).minus(&Layout::Exp(earlier)).unwrap().buckets();
    let q50 = d.quantile(&d.counts, 0.5).unwrap();
    assert!(q50 > 32.0 && q50 <= 64.0, "{q50}");
}

#[test]
fn bad_records_are_dead_lettered_and_points_without_values_skipped() {
    let mut no_value = num(T0, 0, 1.0, vec![]);
    no_value.flags = NO_RECORDED_VALUE;
    let req = request(vec![metric("m", metric::Data::Gauge(Gauge { data_points: vec![no_value, num(T0, 0, 2.0, vec![])] }))]);
    let garbage = RawRecord { payload: Some(vec![0xff, 0xff, 0xff, 0x01]), key: None, pos: SourcePos { topic: "otlp".into(), partition: 0, offset: 1 } };
    let counters = Arc::new(IngestCounters::default());
    let mut d = OtlpMetricsDecoder::new(OtlpEncoding::Proto, counters.clone());
    let b = d.decode(&[rec(0, &req), garbage]).unwrap();
    assert_eq!(counters.skipped.load(Ordering::Relaxed), 1);
    assert_eq!(counters.rejected.load(Ordering::Relaxed), 1);
    assert_eq!(rows(&b).len(), 1);
    assert_eq!(b.rejected.len(), 1);
    assert_eq!(b.rejected[0].pos.offset, 1);
    assert!(b.rejected[0].reason.contains("ExportMetricsServiceRequest"), "{}", b.rejected[0].reason);
    assert_eq!(d.otlp_counters().skipped_points.load(Ordering::Relaxed), 1);
}

#[test]
fn only_int64_keys_are_unquoted() {
    let j = br#"{"asInt": "-12","intValue":"7","body":{"stringValue":"say \"asInt\":\"5\""},"x":"asInt"}"#;
    let out = unquote_int64(j);
    assert_eq!(std::str::from_utf8(&out).unwrap(), r#"{"asInt": -12,"intValue":7,"body":{"stringValue":"say \"asInt\":\"5\""},"x":"asInt"}"#);
    assert!(matches!(unquote_int64(b"{}"), std::borrow::Cow::Borrowed(_)));
}

#[test]
fn otlp_json_with_string_encoded_integers_decodes() {
    let json = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
      "scopeMetrics":[{"metrics":[{"name":"mem.used","gauge":{"dataPoints":[
        {"timeUnixNano":"1767571200000000000","asInt":"2048","attributes":[{"key":"host.name","value":{"stringValue":"h2"}}]}]}}]}]}]}"#;
    let r = RawRecord { payload: Some(json.as_bytes().to_vec()), key: None, pos: SourcePos { topic: "otlp".into(), partition: 0, offset: 0 } };
    let mut d = OtlpMetricsDecoder::new(OtlpEncoding::Json, Default::default());
    let b = d.decode(&[r]).unwrap();
    assert!(b.rejected.is_empty(), "{:?}", b.rejected.first().map(|r| &r.reason));
    assert_eq!(rows(&b), vec![(r#"mem.used{host.name="h2",service.name="api"}"#.to_string(), 2048.0)]);
}
