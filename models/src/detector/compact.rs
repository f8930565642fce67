//! The compact parts of a series' detector state, each of bounded size whatever the series
//! sends: the seasonal history at reduced resolution in 8-bit codes ([`History`]), the
//! calibration histogram ([`Tail`]) and the refractory span's minima ([`Refractory`]).

use serde::{Deserialize, Serialize};

type Code = u8;
const CODE_MAX: f64 = Code::MAX as f64;

/// Slots of a [`History`].
pub(crate) const RING: usize = 256;

/// A series' recent values at reduced resolution, for the seasonal part: at most [`RING`]
/// slots, each the mean of `stride` consecutive values as an 8-bit code in the ring's frame
/// (`lo + code × step`). While the ring covers less than the seasons it must hold, a full ring
/// merges its slots in pairs and doubles the stride; otherwise the oldest slot goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "HistoryRepr", into = "HistoryRepr")]
pub(crate) struct History {
    codes: [Code; RING],
    head: u16,
    len: u16,
    stride: u32,
    /// Values pushed so far, up to `u32::MAX` (only compared with the values the ring spans).
    total: u32,
    lo: f64,
    step: f64,
    acc: f64,
    acc_n: u32,
}

#[derive(Serialize, Deserialize)]
struct HistoryRepr {
    codes: Vec<Code>,
    stride: u32,
    /// Values pushed so far.
    total: u64,
    lo: f64,
    step: f64,
    acc: f64,
    acc_n: u32,
}

impl From<History> for HistoryRepr {
    fn from(h: History) -> Self {
        Self { codes: (0..h.len as usize).map(|i| h.code(i)).collect(), stride: h.stride, total: u64::from(h.total), lo: h.lo, step: h.step, acc: h.acc, acc_n: h.acc_n }
    }
}

impl From<HistoryRepr> for History {
    fn from(r: HistoryRepr) -> Self {
        let mut h = History { stride: r.stride.max(1), total: u32::try_from(r.total).unwrap_or(u32::MAX), lo: r.lo, step: r.step, acc: r.acc, acc_n: r.acc_n, ..History::default() };
        for c in r.codes.into_iter().take(RING) {
            h.codes[h.len as usize] = c;
            h.len += 1;
        }
        h
    }
}

impl Default for History {
    fn default() -> Self {
        Self { codes: [0; RING], head: 0, len: 0, stride: 1, total: 0, lo: 0.0, step: 0.0, acc: 0.0, acc_n: 0 }
    }
}

impl History {
    /// Values the ring spans: its slots' and the ones being gathered into the next.
    fn spans(&self) -> u64 {
        u64::from(self.acc_n) + u64::from(self.len) * u64::from(self.stride)
    }
    /// Values per slot.
    pub fn stride(&self) -> usize {
        self.stride as usize
    }
    fn code(&self, i: usize) -> Code {
        self.codes[(self.head as usize + i) % RING]
    }
    fn decode(&self, c: Code) -> f64 {
        self.lo + f64::from(c) * self.step
    }
    fn slot(&self, i: usize) -> f64 {
        self.decode(self.code(i))
    }
    /// The slots as values, oldest first.
    pub fn values(&self, out: &mut Vec<f64>) {
        out.clear();
        out.extend((0..self.len as usize).map(|i| self.slot(i)));
    }
    /// Addresses of the two cache lines a value's [`Self::push`] touches: the counters and the
    /// slot it writes next (for a prefetch).
    pub(crate) fn hot_lines(&self) -> [usize; 2] {
        [std::ptr::from_ref(&self.acc_n) as usize, std::ptr::from_ref(&self.codes[(self.head as usize + self.len as usize) % RING]) as usize]
    }
    /// Learns `x`. `cover` is how many values the ring must span (the seasons of the longest
    /// period); `period`, when one is known, is never merged below four slots.
    pub fn push(&mut self, x: f64, cover: usize, period: Option<usize>) {
        self.total = self.total.saturating_add(1);
        self.acc_n += 1;
        // A running mean: a sum of values near f64::MAX would overflow.
        self.acc += (x - self.acc) / f64::from(self.acc_n);
        if self.acc_n >= self.stride {
            let v = self.acc;
            self.acc = 0.0;
            self.acc_n = 0;
            self.append(v, cover, period);
        }
    }
    fn append(&mut self, v: f64, cover: usize, period: Option<usize>) {
        if self.len as usize == RING {
            let spans = RING * self.stride as usize;
            let keeps_period = period.is_none_or(|p| p >= 8 * self.stride as usize);
            if spans < cover && keeps_period {
                self.merge_pairs();
            } else {
                self.head = ((self.head as usize + 1) % RING) as u16;
                self.len -= 1;
            }
        }
        let c = self.encode(v);
        self.codes[(self.head as usize + self.len as usize) % RING] = c;
        self.len += 1;
    }
    /// Halves the resolution: slots merge in pairs and the frame is refitted to what is left.
    fn merge_pairs(&mut self) {
        let mut merged: Vec<f64> = (0..self.len as usize / 2).map(|i| (self.slot(2 * i) + self.slot(2 * i + 1)) / 2.0).collect();
        if self.len % 2 == 1 {
            merged.push(self.slot(self.len as usize - 1));
        }
        self.stride *= 2;
        self.refit(&merged);
    }
    /// Re-encodes `vals` (oldest first) in a frame fitted to them.
    fn refit(&mut self, vals: &[f64]) {
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        self.reframe(lo, hi, vals);
    }
    /// Re-encodes `vals` (oldest first) in the frame `lo..=hi`.
    fn reframe(&mut self, lo: f64, hi: f64, vals: &[f64]) {
        self.head = 0;
        self.len = 0;
        if vals.is_empty() {
            return;
        }
        self.lo = lo;
        self.step = (hi - lo) / CODE_MAX;
        for &v in vals {
            let c = self.quantise(v);
            self.codes[self.len as usize] = c;
            self.len += 1;
        }
    }
    fn quantise(&self, v: f64) -> Code {
        if self.step > 0.0 { ((v - self.lo) / self.step).round().clamp(0.0, CODE_MAX) as Code } else { 0 }
    }
    /// The code of `v`, widening the frame (by an eighth of the new range each side) when `v`
    /// falls outside it.
    fn encode(&mut self, v: f64) -> Code {
        if self.len == 0 {
            self.lo = v;
            self.step = 0.0;
            return 0;
        }
        let (lo, hi) = (self.lo, self.lo + CODE_MAX * self.step);
        if v < lo || v > hi {
            let margin = (hi.max(v) - lo.min(v)) / 8.0;
            let mut vals = Vec::with_capacity(self.len as usize);
            self.values(&mut vals);
            self.reframe(if v < lo { v - margin } else { lo }, if v > hi { v + margin } else { hi }, &vals);
        }
        self.quantise(v)
    }
    /// The value `back` values before the next one is pushed (1 for the last pushed), read
    /// between slot centres; `None` when the ring does not reach back that far.
    ///
    /// Also `None` while the slots span more values than were pushed: for a while after a
    /// merge, the slots appended count at the new stride while each holds the mean of the old
    /// stride's values. The seasonal part has always skipped its baseline then; reading the
    /// slots anyway was measured to cost NAB's standard score 1.4 points (54.1 to 52.7).
    #[inline]
    pub fn value_back(&self, back: u64) -> Option<f64> {
        let stride = f64::from(self.stride);
        let spans = self.spans();
        if back > spans || spans > u64::from(self.total) || self.len == 0 {
            return None;
        }
        // Its distance from the oldest value the ring spans.
        let u = ((spans - back) as f64 + 0.5) / stride - 0.5;
        let last = self.len as usize - 1;
        if u <= 0.0 {
            return Some(self.slot(0));
        }
        let i = (u.floor() as usize).min(last);
        if i >= last {
            return Some(self.slot(last));
        }
        let f = u - i as f64;
        Some(self.slot(i) * (1.0 - f) + self.slot(i + 1) * f)
    }
}

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
        let bins = &mut self.bins;
        learn(&mut self.counts, z, cap, bins, |bins, len| {
            let mut v = Vec::with_capacity(len);
            v.extend(bins.iter().copied().take(len));
            v.resize(len, 0);
            *bins = v.into_boxed_slice();
        });
    }
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
        let mine = &self.words[part_range(self.words, self.k)];
        let mut bins = Vec::with_capacity(len);
        bins.extend(mine.iter().copied().take(len));
        bins.resize(len, 0);
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

/// The sliding minimum of `p` over the refractory span: (value number, p) with increasing `p`
/// (at most one entry per value of the span, usually a handful), `p` in single precision.
///
/// An entry is three 16-bit words: its value number modulo 2¹⁶ (a span is at most
/// [`MAX_SPAN`] values, and an entry leaves once it is a span old, so its age is the
/// difference modulo 2¹⁶), then `p`'s bits. The entries lie at the start of one boxed slice,
/// oldest first, and the room after them is marked by a NaN `p` (no entry's is): the queue is a
/// 16-byte pointer where a `VecDeque` of (u32, f32) took 32 bytes of the struct and 8 bytes an
/// entry. An entry leaves at the front by the others moving down, a handful of them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Refractory {
    q: Box<[u16]>,
}

/// The longest refractory span: an entry's age must fit 16 bits.
pub const MAX_SPAN: usize = u16::MAX as usize;

/// Words of a [`Refractory`] entry.
const ENTRY: usize = 3;

/// A slot of a [`Refractory`] queue's room: a NaN `p`.
const ROOM_SLOT: [u16; ENTRY] = [0, 0, 0x7fc0];

/// Entries a [`Refractory`] queue's room grows by, and keeps spare after it shrinks.
const ROOM: usize = 2;

impl PartialEq for Refractory {
    fn eq(&self, other: &Self) -> bool {
        self.q[..ENTRY * self.len()] == other.q[..ENTRY * other.len()]
    }
}

impl Serialize for Refractory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // As the `VecDeque` of (u32, f32) it was, the value numbers modulo 2¹⁶.
        s.collect_seq((0..self.len()).map(|i| (u32::from(self.at(i)), self.p(i))))
    }
}

impl<'de> Deserialize<'de> for Refractory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<(u32, f32)>::deserialize(d)?;
        let mut q = Vec::with_capacity(ENTRY * entries.len());
        // A NaN would read as room; a damaged checkpoint's are dropped. A value number of an
        // older checkpoint (32 bits) is the same modulo 2¹⁶.
        for (at, p) in entries.into_iter().filter(|e| !e.1.is_nan()) {
            q.extend(entry(at as u16, p));
        }
        Ok(Self { q: q.into_boxed_slice() })
    }
}

/// The words of an entry.
#[inline(always)]
fn entry(at: u16, p: f32) -> [u16; ENTRY] {
    let bits = p.to_bits();
    [at, bits as u16, (bits >> 16) as u16]
}

impl Refractory {
    /// Value number (modulo 2¹⁶) of entry `i`.
    #[inline(always)]
    fn at(&self, i: usize) -> u16 {
        self.q[ENTRY * i]
    }
    /// `p` of entry `i` (NaN for room).
    #[inline(always)]
    fn p(&self, i: usize) -> f32 {
        f32::from_bits(u32::from(self.q[ENTRY * i + 1]) | (u32::from(self.q[ENTRY * i + 2]) << 16))
    }
    /// Entries and room.
    fn slots(&self) -> usize {
        self.q.len() / ENTRY
    }
    /// Entries held.
    #[inline(always)]
    pub fn len(&self) -> usize {
        (0..self.slots()).position(|i| self.p(i).is_nan()).unwrap_or(self.slots())
    }
    /// Sets slot `i`.
    #[inline(always)]
    fn set(&mut self, i: usize, words: [u16; ENTRY]) {
        self.q[ENTRY * i..ENTRY * (i + 1)].copy_from_slice(&words);
    }
    /// Makes room for `room` entries, keeping the first `len`.
    #[cold]
    fn resize(&mut self, len: usize, room: usize) {
        let mut q = Vec::with_capacity(ENTRY * room);
        q.extend_from_slice(&self.q[..ENTRY * len]);
        while q.len() < ENTRY * room {
            q.extend(ROOM_SLOT);
        }
        self.q = q.into_boxed_slice();
    }
    /// Whether value number `seen` with probability `p` repeats a value at least as surprising
    /// within the last `span` values (at most [`MAX_SPAN`]); then remembers it.
    #[inline]
    pub fn check(&mut self, seen: u64, p: f64, span: usize) -> bool {
        let span = span.min(MAX_SPAN);
        let now = seen as u16;
        let mut len = self.len();
        let gone = (0..len).take_while(|&i| usize::from(now.wrapping_sub(self.at(i))) >= span).count();
        if gone > 0 {
            self.q.copy_within(ENTRY * gone..ENTRY * len, 0);
            for i in len - gone..len {
                self.set(i, ROOM_SLOT);
            }
            len -= gone;
        }
        // (A NaN cannot come: a probability is at most 1.)
        let pf = if p.is_nan() { 1.0 } else { p as f32 };
        let repeat = len > 0 && self.p(0) <= pf;
        while len > 0 && self.p(len - 1) >= pf {
            len -= 1;
            self.set(len, ROOM_SLOT);
        }
        if span > 0 {
            // Room grows two entries at a time rather than doubling: the queue holds about five
            // entries on average and rarely a dozen, and doubled room stays mostly empty.
            if len == self.slots() {
                self.resize(len, len + ROOM);
            }
            self.set(len, entry(now, pf));
            len += 1;
        }
        // A queue that grew for a run of rising values gives the room back once it holds four
        // times the growth step more than it needs (kept, it would hold the largest run ever
        // seen).
        if self.slots() >= len + 4 * ROOM {
            self.resize(len, len + ROOM);
        }
        repeat
    }
    /// The memory holding the entries.
    pub(crate) fn block(&self) -> super::ahead::Block {
        super::ahead::Block::of_slice(&self.q)
    }
    /// Bytes owned beyond the struct.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_merges_to_cover_its_seasons_and_reads_values_back() {
        let mut h = History::default();
        let y = |i: u64| 100.0 + 20.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin();
        for i in 0..2000u64 {
            h.push(y(i), 3 * 288 + 1, None);
        }
        assert_eq!(h.stride(), 4, "256 slots of 4 cover 3 cycles of 288");
        assert!((256 * 4..257 * 4).contains(&h.spans()), "256 slots and the values gathered into the next");
        for back in [288u64, 576, 864] {
            let v = h.value_back(back).expect("within the ring");
            assert!((v - y(2000 - back)).abs() < 0.5, "{back}: {v} against {}", y(2000 - back));
        }
        assert!(h.value_back(1100).is_none());
        // A known period of 12 is never merged below four slots: once, to six slots of two.
        let mut h = History::default();
        for i in 0..5000u64 {
            h.push((i % 12) as f64, 3 * 1440 + 1, Some(12));
        }
        assert_eq!(h.stride(), 2);
        // A value outside the frame widens it; the older values keep their place.
        let mut h = History::default();
        for i in 0..100u64 {
            h.push(i as f64, 1000, None);
        }
        h.push(1e4, 1000, None);
        assert!((h.value_back(51).unwrap() - 50.0).abs() < 30.0);
        assert!((h.value_back(1).unwrap() - 1e4).abs() < 30.0);
    }

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

    #[test]
    fn refractory_span_remembers_its_minimum_and_forgets_it_after_the_span() {
        let mut r = Refractory::default();
        assert!(!r.check(1, 1e-4, 10));
        assert!(r.check(2, 1e-3, 10), "less surprising within the span");
        assert!(!r.check(3, 1e-5, 10), "more surprising");
        assert!(!r.check(14, 1e-3, 10), "after the span");
        assert_eq!(r.len(), 1, "only the minimum of the span is left");
    }

    /// The queue answers as a plain sliding minimum does, across the wrap of its 16-bit value
    /// numbers, and gives back the room a long run of rising values took.
    #[test]
    fn refractory_queue_answers_as_a_sliding_minimum_and_gives_room_back() {
        let mut r = Refractory::default();
        let mut x = 7u64;
        let mut ps = Vec::new();
        // Across the 16-bit wrap of the value numbers.
        for i in 0..5000u64 {
            let seen = 63_000 + i;
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            // Runs of rising values now and then.
            let p = if (1000..1100).contains(&i) { i as f64 * 1e-4 } else { (x >> 11) as f64 / (1u64 << 53) as f64 };
            let span = 120;
            let window = &ps[ps.len().saturating_sub(span - 1)..];
            let expect = window.iter().any(|m: &f32| *m <= p as f32);
            assert_eq!(r.check(seen, p, span), expect, "value {seen}");
            ps.push(p as f32);
            if i == 1099 {
                assert!(r.heap_bytes() >= 6 * 100, "the run is held");
            }
            // Room is never more than a few entries beyond what is held.
            assert!(r.heap_bytes() < 6 * (r.len() + 4 * ROOM), "{} bytes for {} entries at value {seen}", r.heap_bytes(), r.len());
            if i % 97 == 0 {
                // Encoded as the `VecDeque` of its entries was, and read back the same.
                let bytes = postcard::to_stdvec(&r).unwrap();
                let deque: std::collections::VecDeque<(u32, f32)> = (0..r.len()).map(|i| (u32::from(r.at(i)), r.p(i))).collect();
                assert_eq!(bytes, postcard::to_stdvec(&deque).unwrap());
                let back: Refractory = postcard::from_bytes(&bytes).unwrap();
                assert_eq!((back.len(), &back), (r.len(), &r));
                // A checkpoint of 32-bit value numbers reads as the same queue.
                let wide: Vec<(u32, f32)> = deque.iter().map(|&(at, p)| (at | (seen as u32 & !0xffff) | 0x0007_0000, p)).collect();
                let back: Refractory = postcard::from_bytes(&postcard::to_stdvec(&wide).unwrap()).unwrap();
                assert_eq!(back, r);
            }
        }
    }
}
