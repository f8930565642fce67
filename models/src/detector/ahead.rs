//! Fetching a row's state into the cache before the row is scored.
//!
//! A close touches every series' state once, and a state is five blocks of memory: the struct,
//! the values ring, the residual ring, the seasonal history and the refractory queue, each its
//! own heap allocation. With 100,000 series none of them is in the cache when its row comes,
//! and each is found only through the one before it (the map's bucket, then the struct, then the
//! rings' pointers in it): taken one row at a time, a row waited for several round trips to
//! memory in turn. So a shard first lists its rows in the order their structs lie in memory,
//! with the address and length of every block each state owns ([`Shard::plan_ahead`]), and
//! while a row is scored the blocks of the row [`AHEAD`] places later are requested
//! ([`Ahead::fetch`]). A prefetch never faults and changes nothing but timing: the scores are
//! the same bits whatever is fetched.

use std::collections::VecDeque;

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
    /// The memory `value` occupies.
    pub(crate) fn of<T>(value: &T) -> Self {
        Self { at: std::ptr::from_ref(value) as usize, len: std::mem::size_of::<T>() }
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
    fn fetch(self) {
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

/// A row to score, with the blocks of its series' state (none for a series without state).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ahead {
    pub(super) row: u32,
    blocks: [Block; 5],
}

impl Ahead {
    /// Requests every block of the row's state.
    #[inline(always)]
    pub(super) fn fetch(&self) {
        for b in self.blocks {
            b.fetch();
        }
    }
}

impl SeriesState {
    /// The blocks this state occupies: the struct and what it owns.
    fn blocks(&self) -> [Block; 5] {
        [
            Block::of(self),
            self.values.block(),
            self.resid.block(),
            self.history.as_deref().map_or_else(Block::default, Block::of),
            self.recent_p.block(),
        ]
    }
}

impl Shard {
    /// Fills `out` with the rows `rows` in the order their series' states lie in memory (the
    /// rows of one series keep their order; series without state yet come last, in row order),
    /// each with its state's blocks. Taken in the feature plan's hash order, the states came from
    /// memory one miss at a time; in address order the next structs are near, and the blocks
    /// listed here are requested ahead (see the module docs).
    pub(super) fn plan_ahead(&self, rows: &[u32], c: &FeatureColumns<'_>, out: &mut Vec<Ahead>) {
        let addr = |s: Option<&SeriesState>| s.map_or(usize::MAX, |s| std::ptr::from_ref(s) as usize);
        let mut states: Vec<(Option<&SeriesState>, u32)> = rows.iter().map(|&i| (self.states.get(&c.series_id.value(i as usize)).map(|b| &**b), i)).collect();
        // Row numbers are distinct, so the order is total and rows of one series stay in order.
        states.sort_unstable_by_key(|&(s, i)| (addr(s), i));
        // In address order, the structs' pointers are read with the hardware's own prefetching.
        out.clear();
        out.extend(states.into_iter().map(|(s, row)| Ahead { row, blocks: s.map_or([Block::default(); 5], SeriesState::blocks) }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
