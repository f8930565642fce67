use super::*;

#[test]
fn published_ids_stay_bounded_and_round_trip() {
    let mut p = PublishedIds::new(3);
    for i in 0..5 {
        p.insert(format!("id{i}"));
    }
    assert_eq!(p.len(), 3);
    assert!(!p.contains("id1") && p.contains("id4"));
    let mut w = SectionWriter::default();
    w.put("published", &p, &|_| true).unwrap();
    let bytes = w.finish().unwrap();
    let mut q = PublishedIds::new(10);
    assert!(SectionReader::new("global", &bytes).unwrap().get("published", &mut q).unwrap());
    assert!(q.contains("id2") && q.contains("id4") && !q.contains("id0"));
}

#[test]
fn a_section_holds_the_state_as_it_was_when_put_not_when_encoded() {
    // A periodic checkpoint is encoded beside the loop, which goes on changing the state.
    let mut d = Detector::new(vigil_models::DetectorConfig::default());
    for i in 0..100 {
        d.observe(1, f64::from(i % 7));
    }
    let mut w = SectionWriter::default();
    w.put("detector", &d, &|_| true).unwrap();
    let at_once = w.finish().unwrap();
    let mut taken = SectionWriter::default();
    taken.put("detector", &d, &|_| true).unwrap();
    let mut detached = SectionWriter::default();
    detached.put("detector", &d, &|_| true).unwrap();
    detached.detach();
    assert_eq!(d.copied_on_write(), 0);
    for i in 0..50 {
        d.observe(1, 100.0 + f64::from(i));
    }
    // The snapshot shares the state: the detector copied it once, as it first changed.
    assert_eq!(d.copied_on_write(), 1);
    assert_eq!(taken.finish().unwrap(), at_once, "the values observed after the put are not in the section");
    assert_eq!(detached.finish().unwrap(), at_once);
    // A snapshot made its own before the state changes costs the detector no copy.
    let mut own = SectionWriter::default();
    own.put("detector", &d, &|_| true).unwrap();
    own.detach();
    d.observe(1, 7.0);
    assert_eq!(d.copied_on_write(), 1);
    let mut after = SectionWriter::default();
    after.put("detector", &d, &|_| true).unwrap();
    assert_ne!(after.finish().unwrap(), at_once);
}

#[test]
fn a_state_of_another_version_is_refused_by_name() {
    let mut w = SectionWriter::default();
    w.put_value("published", 99, &Vec::<String>::new()).unwrap();
    let bytes = w.finish().unwrap();
    let mut q = PublishedIds::new(10);
    let e = SectionReader::new("global", &bytes).unwrap().get("published", &mut q).unwrap_err();
    assert!(matches!(e, StateError::Version { found: 99, supported: 1, .. }), "{e}");
    assert!(e.to_string().contains("`published`"), "{e}");
}

#[test]
fn damaged_section_bytes_are_an_error_not_a_panic() {
    assert!(SectionReader::new("global", &[0xff, 0xff, 0xff]).is_err());
    let mut w = SectionWriter::default();
    w.put_value("published", 1, &vec!["a".to_string()]).unwrap();
    let mut bytes = w.finish().unwrap();
    let n = bytes.len();
    bytes.truncate(n - 1);
    let r = SectionReader::new("global", &bytes);
    assert!(r.is_err() || r.unwrap().get("published", &mut PublishedIds::new(2)).is_err());
}

fn round_trip<T: Stateful + 'static>(name: &str, from: &T, into: &mut T, keep: &dyn Fn(u64) -> bool) {
    let mut w = SectionWriter::default();
    w.put(name, from, keep).unwrap();
    let bytes = w.finish().unwrap();
    assert!(SectionReader::new("s", &bytes).unwrap().get(name, into).unwrap());
}

#[test]
fn a_restored_detector_scores_exactly_as_the_one_it_was_taken_from() {
    let cfg = vigil_models::DetectorConfig { max_period: 48, ..Default::default() };
    let mut a = Detector::new(cfg.clone());
    let value = |i: i64| 10.0 + (i as f64 * std::f64::consts::TAU / 24.0).sin() + 0.1 * ((i * 7919) % 13) as f64;
    for i in 0..400 {
        a.observe_at(1, i * 60_000, value(i));
        a.observe_at(2, i * 60_000, value(i) * 2.0);
    }
    // Only series 1 goes into this section (as for one partition).
    let mut b = Detector::new(cfg.clone());
    round_trip("detector", &a, &mut b, &|id| id == 1);
    assert_eq!(b.series(), 1);
    assert_eq!(a.period(1), b.period(1));
    for i in 400..460 {
        let v = if i == 450 { 25.0 } else { value(i) };
        let (x, y) = (a.observe_at(1, i * 60_000, v), b.observe_at(1, i * 60_000, v));
        assert_eq!(x.map(|s| (s.score, s.p, s.z)), y.map(|s| (s.score, s.p, s.z)), "window {i}");
    }
    // Warm: scored at once, where a detector starting from nothing is still warming up.
    assert!(b.observe_at(1, 460 * 60_000, value(460)).is_some());
    assert!(Detector::new(cfg).observe_at(1, 460 * 60_000, value(460)).is_none());
    Stateful::forget(&mut b, &|id| id == 1);
    assert_eq!(b.series(), 0);
}

/// Versions 5 and 6 encode what version 7 does (5 has fewer units for its codes, 6 and 5
/// wider value numbers in the refractory queue, the same modulo 2^16): checkpoints of both
/// restore; one of version 4 is refused by name.
#[test]
fn detector_checkpoints_of_versions_5_and_6_restore_and_one_of_version_4_is_refused() {
    let mut a = Detector::new(vigil_models::DetectorConfig::default());
    for i in 0..300 {
        a.observe_at(1, i * 60_000, 10.0 + f64::from((i * 37 % 100) as i32) / 100.0);
    }
    let state = Stateful::snapshot(&a, &|_| true);
    // The snapshot keeps the state as taken while `a` goes on.
    let v = 10.5;
    let expected = a.observe_at(1, 300 * 60_000, v).map(|s| (s.score, s.p));
    assert!(expected.is_some(), "warm");
    for (version, restores) in [(5, true), (4, false), (6, true), (7, true)] {
        let mut w = SectionWriter::default();
        w.put_value("detector", version, &state).unwrap();
        let bytes = w.finish().unwrap();
        let mut b = Detector::new(vigil_models::DetectorConfig::default());
        match SectionReader::new("s", &bytes).unwrap().get("detector", &mut b) {
            Ok(got) => {
                assert!(restores && got, "version {version}");
                assert_eq!(b.observe_at(1, 300 * 60_000, v).map(|s| (s.score, s.p)), expected, "version {version}");
            }
            Err(e) => {
                assert!(!restores, "version {version}: {e}");
                assert!(matches!(e, StateError::Version { found: 4, supported: 7, .. }), "{e}");
                assert!(e.to_string().contains("`detector` in version 4; this Vigil reads version 7 or 6 or 5:"), "{e}");
            }
        }
    }
}

#[test]
fn restored_log_templates_keep_their_ids() {
    let mut a = vigil_ingest::Drain::new(Default::default());
    let first = a.mine("auth", "login failed for user 42").id;
    a.mine("auth", "connection reset by peer");
    let mut b = vigil_ingest::Drain::new(Default::default());
    round_trip("drain", &a, &mut b, &|_| true);
    assert_eq!(b.templates(), a.templates());
    let again = b.mine("auth", "login failed for user 77");
    assert_eq!(again.id, first);
    assert!(!again.new, "known before the restart");
}

#[test]
fn restored_decision_state_and_forecast_history_round_trip() {
    let mut f = Forecaster::new([("mem".to_string(), Some(8e9))], 10_000, 100, 60_000);
    let mut f2 = Forecaster::new([("mem".to_string(), Some(8e9))], 10_000, 100, 60_000);
    let batch = |t: i64, v: f64| {
        use arrow::array::{Float64Array, StringArray, TimestampMillisecondArray, UInt64Array};
        use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        let schema = Arc::new(Schema::new(vec![
            Field::new("series_id", DataType::UInt64, false),
            Field::new("series", DataType::Utf8, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("window_start", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("mean", DataType::Float64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(UInt64Array::from(vec![9])),
                Arc::new(StringArray::from(vec!["mem{}"])),
                Arc::new(StringArray::from(vec!["mem"])),
                Arc::new(TimestampMillisecondArray::from(vec![t])),
                Arc::new(Float64Array::from(vec![v])),
            ],
        )
        .unwrap()
    };
    for i in 0..30 {
        f.observe(&batch(i * 10_000, i as f64), "mean");
    }
    round_trip("forecaster", &f, &mut f2, &|_| true);
    let jobs = |f: &mut Forecaster| f.due(i64::MAX / 2).map(|j| j.into_iter().map(|j| j.values).collect::<Vec<_>>());
    f2.set_next_refit(f.next_refit());
    assert_eq!(jobs(&mut f), jobs(&mut f2));
}
