//! What a series' next value is judged against, computed before the value arrives.
//!
//! The level, seasonal and shift parts compare a value with statistics of the values before it:
//! medians and median absolute deviations over hundreds of values, most of what scoring a value
//! costs. None of them depends on the value, so [`super::Detector::prepare`] computes them for
//! the series of a close once that close's decisions are out, and the next close only compares
//! each new value with them: the window close to decision path no longer waits for the medians.
//!
//! A prepared baseline is used only if the state it was computed from is the state the value
//! meets: a gap filled with carried values, a new period or a new anchor (which recodes the
//! values) make the value compute its own, from the window hints as they were before the
//! baseline was prepared, so every score is bit for bit what it is without preparing.

use super::order::{location_scale_near, Hint};
use super::{median, DetectorConfig, SeriesState};

/// The statistics of a series' past its next value is judged against. NaN marks a part that
/// has too few values to vote.
#[derive(Debug, Clone, Copy)]
pub(super) struct Baseline {
    /// Median and robust sigma of the last `history` values.
    level: [f64; 2],
    /// The median of the same phase in past periods, and the residuals' median and sigma.
    seasonal: [f64; 3],
    /// Median and robust sigma of the shift part's baseline window.
    shift: [f64; 2],
    /// Values behind the seasonal expectation (periods × period).
    seasonal_support: u32,
}

/// A baseline computed ahead of the value, and the window hints it was computed from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Prepared {
    pub base: Baseline,
    pub hints_before: [Hint; 3],
}

/// Baselines need half the warm-up; the other half fills each part's calibration.
pub(super) fn half_warm(cfg: &DetectorConfig) -> usize {
    (cfg.warmup / 2).max(3)
}

/// Whether the shift part compares residuals (a season is known and enough residuals are held)
/// rather than values.
pub(super) fn shift_on_resid(st: &SeriesState, cfg: &DetectorConfig, seasonal: bool) -> bool {
    seasonal && st.resid.len() >= half_warm(cfg).max(2 * cfg.shift_windows)
}

/// Appends the shift part's values (or residuals) at `range` to `out`.
pub(super) fn shift_window(st: &SeriesState, on_resid: bool, range: std::ops::Range<usize>, out: &mut Vec<f64>) {
    if on_resid {
        st.resid.extend_into(range, out);
    } else {
        st.values.extend_into(range, st.anchor, out);
    }
}

impl Baseline {
    /// Every statistic of `st`'s past that its next value is judged against (`s` is scratch).
    pub(super) fn of(st: &mut SeriesState, cfg: &DetectorConfig, s: &mut Vec<f64>) -> Self {
        let mut b = Baseline { level: [f64::NAN; 2], seasonal: [f64::NAN; 3], shift: [f64::NAN; 2], seasonal_support: 0 };
        let n = st.values.len();
        if n < half_warm(cfg) {
            return b;
        }
        // Level: the last `history` values.
        let h = cfg.history.min(n);
        s.clear();
        st.values.extend_into(n - h..n, st.anchor, s);
        let (med, sigma) = location_scale_near(s, &mut st.hints[0]);
        b.level = [med, sigma];
        // Seasonal: median of the same phase in the last `seasons` periods.
        if let (Some(p), Some(hist)) = (st.period, st.history.as_ref()) {
            let now = hist.total();
            s.clear();
            s.extend((1..=cfg.seasons as u64).map_while(|j| now.checked_sub(j * p as u64).and_then(|g| hist.value_at(g))));
            if !s.is_empty() {
                b.seasonal_support = u32::try_from(s.len() * p).unwrap_or(u32::MAX);
                b.seasonal[0] = median(s);
                if st.resid.len() >= half_warm(cfg) {
                    s.clear();
                    st.resid.extend_into(0..st.resid.len(), s);
                    let (rm, rs) = location_scale_near(s, &mut st.hints[1]);
                    b.seasonal[1..].copy_from_slice(&[rm, rs]);
                }
            }
        }
        b.compute_shift(st, cfg, s);
        b
    }

    /// The shift part's baseline: the window before the last `shift_windows` values (again
    /// after a new anchor recoded the values).
    pub(super) fn compute_shift(&mut self, st: &mut SeriesState, cfg: &DetectorConfig, s: &mut Vec<f64>) {
        self.shift = [f64::NAN; 2];
        let w = cfg.shift_windows;
        let on_resid = shift_on_resid(st, cfg, self.seasonal().is_some());
        let m = if on_resid { st.resid.len() } else { st.values.len() };
        if m < w + half_warm(cfg) {
            return;
        }
        let hb = cfg.history.min(m + 1 - w);
        s.clear();
        shift_window(st, on_resid, m + 1 - w - hb..m + 1 - w, s);
        let (bm, bs) = location_scale_near(s, &mut st.hints[2]);
        self.shift = [bm, bs];
    }

    /// Level: median and sigma, when the series has enough values.
    pub(super) fn level(&self) -> Option<(f64, f64)> {
        (!self.level[0].is_nan()).then_some((self.level[0], self.level[1]))
    }

    /// Seasonal: the expectation, its support, and the residuals' median and sigma once enough
    /// residuals are held.
    pub(super) fn seasonal(&self) -> Option<(f64, usize, Option<(f64, f64)>)> {
        let [e, rm, rs] = self.seasonal;
        (!e.is_nan()).then_some((e, self.seasonal_support as usize, (!rm.is_nan()).then_some((rm, rs))))
    }

    /// Shift: the baseline window's median and sigma, when there are enough values.
    pub(super) fn shift(&self) -> Option<(f64, f64)> {
        (!self.shift[0].is_nan()).then_some((self.shift[0], self.shift[1]))
    }
}

#[cfg(test)]
mod tests {
    use crate::detector::{Detector, DetectorConfig};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Two detectors see the same batches; one prepares its baselines after every batch. Every
    /// score (the anomaly threshold is 0, so every scored row comes back) is the same to the bit,
    /// through seasons found and changed, windows missing, values far enough to move the anchor,
    /// flat stretches whose MAD is 0, and closes of two windows at once.
    #[test]
    fn prepared_baselines_score_exactly_as_baselines_computed_on_arrival() {
        let cfg = DetectorConfig { max_period: 24, anomaly_threshold: 0.0, ..DetectorConfig::default() };
        let (mut prepared, mut plain) = (Detector::with_shards(cfg.clone(), 2), Detector::with_shards(cfg, 2));
        let mut rng = StdRng::seed_from_u64(11);
        let keys: Vec<String> = (0..120).map(|i| format!("m{{host=\"h{i}\"}}")).collect();
        let value = |i: usize, w: i64, rng: &mut StdRng| -> f64 {
            let phase = (w % 24) as f64 / 24.0 * std::f64::consts::TAU;
            match i % 5 {
                // Seasonal, its amplitude changing half-way (a new period may be found).
                0 => 100.0 + (if w < 300 { 20.0 } else { 5.0 }) * phase.sin() + rng.random_range(-1.0..1.0),
                // Tiny noise, then a jump millions of spreads away (a new anchor).
                1 => if w % 150 > 140 { 5e9 } else { 1.0 + rng.random_range(0.0..1e-6) },
                // Mostly one value (MAD 0), with rare spikes.
                2 => if rng.random_range(0..40) == 0 { 9.0 } else { 3.0 },
                // Level shifts.
                3 => f64::from((w / 97) as i32 * 10) + rng.random_range(-0.5..0.5),
                // Quantised counts.
                _ => f64::from(rng.random_range(0..6u8)) * 0.25,
            }
        };
        let (mut scored, mut used, mut seasons_found) = (0, 0, false);
        let mut w = 0i64;
        while w < 600 {
            // Every seventh close takes two windows; some series skip windows (gaps).
            let windows = if w % 7 == 3 { 2 } else { 1 };
            let mut batches = Vec::new();
            for k in 0..windows {
                let mut rows: Vec<(u64, &str, f64)> = Vec::new();
                for (i, key) in keys.iter().enumerate() {
                    if i % 3 == 0 && rng.random_range(0..10) == 0 {
                        continue;
                    }
                    rows.push(((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15), key.as_str(), value(i, w + k, &mut rng)));
                }
                batches.push(crate::columns::test_features((w + k) * 10_000, &rows));
            }
            let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
            let (a, b) = (prepared.score_batch(&batch, "mean").unwrap(), plain.score_batch(&batch, "mean").unwrap());
            assert_eq!(a, b, "window {w}");
            scored += a.num_rows();
            used += prepared.prepare();
            seasons_found |= prepared.shards.iter().flat_map(|s| s.states.values()).any(|s| s.period.is_some());
            w += windows;
        }
        assert!(scored > 50_000, "{scored}");
        assert!(used > 50_000, "baselines were prepared: {used}");
        assert!(seasons_found, "the seasonal part ran");
    }
}
