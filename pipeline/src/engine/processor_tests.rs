//! The processing core: decoding in slices.

use super::*;
use vigil_ingest::{RawRecord, SourcePos};

/// 6,000 JSON points on two partitions, of which 12 do not decode.
fn poll_with_rejects() -> Vec<RawRecord> {
    let topic: Arc<str> = "m".into();
    (0..6000i64)
        .map(|i| RawRecord {
            payload: Some(if i % 1000 == 7 || i % 1000 == 500 {
                b"not json".to_vec()
            } else {
                format!(r#"{{"ts": {}, "name": "cpu", "labels": {{"host": "h{}"}}, "value": 1.5}}"#, 1_700_000_000_000 + i * 10, i % 50).into_bytes()
            }),
            key: None,
            pos: SourcePos { topic: topic.clone(), partition: (i % 2) as i32, offset: i },
        })
        .collect()
}

#[tokio::test]
async fn a_large_poll_decoded_in_slices_keeps_every_row_and_its_rejects_in_order() {
    let mut p = Processor::new(&Config::default()).await.unwrap();
    // Two slices whatever this machine has.
    p.decoders = (0..2).map(|_| JsonPointDecoder::default()).collect();
    let raw = poll_with_rejects();
    let (rejected, pushed) = p.ingest(&raw).unwrap();
    assert_eq!((pushed.accepted, rejected.len()), (5988, 12));
    let order: Vec<(i32, i64)> = rejected.iter().map(|r| (r.pos.partition, r.pos.offset)).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "rejects in position order across the slices");
    assert_eq!(order[0], (0, 500));
    let closed = p.close_all().await.unwrap().unwrap();
    assert_eq!(closed.points.iter().map(|b| b.num_rows()).sum::<usize>(), 5988);
    let counts = closed.features.column_by_name("count").unwrap().as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
    assert_eq!(counts.iter().flatten().sum::<i64>(), 5988, "every row reached the feature SQL once");
}

#[tokio::test]
async fn the_parse_only_pass_decodes_what_ingest_accepts_and_windows_nothing() {
    let mut p = Processor::new(&Config::default()).await.unwrap();
    p.decoders = (0..2).map(|_| JsonPointDecoder::default()).collect();
    let raw = poll_with_rejects();
    assert_eq!(p.decode_only(&raw).unwrap(), 5988);
    assert_eq!((p.windower().open_windows(), p.windower().watermark()), (0, None), "nothing reached the windows");
    assert!(p.close_all().await.unwrap().is_none(), "no window to close");
}

#[test]
fn feature_rows_of_several_windows_are_put_oldest_first_keeping_their_order_within_a_window() {
    use arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let schema = Arc::new(Schema::new(vec![
        Field::new("window_start", DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())), false),
        Field::new("series_id", DataType::UInt64, false),
        Field::new("row", DataType::Int64, false),
    ]));
    let batch = |starts: Vec<i64>, ids: Vec<u64>| {
        let rows = Int64Array::from_iter_values(0..starts.len() as i64);
        RecordBatch::try_new(schema.clone(), vec![Arc::new(TimestampMillisecondArray::from(starts).with_timezone("+00:00")), Arc::new(UInt64Array::from(ids)), Arc::new(rows)]).unwrap()
    };
    // As a hash aggregation may return them: newest window first, series in no order.
    let got = in_window_order(batch(vec![30, 10, 20, 10, 30, 20], vec![7, 9, 7, 7, 9, 9])).unwrap();
    let rows: Vec<i64> = got.column(2).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec();
    assert_eq!(rows, vec![1, 3, 2, 5, 0, 4], "oldest window first, the SQL's order within each");
    // One window (a live close) is left alone.
    let one = batch(vec![10, 10, 10], vec![3, 1, 2]);
    assert_eq!(in_window_order(one.clone()).unwrap(), one);
}

/// The ensemble's state of a series is created as its first points arrive, before the close
/// of their window, once per series; the close then finds it and scores into it.
#[tokio::test]
async fn new_series_get_their_scoring_state_at_ingest_before_their_first_close() {
    let mut p = Processor::new(&Config::default()).await.unwrap();
    let raw = poll_with_rejects();
    p.ingest(&raw[..3000]).unwrap();
    assert_eq!(p.series(), 50, "one state per host, before any close");
    let took = p.stage_times().admit;
    assert!(took > std::time::Duration::ZERO);
    p.ingest(&raw[3000..]).unwrap();
    assert_eq!(p.series(), 50, "known series are not admitted again");
    let closed = p.close_all().await.unwrap().unwrap();
    assert_eq!(p.series(), 50);
    assert_eq!(closed.features.num_rows(), 300, "50 series in each of 6 windows of 10 s");
}

/// Where the close might not give a series a feature row, ingest leaves its state to the
/// close: with a features SQL of one's own (it may leave series out), and for a batch with
/// late rows.
#[tokio::test]
async fn new_series_are_left_to_their_close_with_a_features_sql_of_ones_own_or_late_rows() {
    let point = |host: &str, ts: i64, offset: i64| RawRecord {
        payload: Some(format!(r#"{{"ts": {ts}, "name": "cpu", "labels": {{"host": "{host}"}}, "value": 1.5}}"#).into_bytes()),
        key: None,
        pos: SourcePos { topic: "m".into(), partition: 0, offset },
    };
    let t0 = 1_700_000_000_000i64;
    // Late: the watermark is a minute on when the new series' points come.
    let mut p = Processor::new(&Config::default()).await.unwrap();
    p.ingest(&[point("a", t0 + 60_000, 0)]).unwrap();
    assert_eq!(p.series(), 1);
    let (_, pushed) = p.ingest(&[point("b", t0 + 60_001, 1), point("late", t0, 2)]).unwrap();
    assert_eq!(pushed.late, 1);
    assert_eq!(p.series(), 1, "a batch with late rows is left to the close");
    // A features SQL of one's own.
    let dir = std::env::temp_dir().join(format!("vigil-own-sql-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sql = dir.join("features.sql");
    std::fs::write(&sql, format!("-- a copy of one's own\n{}", crate::DEFAULT_FEATURES_SQL)).unwrap();
    let mut cfg = Config::default();
    cfg.features.sql_file = Some(sql);
    let mut own = Processor::new(&cfg).await.unwrap();
    own.ingest(&[point("a", t0, 0)]).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(own.series(), 0, "left to the close");
    own.close_all().await.unwrap();
    assert_eq!(own.series(), 1, "created by the close");
}

#[tokio::test]
async fn partitions_taken_in_one_pass_give_the_sections_each_gives_on_its_own() {
    let mut p = Processor::new(&Config::default()).await.unwrap();
    p.ingest(&poll_with_rejects()).unwrap();
    p.close_all().await.unwrap();
    let positions = p.windower().positions();
    assert_eq!(positions.len(), 2);
    let together = p.snapshot_partitions(&positions).unwrap();
    assert_eq!(together.len(), 2);
    for (pos, (w, n)) in positions.iter().zip(together) {
        // As a section was taken before: the partition's series picked from every series.
        let k = (Arc::from(pos.topic.as_str()), pos.partition);
        let series = p.owner.series_of(&k);
        let set: std::collections::HashSet<u64> = series.iter().copied().collect();
        let keep = |id: u64| set.contains(&id);
        let mut alone = crate::engine::SectionWriter::default();
        alone.put_value("position", 2, pos).unwrap();
        alone.put_value("series", 1, &series).unwrap();
        alone.put("detector", &p.detector, &keep).unwrap();
        alone.put("forecaster", &p.forecaster, &keep).unwrap();
        assert_eq!(n, 25, "one host in two per partition");
        assert_eq!(w.finish().unwrap(), alone.finish().unwrap());
    }
}
