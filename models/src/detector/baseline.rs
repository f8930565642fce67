//! What a series' next value is judged against, computed before the value comes.
//!
//! Most of scoring a value does not depend on the value: the level part's median and spread of
//! the last `history` values, the seasonal part's expectation and the spread of its residuals,
//! the shift part's baseline and the values already in its short window. Those are
//! [`Baselines`]; with them, judging the value is a handful of subtractions and divisions, a
//! median of the short window by clamping, the calibration and the learning.
//!
//! A close waits for its scores, so between closes the engine may compute every series'
//! baselines ahead ([`super::Detector::prepare`]); a close then uses them for each series whose
//! state has not changed since and whose value needs nothing else first: no windows missing
//! before it (they are learned before the value is judged), no period re-detection due, and a
//! value near enough to the anchor of the stored offsets not to move it. Anything else is
//! judged from scratch, as without them. Both ways run the same code on the same state, so
//! the scores are the same bits.

use super::order::location_scale_near;
use super::ring::Ring;
use super::{median, DetectorConfig, Part, Reading, SeriesState, Shard, Shared};

/// The level part's baseline: median and robust sigma of the last `support` values.
#[derive(Debug, Clone, Copy)]
struct Level {
    med: f64,
    sigma: f64,
    support: u32,
}

/// The seasonal part's expectation (the median of the values one, two, … periods ago) and,
/// once enough residuals are held, their location and scale.
#[derive(Debug, Clone, Copy)]
struct Seasonal {
    expected: f64,
    support: u32,
    resid: Option<(f64, f64)>,
}

/// The shift part's baseline before its short window, and the order statistics of the values
/// (or residuals) already in that window that its median with the new one needs
/// ([`around_middle`]).
#[derive(Debug, Clone, Copy)]
struct Shift {
    base: f64,
    sigma: f64,
    support: u32,
    on_resid: bool,
    around: [f64; 3],
}

/// What a series' next value is judged against (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Baselines {
    level: Option<Level>,
    seasonal: Option<Seasonal>,
    shift: Option<Shift>,
}

/// A series' baselines computed ahead, for the state that had seen `seen` values and, when
/// windows were missing before its next value, for a value at `at_ms` only.
#[derive(Debug, Clone, Copy)]
pub(super) struct Prepared {
    pub(super) id: u64,
    pub(super) seen: u64,
    at_ms: Option<i64>,
    pub(super) baselines: Baselines,
}

impl Prepared {
    /// Whether these baselines, computed ahead for `st`, are what judging `value` at `time_ms`
    /// would compute: the same windows missing before it, and no re-anchoring.
    pub(super) fn hold_for(&self, st: &SeriesState, time_ms: Option<i64>, value: f64) -> bool {
        let same_gap = match self.at_ms {
            Some(at) => time_ms == Some(at),
            None => !time_ms.is_some_and(|t| st.gap_before(t)),
        };
        same_gap && !self.baselines.level.is_some_and(|l| st.far_from_anchor(value, l.sigma))
    }
}

impl Baselines {
    /// The baselines of the next value of `st` (its values decoded into `held`; `s` is
    /// scratch). With the `value` itself, the stored offsets are re-anchored first when it lies
    /// too far from their anchor for single precision, as the level's spread measures it.
    #[inline(always)]
    pub(super) fn of(st: &mut SeriesState, cfg: &DetectorConfig, held: &mut Vec<f64>, s: &mut Vec<f64>, value: Option<f64>) -> Self {
        let half_warm = cfg.half_warm();
        let w = cfg.shift_windows;
        let n = st.values.len();
        let mut b = Self::default();
        if n < half_warm {
            return b;
        }
        let h = cfg.history.min(n);
        // Every value held, decoded once: the level and shift windows are slices of it.
        held.clear();
        st.values.extend_into(0..n, st.anchor, held);
        // Level: the last `history` values.
        s.clear();
        s.extend_from_slice(&held[n - h..n]);
        let (med, sigma) = location_scale_near(s, &mut st.hints[0]);
        b.level = Some(Level { med, sigma, support: h as u32 });
        // Offsets stay precise while they are small against the spread: re-anchor otherwise
        // (the offsets are rewritten, so the shift part decodes them again).
        if let Some(v) = value.filter(|v| st.far_from_anchor(*v, sigma)) {
            st.reanchor(v);
            held.clear();
            st.values.extend_into(0..n, st.anchor, held);
        }

        // Seasonal: median of the same phase in the last `seasons` periods.
        if let (Some(p), Some(hist)) = (st.period(), st.history.as_ref()) {
            s.clear();
            s.extend((1..=cfg.seasons as u64).map_while(|j| hist.value_back(j * p as u64)));
            if !s.is_empty() {
                let k = s.len();
                let expected = median(s);
                let resid = st.seasonal.as_deref_mut().filter(|sea| sea.resid.len() >= half_warm).map(|sea| {
                    s.clear();
                    sea.resid.extend_into(0..sea.resid.len(), s);
                    location_scale_near(s, &mut sea.hint)
                });
                b.seasonal = Some(Seasonal { expected, support: (k * p) as u32, resid });
            }
        }

        // Shift: the median of the last `w` values (or residuals) against the baseline before.
        let ring = st.seasonal.as_deref().map(|s| &s.resid).filter(|r| b.seasonal.is_some() && r.len() >= half_warm.max(2 * w));
        let on_resid = ring.is_some();
        let m = ring.map_or(n, Ring::len);
        let window = |range: std::ops::Range<usize>, out: &mut Vec<f64>| {
            if let Some(ring) = ring {
                ring.extend_into(range, out);
            } else {
                out.extend_from_slice(&held[range]);
            }
        };
        if m >= w + half_warm {
            let hb = cfg.history.min(m + 1 - w);
            s.clear();
            window(m + 1 - w - hb..m + 1 - w, s);
            let (base, sigma) = location_scale_near(s, &mut st.hints[1]);
            s.clear();
            window(m + 1 - w..m, s);
            let around = around_middle(s);
            b.shift = Some(Shift { base, sigma, support: hb as u32, on_resid, around });
        }
        b
    }

    /// Each part's reading of `value` (the forecast's excepted), and its seasonal residual.
    #[inline(always)]
    pub(super) fn readings(&self, value: f64, shift_windows: usize) -> ([Option<Reading>; 4], Option<f64>) {
        let mut readings = [None; 4];
        if let Some(l) = self.level {
            readings[Part::Level.index()] = Some(Reading { z: (value - l.med) / l.sigma, expected: l.med, sigma: l.sigma, support: l.support as usize });
        }
        let mut resid = None;
        if let Some(s) = self.seasonal {
            let r = value - s.expected;
            if let Some((rm, rs)) = s.resid {
                readings[Part::Seasonal.index()] = Some(Reading { z: (r - rm) / rs, expected: s.expected + rm, sigma: rs, support: s.support as usize });
            }
            resid = Some(r);
        }
        if let Some(sh) = self.shift {
            let current = if sh.on_resid { resid.unwrap_or(value) } else { value };
            let recent = median_with(sh.around, shift_windows, current);
            readings[Part::Shift.index()] =
                Some(Reading { z: (recent - sh.base) / sh.sigma, expected: sh.base + (value - current), sigma: sh.sigma, support: sh.support as usize });
        }
        (readings, resid)
    }
}

impl Shard {
    /// Computes the baselines of every series of the shard whose next value can use them
    /// (past half the warm-up, no period re-detection due), in the order the states lie in
    /// memory, which is the order a close scores them in ([`Shard::plan_ahead`]), so that a
    /// close reads them in turn. Returns how many. Compiled for AVX2 as well, like
    /// [`Shard::observe`].
    pub(super) fn prepare(&mut self, cfg: &DetectorConfig, next_ms: Option<i64>) -> usize {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor was just found to support AVX2.
            return unsafe { self.prepare_avx2(cfg, next_ms) };
        }
        self.prepare_inlined(cfg, next_ms)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn prepare_avx2(&mut self, cfg: &DetectorConfig, next_ms: Option<i64>) -> usize {
        self.prepare_inlined(cfg, next_ms)
    }

    #[inline(always)]
    fn prepare_inlined(&mut self, cfg: &DetectorConfig, next_ms: Option<i64>) -> usize {
        let Shard { states, held, scratch, prepared, copied_on_write, .. } = self;
        prepared.clear();
        // Sized to the series, not doubled as it fills: an entry is 152 bytes, so at a million
        // series half a table left empty would be 76 megabytes.
        prepared.reserve_exact(states.len());
        let half_warm = cfg.half_warm();
        // A state a checkpoint still holds is copied before it changes (the engine prepares
        // before it takes a checkpoint, so this is rare).
        let mut order: Vec<(u64, &mut SeriesState)> = states
            .iter_mut()
            .map(|st| {
                *copied_on_write += u64::from(!st.is_unique());
                let st = Shared::make_mut(st);
                (st.id, st)
            })
            .collect();
        order.sort_unstable_by_key(|(_, st)| std::ptr::from_ref::<SeriesState>(st) as usize);
        for k in 0..order.len() {
            if let Some((_, next)) = order.get(k + 2) {
                next.values.block().fetch();
            }
            let (id, st) = &mut order[k];
            st.prepared = None;
            let period_due = st.history.is_some() && st.period_check_due(st.seen + 1, *id);
            if period_due {
                continue;
            }
            // A series that missed windows: as if its next value came with the next window,
            // the windows missed learned first on a copy (rarely needed with regular scrapes).
            let (baselines, at_ms) = match next_ms.filter(|t| st.gap_before(*t)) {
                Some(t) => {
                    let mut filled = SeriesState::clone(st);
                    filled.fill_gap(cfg, t);
                    if filled.values.len() < half_warm {
                        continue;
                    }
                    (Baselines::of(&mut filled, cfg, held, scratch, None), Some(t))
                }
                None if st.values.len() < half_warm => continue,
                None => (Baselines::of(st, cfg, held, scratch, None), None),
            };
            prepared.push(Prepared { id: *id, seen: st.seen, at_ms, baselines });
            st.prepared = u32::try_from(prepared.len()).ok().and_then(std::num::NonZeroU32::new);
        }
        prepared.len()
    }
}

impl SeriesState {
    /// Whether `value` lies too far from the anchor for its offset to stay precise against a
    /// spread of `sigma`.
    fn far_from_anchor(&self, value: f64, sigma: f64) -> bool {
        (value - self.anchor).abs() > 4096.0 * sigma
    }
}

/// `a` before `b` in `f64::total_cmp`'s order, the order a median's selection uses.
fn max_total(a: f64, b: f64) -> f64 {
    if a.total_cmp(&b).is_ge() {
        a
    } else {
        b
    }
}

fn min_total(a: f64, b: f64) -> f64 {
    if a.total_cmp(&b).is_le() {
        a
    } else {
        b
    }
}

fn clamp_total(x: f64, lo: f64, hi: f64) -> f64 {
    min_total(max_total(x, lo), hi)
}

/// Of `prior` (a window but its newest value, reordered), the order statistics the median of
/// the whole window needs, whatever its newest value: with `q` values before it, the window
/// has `q + 1`; for an odd window the values ranked `mid - 1` and `mid` (`mid = (q + 1) / 2`),
/// for an even one those ranked `mid - 2`, `mid - 1` and `mid`, ±infinity where a rank does not
/// exist.
fn around_middle(prior: &mut [f64]) -> [f64; 3] {
    let n = prior.len() + 1;
    let mid = n / 2;
    let j = if n % 2 == 1 { mid } else { mid - 1 };
    let (left, m, right) = prior.select_nth_unstable_by(j, f64::total_cmp);
    let below = left.iter().copied().reduce(max_total).unwrap_or(f64::NEG_INFINITY);
    let above = right.iter().copied().reduce(min_total).unwrap_or(f64::INFINITY);
    [below, *m, above]
}

/// The median of a window of `n` values, the newest `x` and the rest summed up by
/// [`around_middle`]: the same value [`median`] finds over the whole window. The newest value
/// displaces the middle ranks by at most one, so each rank the median reads is `x` clamped
/// between the ranks next to it among the others.
fn median_with(around: [f64; 3], n: usize, x: f64) -> f64 {
    let [below, m, above] = around;
    if n % 2 == 1 {
        clamp_total(x, below, m)
    } else {
        (clamp_total(x, below, m) + clamp_total(x, m, above)) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::Detector;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// What docs/BENCHMARKS.md and `Detector::prepare` say an entry computed ahead costs.
    #[test]
    fn a_series_prepared_ahead_takes_152_bytes() {
        assert_eq!(std::mem::size_of::<Prepared>(), 152);
    }

    /// The median of a window, from the order statistics of all but its newest value and that
    /// value, is the median of the whole window, bit for bit: windows of 2 to 30 values with
    /// ties, and the newest value below, among and above the others.
    #[test]
    fn a_windows_median_comes_from_its_middle_ranks_and_its_newest_value() {
        let mut rng = StdRng::seed_from_u64(11);
        for n in 2..=30 {
            for trial in 0..300 {
                let window: Vec<f64> = (0..n)
                    .map(|_| if trial % 3 == 0 { f64::from(rng.random_range(0..4u8)) } else { rng.random_range(-10.0..10.0) })
                    .collect();
                let mut all = window.clone();
                let want = median(&mut all);
                let mut prior = window[..n - 1].to_vec();
                let got = median_with(around_middle(&mut prior), n, window[n - 1]);
                assert_eq!(got.to_bits(), want.to_bits(), "window {window:?}");
            }
        }
    }

    /// Series with missing windows, level shifts far beyond single precision's reach from
    /// their anchor, seasons found and lost, and forecasts: a detector that computes every
    /// series' baselines ahead before each close scores every value exactly as one that never
    /// does, and its states end up the same.
    #[test]
    fn scores_computed_ahead_are_the_scores_computed_at_the_close() {
        let cfg = DetectorConfig { history: 60, warmup: 10, max_period: 24, seasons: 3, shift_windows: 8, calibration: 200, refractory: 5, anomaly_threshold: 0.99 };
        let mut plain = Detector::with_shards(cfg.clone(), 3);
        let mut ahead = Detector::with_shards(cfg, 3);
        let mut rng = StdRng::seed_from_u64(5);
        let step = 60_000i64;
        for t in 0..400i64 {
            if t % 7 == 3 {
                ahead.prepare(Some(t * step));
            }
            for id in 0..40u64 {
                let id = id << 40 | id;
                // Some series skip windows now and then; some jump by 1e9 once.
                if id % 5 == 1 && rng.random_range(0..10) == 0 {
                    continue;
                }
                let season = (t as f64 / 24.0 * std::f64::consts::TAU).sin() * 10.0;
                let mut v = 100.0 + if id % 2 == 0 { season } else { 0.0 } + rng.random_range(-1.0..1.0);
                if id % 7 == 2 && t > 200 {
                    v += 1e9;
                }
                if rng.random_range(0..200) == 0 {
                    v += 50.0;
                }
                let a = plain.observe_at(id, t * step, v);
                let b = ahead.observe_at(id, t * step, v);
                assert_eq!(a, b, "series {id} at {t}");
            }
        }
        let used = ahead.scored_ahead();
        assert!(used > 1000, "values judged against baselines computed ahead: {used}");
        let key = |d: &Detector| {
            let mut v: Vec<_> = d.export(&|_| true).into_iter().map(|(id, s)| (id, postcard::to_stdvec(&s).unwrap())).collect();
            v.sort();
            v
        };
        assert_eq!(key(&plain), key(&ahead));
    }
}
