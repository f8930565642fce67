//! `any_value` over many groups, without an accumulator per group.
//!
//! DataFusion's `any_value` has no groups accumulator, so a `GROUP BY` runs it through
//! `GroupsAccumulatorAdapter`: one accumulator per group, and the input sliced per group at
//! every batch. This one keeps, per group, where its value is (which input array, which row),
//! set by the group's first non-NULL value and never looked at again, so a row of a group that
//! has its value costs one check. The arrays that gave a group its value are held until the
//! group is emitted, at most [`MAX_ARRAYS`] of them: past that, the values are copied into one
//! array; the values are copied out at the end.
//!
//! [`any_value`] wraps DataFusion's own function and changes nothing but the groups
//! accumulator ([`crate::grouped`]): the name, signature, return field, row accumulator and
//! partial state (the value and whether it is set) are DataFusion's. Its answer is the group's first non-NULL value
//! in arrival order (any value is a correct answer; this one is also deterministic).
//!
//! It lets the features SQL group by the series' number alone and still carry the series'
//! name and key: hashing and comparing two strings per row was half of the plan's time.

use std::sync::Arc;

use arrow::array::{new_empty_array, new_null_array, Array, ArrayRef, AsArray, BooleanArray};
use arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{AggregateUDF, EmitTo, GroupsAccumulator};

/// DataFusion's `any_value` with a groups accumulator. Registering it replaces the built-in
/// one of the same name.
pub fn any_value() -> AggregateUDF {
    crate::grouped::with_groups(datafusion::functions_aggregate::any_value::any_value_udaf(), |args| {
        Some(Box::new(FirstSeen::new(args.return_field.data_type().clone())))
    })
}

/// Input arrays held before the groups' values are copied into one: holding whole arrays for
/// a value or two each would grow with the input rather than with the groups.
const MAX_ARRAYS: usize = 32;

/// Where each group's value is: an index into `arrays` and a row of that array.
#[derive(Debug)]
struct FirstSeen {
    data_type: DataType,
    /// The input arrays that gave at least one group its value.
    arrays: Vec<ArrayRef>,
    /// Bytes of `arrays`.
    held: usize,
    /// Per group, (array, row) of its value; `None` while it has only seen NULLs.
    picks: Vec<Option<(u32, u32)>>,
}

impl FirstSeen {
    fn new(data_type: DataType) -> Self {
        Self { data_type, arrays: Vec::new(), held: 0, picks: Vec::new() }
    }

    /// Gives each group in `groups` without a value the one of its row in `values` where
    /// `take(row)`; keeps `values` if any group took one.
    fn offer(&mut self, values: &ArrayRef, groups: &[usize], total_num_groups: usize, take: impl Fn(usize) -> bool) -> Result<()> {
        if self.picks.len() < total_num_groups {
            self.picks.resize(total_num_groups, None);
        }
        let at = u32::try_from(self.arrays.len()).map_err(|_| too_many("input arrays"))?;
        let mut used = false;
        for (row, &g) in groups.iter().enumerate() {
            if self.picks[g].is_none() && values.is_valid(row) && take(row) {
                self.picks[g] = Some((at, u32::try_from(row).map_err(|_| too_many("rows in one array"))?));
                used = true;
            }
        }
        if used {
            self.held += values.get_array_memory_size();
            self.arrays.push(values.clone());
            if self.arrays.len() > MAX_ARRAYS {
                self.compact()?;
            }
        }
        Ok(())
    }

    /// Copies every group's value into one array, which is then the only one held.
    fn compact(&mut self) -> Result<()> {
        let all = self.gather(&self.picks)?;
        for (i, p) in self.picks.iter_mut().enumerate() {
            if p.is_some() {
                *p = Some((0, u32::try_from(i).map_err(|_| too_many("groups"))?));
            }
        }
        self.held = all.get_array_memory_size();
        self.arrays = vec![all];
        Ok(())
    }

    /// The values of the groups `emit_to` names (NULL for a group without one); the others
    /// stay, renumbered from 0 (an early emit costs the groups it emits, not those left).
    fn take(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let picks = emit_to.take_needed(&mut self.picks);
        let out = self.gather(&picks)?;
        if self.picks.is_empty() {
            self.arrays.clear();
            self.held = 0;
        }
        Ok(out)
    }

    /// The values at `picks`, NULL where there is none.
    fn gather(&self, picks: &[Option<(u32, u32)>]) -> Result<ArrayRef> {
        // The arrays' own type: the one planned may differ in what `interleave` compares
        // (a nested field's name or nullability, a string view).
        let data_type = self.arrays.first().map_or(&self.data_type, |a| a.data_type());
        if picks.is_empty() {
            return Ok(new_empty_array(data_type));
        }
        let mut sources: Vec<&dyn Array> = self.arrays.iter().map(|a| a.as_ref()).collect();
        let null;
        if picks.iter().any(Option::is_none) {
            null = new_null_array(data_type, 1);
            sources.push(null.as_ref());
        }
        let none = (self.arrays.len(), 0);
        let indices: Vec<(usize, usize)> = picks.iter().map(|p| p.map_or(none, |(a, r)| (a as usize, r as usize))).collect();
        Ok(arrow::compute::interleave(&sources, &indices)?)
    }
}

fn too_many(what: &str) -> datafusion::common::DataFusionError {
    datafusion::common::DataFusionError::Execution(format!("any_value: more {what} than it keeps apart"))
}

fn kept(filter: Option<&BooleanArray>, row: usize) -> bool {
    filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

impl GroupsAccumulator for FirstSeen {
    fn update_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], opt_filter: Option<&BooleanArray>, total_num_groups: usize) -> Result<()> {
        self.offer(&values[0], group_indices, total_num_groups, |row| kept(opt_filter, row))
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.take(emit_to)
    }

    /// DataFusion's partial state: the value, and whether it is set.
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let values = self.take(emit_to)?;
        let set: BooleanArray = (0..values.len()).map(|i| Some(values.is_valid(i))).collect();
        Ok(vec![values, Arc::new(set)])
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        let set = values[1].as_boolean();
        self.offer(&values[0], group_indices, total_num_groups, |row| set.is_valid(row) && set.value(row))
    }

    /// Each row its own group's state: its value, set unless NULL or filtered out.
    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let v = &values[0];
        let set: BooleanArray = (0..v.len()).map(|i| Some(v.is_valid(i) && kept(opt_filter, i))).collect();
        Ok(vec![v.clone(), Arc::new(set)])
    }

    fn size(&self) -> usize {
        self.held + self.picks.capacity() * std::mem::size_of::<Option<(u32, u32)>>() + self.arrays.capacity() * std::mem::size_of::<ArrayRef>()
    }
}

#[cfg(test)]
#[path = "any_value_tests.rs"]
mod tests;
