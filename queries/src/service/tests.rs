use super::*;
use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema};

fn tables() -> Arc<ResultTables> {
    let t = Arc::new(ResultTables::new());
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    t.create("anomalies", schema.clone(), 100);
    t.append("anomalies", RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap()).unwrap();
    t.create("decisions", Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)])), 100);
    t
}

fn limited(limits: Limits) -> SqlService {
    SqlService::build(tables(), Vec::new(), Vec::new(), limits, "vigil")
}

#[tokio::test]
async fn counts_rows_as_json() {
    let s = SqlService::new(tables());
    let out = s.query_json("select count(*) as n, sum(x) as s from anomalies").await.unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), r#"[{"n":3,"s":6}]"#);
    let out = s.query_json("select * from decisions").await.unwrap();
    assert_eq!(out, b"[]");
}

#[tokio::test]
async fn queries_cannot_change_tables() {
    let s = SqlService::new(tables());
    for (sql, kind) in [
        ("drop table anomalies", ErrorKind::Plan),
        ("create table t as select 1", ErrorKind::Plan),
        ("insert into anomalies values (4)", ErrorKind::Plan),
        ("select nope from anomalies", ErrorKind::Plan),
        ("selec 1", ErrorKind::Parse),
    ] {
        let e = s.query(sql).await.unwrap_err();
        assert_eq!(e.kind(), kind, "{sql}: {e}");
    }
}

#[tokio::test]
async fn explain_shows_the_plan() {
    let s = SqlService::new(tables());
    let out = String::from_utf8(s.query_json("explain select x from anomalies where x > 1").await.unwrap()).unwrap();
    assert!(out.contains("plan_type") && out.contains("Filter"), "{out}");
}

#[tokio::test]
async fn a_long_query_is_stopped_at_its_time_limit() {
    let s = limited(Limits { timeout: Duration::from_millis(300), ..Limits::default() });
    let t0 = std::time::Instant::now();
    let e = s.query("select count(*) from generate_series(1, 100000000000) a").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3), "stopped after {:?}", t0.elapsed());
    assert!(e.to_string().contains("server.limits.timeout"));
}

#[tokio::test]
async fn a_cross_join_is_stopped_at_its_time_limit_on_a_single_thread() {
    // One thread: the deadline is noticed only because every operator yields.
    let t = Arc::new(ResultTables::new());
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
    t.create("t", schema.clone(), 10_000);
    t.append("t", RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..1000))]).unwrap()).unwrap();
    let limits = Limits { timeout: Duration::from_millis(300), max_join_pairs: u64::MAX, ..Limits::default() };
    let s = SqlService::build(t.clone(), Vec::new(), Vec::new(), limits, "vigil");
    let t0 = std::time::Instant::now();
    let e = s.query("select count(*) from t a cross join t b cross join t c cross join t d where a.x + b.x + c.x + d.x < 0").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3), "stopped after {:?}", t0.elapsed());

    // With the default guard the same query is refused before it runs: 10^9 pairs.
    let s = SqlService::build(t, Vec::new(), Vec::new(), Limits::default(), "vigil");
    let t0 = std::time::Instant::now();
    let e = s.query("select count(*) from t a cross join t b cross join t c where a.x + b.x + c.x < 0").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Resources, "{e}");
    assert!(e.to_string().contains("server.limits.max_join_pairs"), "{e}");
    assert!(t0.elapsed() < Duration::from_millis(500), "refused when planned, took {:?}", t0.elapsed());
    // A small one runs.
    let b = s.query("select count(*) from t a cross join t b where a.x < 10").await.unwrap();
    assert_eq!(arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(b[0].column(0)).value(0), 10_000);
}

#[tokio::test]
async fn a_query_past_its_memory_fails_with_a_resources_error() {
    let s = limited(Limits { memory: 2 << 20, ..Limits::default() });
    let e = s.query("select x, count(*) from generate_series(1, 2000000) t(x) group by x order by x desc").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Resources, "{e}");
    // The same query within a larger pool runs.
    let s = limited(Limits { memory: 512 << 20, ..Limits::default() });
    assert_eq!(s.query("select x, count(*) from generate_series(1, 200000) t(x) group by x").await.unwrap().iter().map(|b| b.num_rows()).sum::<usize>(), 200_000);
}

#[tokio::test]
async fn a_result_past_the_row_limit_fails() {
    let s = limited(Limits { max_rows: 10, ..Limits::default() });
    assert_eq!(s.query("select * from generate_series(1, 10)").await.unwrap().iter().map(|b| b.num_rows()).sum::<usize>(), 10);
    let e = s.query("select * from generate_series(1, 11)").await.unwrap_err();
    assert!(matches!(e, Error::TooManyRows(10)), "{e}");
    assert_eq!(e.kind(), ErrorKind::Resources);
}

#[tokio::test]
async fn queries_beyond_the_concurrency_cap_wait_then_fail() {
    let s = limited(Limits { max_concurrent: 1, timeout: Duration::from_millis(200), ..Limits::default() });
    let held = s.admit().await.unwrap();
    let e = s.query("select 1").await.unwrap_err();
    assert!(matches!(e, Error::Busy(1)), "{e}");
    drop(held);
    assert!(s.query("select 1").await.is_ok());
}

#[tokio::test]
async fn csv_and_arrow_carry_the_schema_even_when_empty() {
    let s = SqlService::new(tables());
    let (schema, batches) = s.run("select x from anomalies order by x").await.unwrap();
    let csv = String::from_utf8(crate::Format::Csv.render(&schema, &batches).unwrap()).unwrap();
    assert_eq!(csv, "x\n1\n2\n3\n");
    let (schema, batches) = s.run("select id from decisions").await.unwrap();
    assert_eq!(String::from_utf8(crate::Format::Csv.render(&schema, &batches).unwrap()).unwrap(), "id\n");
    let ipc = crate::Format::Arrow.render(&schema, &batches).unwrap();
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None).unwrap();
    assert_eq!(reader.schema().field(0).name(), "id");
}
