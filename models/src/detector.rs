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
//! minutes costs 256 bytes rather than 35 KB, [`history`]); per part a calibration histogram
//! of up to 40 log-spaced bins of 16-bit counts, only those up to the highest counted held
//! ([`calibration`]); the refractory queue of recent alarms ([`refractory`]).

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
mod tests;
