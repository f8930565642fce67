//! `vigil eval nab`: the live detector, one point at a time, on the labelled NAB corpus, scored
//! with NAB's rules (see the corpus README): probation, one corpus-wide threshold per profile
//! chosen by sweep, sigmoid position weights, and null/perfect normalisation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::NaiveDateTime;
use vigil_models::Detector;

use crate::config::DetectorConfig;

/// Errors of the evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file's content is not what NAB promises.
    #[error("{path}: {problem}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// A scoring profile: weights of true positives, false negatives and false positives.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// Name as NAB spells it.
    pub name: &'static str,
    /// `A_tp`.
    pub tp: f64,
    /// `A_fn`.
    pub fn_: f64,
    /// `A_fp`.
    pub fp: f64,
}

/// NAB's three profiles.
pub const PROFILES: [Profile; 3] = [
    Profile { name: "standard", tp: 1.0, fn_: 1.0, fp: 0.11 },
    Profile { name: "reward_low_FP_rate", tp: 1.0, fn_: 1.0, fp: 0.22 },
    Profile { name: "reward_low_FN_rate", tp: 1.0, fn_: 2.0, fp: 0.11 },
];

/// One scored file: per-row anomaly scores and its labelled windows as inclusive row ranges.
#[derive(Debug, Clone)]
pub struct ScoredFile {
    /// Path relative to the corpus `data/` folder.
    pub name: String,
    /// Score per row, in [0, 1].
    pub scores: Vec<f64>,
    /// Anomaly windows, `(first_row, last_row)`, in time order.
    pub windows: Vec<(usize, usize)>,
}

fn sigma(y: f64) -> f64 {
    2.0 / (1.0 + (5.0 * y).exp()) - 1.0
}

/// Rows at the start of a file whose detections are not scored.
pub fn probation(rows: usize) -> usize {
    ((0.15 * rows as f64).floor() as usize).min(750)
}

/// The raw NAB score of one file at `threshold` under `p`.
pub fn raw_score(f: &ScoredFile, threshold: f64, p: &Profile) -> f64 {
    let start = probation(f.scores.len());
    let mut total = 0.0;
    let mut hit = vec![false; f.windows.len()];
    let mut w = 0usize; // index of the first window not entirely before row i
    for (i, &s) in f.scores.iter().enumerate() {
        while w < f.windows.len() && f.windows[w].1 < i {
            w += 1;
        }
        if i < start || s < threshold {
            continue;
        }
        match f.windows.get(w) {
            Some(&(l, r)) if i >= l => {
                if !hit[w] {
                    hit[w] = true;
                    let width = (r - l + 1) as f64;
                    let y = -((r - i + 1) as f64) / width;
                    total += p.tp * sigma(y) / sigma(-1.0);
                }
            }
            _ => {
                // Outside any window: weighed by the distance from the end of the previous one.
                total += match w.checked_sub(1).map(|k| f.windows[k]) {
                    None => -p.fp,
                    Some((l, r)) => {
                        let width = (r - l + 1) as f64;
                        let y = (i - r) as f64 / (width - 1.0).max(1.0);
                        if y > 3.0 { -p.fp } else { p.fp * sigma(y) }
                    }
                };
            }
        }
    }
    total - p.fn_ * hit.iter().filter(|h| !**h).count() as f64
}

/// The corpus-wide result of one profile.
#[derive(Debug, Clone)]
pub struct ProfileResult {
    /// Profile name.
    pub profile: &'static str,
    /// Normalised score (0 = never fires, 100 = perfect).
    pub score: f64,
    /// The threshold that maximised it.
    pub threshold: f64,
}

/// Sweeps thresholds and normalises, per profile.
pub fn score_corpus(files: &[ScoredFile]) -> Vec<ProfileResult> {
    let windows: usize = files.iter().map(|f| f.windows.len()).sum();
    // Candidate thresholds: quantiles of the scores above zero, plus a fine grid near 1.
    let mut all: Vec<f64> = files.iter().flat_map(|f| f.scores.iter().copied()).filter(|s| *s > 0.0).collect();
    all.sort_by(f64::total_cmp);
    let mut cands: Vec<f64> = (0..=400).map(|k| all.get(((all.len().saturating_sub(1)) * k) / 400).copied().unwrap_or(1.0)).collect();
    cands.extend((0..=100).map(|k| 0.9 + 0.001 * k as f64));
    cands.extend((1..=99).map(|k| k as f64 / 100.0));
    cands.push(1.0 + 1e-9); // never fires
    cands.sort_by(f64::total_cmp);
    cands.dedup();
    PROFILES
        .iter()
        .map(|p| {
            let null = -p.fn_ * windows as f64;
            let perfect = p.tp * windows as f64;
            let (best_t, best) = cands
                .iter()
                .map(|&t| (t, files.iter().map(|f| raw_score(f, t, p)).sum::<f64>()))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or((1.0, null));
            ProfileResult { profile: p.name, score: 100.0 * (best - null) / (perfect - null), threshold: best_t }
        })
        .collect()
}

fn parse_ts(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f").ok()
}

/// One NAB data file with its labelled windows (row ranges, inclusive).
#[derive(Debug, Clone)]
pub struct NabFile {
    /// File name under `data/`.
    pub name: String,
    /// The values, in row order.
    pub values: Vec<f64>,
    /// Labelled anomaly windows as row ranges.
    pub windows: Vec<(usize, usize)>,
    /// The sampling interval (median spacing of the timestamps).
    pub interval: std::time::Duration,
}

/// Reads the corpus at `root` (with `data/` and `labels/combined_windows.json`).
pub fn read_nab(root: &Path) -> Result<Vec<NabFile>, EvalError> {
    let labels_path = root.join("labels/combined_windows.json");
    let text = std::fs::read_to_string(&labels_path).map_err(|source| EvalError::Io { path: labels_path.clone(), source })?;
    let labels: BTreeMap<String, Vec<(String, String)>> = serde_json::from_str(&text)
        .map_err(|e| EvalError::Format { path: labels_path.clone(), problem: e.to_string() })?;
    let mut files = Vec::new();
    for (name, wins) in &labels {
        let path = root.join("data").join(name);
        if !path.exists() {
            continue; // held-back files are listed in the labels but not shipped
        }
        let csv = std::fs::read_to_string(&path).map_err(|source| EvalError::Io { path: path.clone(), source })?;
        let mut ts = Vec::new();
        let mut values = Vec::new();
        for (n, line) in csv.lines().enumerate().skip(1) {
            let Some((t, v)) = line.split_once(',') else { continue };
            let bad = |what: &str| EvalError::Format { path: path.clone(), problem: format!("line {}: bad {what}", n + 1) };
            ts.push(parse_ts(t).ok_or_else(|| bad("timestamp"))?);
            values.push(v.trim().parse::<f64>().map_err(|_| bad("value"))?);
        }
        let mut windows = Vec::new();
        for (a, b) in wins {
            let (a, b) = (parse_ts(a), parse_ts(b));
            let (Some(a), Some(b)) = (a, b) else {
                return Err(EvalError::Format { path: labels_path.clone(), problem: format!("bad window in {name}") });
            };
            let l = ts.partition_point(|t| *t < a);
            let r = ts.partition_point(|t| *t <= b);
            if r > l {
                windows.push((l, r - 1));
            }
        }
        let mut gaps: Vec<i64> = ts.windows(2).map(|w| (w[1] - w[0]).num_seconds()).filter(|g| *g > 0).collect();
        gaps.sort_unstable();
        let interval = std::time::Duration::from_secs(gaps.get(gaps.len() / 2).copied().unwrap_or(300) as u64);
        files.push(NabFile { name: name.clone(), values, windows, interval });
    }
    if files.is_empty() {
        return Err(EvalError::Format { path: root.to_path_buf(), problem: "no data files found under data/".into() });
    }
    Ok(files)
}

/// Reads the corpus at `root` and streams every file through a fresh [`Detector`] configured
/// as the live pipeline would be with `cfg` and windows of the file's sampling interval, one
/// point at a time. Returns the scored files and the detector's cost in microseconds per point.
pub fn run_nab(root: &Path, cfg: &DetectorConfig) -> Result<(Vec<ScoredFile>, f64), EvalError> {
    let mut files = Vec::new();
    let mut points = 0usize;
    let mut spent = std::time::Duration::ZERO;
    for f in read_nab(root)? {
        let mut det = Detector::new(cfg.model_config(f.interval));
        let t0 = Instant::now();
        let scores: Vec<f64> = f.values.iter().map(|v| det.observe(0, *v).map_or(0.0, |s| s.score)).collect();
        spent += t0.elapsed();
        points += f.values.len();
        files.push(ScoredFile { name: f.name, scores, windows: f.windows });
    }
    Ok((files, spent.as_secs_f64() * 1e6 / points.max(1) as f64))
}

/// Accuracy of one forecaster over every origin of a rolling-origin evaluation.
#[derive(Debug, Default, Clone)]
pub struct ForecastScore {
    /// Mean MASE over the origins where it is defined.
    pub mase: f64,
    /// Median MASE (the mean is dominated by the few origins whose in-sample scale is tiny).
    pub mase_median: f64,
    /// Mean sMAPE, percent.
    pub smape: f64,
    /// Share of actual values inside the 80% interval (NaN without intervals).
    pub cover_80: f64,
    /// Share inside the 95% interval.
    pub cover_95: f64,
}

/// The result of [`eval_forecasts`].
#[derive(Debug, Default, Clone)]
pub struct ForecastReport {
    /// Series evaluated.
    pub series: usize,
    /// Forecast origins (series × origins per series).
    pub origins: usize,
    /// Vigil's forecaster (the live code).
    pub vigil: ForecastScore,
    /// Seasonal naive, the benchmark.
    pub seasonal_naive: ForecastScore,
    /// How often each method answered, and its mean MASE and the benchmark's on those origins.
    pub methods: BTreeMap<&'static str, (usize, f64, f64)>,
    /// Milliseconds per fit and forecast.
    pub ms_per_fit: f64,
}

/// Rolling-origin evaluation: for every series, origins at 50%, 60%, 70%, 80% and 90% of its
/// length; the forecaster sees at most `max_history` values before the origin and forecasts
/// `horizon` steps, compared with what followed. MASE is scaled by the in-sample seasonal naive
/// error at the detected period (1 without one) and is reported for the forecaster and for
/// seasonal naive at that period.
pub fn eval_forecasts(series: &[(String, Vec<f64>)], horizon: usize, max_history: usize, max_period: usize) -> ForecastReport {
    let cfg = vigil_models::ForecastConfig { horizon, max_period };
    let mut r = ForecastReport { series: series.len(), ..Default::default() };
    let (mut m_v, mut m_s, mut s_v, mut s_s) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut in80, mut in95, mut n_cov) = (0usize, 0usize, 0usize);
    let mut spent = std::time::Duration::ZERO;
    for (_, y) in series {
        for frac in [0.5, 0.6, 0.7, 0.8, 0.9] {
            let o = (y.len() as f64 * frac) as usize;
            if o < 16 || o + horizon > y.len() {
                continue;
            }
            let hist = &y[o.saturating_sub(max_history)..o];
            let actual = &y[o..o + horizon];
            let t0 = Instant::now();
            let f = vigil_models::forecast(hist, &cfg);
            spent += t0.elapsed();
            r.origins += 1;
            let e = r.methods.entry(f.method.name()).or_default();
            e.0 += 1;
            let m = vigil_models::detect_period(hist, max_period).unwrap_or(1);
            let naive = vigil_models::seasonal_naive(hist, horizon, m);
            if let (Some(a), Some(b)) = (vigil_models::mase(hist, actual, &f.point, m), vigil_models::mase(hist, actual, &naive, m)) {
                m_v.push(a);
                m_s.push(b);
                e.1 += a;
                e.2 += b;

            }
            s_v.push(vigil_models::smape(actual, &f.point));
            s_s.push(vigil_models::smape(actual, &naive));
            for (k, a) in actual.iter().enumerate() {
                n_cov += 1;
                in80 += (f.lower_80[k] <= *a && *a <= f.upper_80[k]) as usize;
                in95 += (f.lower_95[k] <= *a && *a <= f.upper_95[k]) as usize;
            }
        }
    }
    let mean = |v: &[f64]| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() { f64::NAN } else if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 }
    };
    r.vigil = ForecastScore { mase: mean(&m_v), mase_median: median(&m_v), smape: mean(&s_v), cover_80: in80 as f64 / n_cov.max(1) as f64, cover_95: in95 as f64 / n_cov.max(1) as f64 };
    r.seasonal_naive = ForecastScore { mase: mean(&m_s), mase_median: median(&m_s), smape: mean(&s_s), cover_80: f64::NAN, cover_95: f64::NAN };
    r.ms_per_fit = spent.as_secs_f64() * 1e3 / r.origins.max(1) as f64;
    for e in r.methods.values_mut() {
        e.1 /= e.0.max(1) as f64;
        e.2 /= e.0.max(1) as f64;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(scores: &[f64], windows: &[(usize, usize)]) -> ScoredFile {
        ScoredFile { name: "t".into(), scores: scores.to_vec(), windows: windows.to_vec() }
    }

    const STD: Profile = PROFILES[0];

    #[test]
    fn rolling_origin_evaluation_covers_every_origin_and_beats_naive_on_a_clean_season() {
        let y: Vec<f64> = (0..2_000).map(|i| 10.0 + 3.0 * (2.0 * std::f64::consts::PI * i as f64 / 48.0).sin() + 0.2 * (((i * 7919) % 17) as f64 / 17.0 - 0.5)).collect();
        let r = eval_forecasts(&[("s".into(), y)], 24, 1_000, 200);
        assert_eq!(r.origins, 5);
        assert!(r.vigil.mase.is_finite() && r.seasonal_naive.mase.is_finite());
        assert!(r.vigil.cover_95 >= r.vigil.cover_80);
    }

    #[test]
    fn probation_is_15_percent_capped_at_750() {
        assert_eq!(probation(100), 15);
        assert_eq!(probation(10_000), 750);
    }

    #[test]
    fn detection_at_the_left_edge_of_a_window_earns_a_full_true_positive() {
        // 100 rows, probation 15, window rows 40..=49; detection at row 40.
        let mut s = vec![0.0; 100];
        s[40] = 1.0;
        let f = file(&s, &[(40, 49)]);
        assert!((raw_score(&f, 0.5, &STD) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn later_detections_in_a_window_earn_less_and_only_the_first_counts() {
        let mut s = vec![0.0; 100];
        s[45] = 1.0;
        s[46] = 1.0;
        let f = file(&s, &[(40, 49)]);
        // y = -(49 - 45 + 1) / 10 = -0.5
        let expect = sigma(-0.5) / sigma(-1.0);
        assert!((raw_score(&f, 0.5, &STD) - expect).abs() < 1e-12);
        assert!(expect < 1.0 && expect > 0.0);
    }

    #[test]
    fn a_missed_window_costs_a_false_negative_and_probation_hides_detections() {
        let mut s = vec![0.0; 100];
        s[5] = 1.0; // in probation: ignored
        let f = file(&s, &[(40, 49)]);
        assert_eq!(raw_score(&f, 0.5, &STD), -1.0);
        assert_eq!(raw_score(&f, 0.5, &PROFILES[2]), -2.0);
    }

    #[test]
    fn false_positives_weigh_by_distance_from_the_previous_window() {
        let mut s = vec![0.0; 200];
        s[32] = 1.0; // before any window (probation ends at row 30): -A_fp
        s[40] = 1.0; // hit at the left edge: +1
        s[55] = 1.0; // 6 rows after the window end, width 10: y = 6/9
        s[150] = 1.0; // y > 3: -A_fp
        let f = file(&s, &[(40, 49)]);
        let expect = -0.11 + 1.0 + 0.11 * sigma(6.0 / 9.0) - 0.11;
        assert!((raw_score(&f, 0.5, &STD) - expect).abs() < 1e-12);
        assert!(sigma(6.0 / 9.0) < 0.0);
    }

    #[test]
    fn normalisation_maps_never_firing_to_zero_and_perfect_to_100() {
        let mut s = vec![0.0; 100];
        s[40] = 1.0;
        let perfect = score_corpus(&[file(&s, &[(40, 49)])]);
        assert!((perfect[0].score - 100.0).abs() < 1e-9, "{perfect:?}");
        let silent = score_corpus(&[file(&vec![0.0; 100], &[(40, 49)])]);
        assert!(silent.iter().all(|r| r.score.abs() < 1e-9), "{silent:?}");
    }
}
