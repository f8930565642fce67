use super::*;
use arrow::array::AsArray;

fn batch(w: i64, rows: &[(&str, f64)]) -> RecordBatch {
    let rows: Vec<(u64, &str, f64)> = rows.iter().enumerate().map(|(i, (k, v))| (i as u64, *k, *v)).collect();
    crate::columns::test_features(w * 10_000, &rows)
}

const HOSTS: [&str; 6] = [
    r#"cpu{host="h0",service="api"}"#,
    r#"cpu{host="h1",service="api"}"#,
    r#"cpu{host="h2",service="api"}"#,
    r#"cpu{host="h3",service="api"}"#,
    r#"cpu{host="h4",service="api"}"#,
    r#"cpu{host="h5",service="api"}"#,
];

fn run(algorithm: Algorithm, hosts: usize, value: impl Fn(usize, i64) -> f64) -> Vec<(i64, String, String)> {
    let mut d = FleetDetector::new(FleetConfig { algorithm, window: 10, ..Default::default() });
    let mut found = Vec::new();
    for w in 0..60i64 {
        let rows: Vec<(&str, f64)> = (0..hosts).map(|h| (HOSTS[h], value(h, w))).collect();
        let out = d.observe(&batch(w, &rows), "mean").unwrap();
        assert_eq!(out.schema(), anomalies_schema());
        let s = out.column(3).as_string::<i32>();
        let e = out.column(13).as_string::<i32>();
        for i in 0..out.num_rows() {
            found.push((w, s.value(i).to_string(), e.value(i).to_string()));
        }
    }
    found
}

fn normal(h: usize, w: i64) -> f64 {
    0.5 + 0.01 * (((h as i64 * 7 + w * 13) % 5) as f64 - 2.0)
}

/// A close of two windows whose rows come in no particular member order: every member
/// learns its values exactly as it would from the rows one at a time, in row order.
#[test]
fn members_learned_in_memory_order_hold_the_values_of_row_order() {
    let keys: Vec<String> = (0..120).map(|i| format!("cpu{{host=\"h{}\",service=\"s{}\"}}", i % 40, i / 40)).collect();
    let scrambled = |w: i64| -> Vec<usize> {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by_key(|&i| (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15 ^ w as u64).rotate_left(17));
        order
    };
    let window = |w: i64| {
        // Host 7 of each service misses window 5: its run starts again.
        let rows: Vec<(u64, &str, f64)> = scrambled(w)
            .into_iter()
            .filter(|&i| !(w == 5 && i % 40 == 7))
            .map(|i| (i as u64, keys[i].as_str(), (i as f64) * 0.1 + (w as f64).sin()))
            .collect();
        crate::columns::test_features(w * 10_000, &rows)
    };
    let cfg = FleetConfig { window: 4, ..Default::default() };
    let (mut together, mut one_by_one) = (FleetDetector::new(cfg.clone()), FleetDetector::new(cfg));
    for w in (0..12i64).step_by(2) {
        let (a, b) = (window(w), window(w + 1));
        let close = arrow::compute::concat_batches(&a.schema(), [&a, &b]).unwrap();
        together.observe(&close, "mean").unwrap();
        for i in 0..close.num_rows() {
            one_by_one.observe(&close.slice(i, 1), "mean").unwrap();
        }
    }
    let held = |d: &FleetDetector| -> Vec<(String, String, Vec<f64>, i64)> {
        groups_of(d).into_iter().flat_map(|(k, g)| g.members.into_iter().map(move |(n, m)| (k.clone(), n, m.values.into_iter().collect(), m.last_ms))).collect()
    };
    let (a, b) = (held(&together), held(&one_by_one));
    assert_eq!(a.len(), 120);
    assert!(a.iter().all(|m| m.2.len() == 4), "every member holds a full window");
    assert_eq!(a, b);
}

/// The engine gives a series its slots when its first points arrive, in arrival order:
/// members admitted so, in another order than their rows', report the same outliers and
/// hold the same values as members placed by their first rows.
#[test]
fn members_admitted_before_their_first_rows_judge_as_members_placed_by_them() {
    let cfg = FleetConfig { window: 10, ..Default::default() };
    let (mut placed, mut admitted) = (FleetDetector::new(cfg.clone()), FleetDetector::new(cfg));
    for (h, key) in HOSTS.iter().enumerate().rev() {
        admitted.admit(h as u64, key, "cpu");
        admitted.admit(h as u64, key, "cpu");
    }
    assert_eq!(admitted.groups(), 1);
    let rows = |out: RecordBatch| -> Vec<(String, String)> {
        let (s, e) = (out.column(3).as_string::<i32>(), out.column(13).as_string::<i32>());
        (0..out.num_rows()).map(|i| (s.value(i).to_string(), e.value(i).to_string())).collect()
    };
    let mut found = 0;
    for w in 0..60i64 {
        let values: Vec<(&str, f64)> = (0..HOSTS.len()).map(|h| (HOSTS[h], if h == 2 && w >= 30 { 0.95 } else { normal(h, w) })).collect();
        let b = batch(w, &values);
        let (a, z) = (rows(placed.observe(&b, "mean").unwrap()), rows(admitted.observe(&b, "mean").unwrap()));
        assert_eq!(a, z, "window {w}");
        found += a.len();
    }
    assert_eq!(found, 1, "the host that left its fleet");
    let held = |d: &FleetDetector| -> Vec<(String, String, Vec<f64>)> {
        groups_of(d).into_iter().flat_map(|(k, g)| g.members.into_iter().map(move |(n, m)| (k.clone(), n, m.values.into_iter().collect()))).collect()
    };
    assert_eq!(held(&placed), held(&admitted));
}

#[test]
fn the_host_that_leaves_its_fleet_is_flagged_once_by_dbscan_and_by_mad() {
    for algorithm in [Algorithm::Dbscan, Algorithm::Mad] {
        let found = run(algorithm, 6, |h, w| if h == 4 && w >= 40 { 0.95 } else { normal(h, w) });
        assert_eq!(found.len(), 1, "{algorithm:?}: {found:#?}");
        let (w, series, why) = &found[0];
        assert!((40..45).contains(w), "{algorithm:?} at {w}");
        assert_eq!(series, HOSTS[4]);
        assert!(why.contains("outlier among the 6 members of its group (by host)") && why.contains("[fleet, "), "{why}");
    }
}

/// The verdict from the newest window alone, with the epsilon computed here, is augurs'
/// verdict at the newest window of the whole data (which fails if augurs changes how it
/// derives epsilon or judges a window).
#[test]
fn dbscan_on_the_newest_window_agrees_with_augurs_on_the_whole_window() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(11);
    let mut flagged = 0;
    for case in 0..400 {
        let members = rng.random_range(3..60);
        let len = rng.random_range(1..40);
        let scale = [1e-3, 0.05, 1.0, 1e4][case % 4];
        let sensitivity = [0.1, 0.5, 0.9, 0.9995][case / 4 % 4];
        let windows: Vec<VecDeque<f64>> = (0..members)
            .map(|m| {
                let odd = m % 7 == 3 && case % 3 == 0;
                (0..len).map(|_| scale * (rng.random_range(0.0..1.0) + if odd { 5.0 } else { 0.0 })).collect()
            })
            .collect();
        let refs: Vec<&VecDeque<f64>> = windows.iter().collect();
        let cfg = FleetConfig { sensitivity, ..Default::default() };
        let got = detect(&cfg, &refs).expect("a verdict");
        let data: Vec<Vec<f64>> = windows.iter().map(|w| w.iter().copied().collect()).collect();
        let rows: Vec<&[f64]> = data.iter().map(|v| v.as_slice()).collect();
        let d = DbscanDetector::with_sensitivity(sensitivity).unwrap();
        let want = verdict_at(&d.detect(&d.preprocess(&rows).unwrap()).unwrap(), len - 1, members);
        assert_eq!(got, want, "case {case}: {members} members, {len} windows, sensitivity {sensitivity}");
        flagged += got.flagged.iter().filter(|f| **f).count();
    }
    assert!(flagged > 100, "outliers were judged: {flagged}");
}

#[test]
fn a_fleet_restored_from_its_checkpoint_judges_as_the_one_it_was_taken_from() {
    let value = |h: usize, w: i64| if h == 1 && w >= 42 { 0.95 } else { normal(h, w) };
    let cfg = FleetConfig { window: 10, ..Default::default() };
    let mut a = FleetDetector::new(cfg.clone());
    let feed = |d: &mut FleetDetector, w: i64| feed_hosts(d, w, value);
    for w in 0..40 {
        feed(&mut a, w);
    }
    let state = postcard::to_allocvec(&a.export()).unwrap();
    let mut b = FleetDetector::new(cfg);
    b.import(postcard::from_bytes(&state).unwrap());
    assert_eq!(b.groups(), 1);
    let mut flagged = 0;
    for w in 40..60 {
        let (x, y) = (feed(&mut a, w), feed(&mut b, w));
        assert_eq!(x, y, "window {w}");
        flagged += y.num_rows();
    }
    assert_eq!(flagged, 1);
}

/// Window `w` of the six hosts, each at `value(host, w)`, learned by `d`.
fn feed_hosts(d: &mut FleetDetector, w: i64, value: impl Fn(usize, i64) -> f64) -> RecordBatch {
    let rows: Vec<(&str, f64)> = (0..6).map(|h| (HOSTS[h], value(h, w))).collect();
    d.observe(&batch(w, &rows), "mean").unwrap()
}

/// The groups a detector holds, read back from a checkpoint's encoding of its snapshot as
/// the list of (key, group) that checkpoints always held.
fn groups_of(d: &FleetDetector) -> Vec<(String, Group)> {
    postcard::from_bytes(&postcard::to_allocvec(&d.export()).unwrap()).unwrap()
}

#[test]
fn a_snapshot_keeps_the_members_as_taken_while_the_detector_goes_on() {
    let cfg = FleetConfig { window: 10, ..Default::default() };
    let mut d = FleetDetector::new(cfg);
    for w in 0..20 {
        feed_hosts(&mut d, w, normal);
    }
    let at_once = postcard::to_allocvec(&d.export()).unwrap();
    let mut shared = d.export();
    let mut detached = d.export();
    detached.detach();
    for w in 20..30 {
        feed_hosts(&mut d, w, normal);
    }
    assert_eq!(postcard::to_allocvec(&shared).unwrap(), at_once, "the members changed after the snapshot was taken were copied first");
    assert_eq!(postcard::to_allocvec(&detached).unwrap(), at_once);
    shared.detach();
    assert_eq!(postcard::to_allocvec(&shared).unwrap(), at_once);
    assert_ne!(postcard::to_allocvec(&d.export()).unwrap(), at_once, "the detector went on learning");
}

#[test]
fn a_host_that_was_always_different_is_not_news() {
    let found = run(Algorithm::Dbscan, 6, |h, w| if h == 2 { 3.0 + normal(h, w) } else { normal(h, w) });
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn flat_fleets_and_fleets_of_two_are_skipped_without_error() {
    for algorithm in [Algorithm::Dbscan, Algorithm::Mad] {
        assert!(run(algorithm, 6, |_, _| 1.0).is_empty());
        assert!(run(algorithm, 2, |h, w| if h == 1 && w >= 40 { 9.0 } else { 1.0 }).is_empty());
        // Flat, then one member moves: it is the outlier.
        let found = run(algorithm, 5, |h, w| if h == 3 && w >= 40 { 9.0 } else { 1.0 });
        assert!(found.len() <= 1, "{algorithm:?}: {found:#?}");
    }
}
