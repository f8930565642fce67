//! A shard's series states by id: [`States`].

use std::hash::Hasher;

use hashbrown::hash_table::{Entry, HashTable};

use super::series::{SeriesState, Shared};

/// A shard's series states, each behind a pointer and holding its own id, so that a bucket of
/// the table is the pointer alone: 8 bytes and a control byte, where a map from the id took 16
/// and one. (A table's buckets are up to half empty after it grows; a bucket holding the state
/// itself, hundreds of bytes, would waste that much per empty bucket.) Shared (copy on write):
/// a checkpoint takes every state by its pointer, and a state changed while the checkpoint
/// still holds it is copied first (see [`super::SeriesSnapshot`]).
#[derive(Debug, Default)]
pub(super) struct States {
    table: HashTable<Shared<SeriesState>>,
}

/// The table's hash of an id. The ids are hashes themselves, but a shard holds the ids whose
/// high bits name it, and the table reads its control bits from the high bits: mixed first.
#[inline(always)]
fn hash(id: u64) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    h.write_u64(id);
    h.finish()
}

impl States {
    /// The state of series `id`.
    #[inline]
    pub(super) fn get(&self, id: u64) -> Option<&Shared<SeriesState>> {
        self.table.find(hash(id), |s| s.id == id)
    }

    /// Whether series `id` has a state.
    #[cfg(test)]
    pub(super) fn contains(&self, id: u64) -> bool {
        self.get(id).is_some()
    }

    /// The state of series `id`, created empty if it has none.
    #[inline]
    pub(super) fn get_or_default(&mut self, id: u64) -> &mut Shared<SeriesState> {
        self.get_or_insert_with(id, SeriesState::default).0
    }

    /// The state of series `id`, created by `new` if it has none; and whether it was.
    #[inline]
    pub(super) fn get_or_insert_with(&mut self, id: u64, new: impl FnOnce() -> SeriesState) -> (&mut Shared<SeriesState>, bool) {
        match self.table.entry(hash(id), |s| s.id == id, |s| hash(s.id)) {
            Entry::Occupied(e) => (e.into_mut(), false),
            Entry::Vacant(e) => (e.insert(Shared::new(SeriesState { id, ..new() })).into_mut(), true),
        }
    }

    /// Holds `st` as the state of series `id`, in place of any other.
    pub(super) fn insert(&mut self, id: u64, mut st: Shared<SeriesState>) {
        if st.id != id {
            Shared::make_mut(&mut st).id = id;
        }
        match self.table.entry(hash(id), |s| s.id == id, |s| hash(s.id)) {
            Entry::Occupied(mut e) => *e.get_mut() = st,
            Entry::Vacant(e) => {
                e.insert(st);
            }
        }
    }

    /// Keeps the states of the series whose id `keep` selects.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.table.retain(|s| keep(s.id));
    }

    /// Series with a state.
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no series has a state.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// States the table holds without growing.
    pub(super) fn capacity(&self) -> usize {
        self.table.capacity()
    }

    /// Every state with its series' id, in the table's order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &Shared<SeriesState>)> {
        self.table.iter().map(|s| (s.id, s))
    }

    /// Every state, to change (copy on write: see [`Shared::make_mut`]).
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Shared<SeriesState>> {
        self.table.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// States are found by id, created once, replaced, and forgotten by id, through the table's
    /// growth.
    #[test]
    fn states_are_found_created_replaced_and_forgotten_by_id() {
        let mut s = States::default();
        // Ids as a shard holds them: the same high bits.
        let ids: Vec<u64> = (0..5_000u64).map(|i| (7 << 32) | i.wrapping_mul(0x9E37_79B9)).collect();
        for &id in &ids {
            let (st, new) = s.get_or_insert_with(id, SeriesState::default);
            assert!(new && st.id == id);
            Shared::make_mut(st).seen = id % 1000;
        }
        assert_eq!(s.len(), ids.len());
        assert!(!s.get_or_insert_with(ids[3], SeriesState::default).1, "created once");
        assert!(ids.iter().all(|&id| s.get(id).is_some_and(|st| st.seen == id % 1000)));
        assert!(!s.contains(1));
        s.insert(ids[0], Shared::new(SeriesState { seen: 12_345, ..Default::default() }));
        assert_eq!((s.get(ids[0]).map(|st| (st.id, st.seen)), s.len()), (Some((ids[0], 12_345)), ids.len()), "replaced, its id set");
        s.retain(|id| id % 2 == 0);
        assert!(ids.iter().all(|&id| s.contains(id) == (id % 2 == 0)));
        assert_eq!(s.iter().filter(|(id, st)| *id == st.id).count(), s.len());
    }
}
