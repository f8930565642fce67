//! New series' scoring state, created as their first points arrive (see [`Processor::admit`]).

use super::Processor;

impl Processor {
    /// Creates the scoring state of the series first seen at `rows` of `points` (the ensemble's,
    /// the fleet check's, what health reads), so that the close of their first window does not
    /// (at 100,000 series that was most of the first closes' time: allocating the states and
    /// faulting their pages in, parsing the keys). Only where the close would create the same
    /// state: with the shipped features SQL, and for a batch the windower took whole (a series
    /// whose points were late or replayed may never have a feature row); a series whose first
    /// point has no finite value is left too. The close creates what is left, as it always
    /// did. Returns the time taken.
    pub(super) fn admit(&mut self, points: &arrow::array::RecordBatch, rows: &[u32], pushed: crate::PushStats) -> std::time::Duration {
        use arrow::array::{Array, AsArray};
        if rows.is_empty() || !self.admit_ahead || pushed.late + pushed.replayed > 0 {
            return std::time::Duration::ZERO;
        }
        let t = std::time::Instant::now();
        let schema = points.schema();
        let column = |name: &str| schema.index_of(name).ok().map(|i| points.column(i));
        // The points schema's columns; a batch without them is left to its close.
        let (Some(ids), Some(series), Some(names), Some(values)) = (
            column(vigil_ingest::col::SERIES_ID).and_then(|c| c.as_primitive_opt::<arrow::datatypes::UInt64Type>()),
            column(vigil_ingest::col::SERIES).and_then(|c| c.as_string_opt::<i32>()),
            column(vigil_ingest::col::NAME).and_then(|c| c.as_string_opt::<i32>()),
            column(vigil_ingest::col::VALUE).and_then(|c| c.as_primitive_opt::<arrow::datatypes::Float64Type>()),
        ) else {
            return t.elapsed();
        };
        let rows: Vec<usize> = rows.iter().map(|&r| r as usize).filter(|&r| values.is_valid(r) && values.value(r).is_finite()).collect();
        let new: Vec<u64> = rows.iter().map(|&r| ids.value(r)).collect();
        self.detector.admit(&new);
        for &r in &rows {
            if let Some(f) = self.fleet.as_mut() {
                f.admit(ids.value(r), series.value(r), names.value(r));
            }
            self.health_inputs.admit(ids.value(r), series.value(r));
        }
        let took = t.elapsed();
        self.times.admit += took;
        took
    }
}
