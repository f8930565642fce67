//! The streaming detector ensemble: per series, causal, with a small bounded state.
//!
//! Every new value of a series is judged by up to four parts, each of which turns it into a
//! deviation statistic |z|:
//!
//! - [`Part::Level`]: robust z of the value against the median and MAD of the series' last
//!   `history` values (spikes and dips);
//! - [`Part::Seasonal`]: when a period is found (augurs' periodogram refined by
//!   autocorrelation, up to `max_period`), the value minus the median of the values one, two, …
//!   `seasons` periods ago, as a robust z against the recent residuals (a missing daily peak, a
//!   peak that is too high, traffic at the wrong hour);
//! - [`Part::Shift`]: the median of the last `shift_windows` values (residuals when seasonal)
//!   against the baseline before them (a level shift or change point, which a single-point test
//!   sees only as a run of moderate deviations);
//! - [`Part::Forecast`]: the value against the 95% band of the series' latest forecast, when
//!   the engine has handed one over with [`Detector::set_forecast`].
//!
//! A statistic means nothing on its own (a z of 8 is routine for a bursty counter and unheard
//! of for a smooth gauge), so each part is **calibrated** against its own recent statistics: its
//! tail probability is the share of the last `calibration` statistics at least as large (with a
//! power-law tail beyond the largest seen). The most surprising part wins; its probability,
//! multiplied by the number of parts that voted (a Bonferroni correction), is `p`, and the score
//! is `1 - p`. A score of 0.999 therefore means "one in a thousand for this series and this
//! part", whatever the series. A deviation as large as one seen a moment ago is not news, so a
//! long excursion scores at its onset and when it worsens, and not on every point of it.
//!
//! State per series, of bounded size ([`Detector::max_bytes_per_series`]): the last
//! `history + shift_windows` values in single precision and the last `history` seasonal
//! residuals in half precision about their median ([`ring`]; the level, seasonal and shift
//! parts take exact medians over them); for the seasonal part,
//! 256 slots of 8-bit codes holding the last `seasons × max_period` values at reduced
//! resolution (each slot the mean of a power-of-two number of values, so a daily season of
//! minutes costs 256 bytes rather than 35 KB); per part a calibration histogram of 40
//! log-spaced bins of 16-bit counts. See [`compact`] for the pieces.

use rayon::prelude::*;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMillisecondType};

use crate::columns::FeatureColumns;
use crate::forecast::detect_period;

pub(crate) use batch::fmt;
#[cfg(test)]
use batch::explain;

mod ahead;
mod baseline;
mod batch;
mod calibration;
mod history;
mod refractory;
mod states;
mod observe;
mod order;
mod ring;
mod series;
mod values;
use ahead::{Ahead, AHEAD};
use baseline::{Baselines, Prepared};
use calibration::TAIL_MAX_HEAP_BYTES;
use history::History;
/// The longest refractory span, in values (an entry of the queue keeps its age in 16 bits).
pub use refractory::MAX_SPAN as MAX_REFRACTORY_WINDOWS;
#[cfg(test)]
use calibration::Tail;
use ring::Ring;
pub use series::{SeriesSnapshot, SeriesState, StateBytes};
use series::{Bands, Shared, ARC_COUNTS};
use states::States;

/// Detector settings.
#[derive(Debug, Clone)]
pub struct DetectorConfig {
    /// How many recent values form the level baseline.
    pub history: usize,
    /// Values a series must have seen before it may be scored.
    pub warmup: usize,
    /// Longest season looked for, in values (0 = no seasonal part). 1440 is a day of minutes.
    pub max_period: usize,
    /// Periods in the seasonal baseline (its median over that many past periods).
    pub seasons: usize,
    /// Values in the short window the shift part compares with the baseline before it.
    pub shift_windows: usize,
    /// Statistics per part the calibration remembers (between half and all of them are used).
    pub calibration: usize,
    /// Values after a surprising one during which a value scores only if it is more surprising
    /// still (one event, one alarm; 0 = off; at most [`MAX_REFRACTORY_WINDOWS`], and read as
    /// that beyond it).
    pub refractory: usize,
    /// Scores at or above this go into the `anomalies` table.
    pub anomaly_threshold: f64,
}

impl DetectorConfig {
    /// Values a baseline needs: half the warm-up (the other half fills each part's
    /// calibration, so the first score comes after `warmup` values).
    #[inline]
    fn half_warm(&self) -> usize {
        (self.warmup / 2).max(3)
    }
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self { history: 240, warmup: 20, max_period: 0, seasons: 3, shift_windows: 24, calibration: 8000, refractory: 120, anomaly_threshold: 0.99 }
    }
}

/// The part of the ensemble that judged a value most surprising.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// Against the recent level (median/MAD of the last `history` values).
    Level,
    /// Against the same phase of previous periods.
    Seasonal,
    /// A sustained change of level over the last `shift_windows` values.
    Shift,
    /// Outside the band of the series' forecast.
    Forecast,
}

impl Part {
    /// Name as it appears in the `anomalies.part` column.
    pub fn name(self) -> &'static str {
        match self {
            Part::Level => "level",
            Part::Seasonal => "seasonal",
            Part::Shift => "shift",
            Part::Forecast => "forecast",
        }
    }
    const ALL: [Part; 4] = [Part::Level, Part::Seasonal, Part::Shift, Part::Forecast];
    fn index(self) -> usize {
        self as usize
    }
}

/// The verdict on one value of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// Anomaly score in [0, 1]: one minus the (corrected) tail probability `p`.
    pub score: f64,
    /// Tail probability of the deviation under the series' own recent behaviour, corrected for
    /// the number of parts that voted.
    pub p: f64,
    /// The part that found the value most surprising.
    pub part: Part,
    /// That part's signed deviation in robust standard deviations.
    pub z: f64,
    /// Expected value according to that part.
    pub expected: f64,
    /// Lower edge of the normal band (inside it the score stays below the anomaly threshold).
    pub lower: f64,
    /// Upper edge of the normal band.
    pub upper: f64,
    /// Values behind the expectation (baseline length, or periods × period).
    pub support: usize,
    /// The season in values, when one was found and, for an anomalous score, confirmed over
    /// the cycles held ([`crate::confirm_period`]): the period an explanation may name.
    pub period: Option<usize>,
    /// A value in the same event as a more surprising one in the refractory span: its score is
    /// 0 (`p` still says how unusual it is).
    pub repeat: bool,
}

/// Per-series detector ensemble. See the module docs.
///
/// Series are spread over shards by id; [`Self::score_batch`] scores the shards on every core
/// at once. A series' values are always judged in row order by its one shard, so the scores do
/// not depend on the number of shards.
#[derive(Debug)]
pub struct Detector {
    cfg: DetectorConfig,
    shards: Vec<Shard>,
}

/// The series of one shard and its working buffers.
#[derive(Debug, Default)]
struct Shard {
    states: States,
    scratch: Vec<f64>,
    flat: Vec<f64>,
    /// The values of the series being scored, decoded.
    held: Vec<f64>,
    /// Values that received a score (past warm-up), since this detector was built.
    scored: u64,
    /// The rows of the close being scored, in memory order, with their inputs and their
    /// states' blocks (kept between closes: a buffer of a few megabytes allocated per close is
    /// faulted in again).
    ahead: Vec<Ahead>,
    /// Baselines computed ahead, in the order of the states' addresses ([`Detector::prepare`]).
    prepared: Vec<Prepared>,
    /// Values judged against baselines computed ahead.
    scored_ahead: u64,
    /// Values that needed baselines and computed them when they came.
    baselines_at_close: u64,
    /// Period detections run (see [`first_period_check`]).
    period_checks: u64,
    /// States copied as they changed because a checkpoint's snapshot still held them.
    copied_on_write: u64,
}

/// The value count at which a series' period is first looked for: 64 to 127, spread by its id.
/// Later checks come at twice the count of the one before, then every `seasons` longest periods,
/// so a series keeps its place in the spread. Series that start together (every series, when
/// the engine starts) would otherwise all run a detection (4 to 30 µs each) in the same close,
/// at 64, 128, 256, … values and every `seasons × max_period` after: a close of 100,000 series
/// took 2-3 times as long. Series 0 (a series alone, as `vigil eval` scores it) starts at 64.
#[inline]
pub(crate) fn first_period_check(series_id: u64) -> u64 {
    64 + (series_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58)
}

/// Rows below which a batch is scored on the calling thread.
const PARALLEL_MIN_ROWS: usize = 2048;

const MAD_TO_SIGMA: f64 = 1.4826;
const MEAN_AD_TO_SIGMA: f64 = 1.2533;

/// Median and robust sigma of `v` (reordered). Sigma falls back to the mean absolute deviation
/// when more than half the values are equal, then to a tiny relative floor, so a change in a flat
/// series scores finitely.
pub(crate) fn location_scale(v: &mut [f64]) -> (f64, f64) {
    let med = median(v);
    for x in v.iter_mut() {
        *x = (*x - med).abs();
    }
    let mad = median(v);
    (med, robust_sigma(med, mad, v))
}

/// Sigma from the MAD, or from the mean of the absolute `deviations` when the MAD is 0, or a tiny
/// floor relative to the median when they are all 0.
fn robust_sigma(med: f64, mad: f64, deviations: &[f64]) -> f64 {
    if mad > 0.0 {
        return MAD_TO_SIGMA * mad;
    }
    let mean_ad = deviations.iter().sum::<f64>() / deviations.len() as f64;
    if mean_ad > 0.0 {
        MEAN_AD_TO_SIGMA * mean_ad
    } else {
        (med.abs() * 1e-3).max(1e-9)
    }
}

/// One part's reading of a value.
#[derive(Debug, Clone, Copy)]
struct Reading {
    z: f64,
    expected: f64,
    sigma: f64,
    support: usize,
}

impl Detector {
    /// A detector with no history.
    pub fn new(cfg: DetectorConfig) -> Self {
        assert!(
            cfg.history >= 3 && cfg.warmup >= 3 && cfg.warmup <= cfg.history && cfg.shift_windows >= 2 && cfg.shift_windows < cfg.history && cfg.calibration >= 20,
            "validated by the config layer"
        );
        Self { cfg, shards: vec![Shard::default()] }
    }

    /// A detector whose series are spread over `shards` shards, scored in parallel.
    pub fn with_shards(cfg: DetectorConfig, shards: usize) -> Self {
        let mut d = Self::new(cfg);
        d.shards.resize_with(shards.max(1), Shard::default);
        d
    }

    fn shard_of(&self, series_id: u64) -> usize {
        // Ids are XXH3 hashes: their high bits are as good as any.
        ((series_id >> 32) % self.shards.len() as u64) as usize
    }

    fn state(&self, series_id: u64) -> Option<&SeriesState> {
        self.shards[self.shard_of(series_id)].states.get(series_id).map(|b| &**b)
    }

    /// The settings.
    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// The state of the series `keep` selects, for a checkpoint: shared, not copied (see
    /// [`SeriesSnapshot`]).
    pub fn export(&self, keep: &dyn Fn(u64) -> bool) -> Vec<(u64, SeriesSnapshot)> {
        self.shards.iter().flat_map(|sh| sh.states.iter()).filter(|(id, _)| keep(*id)).map(|(id, s)| (id, SeriesSnapshot(Shared::clone(s)))).collect()
    }

    /// The state of every series `part_of` places in one of `n` parts, shared, in one pass
    /// over the series (a checkpoint of many partitions; each shard on a core of its own).
    pub fn export_split(&self, part_of: &(dyn Fn(u64) -> Option<usize> + Sync), n: usize) -> Vec<Vec<(u64, SeriesSnapshot)>> {
        let per_shard: Vec<Vec<Vec<(u64, SeriesSnapshot)>>> = self
            .shards
            .par_iter()
            .map(|sh| {
                let mut out: Vec<Vec<(u64, SeriesSnapshot)>> = (0..n).map(|_| Vec::new()).collect();
                for (id, st) in sh.states.iter() {
                    if let Some(part) = part_of(id).and_then(|i| out.get_mut(i)) {
                        part.push((id, SeriesSnapshot(Shared::clone(st))));
                    }
                }
                out
            })
            .collect();
        let mut parts: Vec<Vec<(u64, SeriesSnapshot)>> = (0..n).map(|_| Vec::new()).collect();
        for shard in per_shard {
            for (all, mine) in parts.iter_mut().zip(shard) {
                all.extend(mine);
            }
        }
        parts
    }

    /// Takes series state from a checkpoint (replacing what is held for those series).
    pub fn import(&mut self, states: Vec<(u64, SeriesSnapshot)>) {
        for (id, SeriesSnapshot(mut st)) in states {
            Shared::make_mut(&mut st).prepared = None;
            let i = self.shard_of(id);
            self.shards[i].states.insert(id, st);
        }
    }

    /// Creates the state of every series in `ids` the detector holds nothing for, as its first
    /// value would (the values ring allocated at its full size, the seasonal history), and
    /// returns how many were new. The engine calls it as a series' first points arrive, while
    /// their window is open, so that a close does not allocate and fault in the state of every
    /// series it sees first (at 100,000 series, most of the first closes' time). Scores are the
    /// same with or without.
    ///
    /// The states are created shard by shard, so that each shard's lie together in memory, as
    /// when each shard created its own at a close (its scoring and computing ahead walk its
    /// states in address order).
    pub fn admit(&mut self, ids: &[u64]) -> usize {
        let mut new = 0;
        let shard: Vec<usize> = ids.iter().map(|&id| self.shard_of(id)).collect();
        for k in 0..self.shards.len() {
            for (&id, _) in ids.iter().zip(&shard).filter(|(_, s)| **s == k) {
                let cfg = &self.cfg;
                new += usize::from(self.shards[k].states.get_or_insert_with(id, || SeriesState::admitted(cfg)).1);
            }
        }
        new
    }

    /// Forgets the series `drop` selects (their partition went to another member).
    pub fn forget(&mut self, drop: &dyn Fn(u64) -> bool) {
        for sh in &mut self.shards {
            sh.states.retain(|id| !drop(id));
        }
    }

    /// Values scored by [`Self::score_batch`] (past warm-up) since this detector was built.
    pub fn scored(&self) -> u64 {
        self.shards.iter().map(|s| s.scored).sum()
    }

    /// Computes ahead, for every series, what its next value will be judged against (see
    /// `detector/baseline.rs`), each shard on a core of its own: most of scoring a value, done
    /// before the value comes, so that the next close waits only for the rest. A series whose
    /// state changes before its next value (or which needs anything else first: missing
    /// windows, a period re-detection, re-anchoring) is judged from scratch; the scores are the
    /// same either way. Returns the series prepared. Costs 152 bytes per series until
    /// the next call.
    ///
    /// `next_ms` is when the next values are expected (the start of the next window): a series
    /// that missed windows before it is prepared as if its next value came then (the windows
    /// it missed learned first, on a copy of its state), and used only for a value at that
    /// time.
    pub fn prepare(&mut self, next_ms: Option<i64>) -> usize {
        let cfg = &self.cfg;
        self.shards.par_iter_mut().map(|sh| sh.prepare(cfg, next_ms)).sum()
    }

    /// Values judged against baselines computed ahead ([`Self::prepare`]) since this detector
    /// was built.
    pub fn scored_ahead(&self) -> u64 {
        self.shards.iter().map(|s| s.scored_ahead).sum()
    }

    /// Values that needed baselines and had none computed ahead that held (see
    /// [`Self::prepare`]), since this detector was built.
    pub fn baselines_at_close(&self) -> u64 {
        self.shards.iter().map(|s| s.baselines_at_close).sum()
    }

    /// Period detections run since this detector was built.
    pub fn period_checks(&self) -> u64 {
        self.shards.iter().map(|s| s.period_checks).sum()
    }

    /// States copied as they changed because a checkpoint's snapshot still held them (see
    /// [`SeriesSnapshot`]), since this detector was built.
    pub fn copied_on_write(&self) -> u64 {
        self.shards.iter().map(|s| s.copied_on_write).sum()
    }

    /// Number of series with state.
    pub fn series(&self) -> usize {
        self.shards.iter().map(|s| s.states.len()).sum()
    }

    /// Bytes of state a series holds with every part voting but the forecast's, once its rings
    /// are full ([`SeriesState::bytes`], less the refractory span's few entries). A forecast
    /// handed over adds its band, 12 bytes per step, and the forecast part's calibration.
    pub fn max_bytes_per_series(&self) -> usize {
        let c = &self.cfg;
        let history = if c.max_period >= 4 { std::mem::size_of::<History>() } else { 0 };
        // A table just grown holds 7 series in 16 buckets.
        let bucket = (std::mem::size_of::<Shared<SeriesState>>() + 1) * 16 / 7;
        let resid = std::mem::size_of::<series::Seasonal>() + Ring::max_heap_bytes(c.history) + TAIL_MAX_HEAP_BYTES;
        // The level and shift parts' bins, and the first part's count heading their block.
        let calibration = 2 * TAIL_MAX_HEAP_BYTES + std::mem::size_of::<u16>();
        bucket + ARC_COUNTS + std::mem::size_of::<SeriesState>() + values::Values::max_heap_bytes(c.history + c.shift_windows) + resid + history + calibration
    }

    /// Bytes of state held over every series (what [`Self::max_bytes_per_series`] bounds, plus
    /// forecast bands), and the hash tables' buckets, empty ones included, by part.
    pub fn state_by_part(&self) -> StateBytes {
        let bucket = std::mem::size_of::<Shared<SeriesState>>() + 1;
        // hashbrown's capacity is 7/8 of its buckets (all of them, less one, below 8), and its
        // control bytes are one per bucket and a group of 16 more.
        let buckets = |cap: usize| if cap < 8 { cap + 1 } else { cap / 7 * 8 };
        let mut b = StateBytes { tables: self.shards.iter().map(|sh| buckets(sh.states.capacity()) * bucket + 16).sum(), ..Default::default() };
        for (_, st) in self.shards.iter().flat_map(|sh| sh.states.iter()) {
            b.add(st);
        }
        b
    }

    /// The season found for a series, if any.
    pub fn period(&self, series_id: u64) -> Option<usize> {
        self.state(series_id).and_then(|s| s.period())
    }

    /// Hands the series' latest forecast to the [`Part::Forecast`] part: expected values and 95%
    /// bounds for the windows starting at `first_ms`, `first_ms + step_ms`, … (at most 4096).
    /// Replaces any earlier one; values observed with [`Self::observe_at`] at those times are
    /// checked against it.
    pub fn set_forecast(&mut self, series_id: u64, first_ms: i64, step_ms: i64, point: &[f64], lower_95: &[f64], upper_95: &[f64]) {
        let n = point.len().min(lower_95.len()).min(upper_95.len()).min(4096);
        let i = self.shard_of(series_id);
        let st = Shared::make_mut(self.shards[i].states.get_or_default(series_id));
        let f32s = |v: &[f64]| v[..n].iter().map(|x| *x as f32).collect::<Vec<f32>>();
        let tail = st.forecast.take().map(|b| b.tail).unwrap_or_default();
        st.forecast = Some(Box::new(Bands { first_ms, step_ms, point: f32s(point), lower: f32s(lower_95), upper: f32s(upper_95), tail }));
    }

    /// Hands over every forecast of a `forecasts` batch (see [`crate::forecasts_schema`]): per
    /// series, its steps in order become the band the [`Part::Forecast`] part checks. Returns the
    /// number of series that got one.
    pub fn use_forecasts(&mut self, forecasts: &RecordBatch) -> usize {
        let (Some(ids), Some(ts), Some(point), Some(lo), Some(hi)) = (
            forecasts.column_by_name("series_id").and_then(|c| c.as_primitive_opt::<arrow::datatypes::UInt64Type>()),
            forecasts.column_by_name("ts").and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>()),
            forecasts.column_by_name("point").and_then(|c| c.as_primitive_opt::<Float64Type>()),
            forecasts.column_by_name("lower_95").and_then(|c| c.as_primitive_opt::<Float64Type>()),
            forecasts.column_by_name("upper_95").and_then(|c| c.as_primitive_opt::<Float64Type>()),
        ) else {
            return 0;
        };
        let mut done = 0;
        let mut i = 0;
        let n = forecasts.num_rows();
        while i < n {
            let id = ids.value(i);
            let mut j = i;
            while j < n && ids.value(j) == id {
                j += 1;
            }
            let step = if j - i >= 2 { ts.value(i + 1) - ts.value(i) } else { i64::MAX };
            let slice = |a: &arrow::array::Float64Array| a.values()[i..j].to_vec();
            self.set_forecast(id, ts.value(i), step, &slice(point), &slice(lo), &slice(hi));
            done += 1;
            i = j;
        }
        done
    }

    /// Scores `value` against the series' past, then learns it. Causal: the value is scored
    /// before it joins any baseline. Returns `None` during warm-up or for a non-finite value
    /// (which is not learned either). Without a time, the forecast part does not vote.
    pub fn observe(&mut self, series_id: u64, value: f64) -> Option<Score> {
        self.observe_inner(series_id, None, value)
    }

    /// [`Self::observe`] for the window starting at `time_ms` (epoch ms), so that a forecast
    /// for that window can vote.
    pub fn observe_at(&mut self, series_id: u64, time_ms: i64, value: f64) -> Option<Score> {
        self.observe_inner(series_id, Some(time_ms), value)
    }

    fn observe_inner(&mut self, series_id: u64, time_ms: Option<i64>, value: f64) -> Option<Score> {
        let i = self.shard_of(series_id);
        self.shards[i].observe(&self.cfg, series_id, time_ms, value)
    }
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
    fn a_state_takes_192_bytes_with_its_id_its_history_296_and_its_values_the_bits_they_span() {
        assert_eq!(std::mem::size_of::<History>(), 256 + 40);
        assert_eq!(std::mem::size_of::<SeriesState>(), 192);
        let mut d = Detector::new(DetectorConfig { warmup: 4, ..Default::default() });
        for i in 0..50 {
            d.observe(1, 10.0 + (i % 3) as f64);
        }
        let st = d.state(1).expect("a state");
        assert!(st.seasonal.is_none(), "no season, no residual ring or seasonal calibration");
        // Still filling: 16-bit slots, which the first values' recoding reuses.
        assert_eq!(st.values.heap_bytes(), 2 * 264 + 8);
        for i in 50..264 {
            d.observe(1, 10.0 + (i % 3) as f64);
        }
        let st = d.state(1).expect("a state");
        assert_eq!(st.values.heap_bytes(), 2 * 264 / 8 + 8, "full: 2 bits a value");
        assert_eq!(d.state_by_part().values, 2 * 264 / 8 + 8);
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
}
