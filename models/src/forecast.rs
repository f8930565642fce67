//! Forecasts with prediction intervals, and when a limit will be crossed.
//!
//! [`forecast`] is a pure function of a series' history (one value per window, oldest first):
//!
//! 1. the dominant period is looked for with augurs' periodogram detector (`augurs-seasons`),
//!    up to `max_period` windows and at most half the history, refined by autocorrelation;
//! 2. three candidates: MSTL (augurs) removing the seasonality with a non-seasonal AutoETS for
//!    the trend (only with a period and at least two full periods of history); a non-seasonal
//!    AutoETS alone; seasonal naive (naive without a period), with intervals from the spread of
//!    its in-sample errors;
//! 3. each candidate forecasts the last `horizon` values of the history from the rest; the one
//!    with the lowest error there is refitted on the whole history and answers (if it fails, the
//!    next best does).
//!
//! augurs' seasonal ETS is never used (it panics), MSTL is never given a series shorter than two
//! periods (it fails), and every augurs call runs under `catch_unwind`: a model that panics is a
//! model that failed, and the next method in the list answers. Intervals are at 80% and 95%.
//!
//! [`time_to_threshold`] reads a forecast against a limit (disk full, memory limit, CPU target):
//! the first step whose point forecast crosses it, and the earliest and latest steps at which the
//! 95% interval says it may cross.

mod live;
pub use live::{forecasts_schema, run_forecasts, ForecastJob, Forecaster, History};

use std::panic::{catch_unwind, AssertUnwindSafe};

use augurs::ets::AutoETS;
use augurs::mstl::MSTLModel;
use augurs::prelude::*;
use augurs::seasons::{Detector as _, PeriodogramDetector};

/// Forecasting settings.
#[derive(Debug, Clone, Copy)]
pub struct ForecastConfig {
    /// Steps (windows) ahead.
    pub horizon: usize,
    /// Longest period looked for, in windows (e.g. a day of windows).
    pub max_period: usize,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        Self { horizon: 180, max_period: 8_640 }
    }
}

/// Which method produced a forecast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// MSTL decomposition with an AutoETS trend.
    MstlEts,
    /// Non-seasonal AutoETS.
    Ets,
    /// Seasonal naive.
    SeasonalNaive,
    /// Last value.
    Naive,
}

impl Method {
    /// The method's name in the `forecasts` table.
    pub fn name(self) -> &'static str {
        match self {
            Method::MstlEts => "mstl_ets",
            Method::Ets => "ets",
            Method::SeasonalNaive => "seasonal_naive",
            Method::Naive => "naive",
        }
    }
}

/// A forecast of `horizon` steps with 80% and 95% intervals.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesForecast {
    /// How it was made.
    pub method: Method,
    /// The period used (windows), if any.
    pub period: Option<usize>,
    /// Point forecasts, one per step.
    pub point: Vec<f64>,
    /// 80% interval.
    pub lower_80: Vec<f64>,
    /// 80% interval.
    pub upper_80: Vec<f64>,
    /// 95% interval.
    pub lower_95: Vec<f64>,
    /// 95% interval.
    pub upper_95: Vec<f64>,
}

/// When a forecast crosses a limit, in steps ahead (1 = the next window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    /// First step whose 95% interval reaches the limit (the earliest it may happen).
    pub earliest: usize,
    /// First step whose point forecast reaches the limit, if within the horizon.
    pub expected: Option<usize>,
    /// First step whose whole 95% interval is past the limit (by then it almost surely has), if within the horizon.
    pub latest: Option<usize>,
}

/// The dominant period of `y` (in steps), if the periodogram finds one.
pub fn detect_period(y: &[f64], max_period: usize) -> Option<usize> {
    let max = max_period.min(y.len() / 2);
    if max < 4 || y.len() < 16 {
        return None;
    }
    let det = PeriodogramDetector::builder().min_period(4).max_period(max as u32).build();
    let periods = catch_unwind(AssertUnwindSafe(|| det.detect(y))).ok()?;
    // Every peak is refined to the lag within -20%..+25% with the highest autocorrelation (the
    // periodogram's bins are coarse at long periods: a daily cycle of 288 points can come out as
    // 257). The best-repeating lag wins; a multiple of the true period repeats as well as the
    // period itself, so near-ties go to the shortest. It must really repeat (r >= 0.25).
    let mut best: Option<(usize, f64)> = None;
    let acf = Autocorrelation::of(y);
    // The periodogram may also report a multiple of the period (seen: 60 for a 12-step saw
    // tooth), so divisors of each peak are candidates too.
    let candidates: Vec<usize> = periods
        .into_iter()
        .map(|p| p as usize)
        .filter(|p| *p >= 4 && *p <= max)
        .flat_map(|p| (1..=6).map(move |k| (p + k / 2) / k))
        .filter(|p| *p >= 4)
        .collect();
    for p in candidates {
        let lo = (p * 4 / 5).max(4);
        let hi = (p * 5 / 4 + 2).min(max);
        let (lag, r) = (lo..=hi).map(|lag| (lag, acf.at(lag))).fold((p, f64::MIN), |a, b| if b.1 > a.1 { b } else { a });
        best = match best {
            Some((bl, br)) if br > r + 0.05 || ((br - r).abs() <= 0.05 && bl <= lag) => Some((bl, br)),
            _ => Some((lag, r)),
        };
    }
    best.filter(|(_, r)| *r >= 0.25).map(|(lag, _)| lag)
}

/// Whether `y` confirms period `p`, so that an explanation may name it: it covers at least three
/// whole cycles and, with its linear trend removed, repeats at that lag (autocorrelation >= 0.25)
/// better than half a cycle away (by 0.2). A slow cycle seen over a short history looks like a
/// trend, and a trend correlates with itself at every short lag: the periodogram then reports a
/// short period (16 windows for a 360-window day) that no explanation should name. Scoring keeps
/// using the period found (it was measured on NAB that way); only what is said about it is checked.
pub fn confirm_period(y: &[f64], p: usize) -> bool {
    if p < 2 || y.len() < 3 * p {
        return false;
    }
    let acf = Autocorrelation::of(&detrend(y));
    let r = acf.at(p);
    r >= 0.25 && r - acf.at((p / 2).max(1)) >= 0.2
}

/// `y` minus its least-squares line.
fn detrend(y: &[f64]) -> Vec<f64> {
    let n = y.len() as f64;
    let mx = (n - 1.0) / 2.0;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, v) in y.iter().enumerate() {
        let dx = i as f64 - mx;
        sxy += dx * (v - my);
        sxx += dx * dx;
    }
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    y.iter().enumerate().map(|(i, v)| v - my - b * (i as f64 - mx)).collect()
}

/// Sample autocorrelations of a series at any lag. The mean and the sum of squares are the same
/// for every lag, so they are computed once: the period search tries a hundred lags and more over
/// the same history (it took 3.5% of a steady-state run of 100,000 series, all in the few closes
/// where every series looks for its period), and each lag is now one pass instead of three, with
/// the same bits.
struct Autocorrelation {
    /// The values less their mean.
    centered: Vec<f64>,
    /// Sum of squares about the mean.
    var: f64,
}

impl Autocorrelation {
    fn of(y: &[f64]) -> Self {
        let mean = y.iter().sum::<f64>() / y.len() as f64;
        let centered: Vec<f64> = y.iter().map(|v| v - mean).collect();
        let var = centered.iter().map(|d| d.powi(2)).sum();
        Self { centered, var }
    }

    /// The autocorrelation at `lag` (0 at a lag as long as the series, or for a flat series).
    fn at(&self, lag: usize) -> f64 {
        let d = &self.centered;
        if lag >= d.len() || self.var <= 0.0 {
            return 0.0;
        }
        d[lag..].iter().zip(d).map(|(a, b)| a * b).sum::<f64>() / self.var
    }
}

fn z(level: f64) -> f64 {
    if level >= 0.95 {
        1.959_964
    } else {
        1.281_552
    }
}

fn augurs_forecast<M: Fit>(model: M, y: &[f64], horizon: usize) -> Option<(Vec<f64>, [Vec<f64>; 4])>
where
    M::Fitted: Predict,
{
    catch_unwind(AssertUnwindSafe(|| {
        let fitted = model.fit(y).ok()?;
        let f80 = fitted.predict(horizon, 0.8).ok()?;
        let f95 = fitted.predict(horizon, 0.95).ok()?;
        let (i80, i95) = (f80.intervals?, f95.intervals?);
        let all_finite = f95.point.iter().chain(&i80.lower).chain(&i80.upper).chain(&i95.lower).chain(&i95.upper).all(|v| v.is_finite());
        (f95.point.len() == horizon && all_finite).then_some((f95.point, [i80.lower, i80.upper, i95.lower, i95.upper]))
    }))
    .ok()
    .flatten()
}

/// Seasonal naive (period `m`, 1 = naive) with intervals from its in-sample errors, widening with
/// the number of seasons ahead.
fn naive(y: &[f64], horizon: usize, m: usize) -> SeriesForecast {
    let n = y.len();
    let m = m.max(1).min(n.max(1));
    let errors: Vec<f64> = (m..n).map(|i| y[i] - y[i - m]).collect();
    let sigma = if errors.len() > 1 {
        let mean = errors.iter().sum::<f64>() / errors.len() as f64;
        (errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (errors.len() - 1) as f64).sqrt()
    } else {
        0.0
    };
    let mut f = SeriesForecast {
        method: if m > 1 { Method::SeasonalNaive } else { Method::Naive },
        period: (m > 1).then_some(m),
        point: Vec::with_capacity(horizon),
        lower_80: Vec::with_capacity(horizon),
        upper_80: Vec::with_capacity(horizon),
        lower_95: Vec::with_capacity(horizon),
        upper_95: Vec::with_capacity(horizon),
    };
    let last = y.last().copied().unwrap_or(0.0);
    for h in 1..=horizon {
        let p = if n >= m { y[n - m + (h - 1) % m] } else { last };
        let s = sigma * (((h - 1) / m + 1) as f64).sqrt();
        f.point.push(p);
        f.lower_80.push(p - z(0.8) * s);
        f.upper_80.push(p + z(0.8) * s);
        f.lower_95.push(p - z(0.95) * s);
        f.upper_95.push(p + z(0.95) * s);
    }
    f
}

/// Forecasts `horizon` steps after `history` (see the module docs). Non-finite values in the
/// history are replaced by the previous finite value. Never panics; an empty history gives a
/// flat forecast at 0 with zero-width intervals.
pub fn forecast(history: &[f64], cfg: &ForecastConfig) -> SeriesForecast {
    let horizon = cfg.horizon.max(1);
    let y = carry_forward(history);
    if y.len() < 8 {
        return naive(&y, horizon, 1);
    }
    let period = detect_period(&y, cfg.max_period);
    choose_and_fit(&y, horizon, &period.into_iter().collect::<Vec<_>>())
}

/// Forecasts `horizon` steps after `history` with the given seasonal periods (for hourly cost:
/// 24 and 168, a day and a week): MSTL over the periods that fit twice in the history, with an
/// AutoETS trend, AutoETS, or seasonal naive at the shortest period, chosen on a holdout as in
/// [`forecast`], with intervals calibrated on it. Never panics.
pub fn forecast_seasonal(history: &[f64], periods: &[usize], horizon: usize) -> SeriesForecast {
    let horizon = horizon.max(1);
    let y = carry_forward(history);
    if y.len() < 8 {
        return naive(&y, horizon, 1);
    }
    // MSTL uses the periods that fit twice; seasonal naive the shortest.
    let mut periods: Vec<usize> = periods.iter().copied().filter(|p| *p >= 2 && *p <= y.len()).collect();
    periods.sort_unstable();
    periods.dedup();
    choose_and_fit(&y, horizon, &periods)
}

/// `history` with each non-finite value replaced by the previous finite one (the first finite
/// one at the start; 0 when there is none).
fn carry_forward(history: &[f64]) -> Vec<f64> {
    let mut last = history.iter().copied().find(|v| v.is_finite()).unwrap_or(0.0);
    history
        .iter()
        .map(|&v| {
            if v.is_finite() {
                last = v;
            }
            last
        })
        .collect()
}

/// Chooses the method on a holdout (the last `horizon` values, at most a quarter of the history,
/// forecast from the rest) and refits the best on everything.
fn choose_and_fit(y: &[f64], horizon: usize, periods: &[usize]) -> SeriesForecast {
    let n = y.len();
    let h = horizon.min(n / 4);
    let mut order = vec![Method::MstlEts, Method::Ets, Method::SeasonalNaive];
    // Per method, its holdout forecast's errors in units of its own interval (σ from the 95% band).
    let mut holdout: Vec<(Method, Vec<f64>)> = Vec::new();
    if h >= 1 && n - h >= 16 {
        let (train, valid) = y.split_at(n - h);
        let mut scored: Vec<(Method, f64)> = Vec::new();
        for m in order.iter().copied() {
            let Some(f) = fit_one(m, train, h, periods) else {
                scored.push((m, f64::INFINITY));
                continue;
            };
            let mae = f.point.iter().zip(valid).map(|(a, b)| (a - b).abs()).sum::<f64>() / h as f64;
            let units: Vec<f64> = (0..h)
                .filter_map(|k| {
                    let sigma = (f.upper_95[k] - f.lower_95[k]) / (2.0 * z(0.95));
                    (sigma > 0.0 && sigma.is_finite()).then(|| (valid[k] - f.point[k]).abs() / sigma)
                })
                .collect();
            holdout.push((m, units));
            scored.push((m, if mae.is_finite() { mae } else { f64::INFINITY }));
        }
        scored.sort_by(|a, b| a.1.total_cmp(&b.1));
        order = scored.into_iter().map(|(m, _)| m).collect();
    }
    for m in order {
        if let Some(mut f) = fit_one(m, y, horizon, periods) {
            if let Some((_, units)) = holdout.iter().find(|(hm, _)| *hm == m) {
                calibrate(&mut f, units);
            }
            return f;
        }
    }
    naive(y, horizon, periods.first().copied().unwrap_or(1))
}

/// Rescales the intervals of `f` around its point forecast so that, on the holdout, the errors
/// sit where a normal distribution puts them: the median |error| in units of the model's own σ
/// should be 0.674. Models' stated intervals are often too wide or too narrow for operations data
/// (level shifts, spikes, quantised values); the factor is kept within 0.25..4, and needs at
/// least 6 holdout errors.
fn calibrate(f: &mut SeriesForecast, units: &[f64]) {
    if units.len() < 6 {
        return;
    }
    let mut u = units.to_vec();
    u.sort_by(f64::total_cmp);
    let med = if u.len() % 2 == 1 { u[u.len() / 2] } else { 0.5 * (u[u.len() / 2 - 1] + u[u.len() / 2]) };
    let scale = (med / 0.674_49).clamp(0.25, 4.0);
    if !scale.is_finite() {
        return;
    }
    for k in 0..f.point.len() {
        let p = f.point[k];
        for b in [&mut f.lower_80[k], &mut f.upper_80[k], &mut f.lower_95[k], &mut f.upper_95[k]] {
            *b = p + scale * (*b - p);
        }
    }
}

/// Fits one method; `None` when it does not apply (no period, too short) or fails.
fn fit_one(method: Method, y: &[f64], horizon: usize, periods: &[usize]) -> Option<SeriesForecast> {
    let period = periods.first().copied();
    let pack = |method: Method, period: Option<usize>, (point, [l80, u80, l95, u95]): (Vec<f64>, [Vec<f64>; 4])| SeriesForecast {
        method,
        period,
        point,
        lower_80: l80,
        upper_80: u80,
        lower_95: l95,
        upper_95: u95,
    };
    match method {
        Method::MstlEts => {
            // MSTL needs two full periods.
            let ps: Vec<usize> = periods.iter().copied().filter(|p| y.len() >= 2 * p + 2).collect();
            let p = *ps.first()?;
            let model = MSTLModel::new(ps, AutoETS::non_seasonal().into_trend_model());
            augurs_forecast(model, y, horizon).map(|out| pack(Method::MstlEts, Some(p), out))
        }
        Method::Ets => augurs_forecast(AutoETS::non_seasonal(), y, horizon).map(|out| pack(Method::Ets, None, out)),
        Method::SeasonalNaive | Method::Naive => Some(naive(y, horizon, period.unwrap_or(1))),
    }
}

/// When `f` reaches the upper limit `limit`, in steps ahead; all zero when `last` is already at
/// or past it, `None` when even the 95% interval stays below it within the horizon.
pub fn time_to_threshold(f: &SeriesForecast, last: f64, limit: f64) -> Option<Crossing> {
    if last >= limit {
        return Some(Crossing { earliest: 0, expected: Some(0), latest: Some(0) });
    }
    let step = |v: &[f64]| v.iter().position(|x| *x >= limit).map(|i| i + 1);
    Some(Crossing { earliest: step(&f.upper_95)?, expected: step(&f.point), latest: step(&f.lower_95) })
}

/// Mean absolute scaled error of `forecast` against `actual`, scaled by the in-sample error of
/// seasonal naive with period `m` on `history` (Hyndman & Koehler 2006). `None` when that scale
/// is 0 (a flat history).
pub fn mase(history: &[f64], actual: &[f64], forecast: &[f64], m: usize) -> Option<f64> {
    let m = m.max(1);
    if history.len() <= m || actual.is_empty() {
        return None;
    }
    let scale = (m..history.len()).map(|i| (history[i] - history[i - m]).abs()).sum::<f64>() / (history.len() - m) as f64;
    if scale.is_nan() || scale <= 0.0 {
        return None;
    }
    let mae = actual.iter().zip(forecast).map(|(a, f)| (a - f).abs()).sum::<f64>() / actual.len() as f64;
    Some(mae / scale)
}

/// Symmetric mean absolute percentage error, in percent (0 to 200); pairs that are both 0 count as 0.
pub fn smape(actual: &[f64], forecast: &[f64]) -> f64 {
    let n = actual.len().min(forecast.len());
    if n == 0 {
        return 0.0;
    }
    let s: f64 = actual
        .iter()
        .zip(forecast)
        .map(|(a, f)| {
            let d = a.abs() + f.abs();
            if d == 0.0 { 0.0 } else { 2.0 * (a - f).abs() / d }
        })
        .sum();
    100.0 * s / n as f64
}

/// Seasonal naive forecast (the benchmark of `vigil eval forecast`), without intervals.
pub fn seasonal_naive(history: &[f64], horizon: usize, m: usize) -> Vec<f64> {
    naive(history, horizon, m).point
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The autocorrelation with its mean and sum of squares computed once gives, at every lag,
    /// the bits of the textbook formula computed afresh per lag.
    #[test]
    fn autocorrelations_sharing_their_mean_are_those_computed_per_lag() {
        let textbook = |y: &[f64], lag: usize| {
            let n = y.len();
            if lag >= n {
                return 0.0;
            }
            let mean = y.iter().sum::<f64>() / n as f64;
            let var: f64 = y.iter().map(|v| (v - mean).powi(2)).sum();
            if var <= 0.0 {
                return 0.0;
            }
            (lag..n).map(|i| (y[i] - mean) * (y[i - lag] - mean)).sum::<f64>() / var
        };
        for y in [seasonal(256, 24, 0.01), seasonal(97, 7, -0.3), vec![5.0; 40], Vec::new()] {
            let acf = Autocorrelation::of(&y);
            for lag in 0..=y.len() + 1 {
                assert_eq!(acf.at(lag).to_bits(), textbook(&y, lag).to_bits(), "lag {lag} of {} values", y.len());
            }
        }
    }

    fn seasonal(n: usize, period: usize, trend: f64) -> Vec<f64> {
        (0..n).map(|i| 10.0 + trend * i as f64 + 3.0 * (2.0 * std::f64::consts::PI * i as f64 / period as f64).sin() + 0.1 * ((i * 7919) % 13) as f64 / 13.0).collect()
    }

    #[test]
    fn a_seasonal_series_gets_its_period_and_a_seasonal_forecast() {
        let y = seasonal(600, 24, 0.0);
        assert_eq!(detect_period(&y, 200), Some(24));
        let f = forecast(&y, &ForecastConfig { horizon: 48, max_period: 200 });
        assert_eq!(f.method, Method::MstlEts);
        assert_eq!(f.period, Some(24));
        let truth = seasonal(648, 24, 0.0)[600..].to_vec();
        let m = mase(&y, &truth, &f.point, 24).unwrap();
        assert!(m < 1.0, "MASE {m}");
        for i in 0..48 {
            assert!(f.lower_95[i] <= f.lower_80[i] && f.lower_80[i] <= f.point[i] && f.point[i] <= f.upper_80[i] && f.upper_80[i] <= f.upper_95[i]);
        }
    }

    #[test]
    fn a_steady_climb_crosses_its_limit_with_an_interval() {
        let y: Vec<f64> = (0..300).map(|i| 50.0 + 0.1 * i as f64 + 0.05 * ((i * 31) % 7) as f64).collect();
        let f = forecast(&y, &ForecastConfig { horizon: 200, max_period: 100 });
        // 79.9 now, +0.1 per step: 90 is about 100 steps away.
        let c = time_to_threshold(&f, *y.last().unwrap(), 90.0).expect("crosses within the horizon");
        let expected = c.expected.expect("point forecast crosses");
        assert!((80..=120).contains(&expected), "{c:?} {:?}", f.method);
        assert!(c.earliest <= expected);
        assert!(c.latest.is_none_or(|l| l >= expected));
        assert!(time_to_threshold(&f, *y.last().unwrap(), 1e6).is_none());
        assert_eq!(time_to_threshold(&f, 95.0, 90.0), Some(Crossing { earliest: 0, expected: Some(0), latest: Some(0) }));
    }

    #[test]
    fn the_forecaster_keeps_bounded_history_and_offers_refits_on_schedule() {
        use arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array};
        let batch = |t: i64, v: f64| {
            RecordBatch::try_from_iter(vec![
                ("window_start", std::sync::Arc::new(TimestampMillisecondArray::from(vec![t, t]).with_timezone("+00:00")) as arrow::array::ArrayRef),
                ("series_id", std::sync::Arc::new(UInt64Array::from(vec![1, 2]))),
                ("series", std::sync::Arc::new(StringArray::from(vec!["disk{h=\"a\"}", "cpu{h=\"a\"}"]))),
                ("name", std::sync::Arc::new(StringArray::from(vec!["disk", "cpu"]))),
                ("mean", std::sync::Arc::new(Float64Array::from(vec![v, 0.5]))),
            ])
            .unwrap()
        };
        let mut f = Forecaster::new([("disk".to_string(), Some(100.0))], 10_000, 50, 60_000);
        assert!(f.due(0).is_none());
        for i in 0..100 {
            // Window 40 is missing: its value is carried.
            if i != 40 {
                f.observe(&batch(i * 10_000, 50.0 + i as f64 * 0.5), "mean");
            }
        }
        assert_eq!(f.series(), 1, "only the forecast metric is kept");
        let jobs = f.due(990_000).expect("a refit is due");
        assert_eq!(jobs[0].values.len(), 50);
        assert_eq!(jobs[0].limit, Some(100.0));
        assert!(f.due(1_000_000).is_none(), "not again before refit_every");
        let out = run_forecasts(&jobs, &ForecastConfig { horizon: 30, max_period: 20 }, 10_000).unwrap();
        assert_eq!(out.num_rows(), 30);
        assert_eq!(out.schema(), forecasts_schema());
    }

    #[test]
    fn short_flat_constant_and_nan_series_never_panic() {
        let cfg = ForecastConfig { horizon: 10, max_period: 50 };
        for y in [vec![], vec![1.0], vec![5.0; 3], vec![5.0; 100], vec![f64::NAN; 20], vec![1.0, f64::NAN, 3.0, f64::INFINITY, 2.0, 1.0, 4.0, 2.0, 3.0, 1.0]] {
            let f = forecast(&y, &cfg);
            assert_eq!(f.point.len(), 10, "{y:?}");
            assert!(f.point.iter().chain(&f.upper_95).all(|v| v.is_finite()), "{y:?} {f:?}");
        }
        // MSTL only ever sees at least two full periods.
        for n in [20, 30, 40, 60] {
            let y = seasonal(n, 24, 0.0);
            let f = forecast(&y, &cfg);
            assert!(f.method != Method::MstlEts || n >= 2 * f.period.unwrap() + 2, "{n}: {f:?}");
        }
    }

    #[test]
    fn error_measures_are_right_on_hand_worked_cases() {
        // Naive scale: mean |diff| of 1,2,4,7 = (1+2+3)/3 = 2; MAE of the forecast = 1.
        assert_eq!(mase(&[1.0, 2.0, 4.0, 7.0], &[8.0, 9.0], &[7.0, 10.0], 1), Some(0.5));
        assert_eq!(mase(&[3.0, 3.0, 3.0], &[3.0], &[4.0], 1), None);
        assert!((smape(&[100.0, 0.0], &[110.0, 0.0]) - 100.0 * (20.0 / 210.0) / 2.0).abs() < 1e-9);
        assert_eq!(seasonal_naive(&[1.0, 2.0, 3.0, 4.0], 3, 2), vec![3.0, 4.0, 3.0]);
    }
}
