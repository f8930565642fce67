//! A robust streaming detector: per-series median/MAD baseline over recent windows.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, Float64Builder, RecordBatch, StringBuilder, UInt64Array,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Float64Type, TimestampMillisecondType};

use crate::decision::anomalies_schema;
use crate::{Error, Result};

/// Detector settings.
#[derive(Debug, Clone)]
pub struct DetectorConfig {
    /// How many recent windows form a series' baseline.
    pub history: usize,
    /// Windows a series must have seen before it may be scored.
    pub warmup: usize,
    /// Robust z at which the score is 0.5.
    pub z_mid: f64,
    /// Steepness of the z -> score mapping.
    pub z_slope: f64,
    /// Scores at or above this go into the `anomalies` table.
    pub anomaly_threshold: f64,
    /// Novelty filter: when set, a point scores only by how far its |z| exceeds the largest |z|
    /// of the recent past (that maximum decays by this factor per point), so a long excursion
    /// scores at its onset and when it worsens, not on every point of it.
    pub novelty_decay: Option<f64>,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self { history: 120, warmup: 20, z_mid: 6.0, z_slope: 1.5, anomaly_threshold: 0.5, novelty_decay: None }
    }
}

/// The verdict on one value of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// Anomaly score in [0, 1].
    pub score: f64,
    /// Robust z-score (signed).
    pub z: f64,
    /// Expected value (the baseline median).
    pub expected: f64,
    /// Lower edge of the normal band (score below the anomaly threshold inside it).
    pub lower: f64,
    /// Upper edge of the normal band.
    pub upper: f64,
    /// Windows in the baseline.
    pub support: usize,
}

#[derive(Debug, Default, Clone)]
struct SeriesState {
    recent: VecDeque<f64>,
    /// Decayed maximum of recent |z| (novelty filter).
    zmax: f64,
}

/// Per-series robust baseline detector. See the crate docs.
#[derive(Debug)]
pub struct RobustDetector {
    cfg: DetectorConfig,
    states: HashMap<u64, SeriesState>,
    scratch: Vec<f64>,
}

const MAD_TO_SIGMA: f64 = 1.4826;
const MEAN_AD_TO_SIGMA: f64 = 1.2533;

impl RobustDetector {
    /// A detector with no history.
    pub fn new(cfg: DetectorConfig) -> Self {
        assert!(cfg.history >= 3 && cfg.warmup >= 3 && cfg.warmup <= cfg.history, "validated by the config layer");
        Self { cfg, states: HashMap::new(), scratch: Vec::new() }
    }

    /// The settings.
    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Number of series with state.
    pub fn series(&self) -> usize {
        self.states.len()
    }

    /// Maps a robust z to a score in [0, 1].
    pub fn score_of_z(&self, z: f64) -> f64 {
        logistic(&self.cfg, z)
    }

    /// The |z| at which the score equals `score` (inverse of [`Self::score_of_z`]).
    pub fn z_of_score(&self, score: f64) -> f64 {
        let s = score.clamp(1e-9, 1.0 - 1e-9);
        (self.cfg.z_mid + (s / (1.0 - s)).ln() / self.cfg.z_slope).max(0.0)
    }

    /// Scores `value` against the series' baseline, then learns it. Causal: the value is scored
    /// before it joins the baseline. Returns `None` during warm-up or for a non-finite value
    /// (which is not learned either).
    pub fn observe(&mut self, series_id: u64, value: f64) -> Option<Score> {
        if !value.is_finite() {
            return None;
        }
        let history = self.cfg.history;
        let warmup = self.cfg.warmup;
        let band_z = self.z_of_score(self.cfg.anomaly_threshold);
        let st = self.states.entry(series_id).or_default();
        let out = if st.recent.len() >= warmup {
            let s = &mut self.scratch;
            s.clear();
            s.extend(st.recent.iter().copied());
            let med = median(s);
            for x in s.iter_mut() {
                *x = (*x - med).abs();
            }
            let mad = median(s);
            let mean_ad = s.iter().sum::<f64>() / s.len() as f64;
            // MAD is 0 when more than half the baseline is one value (counters, flags); fall back
            // to the mean absolute deviation, then to a tiny relative floor so that a change in a
            // perfectly flat series still scores (and scores finitely).
            let sigma = if mad > 0.0 {
                MAD_TO_SIGMA * mad
            } else if mean_ad > 0.0 {
                MEAN_AD_TO_SIGMA * mean_ad
            } else {
                (med.abs() * 1e-3).max(1e-9)
            };
            let z = (value - med) / sigma;
            let z_eff = match self.cfg.novelty_decay {
                None => z.abs(),
                Some(decay) => {
                    let prev = st.zmax;
                    st.zmax = (st.zmax * decay).max(z.abs());
                    if z.abs() > prev { z.abs() } else { 0.0 }
                }
            };
            let score = logistic(&self.cfg, z_eff);
            Some(Score { score, z, expected: med, lower: med - band_z * sigma, upper: med + band_z * sigma, support: st.recent.len() })
        } else {
            None
        };
        if st.recent.len() == history {
            st.recent.pop_front();
        }
        st.recent.push_back(value);
        out
    }

    /// Scores every row of a `features` batch (in row order) on the column `feature` and returns
    /// the rows scoring at or above the anomaly threshold, in the [`anomalies_schema`].
    pub fn score_batch(&mut self, features: &RecordBatch, feature: &str) -> Result<RecordBatch> {
        let col = |name: &str| {
            features.column_by_name(name).ok_or_else(|| Error::Input(format!("missing column `{name}`")))
        };
        let ids = col("series_id")?
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| Error::Input("`series_id` must be UInt64".into()))?;
        let values = col(feature)?
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(|| Error::Input(format!("`{feature}` must be Float64")))?;
        let series = col("series")?.as_string_opt::<i32>().ok_or_else(|| Error::Input("`series` must be Utf8".into()))?;
        let ws = col("window_start")?
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| Error::Input("`window_start` must be Timestamp(ms)".into()))?;
        let we = col("window_end")?
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| Error::Input("`window_end` must be Timestamp(ms)".into()))?;
        let name = col("name")?.as_string_opt::<i32>().ok_or_else(|| Error::Input("`name` must be Utf8".into()))?;

        let n = features.num_rows();
        let mut keep = Vec::with_capacity(n);
        let (mut value, mut expected, mut lower, mut upper, mut score, mut z, mut support) = (
            Float64Builder::with_capacity(n),
            Float64Builder::with_capacity(n),
            Float64Builder::with_capacity(n),
            Float64Builder::with_capacity(n),
            Float64Builder::with_capacity(n),
            Float64Builder::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut explanation = StringBuilder::new();
        for i in 0..n {
            let v = if values.is_null(i) { f64::NAN } else { values.value(i) };
            match self.observe(ids.value(i), v) {
                Some(s) if s.score >= self.cfg.anomaly_threshold => {
                    keep.push(true);
                    value.append_value(v);
                    expected.append_value(s.expected);
                    lower.append_value(s.lower);
                    upper.append_value(s.upper);
                    score.append_value(s.score);
                    z.append_value(s.z);
                    support.push(s.support as u32);
                    explanation.append_value(explain(series.value(i), feature, v, &s));
                }
                _ => keep.push(false),
            }
        }
        let kept = filter_record_batch(
            &RecordBatch::try_new(
                Arc::new(arrow::datatypes::Schema::new(vec![
                    features.schema().field_with_name("window_start")?.clone(),
                    features.schema().field_with_name("window_end")?.clone(),
                    features.schema().field_with_name("series_id")?.clone(),
                    features.schema().field_with_name("series")?.clone(),
                    features.schema().field_with_name("name")?.clone(),
                ])),
                vec![Arc::new(ws.clone()), Arc::new(we.clone()), Arc::new(ids.clone()), Arc::new(series.clone()), Arc::new(name.clone())],
            )?,
            &keep.into(),
        )?;
        let m = kept.num_rows();
        let mut cols = kept.columns().to_vec();
        cols.push(Arc::new(arrow::array::StringArray::from(vec![feature; m])));
        cols.push(Arc::new(value.finish()));
        cols.push(Arc::new(expected.finish()));
        cols.push(Arc::new(lower.finish()));
        cols.push(Arc::new(upper.finish()));
        cols.push(Arc::new(score.finish()));
        cols.push(Arc::new(z.finish()));
        cols.push(Arc::new(arrow::array::UInt32Array::from(support)));
        cols.push(Arc::new(explanation.finish()));
        Ok(RecordBatch::try_new(anomalies_schema(), cols)?)
    }
}

/// The score of a robust |z|: 0.5 at `z_mid`, rising with slope `z_slope`.
fn logistic(cfg: &DetectorConfig, z: f64) -> f64 {
    let s = 1.0 / (1.0 + (-cfg.z_slope * (z.abs() - cfg.z_mid)).exp());
    if s.is_finite() { s } else { 1.0 }
}

/// One sentence a person on call can read.
pub(crate) fn explain(series: &str, feature: &str, value: f64, s: &Score) -> String {
    let dir = if s.z >= 0.0 { "above" } else { "below" };
    // A flat baseline has (almost) no spread: a z-score would be a meaningless huge number.
    if s.upper - s.lower <= 1e-6 * s.expected.abs().max(1.0) {
        return format!(
            "{series} {feature} {} departs from a flat baseline: it was {} in each of its last {} windows",
            fmt(value),
            fmt(s.expected),
            s.support
        );
    }
    format!(
        "{series} {feature} {} is {:.1} robust standard deviations {dir} its baseline {} (normal band {} to {}, learned from its last {} windows)",
        fmt(value),
        s.z.abs(),
        fmt(s.expected),
        fmt(s.lower),
        fmt(s.upper),
        s.support
    )
}

fn fmt(x: f64) -> String {
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) { format!("{x:.3e}") } else { format!("{x:.4}").trim_end_matches('0').trim_end_matches('.').to_string() }
}

fn median(v: &mut [f64]) -> f64 {
    let n = v.len();
    let mid = n / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let m = *m;
    if n % 2 == 1 {
        m
    } else {
        let lo = v[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo + m) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn stationary_noise_after_warm_up_raises_nothing() {
        let mut d = RobustDetector::new(DetectorConfig::default());
        let mut rng = StdRng::seed_from_u64(7);
        let noise = Normal::new(100.0, 5.0).unwrap();
        let mut max = 0.0f64;
        for series in 0..50u64 {
            for _ in 0..2_000 {
                if let Some(s) = d.observe(series, noise.sample(&mut rng)) {
                    max = max.max(s.score);
                }
            }
        }
        // 100k scored points of Gaussian noise: nothing reaches the anomaly threshold.
        assert!(max < 0.5, "max score on noise {max}");
    }

    #[test]
    fn a_spike_is_found_and_explained() {
        let mut d = RobustDetector::new(DetectorConfig::default());
        let mut rng = StdRng::seed_from_u64(1);
        let noise = Normal::new(0.4, 0.02).unwrap();
        for _ in 0..200 {
            d.observe(9, noise.sample(&mut rng));
        }
        let s = d.observe(9, 0.95).unwrap();
        assert!(s.score > 0.99, "{s:?}");
        assert!(s.z > 10.0);
        assert!((s.expected - 0.4).abs() < 0.01);
        assert!(s.lower < 0.4 && s.upper > 0.4 && s.upper < 0.95);
        let text = explain("cpu{host=\"h1\"}", "mean", 0.95, &s);
        assert!(text.starts_with("cpu{host=\"h1\"} mean 0.95 is "), "{text}");
        assert!(text.contains("above its baseline 0.4"), "{text}");
        // A drop is found too.
        let s = d.observe(9, 0.0).unwrap();
        assert!(s.score > 0.99 && s.z < 0.0);
    }

    #[test]
    fn leaving_a_flat_baseline_is_explained_without_a_huge_z() {
        let mut d = RobustDetector::new(DetectorConfig::default());
        for _ in 0..40 {
            d.observe(3, 0.0);
        }
        let s = d.observe(3, 1.0).unwrap();
        assert!(s.score > 0.99, "{s:?}");
        let text = explain("log_new_templates{service=\"api\"}", "mean", 1.0, &s);
        assert_eq!(text, "log_new_templates{service=\"api\"} mean 1 departs from a flat baseline: it was 0 in each of its last 40 windows");
    }

    #[test]
    fn warm_up_is_silent_and_non_finite_values_are_ignored() {
        let mut d = RobustDetector::new(DetectorConfig { warmup: 5, ..Default::default() });
        for i in 0..5 {
            assert!(d.observe(1, i as f64).is_none());
        }
        assert!(d.observe(1, f64::NAN).is_none());
        assert!(d.observe(1, f64::INFINITY).is_none());
        assert!(d.observe(1, 2.0).is_some());
    }

    #[test]
    fn flat_series_scores_finitely_and_flags_a_change() {
        let mut d = RobustDetector::new(DetectorConfig::default());
        for _ in 0..50 {
            if let Some(s) = d.observe(3, 1.0) {
                assert!(s.score < 0.01 && s.z == 0.0);
            }
        }
        let s = d.observe(3, 0.0).unwrap();
        assert!(s.score.is_finite() && s.score > 0.99, "{s:?}");
        let mut d = RobustDetector::new(DetectorConfig::default());
        for _ in 0..50 {
            d.observe(4, 0.0);
        }
        assert!(d.observe(4, 1e-12).unwrap().score.is_finite());
    }

    #[test]
    fn baseline_adapts_after_a_level_shift() {
        let mut d = RobustDetector::new(DetectorConfig { history: 40, warmup: 20, ..Default::default() });
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            d.observe(1, 10.0 + rng.random::<f64>());
        }
        assert!(d.observe(1, 30.0 + rng.random::<f64>()).unwrap().score > 0.99);
        let mut last = 1.0;
        for _ in 0..40 {
            last = d.observe(1, 30.0 + rng.random::<f64>()).unwrap().score;
        }
        assert!(last < 0.5, "a new level becomes the baseline: {last}");
    }

    #[test]
    fn novelty_filter_flags_the_onset_of_an_excursion_and_its_worsening_only() {
        let cfg = DetectorConfig { novelty_decay: Some((-1.0f64 / 8640.0).exp()), ..Default::default() };
        let mut d = RobustDetector::new(cfg);
        let mut rng = StdRng::seed_from_u64(5);
        let noise = Normal::new(10.0, 0.5).unwrap();
        for _ in 0..300 {
            d.observe(1, noise.sample(&mut rng));
        }
        let onset = d.observe(1, 20.0).unwrap().score;
        let same = d.observe(1, 20.0).unwrap().score;
        let worse = d.observe(1, 30.0).unwrap().score;
        assert!(onset > 0.99, "onset {onset}");
        assert!(same < 0.01, "a repeat of the same deviation is not news: {same}");
        assert!(worse > 0.99, "a bigger deviation is: {worse}");
    }

    #[test]
    fn score_mapping_is_monotone_and_invertible() {
        let d = RobustDetector::new(DetectorConfig::default());
        assert!((d.score_of_z(6.0) - 0.5).abs() < 1e-12);
        assert!(d.score_of_z(3.0) < d.score_of_z(7.0));
        assert!((d.score_of_z(d.z_of_score(0.8)) - 0.8).abs() < 1e-9);
    }
}
