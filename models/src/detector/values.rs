//! A series' last values as offsets from an anchor: [`Values`].
//!
//! The level and shift parts take medians of these offsets, so they are held exactly as single
//! precision floats would hold them: a series that repeats a value must find it again, exact, in
//! the median (16-bit codes over the ring's range, or half precision, cost NAB 2.1 to 4.2 points;
//! see the residual ring). Most operational metrics are quantised, though: counts, bytes,
//! percentages with one or two decimals, milliseconds. When every offset of the ring is a whole
//! multiple of one unit (a power of ten from 10⁻⁶ to 10⁶, or 5, 2.5, 2 or 1.25 times one) within
//! ±32,767 of it, and that multiple converts back to the very same single precision float, the
//! ring holds those multiples instead of floats, bit for bit the same values; a full ring packs
//! them in as many bits as the multiples held span (a metric with two decimals moving within ±5
//! takes 10 bits a value instead of 32), a filling one in 16. A value that no unit codes turns
//! the ring into floats until the ring is coded anew (at a new anchor).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Units a ring's codes count in: the powers of ten (the only units of checkpoints written
/// before the others were added: the index is what a checkpoint holds), then 5, 2.5, 2 and 1.25
/// times them, so that the mean of two, four, five or eight values with two decimals is coded
/// too. The coarsest unit that codes every value is kept: the codes span the fewest steps.
const QUANTA: [f64; 65] = [
    1e6, 1e5, 1e4, 1e3, 1e2, 1e1, 1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 5e5, 2.5e5, 2e5, 1.25e5, 5e4, 2.5e4, 2e4, 1.25e4, 5e3,
    2.5e3, 2e3, 1.25e3, 5e2, 2.5e2, 2e2, 1.25e2, 5e1, 2.5e1, 2e1, 1.25e1, 5e0, 2.5e0, 2e0, 1.25e0, 5e-1, 2.5e-1, 2e-1, 1.25e-1, 5e-2,
    2.5e-2, 2e-2, 1.25e-2, 5e-3, 2.5e-3, 2e-3, 1.25e-3, 5e-4, 2.5e-4, 2e-4, 1.25e-4, 5e-5, 2.5e-5, 2e-5, 1.25e-5, 5e-6, 2.5e-6, 2e-6,
    1.25e-6, 5e-7, 2.5e-7, 2e-7, 1.25e-7,
];
/// Indices of [`QUANTA`], coarsest unit first.
const COARSEST_FIRST: [u8; 65] = [
    0, 13, 14, 15, 16, 1, 17, 18, 19, 20, 2, 21, 22, 23, 24, 3, 25, 26, 27, 28, 4, 29, 30, 31, 32, 5, 33, 34, 35, 36, 6, 37, 38, 39, 40, 7,
    41, 42, 43, 44, 8, 45, 46, 47, 48, 9, 49, 50, 51, 52, 10, 53, 54, 55, 56, 11, 57, 58, 59, 60, 12, 61, 62, 63, 64,
];

/// `QUANTA[q]`. A unit index out of range can only come from a damaged checkpoint: it reads as
/// the finest decimal unit instead of stopping the process.
#[inline(always)]
fn unit(q: usize) -> f64 {
    QUANTA.get(q).copied().unwrap_or(1e-6)
}

/// The code of `offset` in units of `QUANTA[q]`, if it decodes to exactly `offset`.
fn code(offset: f32, q: usize) -> Option<i16> {
    let k = (f64::from(offset) / unit(q)).round();
    if !(-32767.0..=32767.0).contains(&k) {
        return None;
    }
    let k = k as i16;
    (decode(k, q).to_bits() == offset.to_bits()).then_some(k)
}

#[inline]
fn decode(k: i16, q: usize) -> f32 {
    (f64::from(k) * unit(q)) as f32
}

/// `quantum` of a ring that holds the offsets' own bits.
const FLOATS: u8 = u8::MAX;

/// The last values of a series as single precision offsets (see the module docs), in a ring of
/// `cap` slots of `width` bits each, packed: a slot holds a float's bits, or a
/// code less `base`, in as many bits as the codes held span (none when they are all the same).
#[derive(Debug, Clone, Default)]
pub(crate) struct Values {
    /// The slots, in at least eight bytes (a slot is read as the eight bytes it starts in, or
    /// as the block's last eight: see [`word_of`]); empty when the slots take no bits.
    bytes: Box<[u8]>,
    /// Slot of the oldest value, values held, and slots.
    head: u32,
    len: u32,
    cap: u32,
    /// Bits a slot takes: 32 for floats, at most 16 for codes.
    width: u8,
    /// Index in `QUANTA` of the codes' unit, or [`FLOATS`].
    quantum: u8,
    /// The code a slot of 0 stands for.
    base: i16,
}

/// Bytes that `cap` slots of `width` bits take: as many as their bits fill, and at least the
/// eight a slot is read as.
fn bytes_for(cap: usize, width: u8) -> usize {
    if width == 0 {
        0
    } else {
        (cap * usize::from(width)).div_ceil(8).max(8)
    }
}

/// The smallest and largest of `codes` (`(i16::MAX, i16::MIN)` for none).
fn bounds(codes: &[i16]) -> (i16, i16) {
    codes.iter().fold((i16::MAX, i16::MIN), |(lo, hi), k| (lo.min(*k), hi.max(*k)))
}

/// Bits that codes from `lo` to `hi` take as offsets from `lo`.
fn width_for(lo: i16, hi: i16) -> u8 {
    let span = (i32::from(hi) - i32::from(lo)) as u32;
    (32 - span.leading_zeros()) as u8
}

/// The eight bytes of `bytes` from `i`, little-endian.
#[inline(always)]
fn eight(bytes: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(bytes[i..i + 8].try_into().expect("eight bytes"))
}

/// The first of the eight bytes of a block of `len` (at least eight) that hold the slot at
/// `bit`, and the slot's shift in them: the eight bytes the slot starts in, or, for the last
/// few slots, the block's last eight, so that no slot needs bytes after the last one's. (A
/// slot ends within the block, so its shift and width add up to at most 64.)
#[inline(always)]
fn word_of(len: usize, bit: usize) -> (usize, usize) {
    let i = (bit >> 3).min(len - 8);
    (i, bit - 8 * i)
}

/// The slot at `bit` of `bytes` (`mask`: as many low bits set as a slot has, at most 32).
#[inline(always)]
fn read(bytes: &[u8], bit: usize, mask: u64) -> u64 {
    let (i, shift) = word_of(bytes.len(), bit);
    (eight(bytes, i) >> shift) & mask
}

impl Values {
    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held on the heap.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Bytes a ring of `cap` values holds at most (as floats).
    pub(crate) fn max_heap_bytes(cap: usize) -> usize {
        bytes_for(cap, 32)
    }

    /// The memory holding the values.
    pub(crate) fn block(&self) -> super::ahead::Block {
        super::ahead::Block::of_slice(&self.bytes)
    }

    /// Whether the ring holds codes rather than floats.
    pub(crate) fn is_coded(&self) -> bool {
        self.quantum != FLOATS
    }

    fn mask(&self) -> u64 {
        (1u64 << self.width) - 1
    }

    /// The offset a slot's bits stand for.
    #[inline(always)]
    fn offset(&self, raw: u64) -> f32 {
        if self.quantum == FLOATS {
            f32::from_bits(raw as u32)
        } else {
            decode((i32::from(self.base) + raw as i32) as i16, usize::from(self.quantum))
        }
    }

    /// The slot of value `i`, oldest first.
    fn slot(&self, i: usize) -> usize {
        (self.head as usize + i) % self.cap as usize
    }

    /// Value `i`, oldest first.
    fn offset_at(&self, i: usize) -> f32 {
        self.offset(self.slot_bits(self.slot(i)))
    }

    fn slot_bits(&self, slot: usize) -> u64 {
        if self.width == 0 {
            0
        } else {
            read(&self.bytes, slot * usize::from(self.width), self.mask())
        }
    }

    pub(crate) fn back(&self) -> Option<f32> {
        self.len.checked_sub(1).map(|i| self.offset_at(i as usize))
    }

    /// The offsets at `range`, oldest first, each as `anchor + offset`.
    #[inline(always)]
    pub(crate) fn extend_into(&self, range: std::ops::Range<usize>, anchor: f64, out: &mut Vec<f64>) {
        let n = range.len();
        if n == 0 {
            return;
        }
        out.reserve(n);
        let cap = self.cap as usize;
        let first = (self.head as usize + range.start) % cap;
        let straight = n.min(cap - first);
        self.decode_slots(first..first + straight, anchor, out);
        self.decode_slots(0..n - straight, anchor, out);
    }

    /// Slots `slots` (not wrapping), decoded, as `anchor + offset`.
    #[inline(always)]
    fn decode_slots(&self, slots: std::ops::Range<usize>, anchor: f64, out: &mut Vec<f64>) {
        if slots.is_empty() {
            return;
        }
        let (w, mask) = (usize::from(self.width), self.mask());
        let start = out.len();
        out.resize(start + slots.len(), anchor);
        let out = &mut out[start..];
        let bytes = &self.bytes[..];
        // The slots whose eight bytes from the one they start in lie in the block are read
        // without a check each (checked once here, for the last of them); the last few slots of
        // the block are read from its last eight bytes, after the others.
        assert!(slots.end <= self.cap as usize);
        let fast_end = if w == 0 || bytes.len() < 8 { slots.end } else { slots.end.min((8 * (bytes.len() - 8) + 7) / w + 1) };
        let tail = fast_end.max(slots.start)..slots.end;
        let slots = slots.start..fast_end.max(slots.start);
        assert!(w == 0 || slots.is_empty() || (((slots.end - 1) * w) >> 3) + 8 <= bytes.len());
        let (out, out_tail) = out.split_at_mut(slots.len());
        let read = |s: usize| {
            let bit = s * w;
            // SAFETY: `bit >> 3` is at most the last slot's first byte, and the eight bytes from
            // there lie in `bytes` (asserted above); an unaligned read of a `u64` from them.
            let word = unsafe { bytes.as_ptr().add(bit >> 3).cast::<u64>().read_unaligned() };
            (u64::from_le(word) >> (bit & 7)) & mask
        };
        // A code's value: `decode` with the unit looked up once.
        let (base, step) = (i32::from(self.base), unit(usize::from(self.quantum)));
        let value = |raw: u64| f64::from((f64::from(base + raw as i32) * step) as f32);
        if self.quantum == FLOATS {
            // Whole 32-bit slots: read as plain floats.
            for (o, c) in out.iter_mut().zip(bytes[4 * slots.start..4 * slots.end].chunks_exact(4)) {
                *o += f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            }
        } else if w == 16 {
            // A filling ring's 16-bit slots: read as plain 16-bit integers.
            for (o, c) in out.iter_mut().zip(bytes[2 * slots.start..2 * slots.end].chunks_exact(2)) {
                *o += value(u64::from(u16::from_le_bytes([c[0], c[1]])));
            }
        } else if w == 0 {
            let d = value(0);
            for o in out.iter_mut() {
                *o += d;
            }
        } else {
            // Eight slots take `w` whole bytes: in runs of eight from a multiple of eight, each
            // slot's byte and shift within its run are the same from run to run.
            let first_run = slots.start.div_ceil(8) * 8;
            let head = (first_run - slots.start).min(slots.len());
            let (out_head, rest) = out.split_at_mut(head);
            for (o, s) in out_head.iter_mut().zip(slots.start..) {
                *o += value(read(s));
            }
            let (at, shift): ([usize; 8], [u32; 8]) = (std::array::from_fn(|j| (j * w) >> 3), std::array::from_fn(|j| ((j * w) & 7) as u32));
            let mut runs = rest.chunks_exact_mut(8);
            let mut run = first_run;
            for o in &mut runs {
                let from = (run * w) >> 3;
                for j in 0..8 {
                    // SAFETY: as for `read`: this slot is at most the last one asserted above.
                    let word = unsafe { bytes.as_ptr().add(from + at[j]).cast::<u64>().read_unaligned() };
                    o[j] += value((u64::from_le(word) >> shift[j]) & mask);
                }
                run += 8;
            }
            for (o, s) in runs.into_remainder().iter_mut().zip(run..) {
                *o += value(read(s));
            }
        }
        for (o, s) in out_tail.iter_mut().zip(tail) {
            *o += f64::from(self.offset(self.slot_bits(s)));
        }
    }

    /// Makes room for `cap` values, as the first [`Self::push`] would (the slots' width is
    /// known only with the values: this only sets the number of slots).
    pub(crate) fn reserve(&mut self, cap: usize) {
        if self.cap as usize != cap {
            let all = self.offsets();
            *self = Self::from_offsets(&all[all.len().saturating_sub(cap)..], cap, Box::default());
        }
    }

    /// Appends `offset`, dropping the oldest beyond `cap`. The slots are reallocated only when
    /// a value needs more bits than they have, and after a full turn when the values held need
    /// fewer.
    #[inline]
    pub(crate) fn push(&mut self, offset: f32, cap: usize) {
        if self.cap as usize == cap && cap > 0 {
            let fits = if self.quantum == FLOATS {
                Some(u64::from(offset.to_bits()))
            } else {
                code(offset, usize::from(self.quantum))
                    .map(|k| i32::from(k) - i32::from(self.base))
                    .filter(|r| *r >= 0 && (*r as u64) <= self.mask())
                    .map(|r| r as u64)
            };
            if let Some(raw) = fits {
                let slot = if self.len < self.cap {
                    self.len += 1;
                    (self.head + self.len - 1) % self.cap
                } else {
                    let s = self.head;
                    self.head = (self.head + 1) % self.cap;
                    s
                };
                self.write(slot as usize, raw);
                if self.head == 0 && self.len == self.cap && self.quantum != FLOATS {
                    self.narrow();
                }
                return;
            }
        }
        // The slots do not hold it: code everything anew (wider, with a finer quantum, or as
        // floats).
        let mut all = self.offsets();
        let drop = (all.len() + 1).saturating_sub(cap);
        all.drain(..drop.min(all.len()));
        all.push(offset);
        let reuse = std::mem::take(&mut self.bytes);
        *self = Self::from_offsets(&all, cap, reuse);
    }

    fn write(&mut self, slot: usize, raw: u64) {
        let w = usize::from(self.width);
        if w == 0 {
            return;
        }
        let (i, off) = word_of(self.bytes.len(), slot * w);
        let word = (eight(&self.bytes, i) & !(self.mask() << off)) | (raw << off);
        self.bytes[i..i + 8].copy_from_slice(&word.to_le_bytes());
    }

    /// After a full turn: the codes held anew in as few bits as they need, in a block of that
    /// size, when they need fewer than they have.
    fn narrow(&mut self) {
        let codes: Vec<i16> = (0..self.len as usize).map(|i| self.code_at(i)).collect();
        let (lo, hi) = bounds(&codes);
        if bytes_for(self.cap as usize, width_for(lo, hi)) < self.bytes.len() {
            *self = Self::from_codes(self.quantum, &codes, self.cap as usize, Box::default());
        }
    }

    /// The code of value `i` (oldest first) of a coded ring.
    fn code_at(&self, i: usize) -> i16 {
        (i32::from(self.base) + self.slot_bits(self.slot(i)) as i32) as i16
    }

    /// Rewrites every offset as `f(offset)` (a new anchor).
    pub(crate) fn remap(&mut self, f: impl Fn(f32) -> f32) {
        let all: Vec<f32> = self.offsets().into_iter().map(f).collect();
        let reuse = std::mem::take(&mut self.bytes);
        *self = Self::from_offsets(&all, self.cap as usize, reuse);
    }

    fn offsets(&self) -> Vec<f32> {
        (0..self.len as usize).map(|i| self.offset_at(i)).collect()
    }

    /// The ring of `offsets` (at most `cap`, which grows to hold them all otherwise), coded
    /// with the coarsest quantum that codes them all, if any, else as floats; in `reuse` when
    /// that is the size the ring needs.
    fn from_offsets(offsets: &[f32], cap: usize, reuse: Box<[u8]>) -> Self {
        let cap = cap.max(offsets.len());
        let mut codes = Vec::with_capacity(offsets.len());
        for q in COARSEST_FIRST {
            codes.clear();
            if offsets.iter().all(|d| code(*d, usize::from(q)).map(|k| codes.push(k)).is_some()) {
                return Self::from_codes(q, &codes, cap, reuse);
            }
        }
        let bytes = Self::block_of(bytes_for(cap, 32), reuse);
        let mut v = Self { bytes, cap: cap as u32, width: 32, quantum: FLOATS, ..Self::default() };
        for d in offsets {
            v.write(v.len as usize, u64::from(d.to_bits()));
            v.len += 1;
        }
        v
    }

    /// The ring of `codes` in units of `QUANTA[quantum]`, in as few bits as they need. A ring
    /// still filling holds 16-bit slots from `i16::MIN` (any code fits, and they are read as
    /// fast as plain 16-bit integers), in a block its first values' recoding reuses; once full,
    /// it takes the block its codes need (see [`Self::narrow`]).
    fn from_codes(quantum: u8, codes: &[i16], cap: usize, reuse: Box<[u8]>) -> Self {
        let (lo, hi) = bounds(codes);
        let (base, width) = if codes.len() < cap {
            (i16::MIN, 16)
        } else if codes.is_empty() {
            (0, 0)
        } else {
            (lo, width_for(lo, hi))
        };
        let bytes = Self::block_of(bytes_for(cap, width), reuse);
        let mut v = Self { bytes, cap: cap as u32, width, quantum, base, ..Self::default() };
        for k in codes {
            v.write(v.len as usize, (i32::from(*k) - i32::from(base)) as u64);
            v.len += 1;
        }
        v
    }

    /// `n` zeroed bytes: `reuse`, when it has that many.
    fn block_of(n: usize, mut reuse: Box<[u8]>) -> Box<[u8]> {
        if reuse.len() == n {
            reuse.fill(0);
            reuse
        } else {
            vec![0; n].into_boxed_slice()
        }
    }
}

/// A checkpoint holds a ring as its values in order: the codes and their quantum, or the
/// floats (the encoding of the 16-bit ring before it, unchanged).
#[derive(Deserialize)]
#[serde(rename = "Values")]
enum Repr {
    Coded { quantum: u8, codes: Vec<i16> },
    Floats(Vec<f32>),
}

impl From<Repr> for Values {
    fn from(r: Repr) -> Self {
        match r {
            // A quantum out of range can only come from a damaged checkpoint: its codes are
            // read as offsets and coded anew.
            Repr::Coded { quantum, codes } if usize::from(quantum) < QUANTA.len() => {
                let cap = codes.len();
                Self::from_codes(quantum, &codes, cap, Box::default())
            }
            Repr::Coded { quantum, codes } => {
                let all: Vec<f32> = codes.iter().map(|k| decode(*k, usize::from(quantum))).collect();
                Self::from_offsets(&all, all.len(), Box::default())
            }
            Repr::Floats(v) => Self::from_offsets(&v, v.len(), Box::default()),
        }
    }
}

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Repr::deserialize(d).map(Self::from)
    }
}

impl Serialize for Values {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant;
        /// The slots in order, as a sequence of `T`.
        struct Seq<'a, T>(&'a Values, fn(&Values, usize) -> T);
        impl<T: Serialize> Serialize for Seq<'_, T> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq((0..self.0.len as usize).map(|i| (self.1)(self.0, i)))
            }
        }
        if self.quantum == FLOATS {
            s.serialize_newtype_variant("Values", 1, "Floats", &Seq(self, Values::offset_at))
        } else {
            let mut sv = s.serialize_struct_variant("Values", 0, "Coded", 2)?;
            sv.serialize_field("quantum", &self.quantum)?;
            sv.serialize_field("codes", &Seq(self, Values::code_at))?;
            sv.end()
        }
    }
}

/// The elements of `q` at positions `range`, as the two slices they lie in (the second empty
/// when they do not wrap): plain slices, which a loop can take several elements of at a time.
#[inline]
pub(crate) fn slices<T>(q: &VecDeque<T>, range: std::ops::Range<usize>) -> (&[T], &[T]) {
    let (a, b) = q.as_slices();
    if range.end <= a.len() {
        (&a[range], &[])
    } else if range.start >= a.len() {
        (&b[range.start - a.len()..range.end - a.len()], &[])
    } else {
        (&a[range.start..], &b[..range.end - a.len()])
    }
}

#[cfg(test)]
fn push_bounded<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    if q.len() >= cap {
        q.pop_front();
    } else if q.capacity() < cap {
        q.reserve_exact(cap - q.len());
    }
    q.push_back(v);
}

#[cfg(test)]
mod tests;
