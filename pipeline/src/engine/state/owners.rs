//! Which input partition each series belongs to: what cuts the processor's state into
//! per-partition checkpoint sections.

use super::*;

/// Hashes a series id by itself: ids are already XXH3 hashes, so hashing them again (SipHash,
/// the default) only costs time on the per-row path.
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
}

pub(super) type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Which input partition each series' points came from (the last one, if a producer moved it).
#[derive(Debug, Default)]
pub struct Owners {
    pub(super) parts: Vec<PartKey>,
    pub(super) index: HashMap<PartKey, u32>,
    pub(super) of: IdMap<u32>,
}

impl Owners {
    fn index_of(&mut self, k: &PartKey) -> u32 {
        if let Some(i) = self.index.get(k) {
            return *i;
        }
        let i = self.parts.len() as u32;
        self.parts.push(k.clone());
        self.index.insert(k.clone(), i);
        i
    }

    /// Notes the partition of every row of a points batch. Returns the rows at which series
    /// not seen before (by this member) first appear.
    pub fn note(&mut self, points: &RecordBatch, positions: &[SourcePos]) -> Vec<u32> {
        let mut new = Vec::new();
        if points.num_rows() == 0 {
            return new;
        }
        let ids = points.column(1).as_primitive::<UInt64Type>();
        let mut last: Option<(i32, *const str, u32)> = None;
        let mut last_id = None;
        for (row, (id, p)) in ids.values().iter().zip(positions).enumerate() {
            let idx = match last {
                Some((part, t, i)) if part == p.partition && std::ptr::eq(t, Arc::as_ptr(&p.topic)) => i,
                _ => {
                    let i = self.index_of(&(p.topic.clone(), p.partition));
                    last = Some((p.partition, Arc::as_ptr(&p.topic), i));
                    i
                }
            };
            if last_id == Some((*id, idx)) {
                continue;
            }
            last_id = Some((*id, idx));
            match self.of.entry(*id) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    if *e.get() != idx {
                        e.insert(idx);
                    }
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(idx);
                    new.push(row as u32);
                }
            }
        }
        new
    }

    /// A predicate selecting the series of `parts`.
    pub fn of_parts(&self, parts: &[PartKey]) -> impl Fn(u64) -> bool + '_ {
        let idx: HashSet<u32> = parts.iter().filter_map(|k| self.index.get(k).copied()).collect();
        move |id| self.of.get(&id).is_some_and(|i| idx.contains(i))
    }

    /// A predicate selecting the series of no partition (derived series, e.g. log signals).
    pub fn unowned(&self) -> impl Fn(u64) -> bool + '_ {
        move |id| !self.of.contains_key(&id)
    }

    /// The series of partition `k`.
    pub fn series_of(&self, k: &PartKey) -> Vec<u64> {
        match self.index.get(k) {
            Some(i) => self.of.iter().filter(|(_, p)| *p == i).map(|(id, _)| *id).collect(),
            None => Vec::new(),
        }
    }

    /// Assigns `series` to partition `k` (from a checkpoint).
    pub fn assign(&mut self, k: &PartKey, series: &[u64]) {
        let i = self.index_of(k);
        for id in series {
            self.of.insert(*id, i);
        }
    }

    /// Forgets the series of `parts`.
    pub fn forget(&mut self, parts: &[PartKey]) {
        let idx: HashSet<u32> = parts.iter().filter_map(|k| self.index.get(k).copied()).collect();
        self.of.retain(|_, i| !idx.contains(i));
    }
}
