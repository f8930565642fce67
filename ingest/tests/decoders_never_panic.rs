//! Hostile input never panics a decoder and never desynchronises rows from their source
//! positions: arbitrary bytes, and near-valid records with one mutation, through every format.

use std::sync::Arc;

use proptest::prelude::*;
use vigil_ingest::{InfluxDecoder, JsonMapping, JsonPointDecoder, MappedJsonDecoder, Precision, RawRecord, SourcePos};

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
}
