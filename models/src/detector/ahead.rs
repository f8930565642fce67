//! Fetching a row's state into the cache before the row is scored.
//!
//! A close touches every series' state once, and a state is six blocks of memory: the struct,
//! the values ring, the residual ring, the seasonal history, the refractory queue and the
//! level and shift parts' calibration bins, each its own heap allocation. With 100,000 series
//! none of them is in the cache when its row comes, and each is found only through the one
//! before it (the map's bucket, then the struct, then the rings' pointers in it): taken one row
//! at a time, a row waited for several round trips to memory in turn. So a shard first lists
//! its rows in the order their structs lie in memory, with their inputs (read from the feature
//! columns in row order) and the address and length of every block each state owns
//! ([`Shard::plan_ahead`]), and while a row is scored the blocks of the row [`AHEAD`] places
//! later are requested ([`Ahead::fetch`]). A prefetch never faults and changes nothing but
//! timing: the scores are the same bits whatever is fetched.

use std::collections::VecDeque;

use super::ring::Ring;
use super::{FeatureColumns, SeriesState, Shard};

/// Rows ahead whose blocks are requested while a row is scored.
pub(super) const AHEAD: usize = 2;

/// A block of memory: its address and length in bytes (a length of 0 for none).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Block {
    at: usize,
    len: usize,
}

impl Block {
    /// The memory of a slice.
    pub(crate) fn of_slice<T>(s: &[T]) -> Self {
        Self { at: s.as_ptr() as usize, len: std::mem::size_of_val(s) }
    }

    /// The part of a ring's buffer that holds its values (both halves when it wraps: then the
    /// second half starts the buffer and the first ends it).
    pub(crate) fn of_deque<T>(q: &VecDeque<T>) -> Self {
        let (a, b) = q.as_slices();
        if a.is_empty() {
            return Self::default();
        }
        let start = if b.is_empty() { a.as_ptr() } else { b.as_ptr() } as usize;
        let end = a.as_ptr() as usize + std::mem::size_of_val(a);
        Self { at: start, len: end.saturating_sub(start) }
    }

    /// Asks the processor to bring the block into the cache.
    #[inline(always)]
    pub(super) fn fetch(self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let mut line = self.at & !63;
            let end = self.at.wrapping_add(self.len);
            while line < end {
                // SAFETY: SSE is part of the x86-64 baseline, and a prefetch does not
                // dereference its address (a stale or wild one is ignored).
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
                line += 64;
            }
        }
    }
}

/// A row to score: its inputs, read from the feature columns in row order (taken in memory
/// order, each column read was a cache miss), and where its series' state lies (nothing for a
/// series without state yet). The struct and the history have fixed sizes; the rings' spans
/// are at most a few kilobytes, so their lengths fit 16 bits. 96 bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ahead {
    pub(super) id: u64,
    pub(super) time_ms: i64,
    pub(super) value: f64,
    /// The state struct, the values ring, the residual ring, the refractory queue, the level
    /// and shift parts' calibration bins.
    at: [usize; 5],
    /// The history (boxed), and the offsets in it of the two lines a value touches: its
    /// counters and the slot it writes.
    history: usize,
    history_lines: [u16; 2],
    /// The seasonal part's own state (boxed: its residual ring's struct and calibration), if
    /// the series has one.
    seasonal: usize,
    /// Lengths of the values ring, the residual ring, the refractory queue and the
    /// calibrations' bins, bytes.
    len: [u16; 4],
    pub(super) row: u32,
}

impl Ahead {
    fn new(row: u32, id: u64, time_ms: i64, value: f64, state: Option<&SeriesState>) -> Self {
        let mut a = Self { id, time_ms, value, at: [0; 5], history: 0, history_lines: [0; 2], seasonal: 0, len: [0; 4], row };
        if let Some(st) = state {
            a.seasonal = st.seasonal.as_deref().map_or(0, |s| std::ptr::from_ref(s) as usize);
            let blocks = [st.values.block(), st.resid().map_or_else(Default::default, Ring::block), st.recent_p.block(), st.tails.block()];
            a.at = [std::ptr::from_ref(st) as usize, blocks[0].at, blocks[1].at, blocks[2].at, blocks[3].at];
            a.len = blocks.map(|b| u16::try_from(b.len).unwrap_or(u16::MAX));
            if let Some(h) = st.history.as_deref() {
                a.history = std::ptr::from_ref(h) as usize;
                // Both lines lie within the struct (a few hundred bytes).
                a.history_lines = h.hot_lines().map(|l| u16::try_from(l - a.history).unwrap_or(0));
            }
        }
        a
    }

    /// Requests every block of the row's state (nothing for a series without state).
    #[inline(always)]
    pub(super) fn fetch(&self) {
        if self.at[0] == 0 {
            return;
        }
        Block { at: self.at[0], len: std::mem::size_of::<SeriesState>() }.fetch();
        for (at, len) in self.at[1..].iter().zip(self.len) {
            Block { at: *at, len: usize::from(len) }.fetch();
        }
        if self.history != 0 {
            for off in self.history_lines {
                Block { at: self.history + usize::from(off), len: 1 }.fetch();
            }
        }
        if self.seasonal != 0 {
            Block { at: self.seasonal, len: std::mem::size_of::<super::series::Seasonal>() }.fetch();
        }
    }
}

impl Shard {
    /// Fills `out` with the rows `rows` in the order their series' states lie in memory (the
    /// rows of one series keep their order; series without state yet come last, in row order),
    /// each with its inputs and its state's blocks. Taken in the feature plan's hash order, the
    /// states came from memory one miss at a time; in address order the next structs are near,
    /// and the blocks listed here are requested ahead (see the module docs).
    pub(super) fn plan_ahead(&self, rows: &[u32], c: &FeatureColumns<'_>, out: &mut Vec<Ahead>) {
        let addr = |s: Option<&SeriesState>| s.map_or(usize::MAX, |s| std::ptr::from_ref(s) as usize);
        let mut states: Vec<(Option<&SeriesState>, u32)> = rows.iter().map(|&i| (self.states.get(c.series_id.value(i as usize)).map(|b| &**b), i)).collect();
        // Row numbers are distinct, so the order is total and rows of one series stay in order.
        states.sort_unstable_by_key(|&(s, i)| (addr(s), i));
        // In address order, the structs' pointers are read with the hardware's own prefetching.
        out.clear();
        out.extend(states.into_iter().map(|(s, row)| {
            let i = row as usize;
            Ahead::new(row, c.series_id.value(i), c.window_start.value(i), c.value(i), s)
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list of a close's rows is held between closes: what its documentation (and
    /// docs/BENCHMARKS.md) says a row costs.
    #[test]
    fn a_row_ahead_takes_96_bytes() {
        assert_eq!(std::mem::size_of::<Ahead>(), 96);
    }

    /// A ring's block spans every value it holds, in one piece or wrapped around its buffer.
    #[test]
    fn a_rings_block_covers_both_halves_of_a_wrapped_buffer() {
        let covers = |b: Block, x: &u64| {
            let at = std::ptr::from_ref(x) as usize;
            b.at <= at && at + 8 <= b.at + b.len
        };
        let mut q: VecDeque<u64> = VecDeque::with_capacity(8);
        assert_eq!(Block::of_deque(&q).len, 0, "an empty ring has nothing to fetch");
        q.extend(0..6);
        let b = Block::of_deque(&q);
        assert!(q.iter().all(|x| covers(b, x)));
        assert_eq!(b.len, 6 * 8);
        // Wrap it: the oldest values are at the buffer's end, the newest at its start.
        for i in 6..11 {
            q.pop_front();
            q.push_back(i);
        }
        assert!(!q.as_slices().1.is_empty(), "the ring wraps");
        let b = Block::of_deque(&q);
        assert!(q.iter().all(|x| covers(b, x)), "{b:?}");
        assert!(b.len <= 8 * q.capacity());
    }
}
