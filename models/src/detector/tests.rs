use super::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

#[test]
fn shards_scored_in_parallel_give_the_same_anomalies_as_one() {
    // 6,000 series, 100 more from window 30 on: large enough for the parallel path, where
    // each shard takes its rows in the order its states lie in memory. Every fifth close
    // holds two windows, so a series has two rows in one batch, which must be judged in
    // row order; the new series arrive in such a close.
    let keys: Vec<String> = (0..6100).map(|i| format!("m{{host=\"h{i}\"}}")).collect();
    let ids: Vec<u64> = (0..6100u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
    let mut one = Detector::new(DetectorConfig::default());
    let mut many = Detector::with_shards(DetectorConfig::default(), 8);
    let mut rng = StdRng::seed_from_u64(7);
    let noise = Normal::new(0.0, 1.0).unwrap();
    let mut window = |w: i64| {
        let series = if w >= 30 { 6100 } else { 6000 };
        let rows: Vec<(u64, &str, f64)> = (0..series)
            .map(|i| {
                let spike = if (w == 50 || w == 51) && i % 97 == 0 { 40.0 } else { 0.0 };
                (ids[i], keys[i].as_str(), 100.0 + noise.sample(&mut rng) + spike)
            })
            .collect();
        crate::columns::test_features(w * 10_000, &rows)
    };
    let (mut found, mut w) = (0, 0i64);
    while w < 60 {
        let f = if w % 5 == 0 {
            let (a, b) = (window(w), window(w + 1));
            w += 2;
            arrow::compute::concat_batches(&a.schema(), [&a, &b]).unwrap()
        } else {
            w += 1;
            window(w - 1)
        };
        let a = one.score_batch(&f, "mean").unwrap();
        let b = many.score_batch(&f, "mean").unwrap();
        assert_eq!(a, b, "window {w}");
        found += a.num_rows();
    }
    assert_eq!(one.scored(), many.scored());
    assert!(one.scored() > 200_000, "{}", one.scored());
    assert!(found >= 60, "the spikes are found: {found}");
    assert_eq!(many.series(), 6100);
    assert!(many.shards.iter().all(|s| s.states.len() > 500), "every shard holds series");
    let held = |d: &Detector| state_bytes(d.export(&|_| true).into_iter().map(|(id, s)| (id, SeriesState::clone(&s.0))).collect());
    assert!(held(&one) == held(&many), "every series learned its values in the same order");
}

/// The AVX2 build of a shard's scoring gives the baseline build's scores and states, bit
/// for bit: seasonal, quantised and unquantised series, a level shift, spikes and a gap.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_avx2_scoring_gives_the_bits_of_the_baseline_one() {
    if !has_avx2() {
        return;
    }
    let cfg = DetectorConfig { max_period: 48, ..DetectorConfig::default() };
    let (mut base, mut avx2) = (Shard::default(), Shard::default());
    let mut rng = StdRng::seed_from_u64(5);
    let noise = Normal::new(0.0, 1.0).unwrap();
    let mut scored = 0;
    for t in 0..900i64 {
        for id in 0..6u64 {
            if id == 5 && (400..430).contains(&t) {
                continue;
            }
            let season = 10.0 * (t as f64 * std::f64::consts::TAU / 24.0).sin();
            let mut x = match id {
                0 => 100.0 + season + noise.sample(&mut rng),
                1 => (50.0 + season + noise.sample(&mut rng) * 3.0).round() * 0.01,
                2 => f64::from(rng.random_range(0..5u8)),
                3 => 1e6 + noise.sample(&mut rng) * 1e3 + if t > 600 { 5e4 } else { 0.0 },
                _ => 3.0 + noise.sample(&mut rng).abs(),
            };
            if t % 157 == 0 && id >= 2 {
                x *= 9.0;
            }
            let at = Some(t * 60_000);
            let a = base.observe_inlined(&cfg, id, at, x);
            // SAFETY: AVX2 was detected above.
            let b = unsafe { avx2.observe_avx2(&cfg, id, at, x) };
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "series {id} at {t}");
            scored += usize::from(a.is_some());
        }
    }
    assert!(scored > 5000, "{scored}");
    let held = |sh: &Shard| state_bytes(sh.states.iter().map(|(id, s)| (id, SeriesState::clone(s))).collect());
    assert!(held(&base) == held(&avx2), "the states are the same bytes");
    assert!(base.states.iter().any(|(_, s)| s.period.is_some()), "a season was found, so the residual ring was used");
}

/// Series states as a checkpoint would serialise them, in id order.
fn state_bytes(mut states: Vec<(u64, SeriesState)>) -> Vec<u8> {
    states.sort_by_key(|(id, _)| *id);
    postcard::to_stdvec(&states).unwrap()
}

/// Whether this processor runs the AVX2 build (a test of it says so when it cannot run).
#[cfg(target_arch = "x86_64")]
pub(super) fn has_avx2() -> bool {
    let yes = std::arch::is_x86_feature_detected!("avx2");
    if !yes {
        eprintln!("this processor has no AVX2: only the baseline build runs here");
    }
    yes
}

fn warm(d: &mut Detector, id: u64, n: usize, mean: f64, sd: f64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let noise = Normal::new(mean, sd).unwrap();
    for _ in 0..n {
        d.observe(id, noise.sample(&mut rng));
    }
}

#[test]
fn median_of_odd_and_even() {
    assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
}

#[test]
fn scores_on_stationary_noise_are_calibrated() {
    // 100k scored points of Gaussian noise: a score of 0.999 means one in a thousand, so
    // about 100 such points are expected (the refractory span can only remove some).
    let mut d = Detector::new(DetectorConfig::default());
    let mut rng = StdRng::seed_from_u64(7);
    let noise = Normal::new(100.0, 5.0).unwrap();
    let (mut scored, mut high) = (0usize, 0usize);
    for series in 0..50u64 {
        for i in 0..2_500 {
            if let Some(s) = d.observe(series, noise.sample(&mut rng)) {
                if i >= 500 {
                    scored += 1;
                    high += (s.score >= 0.999) as usize;
                }
            }
        }
    }
    let rate = high as f64 / scored as f64;
    assert!(rate < 0.003, "{high} of {scored} scored >= 0.999");
}

#[test]
fn a_spike_is_found_by_the_level_part_and_explained() {
    let mut d = Detector::new(DetectorConfig::default());
    warm(&mut d, 9, 300, 0.4, 0.02, 1);
    let s = d.observe(9, 0.95).unwrap();
    assert!(s.score > 0.9999, "{s:?}");
    assert_eq!(s.part, Part::Level);
    assert!(s.z > 10.0);
    assert!((s.expected - 0.4).abs() < 0.01);
    assert!(s.lower < 0.4 && s.upper > 0.4 && s.upper < 0.95, "{s:?}");
    let text = explain("cpu{host=\"h1\"}", "mean", 0.95, &s);
    assert!(text.starts_with("cpu{host=\"h1\"} mean 0.95 is "), "{text}");
    assert!(text.contains("above its recent level 0.39") && text.contains("[level, p = "), "{text}");
    // A drop is found too (on another series: on this one it would be the same event).
    warm(&mut d, 10, 300, 0.4, 0.02, 2);
    let s = d.observe(10, 0.0).unwrap();
    assert!(s.score > 0.999 && s.z < 0.0, "{s:?}");
}

#[test]
fn a_repeat_within_the_refractory_span_scores_zero_and_a_worse_value_scores_again() {
    let mut d = Detector::new(DetectorConfig::default());
    warm(&mut d, 1, 400, 10.0, 0.5, 5);
    let onset = d.observe(1, 20.0).unwrap();
    let same = d.observe(1, 20.0).unwrap();
    // Judged against a calibration that now holds the onset, "worse" must be far worse.
    let worse = d.observe(1, 200.0).unwrap();
    assert!(onset.score > 0.999 && !onset.repeat, "{onset:?}");
    assert!(same.repeat && same.score == 0.0 && same.p < 0.05, "{same:?}");
    assert!(worse.score > 0.999, "{worse:?}");
}

/// A detector looking for seasons up to `max_period` that has seen `cycles` cycles of 48
/// values (50 ± 10, noise 0.3) on series 2, and the next value's phase: 12 of 48, a peak
/// (60).
fn after_cycles_of_48(max_period: usize, cycles: usize, seed: u64) -> Detector {
    let mut d = Detector::new(DetectorConfig { max_period, ..Default::default() });
    let mut rng = StdRng::seed_from_u64(seed);
    let noise = Normal::new(0.0, 0.3).unwrap();
    for i in 0..48 * cycles + 12 {
        d.observe(2, 50.0 + 10.0 * (2.0 * std::f64::consts::PI * i as f64 / 48.0).sin() + noise.sample(&mut rng));
    }
    d
}

#[test]
fn a_missing_daily_peak_is_found_by_the_seasonal_part() {
    // After twelve cycles, the trough value where the peak should be.
    let mut d = after_cycles_of_48(100, 12, 11);
    assert_eq!(d.period(2), Some(48));
    let s = d.observe(2, 40.0).unwrap();
    assert_eq!(s.part, Part::Seasonal, "{s:?}");
    assert!(s.score > 0.999, "{s:?}");
    assert!((s.expected - 60.0).abs() < 1.5, "{s:?}");
    let text = explain("rps", "mean", 40.0, &s);
    assert!(text.contains("48-window cycle"), "{text}");
}

/// A short cycle while a day-long one is looked for: the history merges its slots to span
/// three days of values, and must keep enough slots to a 48-value cycle for a precise
/// expectation. (With half the slots it had six to a cycle, its expectation at a peak was
/// off by several times the noise, and it missed every anomaly of the seasonal corpus'
/// 48-value files.)
#[test]
fn a_short_cycle_keeps_its_season_while_a_day_long_one_is_looked_for() {
    let mut d = after_cycles_of_48(288, 70, 5);
    assert_eq!(d.period(2), Some(48));
    // At a peak (60), a value of 57: ten times the noise below it, well inside the range the
    // level part has seen; only a precise seasonal expectation tells it apart.
    let s = d.observe(2, 57.0).unwrap();
    assert_eq!(s.part, Part::Seasonal, "{s:?}");
    assert!(s.score > 0.999, "{s:?}");
}

#[test]
fn a_short_history_of_a_long_cycle_gets_no_spurious_period_in_its_explanation() {
    // A 360-window cycle (a day of 4-minute windows) seen for 64 to 300 windows looks like a
    // trend: whatever period the periodogram reports, no anomaly's explanation names one.
    let cfg = DetectorConfig { max_period: 400, ..Default::default() };
    let mut d = Detector::new(cfg);
    let mut rng = StdRng::seed_from_u64(5);
    let noise = Normal::new(0.0, 0.5).unwrap();
    let y = |i: usize| 100.0 + 30.0 * (2.0 * std::f64::consts::PI * i as f64 / 360.0).sin();
    let mut spurious = None;
    for i in 0..300 {
        d.observe(9, y(i) + noise.sample(&mut rng));
        spurious = spurious.or(d.period(9));
    }
    let s = d.observe(9, 400.0).unwrap();
    assert!(s.score > 0.999, "{s:?}");
    assert_eq!(s.period, None, "a period named after 300 windows of a 360-window cycle (detector found {spurious:?})");
    let text = explain("rps", "mean", 400.0, &s);
    assert!(!text.contains("-window cycle"), "{text}");
    // The same series over four cycles: the period is confirmed and may be named.
    let ring: Vec<f64> = (0..1440).map(|i| y(i) + noise.sample(&mut rng)).collect();
    assert!(crate::forecast::confirm_period(&ring, 360));
    assert!(!crate::forecast::confirm_period(&ring[..300], 16), "a trend is no 16-window cycle");
}

#[test]
fn a_steady_level_shift_too_small_for_any_single_value_is_found_by_the_shift_part() {
    let mut d = Detector::new(DetectorConfig::default());
    // Calibration resolves one in n after n values: warm up long enough to claim 1 in 1000.
    warm(&mut d, 3, 6_000, 100.0, 2.0, 13);
    let mut rng = StdRng::seed_from_u64(14);
    // +1.25 sigma, steadily: no single value stands out.
    let noise = Normal::new(102.5, 0.5).unwrap();
    let first = (0..24).filter_map(|k| d.observe(3, noise.sample(&mut rng)).map(|s| (k, s))).find(|(_, s)| s.score >= 0.999);
    let (k, s) = first.expect("a 3-sigma shift is found within the shift window");
    assert_eq!(s.part, Part::Shift, "{s:?}");
    assert!(k >= 1, "a single value of +1.25 sigma is not an anomaly");
}

#[test]
fn a_value_outside_the_forecast_band_is_found_by_the_forecast_part() {
    let mut d = Detector::new(DetectorConfig::default());
    let mut rng = StdRng::seed_from_u64(21);
    let noise = Normal::new(0.0, 1.0).unwrap();
    // A steady climb the level part keeps calling high; the forecast expects it.
    let f: Vec<f64> = (0..=400).map(|i| 2.0 * i as f64).collect();
    let lo: Vec<f64> = f.iter().map(|v| v - 2.0).collect();
    let hi: Vec<f64> = f.iter().map(|v| v + 2.0).collect();
    d.set_forecast(4, 0, 60_000, &f, &lo, &hi);
    for (i, fi) in f.iter().take(400).enumerate() {
        d.observe_at(4, i as i64 * 60_000, fi + noise.sample(&mut rng));
    }
    let s = d.observe_at(4, 400 * 60_000, 780.0).unwrap();
    assert_eq!(s.part, Part::Forecast, "{s:?}");
    assert!(s.score > 0.999 && s.z < 0.0, "{s:?}");
    assert!(explain("disk", "mean", 780.0, &s).contains("below its forecast 800"));
}

#[test]
fn windows_without_data_keep_the_season_in_phase() {
    // Period 24 at one-minute windows; six windows go missing; the series then resumes in
    // phase. Without carrying values through the gap, "one period ago" would be six off.
    let mut d = Detector::new(DetectorConfig { max_period: 60, ..Default::default() });
    let y = |i: i64| 100.0 + 30.0 * (2.0 * std::f64::consts::PI * i as f64 / 24.0).sin() + ((i * 37) % 5) as f64 * 0.2;
    for i in 0..(24 * 12) {
        d.observe_at(5, i * 60_000, y(i));
    }
    assert_eq!(d.period(5), Some(24));
    let mut worst: f64 = 0.0;
    for i in (24 * 12 + 6)..(24 * 14) {
        if let Some(s) = d.observe_at(5, i * 60_000, y(i)) {
            worst = worst.max(s.score);
        }
    }
    assert!(worst < 0.999, "the series resumed in phase, nothing is anomalous: {worst}");
}

#[test]
fn leaving_a_flat_baseline_scores_one_and_is_explained_without_a_huge_z() {
    let mut d = Detector::new(DetectorConfig::default());
    for _ in 0..60 {
        if let Some(s) = d.observe(3, 0.0) {
            assert_eq!(s.score, 0.0, "{s:?}");
        }
    }
    let s = d.observe(3, 1.0).unwrap();
    assert_eq!(s.score, 1.0, "{s:?}");
    let text = explain("log_new_templates{service=\"api\"}", "mean", 1.0, &s);
    assert!(text.starts_with("log_new_templates{service=\"api\"} mean 1 departs from a flat baseline: it was 0 in each of its last"), "{text}");
}

#[test]
fn warm_up_is_silent_and_flat_nan_constant_and_short_series_do_not_panic() {
    let mut d = Detector::new(DetectorConfig { warmup: 5, max_period: 50, ..Default::default() });
    for i in 0..5 {
        assert!(d.observe(1, i as f64).is_none());
    }
    assert!(d.observe(1, f64::NAN).is_none());
    assert!(d.observe(1, f64::INFINITY).is_none());
    for v in [0.0, 1e300, -1e300, f64::MIN_POSITIVE, 5e-324] {
        for k in 0..300u64 {
            if let Some(s) = d.observe(k + 10, v) {
                assert!(s.score.is_finite() && (0.0..=1.0).contains(&s.score), "{s:?}");
            }
        }
    }
    let mut d = Detector::new(DetectorConfig { max_period: 50, ..Default::default() });
    for i in 0..3_000u64 {
        let v = if i % 7 == 0 { f64::NAN } else { ((i * 7919) % 13) as f64 };
        if let Some(s) = d.observe(7, v) {
            assert!(s.score.is_finite() && s.lower <= s.upper, "{s:?}");
        }
    }
}

/// The sizes docs/MODELS.md and docs/BENCHMARKS.md give: the seasonal history's 256 slots
/// take a byte each, a series without a season carries a pointer for its residual ring
/// and the seasonal part's calibration, and its values of 0 to 2 take 2 bits each.
#[test]
fn a_state_takes_184_bytes_with_its_id_its_history_296_and_its_values_the_bits_they_span() {
    assert_eq!(std::mem::size_of::<History>(), 256 + 40);
    assert_eq!(std::mem::size_of::<SeriesState>(), 184);
    let mut d = Detector::new(DetectorConfig { warmup: 4, ..Default::default() });
    for i in 0..50 {
        d.observe(1, 10.0 + (i % 3) as f64);
    }
    let st = d.state(1).expect("a state");
    assert!(st.seasonal.is_none(), "no season, no residual ring or seasonal calibration");
    // Still filling: 16-bit slots, which the first values' recoding reuses.
    assert_eq!(st.values.heap_bytes(), 2 * 264);
    for i in 50..264 {
        d.observe(1, 10.0 + (i % 3) as f64);
    }
    let st = d.state(1).expect("a state");
    assert_eq!(st.values.heap_bytes(), 2 * 264 / 8, "full: 2 bits a value");
    assert_eq!(d.state_by_part().values, 2 * 264 / 8);
}

#[test]
fn state_per_series_is_bounded_whatever_the_season() {
    let cfg = DetectorConfig { max_period: 1440, ..Default::default() };
    let mut d = Detector::new(cfg.clone());
    let mut rng = StdRng::seed_from_u64(4);
    let noise = Normal::new(0.0, 1.0).unwrap();
    for i in 0..20_000u64 {
        let v = 50.0 + 10.0 * (i as f64 * std::f64::consts::TAU / 96.0).sin() + noise.sample(&mut rng) + if i % 997 == 0 { 80.0 } else { 0.0 };
        d.observe(1, v);
    }
    let st = d.state(1).expect("series 1 observed");
    // The seasonal part runs, on the cycle or a whole number of cycles (which one depends on
    // the history's resolution when the period was last looked for).
    assert!(d.period(1).is_some_and(|p| p % 96 == 0), "{:?}", d.period(1));
    // Three days of minutes held at reduced resolution: about 3 KB, where the full ring of
    // 4,321 values took 35 KB.
    let bound = d.max_bytes_per_series();
    assert!(st.bytes() <= bound + 8 * cfg.refractory, "{} > {bound}", st.bytes());
    assert!(bound < 3_500, "{bound}");
    assert!(st.values.len() <= cfg.history + cfg.shift_windows && st.resid().map_or(0, Ring::len) <= cfg.history);
    assert!(Part::ALL.iter().filter_map(|p| st.tail(*p)).all(|t| t.total() as usize <= cfg.calibration));
    // The held bytes add the hash table's buckets (a few, for one series).
    let held = d.state_by_part().total();
    assert!(held > st.bytes() && held < st.bytes() + 256, "{held} vs {}", st.bytes());
}

/// The engine creates a series' state when its first points arrive, before the close of
/// their window: such a series scores as one whose state its first value created, through
/// values its ring first holds as coarse codes, then finer ones, then as floats, and ends
/// with the same state in as many bytes.
#[test]
fn a_series_admitted_before_its_first_value_scores_as_one_created_by_it() {
    let cfg = DetectorConfig { history: 60, warmup: 10, max_period: 24, seasons: 3, shift_windows: 8, calibration: 200, refractory: 5, anomaly_threshold: 0.99 };
    let mut plain = Detector::with_shards(cfg.clone(), 2);
    let mut admitted = Detector::with_shards(cfg, 2);
    let ids: Vec<u64> = (1..=30u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
    assert_eq!(admitted.admit(&ids[..20]), 20);
    assert_eq!(admitted.admit(&ids), 10, "a series with state is not admitted again");
    assert!(admitted.shards.iter().all(|sh| !sh.states.is_empty()), "both shards hold series");
    assert!(ids.iter().all(|id| admitted.shards[admitted.shard_of(*id)].states.contains(*id)), "each in its own shard");
    assert_eq!(admitted.series(), 30);
    let mut rng = StdRng::seed_from_u64(9);
    for t in 0..200i64 {
        for (k, &id) in ids.iter().enumerate() {
            let v = match k % 3 {
                0 => f64::from(rng.random_range(0..100u32) * 1000),
                1 => 50.0 + f64::from(rng.random_range(0..1000u32)) / 100.0,
                _ => rng.random_range(-1.0..1.0) * 1e3,
            };
            let (a, b) = (plain.observe_at(id, t * 60_000, v), admitted.observe_at(id, t * 60_000, v));
            assert_eq!(a, b, "series {k} at {t}");
        }
        if t == 100 {
            assert_eq!(admitted.admit(&ids), 0);
        }
    }
    let states = |d: &Detector| {
        let mut v: Vec<_> = d.export(&|_| true).into_iter().map(|(id, s)| (id, s.0.bytes(), postcard::to_stdvec(&s).unwrap())).collect();
        v.sort();
        v
    };
    assert_eq!(states(&plain), states(&admitted));
}

#[test]
fn series_that_start_together_spread_their_period_detections_over_many_closes() {
    // Series ids are hashes of their keys, as the engine makes them.
    let mut rng = StdRng::seed_from_u64(11);
    let ids: Vec<u64> = (0..2000).map(|_| rng.random()).collect();
    let cfg = DetectorConfig { max_period: 100, ..Default::default() };
    let mut d = Detector::new(cfg.clone());
    let (mut most, mut before) = (0, 0);
    for step in 0..300u64 {
        for (k, &id) in ids.iter().enumerate() {
            d.observe(id, 10.0 + ((step * 7 + k as u64) % 11) as f64);
        }
        let now = d.period_checks();
        most = most.max(now - before);
        before = now;
    }
    // Every series looked for its period at least twice (at 64-127 values and twice that)…
    assert!(before >= 2 * ids.len() as u64, "{before} detections");
    // …and no step ran more than a sixteenth of them (all 2,000 at once at 64 values before).
    assert!(most <= ids.len() as u64 / 16, "{most} detections in one step");
    // A series alone, as `vigil eval` scores it, looks at 64 values, as before.
    let mut one = Detector::new(cfg);
    for i in 0..63 {
        one.observe(0, f64::from(i % 5));
    }
    assert_eq!(one.period_checks(), 0);
    one.observe(0, 1.0);
    assert_eq!(one.period_checks(), 1);
}

#[test]
fn state_survives_a_checkpoint_round_trip_and_scores_the_same() {
    let mut a = Detector::new(DetectorConfig { max_period: 100, ..Default::default() });
    let y = |i: u64| 20.0 + 5.0 * (i as f64 * std::f64::consts::TAU / 24.0).sin() + ((i * 7919) % 11) as f64 * 0.1;
    for i in 0..3_000 {
        a.observe(1, y(i));
    }
    let bytes = postcard::to_stdvec(&a.export(&|_| true)).unwrap();
    let mut b = Detector::new(a.config().clone());
    b.import(postcard::from_bytes(&bytes).unwrap());
    for i in 3_000..3_500 {
        let v = if i == 3_300 { 60.0 } else { y(i) };
        assert_eq!(a.observe(1, v), b.observe(1, v), "value {i}");
    }
}

#[test]
fn tail_probabilities_fall_with_the_deviation_and_the_band_inverts_them() {
    let mut t = Tail::default();
    let mut rng = StdRng::seed_from_u64(3);
    let noise = Normal::new(0.0, 1.0).unwrap();
    for _ in 0..2_000 {
        t.push(f64::abs(noise.sample(&mut rng)), 4_000);
    }
    let p = |z: f64| t.get().survival(z);
    assert!((p(0.6745) - 0.5).abs() < 0.05, "median of |z| {}", p(0.6745));
    assert!((p(1.96) - 0.05).abs() < 0.015, "{}", p(1.96));
    let mut last = 1.0;
    for k in 0..200 {
        let z = k as f64 * 0.1;
        assert!(p(z) <= last + 1e-12, "survival rises at {z}");
        last = p(z);
    }
    assert!(p(8.0) > 0.0 && p(8.0) < 1e-4, "beyond the largest seen: {}", p(8.0));
    // Where the bins hold a few statistics above (1e-3 of 2,000 is two, inside the top bin).
    for q in [0.1, 0.01, 3e-3, 1e-5] {
        let z = t.get().quantile(q);
        assert!((p(z) - q).abs() / q < 0.2, "quantile({q}) = {z}, survival there {}", p(z));
    }
}
