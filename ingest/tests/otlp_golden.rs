//! Golden payloads written by the OpenTelemetry Python SDK and its OTLP encoders (see
//! `fixtures/otlp/make_fixtures.py`): what the real producers write decodes to the points and log
//! rows the SDK recorded, in protobuf and in OTLP/JSON alike.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use vigil_ingest::{DecodedBatch, DrainConfig, OtlpEncoding, OtlpLogsDecoder, OtlpMetricsDecoder, RawRecord, SourcePos};

/// The fixtures' directory, from the package directory `cargo test` gives the run (a test binary
/// reused from a build of another checkout would otherwise look in that one), else the build's.
fn dir() -> String {
    let package = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    format!("{package}/tests/fixtures/otlp/")
}

fn fixture(name: &str) -> RawRecord {
    let payload = std::fs::read(format!("{}{name}", dir())).unwrap_or_else(|e| panic!("{name}: {e}"));
    RawRecord { payload: Some(payload), key: None, pos: SourcePos { topic: "otlp".into(), partition: 0, offset: 0 } }
}

/// name -> (series key, value) of each point.
fn by_name(b: &DecodedBatch) -> BTreeMap<String, (String, f64)> {
    let series = b.points.column(2).as_string::<i32>();
    let names = b.points.column(3).as_string::<i32>();
    let values = b.points.column(5).as_primitive::<Float64Type>();
    (0..b.points.num_rows()).map(|i| (names.value(i).to_string(), (series.value(i).to_string(), values.value(i)))).collect()
}

fn check_metrics(encoding: OtlpEncoding, ext: &str) {
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(format!("{}metrics-expected.json", dir())).unwrap()).unwrap();
    let mut d = OtlpMetricsDecoder::new(encoding, Default::default());
    let first = d.decode(&[fixture(&format!("metrics-1.{ext}"))]).unwrap();
    assert!(first.rejected.is_empty(), "{:?}", first.rejected.first().map(|r| &r.reason));
    let second = d.decode(&[fixture(&format!("metrics-2.{ext}"))]).unwrap();
    assert!(second.rejected.is_empty(), "{:?}", second.rejected.first().map(|r| &r.reason));
    let got = by_name(&second);
    for (name, exp) in expected["points"].as_object().unwrap() {
        let (want, tol) = (exp[0].as_f64().unwrap(), exp[1].as_f64().unwrap());
        let (series, v) = got.get(name).unwrap_or_else(|| panic!("{ext}: no point named {name}; got {:?}", got.keys().collect::<Vec<_>>()));
        assert!((v - want).abs() <= tol, "{ext}: {name} = {v}, expected {want} ± {tol}");
        for (k, val) in expected["resource_labels"].as_object().unwrap() {
            assert!(series.contains(&format!("{k}={val}")), "{ext}: {series} lacks label {k}={val}");
        }
    }
    // The route attribute of the data points is a label too.
    assert!(got["http.server.requests"].0.contains(r#"http.route="/cart""#), "{}", got["http.server.requests"].0);
}

#[test]
fn sdk_metrics_in_protobuf_decode_to_the_recorded_values() {
    check_metrics(OtlpEncoding::Proto, "pb");
}

#[test]
fn sdk_metrics_in_otlp_json_decode_to_the_same_values() {
    check_metrics(OtlpEncoding::Json, "json");
}

fn check_logs(encoding: OtlpEncoding, file: &str) {
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(format!("{}logs-expected.json", dir())).unwrap()).unwrap();
    let mut d = OtlpLogsDecoder::new(encoding, DrainConfig::default(), Default::default());
    let out = d.decode(&[fixture(file)]).unwrap();
    assert!(out.rejected.is_empty(), "{:?}", out.rejected.first().map(|r| &r.reason));
    let col = |n: &str| {
        let a = out.logs.column_by_name(n).unwrap().as_string::<i32>();
        (0..a.len()).map(|i| a.value(i).to_string()).collect::<Vec<_>>()
    };
    let (svc, lvl, msg, tpl) = (col("service"), col("level"), col("message"), col("template"));
    let exp = expected.as_array().unwrap();
    assert_eq!(out.logs.num_rows(), exp.len());
    for (i, e) in exp.iter().enumerate() {
        assert_eq!(svc[i], e["service"].as_str().unwrap());
        assert_eq!(lvl[i], e["level"].as_str().unwrap());
        assert_eq!(msg[i], e["message"].as_str().unwrap());
    }
    // The two "payment ... accepted" lines share one template.
    assert_eq!(tpl[0], tpl[1]);
    assert_eq!(tpl[1], "payment <*> accepted in <*> ms");
    let attrs = out.logs.column_by_name("attributes").unwrap().as_map();
    let keys = attrs.value(0);
    let keys = keys.column(0).as_string::<i32>();
    assert!((0..keys.len()).any(|i| keys.value(i) == "customer.tier"));
}

#[test]
fn sdk_logs_in_protobuf_decode_with_levels_and_templates() {
    check_logs(OtlpEncoding::Proto, "logs.pb");
}

#[test]
fn sdk_logs_in_otlp_json_decode_the_same() {
    check_logs(OtlpEncoding::Json, "logs.json");
}
