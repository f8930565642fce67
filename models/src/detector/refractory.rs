//! The refractory span's sliding minimum of `p` ([`Refractory`]).

use serde::{Deserialize, Serialize};

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

/// Spare slots at which a [`Refractory`] queue gives its room back, down to [`ROOM`]. Measured
/// over the bench's series, a give-back at 8 spare slots held 54 bytes a series and at 5 holds
/// 46; in a simulation of uniform `p` over the default span of 120 values the queue is
/// reallocated for one scored value in nine rather than one in twenty-seven (a few nanoseconds
/// a value).
const SLACK: usize = 5;

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
    /// Lets the entries a span old or older go, at value number `seen`; the entries left. The
    /// detector calls it for every value it learns, scored or not ([`Self::check`] does for a
    /// scored one): an entry's age is read modulo 2¹⁶, so it must leave when it reaches the
    /// span, before its age wraps (an entry left through 2¹⁶ − span unscored values would read
    /// as young again).
    #[inline]
    pub fn expire(&mut self, seen: u64, span: usize) -> usize {
        let span = span.min(MAX_SPAN);
        let now = seen as u16;
        let len = self.len();
        let gone = (0..len).take_while(|&i| usize::from(now.wrapping_sub(self.at(i))) >= span).count();
        if gone > 0 {
            self.q.copy_within(ENTRY * gone..ENTRY * len, 0);
            for i in len - gone..len {
                self.set(i, ROOM_SLOT);
            }
        }
        len - gone
    }
    /// Whether value number `seen` with probability `p` repeats a value at least as surprising
    /// within the last `span` values (at most [`MAX_SPAN`]); then remembers it.
    #[inline]
    pub fn check(&mut self, seen: u64, p: f64, span: usize) -> bool {
        let span = span.min(MAX_SPAN);
        let now = seen as u16;
        let mut len = self.expire(seen, span);
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
        // A queue that grew for a run of rising values gives the room back once it holds
        // [`SLACK`] more slots than it needs (kept, it would hold the largest run ever seen).
        if self.slots() >= len + SLACK {
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
    fn refractory_span_remembers_its_minimum_and_forgets_it_after_the_span() {
        let mut r = Refractory::default();
        assert!(!r.check(1, 1e-4, 10));
        assert!(r.check(2, 1e-3, 10), "less surprising within the span");
        assert!(!r.check(3, 1e-5, 10), "more surprising");
        assert!(!r.check(14, 1e-3, 10), "after the span");
        assert_eq!(r.len(), 1, "only the minimum of the span is left");
    }

    /// An entry leaves when it is a span old though no value is scored meanwhile (the detector
    /// lets the span's entries age through unscored values): read modulo 2¹⁶ later, it would
    /// look young again and silence a new alarm.
    #[test]
    fn an_entry_leaves_at_its_spans_end_through_unscored_values() {
        let mut r = Refractory::default();
        assert!(!r.check(0, 1e-6, MAX_SPAN));
        for seen in 1..=70_000u64 {
            r.expire(seen, MAX_SPAN);
        }
        assert_eq!(r.len(), 0, "gone at its span's end");
        assert!(!r.check(70_001, 0.5, MAX_SPAN), "a value 70,001 values on is no repeat");
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
            assert!(r.heap_bytes() < 6 * (r.len() + SLACK), "{} bytes for {} entries at value {seen}", r.heap_bytes(), r.len());
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
