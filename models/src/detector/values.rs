//! A series' last values as offsets from an anchor: [`Values`].
//!
//! The level and shift parts take medians of these offsets, so they are held exactly as single
//! precision floats would hold them: a series that repeats a value must find it again, exact, in
//! the median (16-bit codes over the ring's range, or half precision, cost NAB 2.1 to 4.2 points;
//! see the residual ring). Most operational metrics are quantised, though: counts, bytes,
//! percentages with one or two decimals, milliseconds. When every offset of the ring is a whole
//! multiple of one decimal quantum (10⁻⁶ … 10⁶) within ±32,767 of it, and that multiple converts
//! back to the very same single precision float, the ring holds 16-bit multiples instead of
//! floats: half the bytes, and bit for bit the same values. A value that no quantum codes
//! turns the ring into floats, for good.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Decimal quanta tried, coarsest first (the coarsest that codes every value is kept, which
/// leaves the most room for values far from the anchor).
const QUANTA: [f64; 13] = [1e6, 1e5, 1e4, 1e3, 1e2, 1e1, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6];

/// The code of `offset` in units of `QUANTA[q]`, if it decodes to exactly `offset`.
fn code(offset: f32, q: usize) -> Option<i16> {
    let k = (f64::from(offset) / QUANTA[q.min(QUANTA.len() - 1)]).round();
    if !(-32767.0..=32767.0).contains(&k) {
        return None;
    }
    let k = k as i16;
    (decode(k, q).to_bits() == offset.to_bits()).then_some(k)
}

#[inline]
fn decode(k: i16, q: usize) -> f32 {
    // A quantum index out of range can only come from a damaged checkpoint: it reads as the
    // finest quantum instead of stopping the process.
    (f64::from(k) * QUANTA[q.min(QUANTA.len() - 1)]) as f32
}

/// The last values of a series as single precision offsets (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Values {
    /// Multiples of `QUANTA[quantum]`.
    Coded { quantum: u8, codes: VecDeque<i16> },
    /// The offsets themselves.
    Floats(VecDeque<f32>),
}

impl Default for Values {
    fn default() -> Self {
        Values::Coded { quantum: 0, codes: VecDeque::new() }
    }
}

impl Values {
    pub(crate) fn len(&self) -> usize {
        match self {
            Values::Coded { codes, .. } => codes.len(),
            Values::Floats(v) => v.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held on the heap.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Values::Coded { codes, .. } => 2 * codes.capacity(),
            Values::Floats(v) => 4 * v.capacity(),
        }
    }

    /// The memory holding the values.
    pub(crate) fn block(&self) -> super::ahead::Block {
        match self {
            Values::Coded { codes, .. } => super::ahead::Block::of_deque(codes),
            Values::Floats(v) => super::ahead::Block::of_deque(v),
        }
    }

    /// Whether the ring holds 16-bit multiples.
    pub(crate) fn is_coded(&self) -> bool {
        matches!(self, Values::Coded { .. })
    }

    pub(crate) fn back(&self) -> Option<f32> {
        match self {
            Values::Coded { quantum, codes } => codes.back().map(|k| decode(*k, usize::from(*quantum))),
            Values::Floats(v) => v.back().copied(),
        }
    }

    /// The offsets at `range`, oldest first, each as `anchor + offset`.
    #[inline(always)]
    pub(crate) fn extend_into(&self, range: std::ops::Range<usize>, anchor: f64, out: &mut Vec<f64>) {
        match self {
            Values::Coded { quantum, codes } => {
                let q = usize::from(*quantum);
                let (a, b) = slices(codes, range);
                out.extend(a.iter().map(|k| anchor + f64::from(decode(*k, q))));
                out.extend(b.iter().map(|k| anchor + f64::from(decode(*k, q))));
            }
            Values::Floats(v) => {
                let (a, b) = slices(v, range);
                out.extend(a.iter().map(|d| anchor + f64::from(*d)));
                out.extend(b.iter().map(|d| anchor + f64::from(*d)));
            }
        }
    }

    /// Allocates the ring at `cap` values, as the first [`Self::push`] would.
    pub(crate) fn reserve(&mut self, cap: usize) {
        match self {
            Values::Coded { codes, .. } => codes.reserve_exact(cap.saturating_sub(codes.len())),
            Values::Floats(v) => v.reserve_exact(cap.saturating_sub(v.len())),
        }
    }

    /// Appends `offset`, dropping the oldest beyond `cap`; the ring is allocated once, at
    /// exactly `cap`.
    #[inline]
    pub(crate) fn push(&mut self, offset: f32, cap: usize) {
        if let Values::Coded { quantum, codes } = self {
            if let Some(k) = code(offset, usize::from(*quantum)) {
                push_bounded(codes, k, cap);
                return;
            }
        }
        if let Values::Floats(v) = self {
            push_bounded(v, offset, cap);
            return;
        }
        // The quantum does not code it: code everything with a finer one, or turn to floats.
        let mut all = self.offsets();
        if all.len() >= cap {
            all.remove(0);
        }
        all.push(offset);
        self.recode(&all, cap);
    }

    /// Rewrites every offset as `f(offset)` (a new anchor).
    pub(crate) fn remap(&mut self, f: impl Fn(f32) -> f32) {
        if let Values::Floats(v) = self {
            for d in v.iter_mut() {
                *d = f(*d);
            }
            return;
        }
        let cap = self.capacity();
        let all: Vec<f32> = self.offsets().into_iter().map(f).collect();
        self.recode(&all, cap);
    }

    fn capacity(&self) -> usize {
        match self {
            Values::Coded { codes, .. } => codes.capacity(),
            Values::Floats(v) => v.capacity(),
        }
    }

    fn offsets(&self) -> Vec<f32> {
        match self {
            Values::Coded { quantum, codes } => codes.iter().map(|k| decode(*k, usize::from(*quantum))).collect(),
            Values::Floats(v) => v.iter().copied().collect(),
        }
    }

    /// Codes `offsets` anew: with the coarsest quantum that codes them all, if any, in the
    /// ring's own block when it holds codes (a series' first values finding their quantum
    /// allocate nothing), else as floats.
    fn recode(&mut self, offsets: &[f32], cap: usize) {
        let reuse = match self {
            Values::Coded { codes, .. } => std::mem::take(codes),
            Values::Floats(_) => VecDeque::new(),
        };
        *self = Self::from_offsets(offsets, cap, reuse);
    }

    /// The ring of `offsets`, coded with the coarsest quantum that codes them all, if any
    /// (in `codes`' block when it is large enough).
    fn from_offsets(offsets: &[f32], cap: usize, mut codes: VecDeque<i16>) -> Self {
        let cap = cap.max(offsets.len());
        codes.clear();
        if codes.capacity() < cap {
            codes.reserve_exact(cap);
        }
        for q in 0..QUANTA.len() {
            codes.clear();
            if offsets.iter().all(|d| code(*d, q).map(|k| codes.push_back(k)).is_some()) {
                return Values::Coded { quantum: q as u8, codes };
            }
        }
        let mut v = VecDeque::with_capacity(cap);
        v.extend(offsets.iter().copied());
        Values::Floats(v)
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

fn push_bounded<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    if q.len() >= cap {
        q.pop_front();
    } else if q.capacity() < cap {
        q.reserve_exact(cap - q.len());
    }
    q.push_back(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(v: &Values) -> Vec<u32> {
        v.offsets().iter().map(|d| d.to_bits()).collect()
    }

    /// Whatever is pushed, the ring reads back exactly the single precision floats pushed.
    #[test]
    fn the_ring_reads_back_exactly_what_was_pushed_and_codes_quantised_values() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(7);
        for case in 0..200 {
            let (mut ring, mut plain) = (Values::default(), VecDeque::new());
            let step = [1.0, 0.01, 0.5, 250.0, 1e-4][case % 5];
            for i in 0..700 {
                let x: f64 = match case % 4 {
                    0 => f64::from(rng.random_range(-1000..1000)) * step,
                    1 => rng.random_range(-1.0..1.0),
                    2 if i == 400 => 0.123_456_7,
                    _ => f64::from(rng.random_range(0..20)) * step,
                };
                let d = x as f32;
                ring.push(d, 264);
                push_bounded(&mut plain, d, 264);
                assert_eq!(held(&ring), plain.iter().map(|d| d.to_bits()).collect::<Vec<_>>(), "case {case} at {i}");
                assert_eq!(ring.back(), plain.back().copied());
            }
            let mut out = Vec::new();
            ring.extend_into(100..200, 5.0, &mut out);
            assert_eq!(out, plain.range(100..200).map(|d| 5.0 + f64::from(*d)).collect::<Vec<_>>());
            match case % 4 {
                0 | 3 => assert!(ring.is_coded() && ring.heap_bytes() == 2 * 264, "case {case}: {ring:?}"),
                _ => assert!(!ring.is_coded() && ring.heap_bytes() == 4 * 264, "case {case}"),
            }
        }
    }

    /// Every range of a ring that wraps, and of one that does not, comes back as the elements
    /// at those positions, in order.
    #[test]
    fn the_slices_of_a_range_hold_its_elements_in_order() {
        let mut wrapped: VecDeque<u32> = VecDeque::with_capacity(8);
        for x in 0..13 {
            push_bounded(&mut wrapped, x, 8);
        }
        assert!(!wrapped.as_slices().1.is_empty(), "the test ring wraps");
        let straight: VecDeque<u32> = (5..13).collect();
        for q in [&wrapped, &straight] {
            for start in 0..=8 {
                for end in start..=8 {
                    let (a, b) = slices(q, start..end);
                    let got: Vec<u32> = a.iter().chain(b).copied().collect();
                    assert_eq!(got, q.range(start..end).copied().collect::<Vec<_>>(), "{start}..{end}");
                }
            }
        }
    }

    /// A series' first values find their quantum (0, then 3.5, then 0.25 away from the anchor)
    /// in the ring allocated when the series arrived: recoding allocates nothing.
    #[test]
    fn values_that_need_a_finer_quantum_are_recoded_in_the_rings_own_block() {
        let mut ring = Values::default();
        ring.reserve(264);
        let codes = |v: &Values| match v {
            Values::Coded { codes, quantum } => (codes.as_slices().0.as_ptr() as usize, codes.capacity(), *quantum),
            Values::Floats(_) => panic!("floats: {v:?}"),
        };
        let (block, cap, _) = codes(&ring);
        let mut quanta = Vec::new();
        // Checked after every push: a new block per recode, with the old one freed and handed
        // back by the next, would end where it began.
        for d in [0.0f32, 3.5, 0.25, 7.0] {
            ring.push(d, 264);
            let (at, cap_after, quantum) = codes(&ring);
            assert_eq!((at, cap_after), (block, cap), "the ring was reallocated at {d}");
            quanta.push(QUANTA[usize::from(quantum)]);
        }
        assert_eq!(quanta, [1e6, 1e-1, 1e-2, 1e-2], "a finer quantum twice");
        assert_eq!(held(&ring), [0.0f32, 3.5, 0.25, 7.0].map(f32::to_bits));
    }

    #[test]
    fn a_new_anchor_recodes_the_offsets_exactly() {
        let mut ring = Values::default();
        for i in 0..300 {
            ring.push((f64::from(i % 37) * 0.25) as f32, 264);
        }
        let before = ring.offsets();
        ring.remap(|d| (2.0 + f64::from(d) - 7.5) as f32);
        let expect: Vec<u32> = before.iter().map(|d| ((2.0 + f64::from(*d) - 7.5) as f32).to_bits()).collect();
        assert_eq!(held(&ring), expect);
        assert!(ring.is_coded());
        assert_eq!(ring.len(), 264);
    }
}
