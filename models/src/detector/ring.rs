//! A series' last seasonal residuals in 16 bits each: [`Ring`].
//!
//! The seasonal part takes the median and median absolute deviation of these residuals, and the
//! shift part medians of them, so what they need is precision near the bulk, at every scale a
//! series moves through, and a spike must not take it away from the others. Each residual is
//! held as its offset from an anchor near their median, in units of a power of two, as a
//! half-precision float (1 sign, 5 exponent and 10 mantissa bits): within 2⁻¹¹ of its distance
//! from the anchor, whatever that distance (a spike ten million times the spread leaves the
//! values near the anchor as precise as before). An offset too large for the unit doubles the
//! unit (exact: halving a half-precision number only loses bits below its smallest normal).
//! After every full turn of the ring, and at once after four values far from the anchor (a new
//! level), the anchor moves to the median of what the ring holds when it has drifted more than
//! a quarter of their spread from it, and the unit is fitted to their reach again, so precision
//! follows a level that moves.
//!
//! The raw values stay in single precision (see the detector's state): held like this, they
//! cost 2.1 points of NAB's standard score (51.7 against 53.8), and on a linear 16-bit scale
//! over their range 4.2 (49.6). Where a series repeats a value exactly, the level part compares
//! the new value, exact, with a median coded a little off it, and a series whose spread is tiny
//! scores that difference; residuals have no such exact repeats, and NAB does not move (54.1).

use std::collections::VecDeque;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Spreads (median or mean absolute deviations) from the anchor beyond which a value counts as
/// far: within them a value is held to 2⁻¹¹ × 64 = a 32nd of the spread.
const FAR: f64 = 64.0;
/// Far values after which the anchor is checked at once (a new level), not a turn later.
const FAR_VALUES: u32 = 4;

/// The largest finite half-precision number.
const MAX_HALF: f64 = 65504.0;
/// f64 bits of a half-precision number's magnitude shifted into place (exponent into the low
/// bits of f64's, mantissa into its top bits) are the number times 2⁻¹⁰⁰⁸, for normal and
/// subnormal numbers alike.
const SHIFT: u32 = 42;
const TWO_POW_1008: f64 = f64::from_bits((1008 + 1023) << 52);
const TWO_POW_M1008: f64 = f64::from_bits((1023 - 1008) << 52);

/// `x` (finite, |x| ≤ 65504) to the nearest half-precision number, ties to even.
fn to_half(x: f64) -> u16 {
    let sign = if x.is_sign_negative() { 0x8000 } else { 0 };
    let b = (x.abs() * TWO_POW_M1008).to_bits();
    let h = (b + (1 << (SHIFT - 1)) - 1 + ((b >> SHIFT) & 1)) >> SHIFT;
    sign | h.min(0x7bff) as u16
}

/// A half-precision number (finite) as f64.
#[inline]
fn from_half(h: u16) -> f64 {
    let h = u64::from(h);
    f64::from_bits(((h & 0x8000) << 48) | ((h & 0x7fff) << SHIFT)) * TWO_POW_1008
}

/// The smallest power of two `u` with `d / u` at most half the largest half-precision number
/// (so the next doubling is not needed at once), or `None` when `d` is 0 or not finite.
fn unit_for(d: f64) -> Option<f64> {
    let d = d.abs();
    if d == 0.0 || !d.is_finite() {
        return None;
    }
    let u = 2f64.powi((d / (MAX_HALF / 2.0)).log2().ceil() as i32);
    (u.is_finite() && u > 0.0).then_some(u)
}

/// The last residuals of a series, at most a given number, each as a half-precision offset from
/// `anchor` in units of `unit` (`anchor + half × unit`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ring {
    #[serde(with = "as_bytes")]
    codes: VecDeque<u16>,
    anchor: f64,
    /// A power of two, or 0 while every value held is the anchor.
    unit: f64,
    /// Values pushed since the anchor was last checked.
    fresh: u32,
    /// Values pushed since then farther than `near` from the anchor.
    far: u32,
    /// [`FAR`] spreads of the values held at the last check (0 before the first).
    near: f64,
}

impl Ring {
    /// Values held.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// The memory holding the codes.
    pub(crate) fn block(&self) -> super::ahead::Block {
        super::ahead::Block::of_deque(&self.codes)
    }
    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        2 * self.codes.capacity()
    }

    /// Heap bytes a ring of `cap` values holds at most.
    pub fn max_heap_bytes(cap: usize) -> usize {
        2 * cap
    }

    /// Forgets every value (the next one is the new anchor).
    pub fn clear(&mut self) {
        self.codes.clear();
    }

    /// Appends the values at positions `range` (oldest first) to `out`.
    #[inline]
    pub fn extend_into(&self, range: Range<usize>, out: &mut Vec<f64>) {
        let (anchor, unit) = (self.anchor, self.unit);
        // Clamped: a value pushed near the ends of f64's range may round past them.
        let (a, b) = super::values::slices(&self.codes, range);
        for part in [a, b] {
            out.extend(part.iter().map(|&c| (anchor + from_half(c) * unit).clamp(-f64::MAX, f64::MAX)));
        }
    }

    /// Appends `v`, dropping the oldest beyond `cap`; the codes are allocated once, at exactly
    /// `cap`. `v` must be finite.
    pub fn push(&mut self, v: f64, cap: usize) {
        if self.codes.len() >= cap {
            self.codes.pop_front();
        } else if self.codes.capacity() < cap {
            self.codes.reserve_exact(cap - self.codes.len());
        }
        if self.codes.is_empty() {
            (self.anchor, self.unit, self.fresh, self.far, self.near) = (v, 0.0, 0, 0, 0.0);
        }
        let d = v - self.anchor;
        if d != 0.0 && (self.unit == 0.0 || (d / self.unit).abs() > MAX_HALF) {
            if let Some(u) = unit_for(d) {
                self.rescale(u.max(self.unit));
            }
        }
        let code = if self.unit == 0.0 { 0 } else { to_half((d / self.unit).clamp(-MAX_HALF, MAX_HALF)) };
        self.codes.push_back(code);
        self.fresh = self.fresh.saturating_add(1);
        self.far += u32::from(d.abs() > self.near);
        if self.fresh as usize >= cap.max(16) || self.far >= FAR_VALUES {
            self.recentre();
        }
    }

    /// Codes every value held in units of `unit` instead.
    fn rescale(&mut self, unit: f64) {
        let old = self.unit;
        if old != 0.0 {
            let f = old / unit;
            for c in &mut self.codes {
                *c = to_half(from_half(*c) * f);
            }
        }
        self.unit = unit;
    }

    /// Moves the anchor to the median of the values held when it is more than a quarter of
    /// their spread from it, fits the unit to their reach from it when it is off by more than
    /// four times, and sets what counts as far from now on.
    fn recentre(&mut self) {
        (self.fresh, self.far) = (0, 0);
        let mut v = Vec::with_capacity(self.codes.len());
        self.extend_into(0..self.codes.len(), &mut v);
        let Some(med) = middle(&mut v) else { return };
        let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
        let reach = dev.iter().copied().fold(0.0, f64::max);
        let mean_ad = dev.iter().sum::<f64>() / dev.len() as f64;
        let mad = middle(&mut dev).unwrap_or(0.0);
        let spread = if mad > 0.0 { mad } else { mean_ad };
        self.near = FAR * spread;
        let unit = unit_for(reach).unwrap_or(0.0);
        if (med - self.anchor).abs() <= spread / 4.0 && (unit - self.unit).abs() <= 3.0 * unit.max(self.unit) / 4.0 {
            return;
        }
        // `v` was reordered by the selection: decode again, in order.
        v.clear();
        self.extend_into(0..self.codes.len(), &mut v);
        for (c, x) in self.codes.iter_mut().zip(&v) {
            *c = if unit == 0.0 { 0 } else { to_half(((x - med) / unit).clamp(-MAX_HALF, MAX_HALF)) };
        }
        (self.anchor, self.unit) = (med, unit);
    }
}

/// The codes in a checkpoint: two little-endian bytes each (postcard would spend up to three
/// on a varint).
mod as_bytes {
    use std::collections::VecDeque;
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(codes: &VecDeque<u16>, s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = codes.iter().flat_map(|c| c.to_le_bytes()).collect();
        s.serialize_bytes(&bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VecDeque<u16>, D::Error> {
        d.deserialize_bytes(Codes)
    }

    struct Codes;

    impl<'de> Visitor<'de> for Codes {
        type Value = VecDeque<u16>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an even number of bytes (16-bit codes, little-endian)")
        }

        fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Self::Value, E> {
            if !b.len().is_multiple_of(2) {
                return Err(E::invalid_length(b.len(), &self));
            }
            Ok(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
        }

        fn visit_byte_buf<E: de::Error>(self, b: Vec<u8>) -> Result<Self::Value, E> {
            self.visit_bytes(&b)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut b = Vec::new();
            while let Some(x) = seq.next_element::<u8>()? {
                b.push(x);
            }
            self.visit_bytes(&b)
        }
    }
}

/// The upper median of `v` (reordered), if it has values.
fn middle(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mid = v.len() / 2;
    Some(*v.select_nth_unstable_by(mid, f64::total_cmp).1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn held(r: &Ring) -> Vec<f64> {
        let mut out = Vec::new();
        r.extend_into(0..r.len(), &mut out);
        out
    }

    /// The largest distance of a value of `w` from the median of `w`.
    fn reach(w: &[f64]) -> f64 {
        let mut s = w.to_vec();
        let m = middle(&mut s).unwrap_or(0.0);
        w.iter().map(|x| (x - m).abs()).fold(0.0, f64::max)
    }

    /// Pushes `values` into a ring of `cap` and checks after every push that it holds the last
    /// `cap` of them in order, value `j` within `tol(j)` of what was pushed.
    fn check(values: &[f64], cap: usize, tol: impl Fn(usize) -> f64) -> Ring {
        let tol: Vec<f64> = (0..values.len()).map(tol).collect();
        let tol = |j: usize| tol[j];
        let mut r = Ring::default();
        for (i, &v) in values.iter().enumerate() {
            r.push(v, cap);
            let first = (i + 1).saturating_sub(cap);
            let got = held(&r);
            assert_eq!(got.len(), i + 1 - first);
            for (j, a) in (first..).zip(&got) {
                let b = values[j];
                assert!((a - b).abs() <= tol(j), "after {} values, value {j}: {a} against {b}, tolerance {}", i + 1, tol(j));
            }
        }
        r
    }

    /// The tolerance the ring promises for value `j`: a 256th of the reach of the values around
    /// it (those of every window that held it, and of the windows whose median was the anchor
    /// it was coded against).
    fn spread_tol(values: &[f64], cap: usize) -> impl Fn(usize) -> f64 + '_ {
        move |j| reach(&values[j.saturating_sub(2 * cap)..(j + cap).min(values.len())]) / 256.0 + values[j].abs() * 1e-15
    }

    /// Every finite half-precision number comes back bit for bit, and a number between two of
    /// them goes to the nearer one (ties to even), as IEEE 754 rounds.
    #[test]
    fn half_precision_round_trips_and_rounds_to_nearest() {
        for h in (0..=0xffffu16).filter(|h| h & 0x7c00 != 0x7c00) {
            assert_eq!(to_half(from_half(h)), h, "{h:#06x}");
        }
        assert_eq!(from_half(0x3c00), 1.0);
        assert_eq!(from_half(0x7bff), 65504.0);
        assert_eq!(from_half(0x0001), 2f64.powi(-24));
        assert_eq!(from_half(0xc000), -2.0);
        // 1 + 2⁻¹¹ lies half way between 1 and 1 + 2⁻¹⁰: to even (1); 1 + 3 × 2⁻¹¹ goes up.
        assert_eq!(to_half(1.0 + 2f64.powi(-11)), 0x3c00);
        assert_eq!(to_half(1.0 + 3.0 * 2f64.powi(-11)), 0x3c02);
        assert_eq!(to_half(1.0 + 1.1 * 2f64.powi(-11)), 0x3c01);
        assert_eq!(to_half(1e9), 0x7bff, "saturates");
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..10_000 {
            let x = rng.random_range(-1.0f64..1.0) * 2f64.powi(rng.random_range(-30..16));
            let back = from_half(to_half(x));
            assert!((back - x).abs() <= x.abs() * 2f64.powi(-11) + 2f64.powi(-25), "{x} -> {back}");
        }
    }

    /// A constant series is held exactly; a noisy one far from zero within a small fraction of
    /// its spread, from its first value on (the first value is the anchor).
    #[test]
    fn values_come_back_within_the_precision_of_their_spread() {
        let r = check(&[42.5; 100], 50, |_| 0.0);
        assert_eq!(held(&r), vec![42.5; 50]);

        let mut rng = StdRng::seed_from_u64(11);
        let v: Vec<f64> = (0..5000).map(|i| 1e9 + 30.0 * (i as f64 / 40.0).sin() + rng.random_range(-1.0..1.0)).collect();
        let r = check(&v, 264, |_| 60.0 / 1024.0);
        assert_eq!(r.heap_bytes(), 2 * 264);
        assert_eq!(r.heap_bytes(), Ring::max_heap_bytes(264));
    }

    /// A spike ten million times the spread leaves the other values as precise as before (a
    /// thousandth of their spread), and comes back within 2⁻¹⁰ of itself.
    #[test]
    fn a_spike_does_not_coarsen_the_other_values() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut v: Vec<f64> = (0..300).map(|_| 10.0 + rng.random_range(-0.01..0.01)).collect();
        v.push(1e5);
        v.extend((0..50).map(|_| 10.0 + rng.random_range(-0.01..0.01)));
        let r = check(&v, 100, |j| if v[j] > 1e4 { v[j] / 1024.0 } else { 0.02 / 1000.0 });
        assert_eq!(held(&r).iter().filter(|x| **x > 1e4).count(), 1);
    }

    /// After a step to a level a thousand spreads away, the values of the new level are held to
    /// 2⁻¹⁰ of the step while the old level is the median; once the new one is (half the
    /// ring, and four far values more), the anchor moves to it, the values of the old level still
    /// held are held to 2⁻¹⁰ of the step, and the values that follow are as precise as before it.
    #[test]
    fn a_new_level_gets_the_precision_back_once_it_is_the_median() {
        let mut rng = StdRng::seed_from_u64(8);
        let v: Vec<f64> = (0..800).map(|i| if i < 300 { 0.0 } else { 1e3 } + rng.random_range(-1.0..1.0)).collect();
        check(&v, 264, |j| if (300 - 132..300 + 132 + 4).contains(&j) { 1e3 / 1024.0 } else { 2.0 / 1000.0 });
    }

    /// Level steps, trends, signs, spikes, tiny and huge magnitudes: whatever comes, the ring
    /// holds the last `cap` values in order, each within a 256th of the reach of the values
    /// around it.
    #[test]
    fn any_series_keeps_its_values_within_the_precision_of_its_spread() {
        let mut rng = StdRng::seed_from_u64(3);
        for case in 0..48 {
            let scale = 10f64.powi(rng.random_range(-9..12));
            let offset = [0.0, 1e3, -1e6, 1e9][(case / 4) % 4] * scale;
            let cap = rng.random_range(5..300);
            let v: Vec<f64> = (0..2000)
                .map(|i| {
                    let mut x = offset + scale * rng.random_range(-1.0..1.0);
                    match case % 4 {
                        0 if i > 1000 => x += 1e3 * scale,
                        1 => x += scale * i as f64 * 0.1,
                        2 if i % 97 == 0 => x += 1e6 * scale,
                        _ => {}
                    }
                    x
                })
                .collect();
            check(&v, cap, spread_tol(&v, cap));
        }
    }

    /// A checkpointed ring is the same ring, in two bytes per value and a few more; a
    /// truncated one is an error, not a panic.
    #[test]
    fn a_ring_survives_encoding() {
        let mut r = Ring::default();
        for i in 0..70 {
            r.push(i as f64 * 0.5 - 3.0, 64);
        }
        let bytes = postcard::to_stdvec(&r).unwrap();
        let back: Ring = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(held(&back), held(&r));
        assert!(bytes.len() <= 64 * 2 + 32, "{} bytes", bytes.len());
        assert!(postcard::from_bytes::<Ring>(&bytes[..bytes.len() / 2]).is_err());
        let mut odd = vec![3u8, 1, 2, 3];
        odd.extend_from_slice(&bytes[130..]);
        assert!(postcard::from_bytes::<Ring>(&odd).is_err(), "an odd number of code bytes");
    }

    /// Values near the ends of f64's range make nothing infinite or NaN, and the ring is
    /// exact again once they have left.
    #[test]
    fn extreme_values_stay_finite() {
        let mut r = Ring::default();
        for v in [1.0, -1.0, f64::MAX, -f64::MAX, 0.5, f64::MIN_POSITIVE, 3.0, f64::MAX / 3.0] {
            r.push(v, 8);
            assert!(held(&r).iter().all(|v| v.is_finite()), "{:?}", held(&r));
        }
        for _ in 0..40 {
            r.push(2.0, 8);
        }
        assert_eq!(held(&r), vec![2.0; 8]);
    }
}
