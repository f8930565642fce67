//! A series' state: what the detector keeps per series, as a checkpoint holds it, and the
//! pointer a checkpoint shares it by.

use super::calibration::{Tail, TailRef, Tails};
use super::history::History;
use super::refractory::Refractory;
use super::order::Hint;
use super::ring::Ring;
use super::values::Values;
use super::{DetectorConfig, Part};

/// A forecast handed over by the engine: expected value and 95% band per window from
/// `first_ms` on, one every `step_ms` (single precision: a band is itself an estimate), and the
/// calibration of the forecast part, which only a series with forecasts needs.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Bands {
    pub(super) first_ms: i64,
    pub(super) step_ms: i64,
    pub(super) point: Vec<f32>,
    pub(super) lower: Vec<f32>,
    pub(super) upper: Vec<f32>,
    pub(super) tail: Tail,
}

impl Bands {
    pub(super) fn at(&self, t: i64) -> Option<(f64, f64, f64)> {
        if self.step_ms <= 0 || t < self.first_ms || (t - self.first_ms) % self.step_ms != 0 {
            return None;
        }
        let k = usize::try_from((t - self.first_ms) / self.step_ms).ok()?;
        Some((f64::from(*self.point.get(k)?), f64::from(*self.lower.get(k)?), f64::from(*self.upper.get(k)?)))
    }
    pub(super) fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + 4 * (self.point.capacity() + self.lower.capacity() + self.upper.capacity()) + self.tail.heap_bytes()
    }
}

/// The seasonal part's own state: the last `history` seasonal residuals, in half precision
/// about their median, and the part's calibration.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Seasonal {
    pub(super) resid: Ring,
    pub(super) tail: Tail,
    /// Last median and MAD of the residual window (speed only).
    #[serde(skip)]
    pub(super) hint: Hint,
}

/// One series' state, as a checkpoint holds it (see [`super::Detector::export`]). Every part is of
/// bounded size: the recent values in single precision, the recent residuals in half precision,
/// the seasonal history at reduced resolution in 8-bit codes, 16-bit calibration counts.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct SeriesState {
    /// The series' id (the key a checkpoint holds it under: not encoded with it).
    #[serde(skip)]
    pub(super) id: u64,
    /// The last `history + shift_windows` values, as offsets from `anchor` (single precision,
    /// as multiples of a unit where that is exact, packed in the bits they span).
    pub(super) values: Values,
    pub(super) anchor: f64,
    /// What only a series with a season holds (its residuals and the seasonal part's
    /// calibration), boxed from its first residual on: a series without a season carries a
    /// pointer rather than 160 bytes.
    pub(super) seasonal: Option<Box<Seasonal>>,
    /// The values at reduced resolution, when seasons are looked for.
    pub(super) history: Option<Box<History>>,
    /// The season found, in values (32 bits: a period is at most `max_period`; encoded as an
    /// optional integer, a zero read as none).
    #[serde(deserialize_with = "nonzero_or_none")]
    pub(super) period: Option<std::num::NonZeroU32>,
    /// Values seen.
    pub(super) seen: u64,
    /// Next value count at which the period is (re)detected, modulo 2³² (it is at most
    /// `seasons × max_period` values ahead: see [`Self::period_check_due`]).
    #[serde(deserialize_with = "low_32_bits", serialize_with = "as_u64")]
    pub(super) next_period_check: u32,
    /// Calibration of the level and shift parts (the seasonal part's is in [`Self::seasonal`],
    /// the forecast's with its bands).
    pub(super) tails: Tails,
    pub(super) forecast: Option<Box<Bands>>,
    /// Time of the last value (epoch ms) and the smallest spacing seen, when times are given.
    pub(super) last_ms: LastMs,
    /// In 32 bits: a spacing of 2³² ms (49.7 days) or more is held as that (0: none seen).
    /// Encoded as the 64-bit signed integer it was.
    #[serde(deserialize_with = "saturating_u32", serialize_with = "as_i64")]
    pub(super) step_ms: u32,
    /// The sliding minimum of p over the refractory span.
    pub(super) recent_p: Refractory,
    /// Last medians of the level and shift-baseline windows (speed only; the residual window's
    /// is in [`Self::seasonal`]).
    #[serde(skip)]
    pub(super) hints: [Hint; 2],
    /// Where its shard keeps the baselines computed ahead for this state, plus one (see
    /// [`Detector::prepare`]).
    #[serde(skip)]
    pub(super) prepared: Option<std::num::NonZeroU32>,
}

impl SeriesState {
    /// The season found, in values.
    #[inline(always)]
    pub(super) fn period(&self) -> Option<usize> {
        self.period.map(|p| p.get() as usize)
    }
    /// Sets the season found (none for a period of 0 or one beyond 32 bits).
    #[inline]
    pub(super) fn set_period(&mut self, p: Option<usize>) {
        self.period = p.and_then(|p| u32::try_from(p).ok()).and_then(std::num::NonZeroU32::new);
    }

    /// Whether the period is due to be (re)detected when the state has seen `seen` values:
    /// from the series' first check on (see [`super::first_period_check`]), once `seen` has
    /// reached the next check. The next check is kept modulo 2³² and is never more than 2³¹
    /// values away, so the difference modulo 2³² orders them.
    #[inline(always)]
    pub(super) fn period_check_due(&self, seen: u64, series_id: u64) -> bool {
        seen >= super::first_period_check(series_id) && (seen as u32).wrapping_sub(self.next_period_check) as i32 >= 0
    }
    /// After a check at `seen` values, the next one (as [`Self::next_period_check`] holds it):
    /// at twice the values seen, or `every` values on once that many have been seen.
    #[inline]
    pub(super) fn next_check_after(seen: u64, every: u64) -> u32 {
        (if seen < every { seen * 2 } else { seen + every }) as u32
    }

    /// The state of a series before its first value, with what that value would allocate.
    pub(super) fn admitted(cfg: &DetectorConfig) -> Self {
        let mut st = Self::default();
        st.values.reserve(cfg.history + cfg.shift_windows);
        if cfg.max_period >= 4 {
            st.history = Some(Box::default());
        }
        st
    }

    /// Bytes this state occupies (the struct and what it owns).
    pub fn bytes(&self) -> usize {
        let mut b = StateBytes::default();
        b.add(self);
        b.total() - ARC_COUNTS
    }
}

/// A value count written in 64 bits (version 6 and earlier), modulo 2³².
fn low_32_bits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Ok(<u64 as serde::Deserialize>::deserialize(d)? as u32)
}

/// A count as the 64-bit integer it is encoded as.
fn as_u64<S: serde::Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::from(*v))
}

/// A spacing as the 64-bit signed integer it is encoded as (a format may encode the two
/// differently: postcard's signed integers are zigzag-coded).
fn as_i64<S: serde::Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(i64::from(*v))
}

/// A spacing written in 64 bits (version 6 and earlier), at most `u32::MAX`.
fn saturating_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Ok(u32::try_from(<i64 as serde::Deserialize>::deserialize(d)?.max(0)).unwrap_or(u32::MAX))
}

fn nonzero_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<std::num::NonZeroU32>, D::Error> {
    Ok(<Option<u32> as serde::Deserialize>::deserialize(d)?.and_then(std::num::NonZeroU32::new))
}

/// Bytes of detector state over every series, by part (see [`super::Detector::state_by_part`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateBytes {
    /// Series with state.
    pub series: usize,
    /// The hash tables' buckets, empty ones included, and their control bytes.
    pub tables: usize,
    /// Each state's struct and the count of its shared pointer.
    pub structs: usize,
    /// The recent values.
    pub values: usize,
    /// Series whose recent values are codes (multiples of a unit) rather than floats.
    pub coded: usize,
    /// The seasonal part's boxes (residuals and calibration).
    pub seasonal: usize,
    /// Series with such a box.
    pub seasonal_series: usize,
    /// The seasonal histories at reduced resolution.
    pub history: usize,
    /// Forecast bands handed over.
    pub forecast: usize,
    /// The refractory queues.
    pub refractory: usize,
    /// The level and shift parts' calibration bins (the seasonal part's are counted with its
    /// box, the forecast's with its bands).
    pub calibration: usize,
}

impl StateBytes {
    /// All of it.
    pub fn total(&self) -> usize {
        self.tables + self.structs + self.values + self.seasonal + self.history + self.forecast + self.refractory + self.calibration
    }

    /// Adds one state's bytes.
    pub(super) fn add(&mut self, st: &SeriesState) {
        self.series += 1;
        self.structs += ARC_COUNTS + std::mem::size_of::<SeriesState>();
        self.values += st.values.heap_bytes();
        self.coded += usize::from(st.values.is_coded());
        if let Some(s) = &st.seasonal {
            self.seasonal += std::mem::size_of::<Seasonal>() + s.resid.heap_bytes() + s.tail.heap_bytes();
            self.seasonal_series += 1;
        }
        self.history += st.history.as_ref().map_or(0, |_| std::mem::size_of::<History>());
        self.forecast += st.forecast.as_ref().map_or(0, |b| b.heap_bytes());
        self.refractory += st.recent_p.heap_bytes();
        self.calibration += st.tails.heap_bytes();
    }
}

/// A time in epoch milliseconds, or none (`i64::MIN`): half the bytes of an `Option<i64>`, and
/// encoded as one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct LastMs(pub(super) i64);

impl Default for LastMs {
    fn default() -> Self {
        Self(i64::MIN)
    }
}

impl LastMs {
    pub(super) fn get(self) -> Option<i64> {
        (self.0 != i64::MIN).then_some(self.0)
    }
}

impl serde::Serialize for LastMs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for LastMs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<i64>::deserialize(d).map(|t| Self(t.unwrap_or(i64::MIN)))
    }
}

/// A state shared with checkpoints: an `Arc` without a weak count (a series' state is never
/// referred to weakly), whose count before the state takes 8 bytes instead of 16.
pub(super) type Shared<T> = triomphe::Arc<T>;

/// The count of a [`Shared`] state before the state.
pub(super) const ARC_COUNTS: usize = std::mem::size_of::<usize>();

/// A series' state as a checkpoint takes it: the detector's own, shared, so that taking the
/// state of every series costs the loop a pointer per series rather than a copy of each.
/// The detector copies a state it changes while a snapshot still holds it; the checkpoint's
/// writer calls [`Self::detach`] first, beside the loop, so that the next close rarely has to.
/// Encoded as the state itself.
#[derive(Debug, Clone)]
pub struct SeriesSnapshot(pub(super) Shared<SeriesState>);

impl SeriesSnapshot {
    /// Makes this snapshot's copy its own, if the detector still shares it.
    pub fn detach(&mut self) {
        Shared::make_mut(&mut self.0);
    }
}

impl serde::Serialize for SeriesSnapshot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for SeriesSnapshot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SeriesState::deserialize(d).map(|s| Self(Shared::new(s)))
    }
}

impl SeriesState {
    /// Before a value at `t`: windows without data are not observed, so the last value is
    /// carried through them, so that "one period ago" stays one period of time ago (the
    /// seasonal part counts values).
    #[inline(always)]
    pub(super) fn fill_gap(&mut self, cfg: &DetectorConfig, t: i64) {
        let cover = cfg.seasons * cfg.max_period + 1;
        if let Some((step, missed)) = self.windows_missed(t) {
            self.step_ms = u32::try_from(step).unwrap_or(u32::MAX);
            let missing = missed.clamp(0, cover as i64) as usize;
            if let Some(prev) = self.values.back() {
                let prev = self.anchor + f64::from(prev);
                for _ in 0..missing.min(cfg.history + cfg.shift_windows) {
                    self.learn(prev, cfg.history + cfg.shift_windows);
                }
                let period = self.period();
                if let Some(h) = self.history.as_mut() {
                    for _ in 0..missing {
                        h.push(prev, cover, period);
                    }
                }
            }
        }
        self.last_ms = LastMs(t);
    }

    /// For a value at `t` after the last one: the smallest spacing seen, this gap included,
    /// and how many windows of it are missing in between.
    #[inline]
    pub(super) fn windows_missed(&self, t: i64) -> Option<(i64, i64)> {
        let gap = t - self.last_ms.get().filter(|l| t > *l)?;
        let step = if self.step_ms > 0 { i64::from(self.step_ms).min(gap) } else { gap };
        Some((step, gap / step - 1))
    }

    /// Whether a value at `t` finds windows missing before it (which [`Self::fill_gap`] learns).
    #[inline]
    pub(super) fn gap_before(&self, t: i64) -> bool {
        !self.values.is_empty() && self.windows_missed(t).is_some_and(|(_, missed)| missed > 0)
    }

    /// Remembers `value` among the last `cap` values (as its offset from the anchor).
    #[inline]
    pub(super) fn learn(&mut self, value: f64, cap: usize) {
        if self.values.is_empty() {
            self.anchor = value;
        }
        self.values.push((value - self.anchor) as f32, cap);
    }
    /// Moves the values' anchor to `to`.
    #[inline]
    pub(super) fn reanchor(&mut self, to: f64) {
        let from = self.anchor;
        self.values.remap(|d| (from + f64::from(d) - to) as f32);
        self.anchor = to;
    }
    /// The seasonal residuals, once there are any.
    #[inline]
    pub(super) fn resid(&self) -> Option<&Ring> {
        self.seasonal.as_deref().map(|s| &s.resid)
    }
    /// A part's calibration. The seasonal part's exists from the series' first residual on,
    /// before the part can read a value (it needs half the warm-up of residuals).
    #[inline]
    pub(super) fn tail(&self, part: Part) -> Option<TailRef<'_>> {
        match part {
            Part::Level => Some(self.tails.get(0)),
            Part::Shift => Some(self.tails.get(1)),
            Part::Seasonal => self.seasonal.as_deref().map(|s| s.tail.get()),
            Part::Forecast => self.forecast.as_ref().map(|b| b.tail.get()),
        }
    }
    /// Remembers `z` in a part's calibration, if the part has one.
    #[inline]
    pub(super) fn learn_tail(&mut self, part: Part, z: f64, cap: usize) {
        match part {
            Part::Level => self.tails.push(0, z, cap),
            Part::Shift => self.tails.push(1, z, cap),
            Part::Seasonal => {
                if let Some(s) = self.seasonal.as_deref_mut() {
                    s.tail.push(z, cap);
                }
            }
            Part::Forecast => {
                if let Some(b) = self.forecast.as_mut() {
                    b.tail.push(z, cap);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next period check, kept modulo 2³², falls due when the count reaches it, across the
    /// wrap of its 32 bits as before it, and not before the series' first check.
    #[test]
    fn period_checks_fall_due_when_the_count_reaches_them_across_the_32_bit_wrap() {
        let id = 42;
        let first = super::super::first_period_check(id);
        let st = SeriesState::default();
        assert!(!st.period_check_due(first - 1, id) && st.period_check_due(first, id), "the first check at {first}");
        for seen in [1_000u64, (1 << 32) - 10, (1 << 33) + 5] {
            let st = SeriesState { next_period_check: SeriesState::next_check_after(seen, 4_320), ..Default::default() };
            let next = if seen < 4_320 { 2 * seen } else { seen + 4_320 };
            assert!(!st.period_check_due(seen, id) && !st.period_check_due(next - 1, id), "{seen}: not before {next}");
            assert!(st.period_check_due(next, id) && st.period_check_due(next + 1, id), "{seen}: due at {next}");
        }
    }

    /// A state with times, a season and the 32-bit fields encoded and read back scores as the
    /// one it was taken from (the spacing is encoded as the signed 64-bit integer it was).
    #[test]
    fn a_state_with_times_reads_back_and_scores_as_the_one_taken() {
        let cfg = super::super::DetectorConfig { max_period: 48, ..Default::default() };
        let mut a = super::super::Detector::new(cfg.clone());
        let value = |i: i64| 10.0 + (i as f64 * std::f64::consts::TAU / 24.0).sin() + 0.1 * ((i * 7919) % 13) as f64;
        for i in 0..400 {
            a.observe_at(1, i * 60_000, value(i));
        }
        let st = a.state(1).unwrap();
        assert_eq!(st.step_ms, 60_000);
        let bytes = postcard::to_stdvec(st).unwrap();
        let back: SeriesState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((back.step_ms, back.next_period_check, back.seen), (st.step_ms, st.next_period_check, st.seen));
        let mut b = super::super::Detector::new(cfg);
        b.import(vec![(1, SeriesSnapshot(Shared::new(back)))]);
        for i in 400..460 {
            let v = if i == 450 { 25.0 } else { value(i) };
            assert_eq!(a.observe_at(1, i * 60_000, v), b.observe_at(1, i * 60_000, v), "window {i}");
        }
    }

    /// A checkpoint of version 6 held the next check and the spacing in 64 bits: read as the
    /// count modulo 2³² and the spacing at most `u32::MAX` ms.
    #[test]
    fn sixty_four_bit_counts_and_spacings_of_older_checkpoints_read_back() {
        #[derive(serde::Serialize)]
        struct Wide {
            next: u64,
            step: i64,
        }
        #[derive(serde::Deserialize)]
        struct Narrow {
            #[serde(deserialize_with = "low_32_bits")]
            next: u32,
            #[serde(deserialize_with = "saturating_u32")]
            step: u32,
        }
        for (next, step, want) in [(5_000_000_000u64, 60_000i64, (705_032_704u32, 60_000u32)), (300, 5_000_000_000, (300, u32::MAX)), (7, 0, (7, 0))] {
            let bytes = postcard::to_stdvec(&Wide { next, step }).unwrap();
            let n: Narrow = postcard::from_bytes(&bytes).unwrap();
            assert_eq!((n.next, n.step), want);
        }
    }
}
