//! `percentile_cont` over many small groups, without a vector per group.
//!
//! DataFusion's exact `percentile_cont` keeps a `Vec` of values per group: at every close of a
//! window of 10,000 series that is 10,000 vectors grown one value at a time, then freed. This
//! one keeps every value of every group in two flat vectors (the group and the value, in arrival
//! order) and sorts them into groups by counting only when the result is asked for. The answer
//! is DataFusion's to the bit: the same order statistic (values compared in IEEE total order),
//! the same interpolation, the same NULLs.
//!
//! [`percentile_cont`] wraps DataFusion's own function and changes nothing but the groups
//! accumulator for `DOUBLE` input ([`crate::grouped`]): the name, aliases, signature, `WITHIN GROUP` clause, the
//! simplification of 0 and 1 to `min`/`max`, the row accumulator and the partial state (a list
//! of values per group) are DataFusion's.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, ListArray};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Float64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::{AggregateUDF, ColumnarValue, EmitTo, GroupsAccumulator};

/// DataFusion's `percentile_cont` (alias `quantile_cont`) with a flat groups accumulator for
/// `DOUBLE` input. Registering it replaces the built-in one of the same name.
pub fn percentile_cont() -> AggregateUDF {
    crate::grouped::with_groups(datafusion::functions_aggregate::percentile_cont::percentile_cont_udaf(), |args| {
        match (args.expr_fields[0].data_type(), percentile_of(args)) {
            (DataType::Float64, Some(p)) if !args.is_distinct => Some(Box::new(FlatGroups::new(p))),
            _ => None,
        }
    })
}

/// The percentile a call asks for, as DataFusion reads it (a descending `WITHIN GROUP` order
/// turns p into 1 − p); `None` where DataFusion's own accumulator should decide (and give its
/// own error).
fn percentile_of(args: &AccumulatorArgs) -> Option<f64> {
    let empty = arrow::array::RecordBatch::new_empty(Arc::new(arrow::datatypes::Schema::empty()));
    let p = match args.exprs.get(1)?.evaluate(&empty).ok()? {
        ColumnarValue::Scalar(ScalarValue::Float64(Some(p))) => p,
        ColumnarValue::Scalar(ScalarValue::Float32(Some(p))) => p as f64,
        _ => return None,
    };
    if !(0.0..=1.0).contains(&p) {
        return None;
    }
    let descending = args.order_bys.first().is_some_and(|s| s.options.descending);
    Some(if descending { 1.0 - p } else { p })
}

/// Every value of every group, flat, in arrival order.
#[derive(Debug)]
struct FlatGroups {
    percentile: f64,
    groups: Vec<u32>,
    values: Vec<f64>,
    /// Values per group.
    counts: Vec<u32>,
}

impl FlatGroups {
    fn new(percentile: f64) -> Self {
        Self { percentile, groups: Vec::new(), values: Vec::new(), counts: Vec::new() }
    }

    fn grow(&mut self, total_num_groups: usize) -> Result<()> {
        if total_num_groups > u32::MAX as usize {
            return Err(datafusion::common::DataFusionError::Execution(format!("percentile_cont: {total_num_groups} groups are more than it keeps apart")));
        }
        if self.counts.len() < total_num_groups {
            self.counts.resize(total_num_groups, 0);
        }
        Ok(())
    }

    fn push(&mut self, group: usize, value: f64) {
        self.groups.push(group as u32);
        self.values.push(value);
        self.counts[group] += 1;
    }

    /// The values of the first `n` groups, sorted into groups (offsets, values); the rest
    /// stay, renumbered from 0.
    fn take(&mut self, emit_to: EmitTo) -> (Vec<usize>, Vec<f64>) {
        self.take_as(emit_to, 0.0, |v| v)
    }

    /// [`Self::take`], each value taken out as `f(value)`.
    fn take_as<T: Copy>(&mut self, emit_to: EmitTo, zero: T, f: impl Fn(f64) -> T) -> (Vec<usize>, Vec<T>) {
        let n = match emit_to {
            EmitTo::All => self.counts.len(),
            EmitTo::First(n) => n.min(self.counts.len()),
        };
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0usize);
        let mut total = 0usize;
        for &c in &self.counts[..n] {
            total += c as usize;
            offsets.push(total);
        }
        let mut out = vec![zero; total];
        let mut next = offsets[..n].to_vec();
        let rest = self.groups.len() - total;
        let (mut groups, mut values) = (Vec::with_capacity(rest), Vec::with_capacity(rest));
        for (&g, &v) in self.groups.iter().zip(&self.values) {
            match next.get_mut(g as usize) {
                Some(slot) => {
                    out[*slot] = f(v);
                    *slot += 1;
                }
                None => {
                    groups.push(g - n as u32);
                    values.push(v);
                }
            }
        }
        self.groups = groups;
        self.values = values;
        self.counts.drain(..n);
        (offsets, out)
    }
}

impl GroupsAccumulator for FlatGroups {
    fn update_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], opt_filter: Option<&BooleanArray>, total_num_groups: usize) -> Result<()> {
        self.grow(total_num_groups)?;
        let values = values[0].as_primitive::<Float64Type>();
        self.groups.reserve(group_indices.len());
        self.values.reserve(group_indices.len());
        let data = values.values();
        match (values.nulls().filter(|n| n.null_count() > 0), opt_filter) {
            (None, None) => {
                for (&g, &v) in group_indices.iter().zip(data.iter()) {
                    self.push(g, v);
                }
            }
            (nulls, filter) => {
                for (i, (&g, &v)) in group_indices.iter().zip(data.iter()).enumerate() {
                    let valid = nulls.is_none_or(|n| n.is_valid(i));
                    let kept = filter.is_none_or(|f| f.is_valid(i) && f.value(i));
                    if valid && kept {
                        self.push(g, v);
                    }
                }
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        // Each group's values as integers in IEEE total order: selecting among integers is
        // cheaper than comparing floats in total order at every step.
        let (offsets, mut keys) = self.take_as(emit_to, 0i64, |v| total_order_key(v.to_bits()));
        let out: Float64Array = offsets.windows(2).map(|w| percentile_of_keys(&mut keys[w[0]..w[1]], self.percentile)).collect();
        Ok(Arc::new(out))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let (offsets, values) = self.take(emit_to);
        let offsets = offsets.into_iter().map(i32::try_from).collect::<std::result::Result<Vec<i32>, _>>().map_err(|_| {
            datafusion::common::DataFusionError::Execution("percentile_cont: more values than a list holds".into())
        })?;
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Float64, true)),
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Arc::new(Float64Array::from(values)),
            None,
        );
        Ok(vec![Arc::new(list)])
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.grow(total_num_groups)?;
        let lists = values[0].as_list::<i32>();
        for (&g, list) in group_indices.iter().zip(lists.iter()) {
            if let Some(list) = list {
                for v in list.as_primitive::<Float64Type>().iter().flatten() {
                    self.push(g, v);
                }
            }
        }
        Ok(())
    }

    /// Each row its own group's state: a list of its one value, NULL where the value is NULL
    /// or filtered out (as DataFusion's own).
    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let v = values[0].as_primitive::<Float64Type>();
        let n = i32::try_from(v.len()).map_err(|_| datafusion::common::DataFusionError::Execution("percentile_cont: more rows than a list holds".into()))?;
        let keep: arrow::buffer::NullBuffer =
            (0..v.len()).map(|i| v.is_valid(i) && opt_filter.is_none_or(|f| f.is_valid(i) && f.value(i))).collect();
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Float64, true)),
            OffsetBuffer::new(ScalarBuffer::from((0..=n).collect::<Vec<i32>>())),
            Arc::new(Float64Array::new(v.values().clone(), None)),
            (keep.null_count() > 0).then_some(keep),
        );
        Ok(vec![Arc::new(list)])
    }

    fn size(&self) -> usize {
        self.groups.capacity() * 4 + self.values.capacity() * 8 + self.counts.capacity() * 4
    }
}

/// The bits of an `f64` as an integer in the order `f64::total_cmp` gives (the same map
/// `total_cmp` uses; it is its own inverse).
#[inline(always)]
fn total_order_key(bits: u64) -> i64 {
    let b = bits as i64;
    b ^ ((((b >> 63) as u64) >> 1) as i64)
}

/// The `f64` whose [`total_order_key`] is `key`.
#[inline(always)]
fn from_total_order_key(key: i64) -> f64 {
    f64::from_bits(total_order_key(key as u64) as u64)
}

/// DataFusion 55's `calculate_percentile` for `f64`, over the values' [`total_order_key`]s:
/// NULL of no values; the minimum or maximum at 0 and 1; otherwise the order statistics around
/// `p × (n − 1)` in IEEE total order, interpolated with the weight rounded down to a millionth.
/// Equal keys are equal bits, so which of several equal values is taken does not matter.
fn percentile_of_keys(keys: &mut [i64], p: f64) -> Option<f64> {
    const PRECISION: f64 = 1_000_000.0;
    let n = keys.len();
    match n {
        0 => None,
        1 => Some(from_total_order_key(keys[0])),
        _ if p == 0.0 => keys.iter().min().map(|k| from_total_order_key(*k)),
        _ if p == 1.0 => keys.iter().max().map(|k| from_total_order_key(*k)),
        _ => {
            let index = p * ((n - 1) as f64);
            let (lower, upper) = (index.floor() as usize, index.ceil() as usize);
            let (lo, hi) = if n - lower <= EXTREME {
                // A high percentile of a small group (the p95 of ten values is between the two
                // largest): one pass keeping the largest few, not a selection.
                // (`upper` is `lower` or the next, which then is within the `m` kept.)
                let top = largest(keys.iter().copied(), n - lower);
                (top[0], top[upper - lower])
            } else if upper < EXTREME {
                // A low one: the smallest few, as the largest of the keys' complements.
                let m = upper + 1;
                let bottom = largest(keys.iter().map(|k| !k), m);
                (!bottom[m - 1 - lower], !bottom[0])
            } else {
                let (_, lo, above) = keys.select_nth_unstable(lower);
                let lo = *lo;
                // The next order statistic is the smallest of the values after the lower one.
                (lo, if lower == upper { lo } else { *above.iter().min()? })
            };
            let lo = from_total_order_key(lo);
            if lower == upper {
                return Some(lo);
            }
            let hi = from_total_order_key(hi);
            let weight = ((index - lower as f64) * PRECISION) as usize as f64 / PRECISION;
            Some(lo + (hi - lo) * weight)
        }
    }
}

/// The most order statistics at either end taken by one pass ([`largest`]) rather than a
/// selection.
const EXTREME: usize = 4;

/// The `m` largest of `keys` (`1 ≤ m ≤` [`EXTREME`], at least `m` keys), ascending, in the first
/// `m` places: each key goes through a fixed row of minimums and maximums, without a branch.
/// The kept places start at `i64::MIN`, the least key; a key equal to it has the same bits, so
/// they hold the right values whichever of several equal keys they came from.
#[inline]
fn largest(keys: impl Iterator<Item = i64>, m: usize) -> [i64; EXTREME] {
    debug_assert!((1..=EXTREME).contains(&m));
    let mut t = [i64::MIN; EXTREME];
    for k in keys {
        // The four largest of the four kept and `k`, ascending.
        t[0] = t[0].max(k.min(t[1]));
        t[1] = t[1].max(k.min(t[2]));
        t[2] = t[2].max(k.min(t[3]));
        t[3] = t[3].max(k);
    }
    let mut out = [0; EXTREME];
    out[..m].copy_from_slice(&t[EXTREME - m..]);
    out
}

#[cfg(test)]
#[path = "percentile_tests.rs"]
mod tests;
