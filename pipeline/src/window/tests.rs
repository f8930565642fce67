use super::*;
use vigil_ingest::{JsonPointDecoder, RawRecord};

fn batch(rows: &[(i64, i64)]) -> (RecordBatch, Vec<SourcePos>) {
    // (offset, ts) pairs on partition 0 of topic "m".
    batch_on(0, rows)
}

fn batch_on(partition: i32, rows: &[(i64, i64)]) -> (RecordBatch, Vec<SourcePos>) {
    let recs: Vec<RawRecord> = rows
        .iter()
        .map(|(off, ts)| RawRecord {
            payload: Some(format!(r#"{{"ts": {ts}, "name": "x", "value": 1}}"#).into_bytes()),
            key: None,
            pos: SourcePos { topic: "m".into(), partition, offset: *off },
        })
        .collect();
    let out = JsonPointDecoder::default().decode(&recs).unwrap();
    (out.points, out.positions)
}

fn windower() -> Windower {
    Windower::new(WindowConfig { size_ms: 10_000, allowed_lag_ms: 5_000, idle_timeout: std::time::Duration::from_secs(60) })
}

#[test]
fn record_exactly_at_a_boundary_opens_the_next_window() {
    let mut w = windower();
    let (b, p) = batch(&[(0, 9_999), (1, 10_000), (2, 20_000)]);
    w.push(&b, &p).unwrap();
    // watermark = 15_000: only [0, 10_000) has closed.
    let closed = w.take_closed();
    assert_eq!(closed.len(), 1);
    assert_eq!((closed[0].start_ms, closed[0].end_ms, closed[0].rows()), (0, 10_000, 1));
    let (b, p) = batch(&[(3, 25_000)]);
    w.push(&b, &p).unwrap();
    let closed = w.take_closed();
    assert_eq!((closed[0].start_ms, closed[0].rows()), (10_000, 1));
    assert_eq!(w.open_windows(), 1, "20_000 and 25_000 share [20s, 30s)");
}

#[test]
fn out_of_order_within_the_allowed_lag_is_kept() {
    let mut w = windower();
    let (b, p) = batch(&[(0, 12_000), (1, 14_000), (2, 9_000), (3, 5_000)]);
    let s = w.push(&b, &p).unwrap();
    assert_eq!(s, PushStats { accepted: 4, late: 0, replayed: 0 });
    let (b, p) = batch(&[(4, 16_000)]);
    w.push(&b, &p).unwrap();
    let closed = w.take_closed();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].rows(), 2, "both out-of-order rows of [0,10s) are in it");
}

#[test]
fn late_beyond_the_lag_is_counted_and_kept_aside() {
    let mut w = windower();
    let (b, p) = batch(&[(0, 1_000), (1, 21_000)]);
    w.push(&b, &p).unwrap();
    assert_eq!(w.take_closed().len(), 1); // [0,10s) closed at watermark 16s
    let (b, p) = batch(&[(2, 9_999), (3, 10_500), (4, 15_000)]);
    let s = w.push(&b, &p).unwrap();
    assert_eq!(s, PushStats { accepted: 2, late: 1, replayed: 0 });
    assert_eq!(w.late_total(), 1);
}

#[test]
fn lateness_does_not_depend_on_batching() {
    let rows = [(0, 1_000), (1, 30_000), (2, 2_000), (3, 31_000), (4, 24_000)];
    let mut one = windower();
    let (b, p) = batch(&rows);
    let a = one.push(&b, &p).unwrap();
    let mut split = windower();
    let mut late = 0;
    for r in rows {
        let (b, p) = batch(&[r]);
        late += split.push(&b, &p).unwrap().late;
    }
    assert_eq!(a.late, late);
    assert_eq!(a.late, 1);
}

#[test]
fn a_partition_ahead_of_another_does_not_make_the_other_late() {
    let mut w = windower();
    let (b, p) = batch_on(0, &[(0, 1_000), (1, 2_000)]);
    w.push(&b, &p).unwrap();
    // Partition 1 arrives in a burst 60 s of event time ahead.
    let (b, p) = batch_on(1, &[(0, 60_000), (1, 62_000)]);
    w.push(&b, &p).unwrap();
    assert_eq!(w.watermark(), Some(-3_000), "held back by partition 0");
    let (b, p) = batch_on(0, &[(2, 3_000), (3, 61_000)]);
    let s = w.push(&b, &p).unwrap();
    assert_eq!(s.late, 0, "partition 0's rows are on time for partition 0");
    assert_eq!(w.watermark(), Some(56_000));
    let closed: Vec<_> = w.take_closed().iter().map(|c| (c.start_ms, c.rows())).collect();
    assert_eq!(closed, vec![(0, 3)]);
}

#[test]
fn an_assigned_partition_that_has_not_delivered_yet_holds_the_watermark() {
    let mut w = windower();
    w.assign(&[("m".into(), 0), ("m".into(), 1)]);
    let (b, p) = batch_on(0, &[(0, 1_000), (1, 90_000)]);
    w.push(&b, &p).unwrap();
    assert_eq!(w.watermark(), None);
    assert!(w.take_closed().is_empty());
    let (b, p) = batch_on(1, &[(0, 2_000)]);
    let s = w.push(&b, &p).unwrap();
    assert_eq!(s.late, 0, "partition 1's backlog is not late");
    assert_eq!(w.watermark(), Some(-3_000));
}

#[test]
fn an_idle_partition_is_released_even_when_no_new_rows_arrive() {
    let mut w = Windower::new(WindowConfig { size_ms: 10_000, allowed_lag_ms: 0, idle_timeout: std::time::Duration::from_millis(50) });
    w.assign(&[("m".into(), 0), ("m".into(), 1)]);
    let (b, p) = batch_on(0, &[(0, 1_000), (1, 25_000)]);
    w.push(&b, &p).unwrap();
    assert_eq!(w.watermark(), None, "partition 1 has not delivered yet");
    w.advance_idle();
    assert_eq!(w.watermark(), None, "not idle yet");
    std::thread::sleep(std::time::Duration::from_millis(80));
    w.advance_idle();
    assert_eq!(w.watermark(), Some(25_000));
    assert_eq!(w.take_closed().iter().map(|c| c.start_ms).collect::<Vec<_>>(), vec![0], "[20s, 30s) is still open");
}

#[test]
fn an_idle_partition_stops_holding_the_watermark() {
    let mut w = Windower::new(WindowConfig { size_ms: 10_000, allowed_lag_ms: 0, idle_timeout: std::time::Duration::from_millis(50) });
    let (b, p) = batch_on(0, &[(0, 1_000)]);
    w.push(&b, &p).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(80));
    let (b, p) = batch_on(1, &[(0, 30_000)]);
    w.push(&b, &p).unwrap();
    assert_eq!(w.watermark(), Some(30_000));
}

#[test]
fn commit_positions_hold_back_offsets_of_open_windows() {
    let mut w = windower();
    let (b, p) = batch(&[(10, 1_000), (11, 12_000), (12, 13_000)]);
    w.push(&b, &p).unwrap();
    // Nothing closed: the lowest offset of the open windows is the commit point.
    assert_eq!(w.commit_positions(), vec![("m".into(), 0, 10)]);
    let (b, p) = batch(&[(13, 16_000)]);
    w.push(&b, &p).unwrap();
    assert_eq!(w.take_closed().len(), 1);
    assert_eq!(w.commit_positions(), vec![("m".into(), 0, 11)]);
    // A rejected record consumed after everything else moves the point only when nothing is open.
    let mut w2 = windower();
    w2.consumed(&[SourcePos { topic: "m".into(), partition: 1, offset: 41 }]);
    assert_eq!(w2.commit_positions(), vec![("m".into(), 1, 42)]);
}

#[test]
fn a_restored_partition_skips_rows_of_windows_processed_before_the_checkpoint() {
    // Before the crash: rows at offsets 0..=4, windows [0,10s) closed, [10s,20s) open.
    let mut w = windower();
    let (b, p) = batch(&[(0, 1_000), (1, 9_000), (2, 12_000), (3, 14_000), (4, 16_000)]);
    w.push(&b, &p).unwrap();
    assert_eq!(w.take_closed().iter().map(|c| c.start_ms).collect::<Vec<_>>(), vec![0]);
    let pos = w.positions();
    assert_eq!(pos.len(), 1);
    assert_eq!((pos[0].resume, pos[0].fence, pos[0].watermark), (2, 5, 11_000));

    // After: a fresh windower restored from that position reads from the resume point on.
    let mut r = windower();
    r.restore(&pos[0]);
    assert_eq!(r.watermark(), Some(11_000));
    assert_eq!(r.commit_positions(), vec![("m".into(), 0, 2)], "nothing below the resume point is committed yet");
    // Replayed from offset 0 (an older committed offset): rows of [0,10s) are skipped, not late.
    let (b, p) = batch(&[(0, 1_000), (1, 9_000), (2, 12_000), (3, 14_000), (4, 16_000), (5, 26_000)]);
    let s = r.push(&b, &p).unwrap();
    assert_eq!(s, PushStats { accepted: 4, late: 0, replayed: 2 });
    assert!(r.take_late().is_empty());
    let closed = r.take_closed();
    assert_eq!(closed.iter().map(|c| (c.start_ms, c.rows())).collect::<Vec<_>>(), vec![(10_000, 3)], "the open window is rebuilt whole");
    // A row below the fence in a window that was open is kept; a new row behind the
    // watermark is late as usual.
    let (b, p) = batch(&[(6, 3_000)]);
    assert_eq!(r.push(&b, &p).unwrap().late, 1);
}

#[test]
fn a_replayed_row_of_a_window_open_at_the_checkpoint_is_not_late_when_its_partition_ran_ahead() {
    // Partition 0 has run ahead (its own watermark 26s); partition 1 holds the watermark at
    // 11s, so [10s,20s) is open at the checkpoint with a row of each.
    let mut w = windower();
    for (part, rows) in [(1, &[(0, 2_000)][..]), (0, &[(0, 1_000), (1, 12_000), (2, 31_000)]), (1, &[(1, 16_000)])] {
        let (b, p) = batch_on(part, rows);
        w.push(&b, &p).unwrap();
    }
    assert_eq!(w.take_closed().iter().map(|c| c.start_ms).collect::<Vec<_>>(), vec![0]);
    let pos = w.positions();
    assert_eq!(pos.iter().map(|p| (p.partition, p.resume, p.fence)).collect::<Vec<_>>(), vec![(0, 1, 3), (1, 1, 2)]);

    let mut r = windower();
    for p in &pos {
        r.restore(p);
    }
    let (b, p) = batch_on(0, &[(1, 12_000), (2, 31_000)]);
    assert_eq!(r.push(&b, &p).unwrap(), PushStats { accepted: 2, late: 0, replayed: 0 });
    let (b, p) = batch_on(1, &[(1, 16_000), (2, 36_000)]);
    assert_eq!(r.push(&b, &p).unwrap(), PushStats { accepted: 2, late: 0, replayed: 0 });
    assert!(r.take_late().is_empty());
    let closed: Vec<_> = r.take_closed().iter().map(|c| (c.start_ms, c.rows())).collect();
    assert_eq!(closed, vec![(10_000, 2)], "the window open at the checkpoint closes whole, once");
    // A new row of partition 0 behind its own progress is late as usual.
    let (b, p) = batch_on(0, &[(3, 5_000)]);
    assert_eq!(r.push(&b, &p).unwrap().late, 1);
}

#[test]
fn a_row_late_before_the_checkpoint_is_skipped_on_replay_not_counted_again() {
    // Partition 0: 12s, 31s, then 15s, which is late (its window ends at 20s, the
    // partition's own watermark is 26s); partition 1 holds the watermark at 11s.
    let mut w = windower();
    let (b, p) = batch_on(1, &[(0, 16_000)]);
    w.push(&b, &p).unwrap();
    let (b, p) = batch_on(0, &[(0, 12_000), (1, 31_000), (2, 15_000)]);
    assert_eq!(w.push(&b, &p).unwrap(), PushStats { accepted: 2, late: 1, replayed: 0 });
    assert_eq!(w.take_late().len(), 1);
    let pos = w.positions();
    assert_eq!((pos[0].resume, pos[0].fence, pos[0].resume_max_ms, pos[0].max_event_ms), (0, 3, i64::MIN, 31_000));

    let mut r = windower();
    for p in &pos {
        r.restore(p);
    }
    let (b, p) = batch_on(0, &[(0, 12_000), (1, 31_000), (2, 15_000)]);
    assert_eq!(r.push(&b, &p).unwrap(), PushStats { accepted: 2, late: 0, replayed: 1 }, "late then, skipped now");
    assert!(r.take_late().is_empty());
    let (b, p) = batch_on(1, &[(0, 16_000), (1, 40_000)]);
    assert_eq!(r.push(&b, &p).unwrap(), PushStats { accepted: 2, late: 0, replayed: 0 });
    let closed: Vec<_> = r.take_closed().iter().map(|c| (c.start_ms, c.rows())).collect();
    assert_eq!(closed, vec![(10_000, 2)], "[10s,20s) holds what it held before the crash");
}

#[test]
fn a_revoked_partition_is_never_committed_again_and_its_series_leave_open_windows() {
    let mut w = windower();
    let (b, p) = batch_on(0, &[(0, 1_000), (1, 2_000)]);
    w.push(&b, &p).unwrap();
    let (b, p) = batch_on(1, &[(0, 1_500)]);
    w.push(&b, &p).unwrap();
    assert_eq!(w.commit_positions().len(), 2);
    w.revoke(&[("m".into(), 1)]);
    assert_eq!(w.commit_positions(), vec![("m".into(), 0, 0)]);
    assert_eq!(w.buffered_rows(), 3);
    // Every test row is series "x": dropping it empties the windows.
    let id = vigil_ingest::series_id(&vigil_ingest::series_key("x", []));
    assert_eq!(w.drop_series(&|s| s == id).unwrap(), 3);
    assert_eq!(w.buffered_rows(), 0);
}

#[test]
fn a_partition_that_joins_behind_the_others_is_not_late_and_its_windows_close_again() {
    let mut w = windower();
    let (b, p) = batch_on(0, &[(0, 1_000), (1, 61_000)]);
    w.push(&b, &p).unwrap();
    assert_eq!(w.take_closed().len(), 1, "[0,10s) closed");
    // Partition 1 is assigned later (a rebalance) with a backlog from the start.
    let (b, p) = batch_on(1, &[(0, 2_000), (1, 12_000)]);
    let s = w.push(&b, &p).unwrap();
    assert_eq!((s.accepted, s.late), (2, 0), "judged against its own progress");
    let closed: Vec<_> = w.take_closed().iter().map(|c| (c.start_ms, c.rows())).collect();
    assert_eq!(closed, vec![(0, 1), (10_000, 1)], "[0,10s) opens again for partition 1's row and closes at once");
    // Its own out-of-order rows beyond the lag are still late.
    let (b, p) = batch_on(1, &[(2, 30_000), (3, 3_000)]);
    assert_eq!(w.push(&b, &p).unwrap().late, 1);
}
