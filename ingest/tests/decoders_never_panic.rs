//! Hostile input never panics a decoder and never desynchronises rows from their source
//! positions: arbitrary bytes, and near-valid records with one mutation, through every format
//! (JSON points, line protocol, mapped JSON, OTLP metrics and logs in protobuf and JSON, JSON logs).

use std::sync::Arc;

use proptest::prelude::*;
use vigil_ingest::{
    DrainConfig, InfluxDecoder, JsonLogDecoder, JsonMapping, JsonPointDecoder, LogMapping, MappedJsonDecoder, OtlpEncoding, OtlpLogsDecoder,
    OtlpMetricsDecoder, Precision, RawRecord, SourcePos,
};

fn records(payloads: Vec<Vec<u8>>) -> Vec<RawRecord> {
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, p)| RawRecord { payload: Some(p), key: None, pos: SourcePos { topic: "t".into(), partition: 0, offset: i as i64 } })
        .collect()
}

fn mapping() -> JsonMapping {
    JsonMapping {
        time_field: "t".into(),
        time_unit: "ms".into(),
        name_field: Some("n".into()),
        name: None,
        value_fields: vec!["v.a".into(), "v.b".into()],
        label_fields: vec!["l.x".into()],
    }
}

/// Valid records of each format with one byte overwritten, truncated, or duplicated.
fn mutated(valid: &'static str) -> impl Strategy<Value = Vec<u8>> {
    (0..valid.len(), any::<u8>(), 0..3u8).prop_map(move |(at, byte, how)| {
        let mut b = valid.as_bytes().to_vec();
        match how {
            0 => b[at] = byte,
            1 => b.truncate(at),
            _ => b.insert(at, byte),
        }
        b
    })
}

/// Like [`mutated`], over binary records (protobuf).
fn mutated_bytes(valid: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    (0..valid.len(), any::<u8>(), 0..3u8).prop_map(move |(at, byte, how)| {
        let mut b = valid.to_vec();
        match how {
            0 => b[at] = byte,
            1 => b.truncate(at),
            _ => b.insert(at, byte),
        }
        b
    })
}

const OTLP_METRICS_PB: &[u8] = include_bytes!("fixtures/otlp/metrics-2.pb");
const OTLP_METRICS_JSON: &str = include_str!("fixtures/otlp/metrics-2.json");
const OTLP_LOGS_PB: &[u8] = include_bytes!("fixtures/otlp/logs.pb");
const OTLP_LOGS_JSON: &str = include_str!("fixtures/otlp/logs.json");

fn check_logs(out: vigil_ingest::DecodedLogs, n: usize) {
    assert_eq!(out.positions.len(), out.logs.num_rows());
    assert!(out.rejected.len() <= n);
}

fn check(out: vigil_ingest::DecodedBatch, n: usize) {
    assert_eq!(out.positions.len(), out.points.num_rows());
    assert!(out.rejected.len() <= n);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn json_points_survive_arbitrary_bytes(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 1..12)) {
        let n = payloads.len();
        check(JsonPointDecoder::default().decode(&records(payloads)).unwrap(), n);
    }

    #[test]
    fn json_points_survive_mutations(payloads in prop::collection::vec(mutated(r#"{"ts":1700000000000,"name":"cpu","labels":{"host":"h1"},"value":0.5}"#), 1..12)) {
        let n = payloads.len();
        check(JsonPointDecoder::default().decode(&records(payloads)).unwrap(), n);
    }

    #[test]
    fn influx_survives_arbitrary_bytes(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 1..12)) {
        let n = payloads.len();
        let mut d = InfluxDecoder::new(Precision::Nanoseconds, Arc::default());
        check(d.decode(&records(payloads)).unwrap(), n);
    }

    #[test]
    fn influx_survives_mutations(payloads in prop::collection::vec(mutated("cpu,host=h\\ 1,dc=eu usage=1.5,n=3i,s=\"a b\" 1700000000000000000"), 1..12)) {
        let n = payloads.len();
        let mut d = InfluxDecoder::new(Precision::Nanoseconds, Arc::default());
        check(d.decode(&records(payloads)).unwrap(), n);
    }

    #[test]
    fn mapped_json_survives_arbitrary_bytes(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 1..12)) {
        let n = payloads.len();
        let mut d = MappedJsonDecoder::new(mapping(), Arc::default()).unwrap();
        check(d.decode(&records(payloads)).unwrap(), n);
    }

    #[test]
    fn mapped_json_survives_mutations(payloads in prop::collection::vec(mutated(r#"{"t":1700000000000,"n":"m","v":{"a":1,"b":2},"l":{"x":"y"}}"#), 1..12)) {
        let n = payloads.len();
        let mut d = MappedJsonDecoder::new(mapping(), Arc::default()).unwrap();
        check(d.decode(&records(payloads)).unwrap(), n);
    }

    #[test]
    fn otlp_metrics_proto_survives_arbitrary_bytes(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..12)) {
        let n = payloads.len();
        check(OtlpMetricsDecoder::new(OtlpEncoding::Proto, Arc::default()).decode(&records(payloads)).unwrap(), n);
    }

    #[test]
    fn otlp_metrics_proto_survives_mutations(payloads in prop::collection::vec(mutated_bytes(OTLP_METRICS_PB), 1..6)) {
        let n = payloads.len();
        check(OtlpMetricsDecoder::new(OtlpEncoding::Proto, Arc::default()).decode(&records(payloads)).unwrap(), n);
    }

    #[test]
    fn otlp_metrics_json_survives_mutations(payloads in prop::collection::vec(mutated(OTLP_METRICS_JSON), 1..6)) {
        let n = payloads.len();
        check(OtlpMetricsDecoder::new(OtlpEncoding::Json, Arc::default()).decode(&records(payloads)).unwrap(), n);
    }

    #[test]
    fn otlp_logs_proto_survives_mutations(payloads in prop::collection::vec(mutated_bytes(OTLP_LOGS_PB), 1..6)) {
        let n = payloads.len();
        check_logs(OtlpLogsDecoder::new(OtlpEncoding::Proto, DrainConfig::default(), Arc::default()).decode(&records(payloads)).unwrap(), n);
    }

    #[test]
    fn otlp_logs_json_survives_mutations(payloads in prop::collection::vec(mutated(OTLP_LOGS_JSON), 1..6)) {
        let n = payloads.len();
        check_logs(OtlpLogsDecoder::new(OtlpEncoding::Json, DrainConfig::default(), Arc::default()).decode(&records(payloads)).unwrap(), n);
    }

    #[test]
    fn json_logs_survive_arbitrary_bytes(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..120), 1..12)) {
        let n = payloads.len();
        let mut d = JsonLogDecoder::new(LogMapping::default(), DrainConfig::default(), Arc::default()).unwrap();
        check_logs(d.decode(&records(payloads)).unwrap(), n);
    }

    #[test]
    fn json_logs_survive_mutations(payloads in prop::collection::vec(mutated(r#"{"ts":1700000000000,"level":"error","service":"api","message":"GET /x 500 in 3 ms"}"#), 1..12)) {
        let n = payloads.len();
        let mut d = JsonLogDecoder::new(LogMapping::default(), DrainConfig::default(), Arc::default()).unwrap();
        check_logs(d.decode(&records(payloads)).unwrap(), n);
    }
}
