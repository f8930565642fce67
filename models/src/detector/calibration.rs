//! The calibration of a part's deviations: tail counts in log-spaced bins ([`Tail`]), the level
//! and shift parts' sharing one heap block ([`Tails`]), each holding only the bins up to the
//! highest one counted.

use serde::{Deserialize, Serialize};

/// Bins of a [`Tail`].
pub(crate) const BINS: usize = 40;
const Z0: f64 = 0.1;
/// ln(1e5) / 38: the bins span |z| from 0.1 to 10,000 (about 1.35 times per bin).
const STEP: f64 = 0.302_97;
/// Exponent of the power-law tail beyond the largest statistic remembered.
const TAIL_POWER: f64 = 2.0;
/// A statistic counts this much in a bin: halving keeps two bits of what it halves, so a lone
/// extreme fades over two halvings rather than vanishing at the first.
const UNIT: u16 = 4;

/// Tail counts of a part's recent statistics: log-spaced bins of 16-bit fixed-point counts.
/// When they hold `calibration` statistics every count is halved (the older statistics fade
/// out), so between half and all of the last `calibration` weigh in.
///
/// Only the bins up to the highest one counted are held, on the heap: a part's deviations
/// mostly stay within a few robust standard deviations (ten of the forty bins reach |z| = 1.6,
/// seventeen |z| = 13), and the bins above them would be zeros (80 bytes in the struct before).
/// [`Tails`] holds two parts' bins in one block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "TailRepr", into = "TailRepr")]
pub(crate) struct Tail {
    /// Bins `0..bins.len()`; every bin above is 0, and the last one held is not.
    bins: Box<[u16]>,
    counts: Counts,
}

/// The level and shift parts' calibrations ([`Tail`]), their bins one after the other in one
/// block: one allocation and one block to fetch ahead, where two tails take two.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Tails {
    /// The number of the first part's bins, then its bins, then the second's (nothing while
    /// neither holds a bin). The count is kept in the block rather than in the struct, where
    /// it would take 8 bytes with the padding after it.
    words: Box<[u16]>,
    counts: [Counts; 2],
}

/// Where part `k`'s bins lie in a [`Tails`] block.
#[inline(always)]
fn part_range(words: &[u16], k: usize) -> std::ops::Range<usize> {
    let Some(&split) = words.first() else { return 0..0 };
    let split = 1 + usize::from(split);
    if k == 0 { 1..split } else { split..words.len() }
}

/// What a calibration keeps beside its bins.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    /// Sum of the bins.
    n: u32,
    /// Largest statistic since the last halving, and before it.
    max: [f32; 2],
}

/// A calibration as read: its bins (up to the highest one counted) and counts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TailRef<'a> {
    bins: &'a [u16],
    counts: Counts,
}

#[derive(Serialize, Deserialize)]
struct TailRepr {
    bins: Vec<u16>,
    max: [f32; 2],
}

/// [`TailRepr`] borrowed: encoded the same.
#[derive(Serialize)]
struct TailReprRef<'a> {
    bins: &'a [u16],
    max: [f32; 2],
}

impl TailRepr {
    /// The bins up to the highest one counted, and their counts.
    fn into_parts(self) -> (Vec<u16>, Counts) {
        let mut bins = self.bins;
        bins.truncate(BINS);
        bins.truncate(held(&bins));
        let n = bins.iter().map(|c| u32::from(*c)).sum();
        (bins, Counts { n, max: self.max })
    }
}

impl From<Tail> for TailRepr {
    fn from(t: Tail) -> Self {
        Self { bins: t.bins.into_vec(), max: t.counts.max }
    }
}

impl From<TailRepr> for Tail {
    fn from(r: TailRepr) -> Self {
        let (bins, counts) = r.into_parts();
        Tail { bins: bins.into_boxed_slice(), counts }
    }
}

impl Serialize for Tails {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        // As `[Tail; 2]` was: a tuple of two.
        let mut t = s.serialize_tuple(2)?;
        for k in 0..2 {
            t.serialize_element(&TailReprRef { bins: &self.words[part_range(&self.words, k)], max: self.counts[k].max })?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Tails {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let [a, b] = <[TailRepr; 2]>::deserialize(d)?;
        let ((first_bins, first), (second_bins, second)) = (a.into_parts(), b.into_parts());
        Ok(Tails { words: tails_block(&first_bins, &second_bins), counts: [first, second] })
    }
}

/// Bins up to the highest nonzero one.
fn held(bins: &[u16]) -> usize {
    bins.iter().rposition(|c| *c > 0).map_or(0, |b| b + 1)
}

fn position(z: f64) -> f64 {
    if z <= Z0 { 0.0 } else { (1.0 + (z / Z0).ln() / STEP).min((BINS - 1) as f64) }
}

/// Bytes a calibration's bins take on the heap at most.
pub(crate) const TAIL_MAX_HEAP_BYTES: usize = BINS * std::mem::size_of::<u16>();

impl Tail {
    /// The calibration, to read.
    #[inline(always)]
    pub fn get(&self) -> TailRef<'_> {
        TailRef { bins: &self.bins, counts: self.counts }
    }
    /// Bytes the bins take on the heap.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.bins)
    }
    /// Remembers `z`; `cap` statistics (or a full bin) make every count halve.
    #[inline]
    pub fn push(&mut self, z: f64, cap: usize) {
        learn(&mut self.counts, z, cap, &mut self.bins, |bins, len| *bins = resized(bins, len).into_boxed_slice());
    }
}

/// The first `len` of `bins`, with zeros after them up to `len`.
fn resized(bins: &[u16], len: usize) -> Vec<u16> {
    let mut v = Vec::with_capacity(len);
    v.extend(bins.iter().copied().take(len));
    v.resize(len, 0);
    v
}

/// A [`Tails`] block of two parts' bins (nothing when both are empty).
fn tails_block(first: &[u16], second: &[u16]) -> Box<[u16]> {
    if first.is_empty() && second.is_empty() {
        return Box::default();
    }
    let mut v = Vec::with_capacity(1 + first.len() + second.len());
    // At most `BINS` bins a part.
    v.push(first.len() as u16);
    v.extend_from_slice(first);
    v.extend_from_slice(second);
    v.into_boxed_slice()
}

impl Tails {
    /// Part `k`'s calibration (0 or 1), to read.
    #[inline(always)]
    pub fn get(&self, k: usize) -> TailRef<'_> {
        TailRef { bins: &self.words[part_range(&self.words, k)], counts: self.counts[k] }
    }
    /// Bytes the block takes on the heap.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.words)
    }
    /// The memory holding the bins.
    pub(crate) fn block(&self) -> super::ahead::Block {
        super::ahead::Block::of_slice(&self.words)
    }
    /// Remembers `z` in part `k`'s calibration (see [`Tail::push`]).
    #[inline]
    pub fn push(&mut self, k: usize, z: f64, cap: usize) {
        let mut part = PartBins { words: &mut self.words, k };
        learn(&mut self.counts[k], z, cap, &mut part, |p, len| p.resize(len));
    }
}

/// One part's bins inside a [`Tails`] block, as [`learn`] changes them.
struct PartBins<'a> {
    words: &'a mut Box<[u16]>,
    k: usize,
}

impl PartBins<'_> {
    /// Holds `len` bins for this part: new ones at 0, only zeros given back.
    fn resize(&mut self, len: usize) {
        let bins = resized(&self.words[part_range(self.words, self.k)], len);
        let other = &self.words[part_range(self.words, 1 - self.k)];
        let block = if self.k == 0 { tails_block(&bins, other) } else { tails_block(other, &bins) };
        *self.words = block;
    }
}

impl std::ops::Deref for PartBins<'_> {
    type Target = [u16];
    fn deref(&self) -> &[u16] {
        &self.words[part_range(self.words, self.k)]
    }
}

impl std::ops::DerefMut for PartBins<'_> {
    fn deref_mut(&mut self) -> &mut [u16] {
        let r = part_range(self.words, self.k);
        &mut self.words[r]
    }
}

/// Remembers `z` in a calibration whose bins `bins` hold (`resize` holds that many, new ones
/// at 0); `cap` statistics (or a full bin) make every count halve.
#[inline(always)]
fn learn<B: std::ops::DerefMut<Target = [u16]>>(counts: &mut Counts, z: f64, cap: usize, bins: &mut B, resize: impl Fn(&mut B, usize)) {
    let b = position(z) as usize;
    let cap = u32::try_from(cap).unwrap_or(u32::MAX / 8).saturating_mul(u32::from(UNIT));
    if counts.n >= cap || bins.get(b).is_some_and(|c| *c > u16::MAX - UNIT) {
        halve(counts, bins, &resize);
    }
    if b >= bins.len() {
        resize(bins, b + 1);
    }
    bins[b] += UNIT;
    counts.n += u32::from(UNIT);
    counts.max[0] = counts.max[0].max(z as f32);
}

/// Halves every count: the statistics of the epoch before the last are forgotten with their
/// maximum, and the bins above the highest one still counted are given back.
#[cold]
fn halve<B: std::ops::DerefMut<Target = [u16]>>(counts: &mut Counts, bins: &mut B, resize: &impl Fn(&mut B, usize)) {
    for c in bins.iter_mut() {
        *c /= 2;
    }
    counts.n = bins.iter().map(|c| u32::from(*c)).sum();
    let held = held(bins);
    // The largest statistic left is no larger than the top of the highest bin still counted.
    let top = held.checked_sub(1).map_or(0.0, |b| Z0 * (b as f64 * STEP).exp());
    counts.max = [0.0, (f64::from(counts.max[0]).min(top)) as f32];
    if held < bins.len() {
        resize(bins, held);
    }
}

impl TailRef<'_> {
    /// Statistics remembered (halved ones count half).
    pub fn total(&self) -> u32 {
        self.counts.n / u32::from(UNIT)
    }
    fn max(&self) -> f64 {
        f64::from(self.counts.max[0].max(self.counts.max[1]))
    }
    fn count(&self, b: usize) -> f64 {
        f64::from(self.bins.get(b).copied().unwrap_or(0)) / f64::from(UNIT)
    }
    /// Probability that a statistic at least `z` occurs: the share of remembered statistics at
    /// least as large; beyond the largest one a power-law tail, so that a deviation beyond
    /// anything seen still gets a finite, ordered probability.
    #[inline]
    pub fn survival(&self, z: f64) -> f64 {
        let n = f64::from(self.counts.n) / f64::from(UNIT);
        let max = self.max();
        // Compared at the precision the maximum is kept in: a statistic equal to the largest
        // one seen is not beyond it.
        if f64::from(z as f32) > max {
            return if max <= 0.0 { 0.0 } else { (max / z).powf(TAIL_POWER) / (n + 1.0) };
        }
        let pos = position(z);
        let b = pos as usize;
        let frac = pos - b as f64;
        // The whole bins above are counted in integers: one vectorised sum instead of a chain of
        // dependent floating-point additions (a tenth of the detector's time per value).
        let whole: u32 = self.bins.get(b + 1..).unwrap_or_default().iter().map(|c| u32::from(*c)).sum();
        let above = self.count(b) * (1.0 - frac) + f64::from(whole) / f64::from(UNIT);
        ((above + 1.0) / (n + 1.0)).min(1.0)
    }
    /// The smallest |z| whose survival is at most `p` (the edge of the normal band), read
    /// within a bin as [`Self::survival`] does.
    #[inline]
    pub fn quantile(&self, p: f64) -> f64 {
        let n = f64::from(self.counts.n) / f64::from(UNIT);
        let p = p.max(1e-300);
        if p < 1.0 / (n + 1.0) {
            return self.max() * (1.0 / ((n + 1.0) * p)).powf(1.0 / TAIL_POWER);
        }
        let target = p * (n + 1.0) - 1.0; // count at or above the answer
        if target < 0.0 {
            // Rounding, at p = 1 / (n + 1): the top bin holds the answer, at its top edge, as it
            // did when all forty bins were searched.
            return (Z0 * ((BINS - 1) as f64 * STEP).exp()).min(self.max());
        }
        let mut above = 0.0;
        // The bins above those held count 0: none of them holds the answer.
        for b in (0..self.bins.len()).rev() {
            let c = self.count(b);
            if above + c > target {
                if b == 0 {
                    return Z0;
                }
                // survival within bin b: above + c × (1 − frac) = target.
                let frac = (1.0 - (target - above) / c).clamp(0.0, 1.0);
                return (Z0 * ((b as f64 - 1.0 + frac) * STEP).exp()).min(self.max());
            }
            above += c;
        }
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two parts' calibrations sharing one block answer as two calibrations of their own do,
    /// through growth, halving and bins given back, hold only the bins up to the highest one
    /// counted, and are encoded as two of their own were.
    #[test]
    fn tails_sharing_a_block_answer_and_encode_as_two_tails() {
        let (mut pair, mut alone) = (Tails::default(), [Tail::default(), Tail::default()]);
        let mut x = 11u64;
        for i in 0..6_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            // Mostly small deviations, now and then a large one (new bins), and a calibration
            // of 500 so that the counts halve and the top bins empty again.
            let z = if i % 211 == 0 { 50.0 + 5_000.0 * u } else { -u.ln() };
            let k = (x >> 3) as usize % 2;
            pair.push(k, z, 500);
            alone[k].push(z, 500);
            for (k, one) in alone.iter().enumerate() {
                let (a, b) = (pair.get(k), one.get());
                assert_eq!(a.bins, b.bins, "part {k} at {i}");
                assert_eq!((a.total(), a.counts), (b.total(), b.counts));
                for z in [0.05, 0.5, 1.0, 3.0, 20.0, 300.0, 1e4] {
                    assert_eq!(a.survival(z).to_bits(), b.survival(z).to_bits());
                }
                for q in [0.5, 0.01, 1e-3, 1e-6] {
                    assert_eq!(a.quantile(q).to_bits(), b.quantile(q).to_bits());
                }
                assert!(a.bins.last().is_none_or(|c| *c > 0), "only bins up to the highest counted");
            }
        }
        assert_eq!(pair.heap_bytes(), 2 + alone[0].heap_bytes() + alone[1].heap_bytes(), "the bins and the first part's count");
        let bytes = postcard::to_stdvec(&pair).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&alone).unwrap(), "encoded as [Tail; 2]");
        let back: Tails = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, pair);
        // A checkpoint's forty bins with zeros on top are read back as the bins held.
        let full = TailRepr { bins: (0..BINS as u16).map(|b| if b < 3 { 4 } else { 0 }).collect(), max: [0.5, 0.0] };
        let t = Tail::from(full);
        assert_eq!((t.heap_bytes(), t.get().total()), (6, 3));
    }
}
