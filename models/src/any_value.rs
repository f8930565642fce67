//! `any_value` over many groups, at the cost of one check per row.
//!
//! DataFusion's `any_value` has only a row accumulator: grouped, it runs through an adapter that
//! slices the input per group, which costs more than the aggregation it stands beside. The
//! features SQL takes a series' key and name with it instead of grouping by them (the series id
//! already tells series apart), so this one is on every window's path.
//!
//! [`any_value`] wraps DataFusion's function and changes nothing but the groups accumulator:
//! the name, signature, return field, row accumulator and partial state (the value and whether
//! it is set) are DataFusion's. The value kept is each group's first non-null one, of any type:
//! the accumulator remembers where it was (which input array, which row) and copies the values
//! out only when they are asked for.

use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray};
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator, Signature};

/// DataFusion's `any_value` with a groups accumulator. Registering it replaces the built-in one.
pub fn any_value() -> AggregateUDF {
    AggregateUDF::new_from_impl(GroupedAnyValue { inner: datafusion::functions_aggregate::any_value::any_value_udaf() })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct GroupedAnyValue {
    inner: Arc<AggregateUDF>,
}

impl AggregateUDFImpl for GroupedAnyValue {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.return_field(arg_fields)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.accumulator(args)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        !args.is_distinct
    }

    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(FirstSeen::new(args.return_field.data_type().clone())))
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        AggregateOrderSensitivity::Insensitive
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// No value seen yet for a group.
const UNSET: (u32, u32) = (u32::MAX, 0);

/// Where each group's first non-null value is: an input array kept and a row in it.
#[derive(Debug)]
struct FirstSeen {
    data_type: DataType,
    /// The input arrays that hold a kept value (other arrays are not kept).
    arrays: Vec<ArrayRef>,
    /// Per group: index into `arrays` and row, or [`UNSET`].
    at: Vec<(u32, u32)>,
}

impl FirstSeen {
    fn new(data_type: DataType) -> Self {
        Self { data_type, arrays: Vec::new(), at: Vec::new() }
    }

    /// Keeps, for each group of `groups` with no value yet, the row's value of `values` where it
    /// is not null and `keep` (if any) selects the row.
    fn note(&mut self, values: &ArrayRef, groups: &[usize], keep: Option<&BooleanArray>, total_num_groups: usize) -> Result<()> {
        if self.arrays.len() >= u32::MAX as usize - 1 || values.len() > u32::MAX as usize {
            return Err(datafusion::common::DataFusionError::Execution("any_value: more input than it keeps apart".into()));
        }
        if self.at.len() < total_num_groups {
            self.at.resize(total_num_groups, UNSET);
        }
        let index = self.arrays.len() as u32;
        let mut used = false;
        let nulls = values.logical_nulls();
        for (row, &g) in groups.iter().enumerate() {
            if self.at[g] != UNSET || nulls.as_ref().is_some_and(|n| n.is_null(row)) || keep.is_some_and(|k| !k.is_valid(row) || !k.value(row)) {
                continue;
            }
            self.at[g] = (index, row as u32);
            used = true;
        }
        if used {
            self.arrays.push(values.clone());
        }
        Ok(())
    }

    /// The values of the first groups `emit_to` names (NULL where none was seen); the rest stay,
    /// renumbered from 0.
    fn take(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let taken = emit_to.take_needed(&mut self.at);
        let null = new_null_array(&self.data_type, 1);
        let mut sources: Vec<&dyn Array> = self.arrays.iter().map(|a| a.as_ref()).collect();
        sources.push(null.as_ref());
        let nothing = sources.len() - 1;
        let indices: Vec<(usize, usize)> = taken.iter().map(|&(a, r)| if (a, r) == UNSET { (nothing, 0) } else { (a as usize, r as usize) }).collect();
        let out = arrow::compute::interleave(&sources, &indices)?;
        if self.at.is_empty() {
            self.arrays.clear();
        }
        Ok(out)
    }
}

impl GroupsAccumulator for FirstSeen {
    fn update_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], opt_filter: Option<&BooleanArray>, total_num_groups: usize) -> Result<()> {
        self.note(&values[0], group_indices, opt_filter, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.take(emit_to)
    }

    /// DataFusion's partial state: the value and whether it is set.
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let value = self.take(emit_to)?;
        let set: BooleanArray = (0..value.len()).map(|i| Some(value.is_valid(i))).collect();
        Ok(vec![value, Arc::new(set)])
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        // An unset state's value is NULL, so the value column alone would do; the flag is
        // honoured all the same.
        let set = values.get(1).and_then(|s| s.as_boolean_opt());
        self.note(&values[0], group_indices, set, total_num_groups)
    }

    /// Each row as a state of its own (DataFusion skipping the partial aggregation).
    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        let v = &values[0];
        let nulls = v.logical_nulls();
        let keep: BooleanArray =
            (0..v.len()).map(|i| Some(!nulls.as_ref().is_some_and(|n| n.is_null(i)) && opt_filter.is_none_or(|f| f.is_valid(i) && f.value(i)))).collect();
        let value = arrow::compute::nullif(v, &arrow::compute::not(&keep)?)?;
        Ok(vec![value, Arc::new(keep)])
    }

    fn size(&self) -> usize {
        // The arrays are the input's, shared; what is this accumulator's own is the index.
        self.at.capacity() * std::mem::size_of::<(u32, u32)>() + self.arrays.capacity() * std::mem::size_of::<ArrayRef>()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, RecordBatch, StringArray, UInt64Array};
    use arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    fn batch(ids: Vec<u64>, names: Vec<Option<&str>>, n: Vec<Option<i64>>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from(ids)), Arc::new(StringArray::from(names)), Arc::new(Int64Array::from(n))]).unwrap()
    }

    async fn rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
        let out = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let mut lines: Vec<String> = arrow::util::pretty::pretty_format_batches(&out).unwrap().to_string().lines().map(str::to_string).collect();
        lines.sort();
        lines
    }

    fn ctx(partitions: usize, replaced: bool) -> SessionContext {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions).with_batch_size(2));
        if replaced {
            ctx.register_udaf(any_value());
        }
        let parts = vec![
            vec![batch(vec![1, 2, 1], vec![None, Some("b"), Some("a")], vec![Some(10), None, Some(11)])],
            vec![batch(vec![3, 2, 1, 4], vec![Some("c"), Some("b"), Some("a"), None], vec![None, Some(20), Some(12), None])],
        ];
        ctx.register_table("t", Arc::new(MemTable::try_new(parts[0][0].schema(), parts).unwrap())).unwrap();
        ctx
    }

    #[tokio::test]
    async fn grouped_it_answers_as_datafusions_own_with_nulls_and_partial_states() {
        // Each group has one non-null name (or none), so the answer does not depend on which
        // value is kept; the partitions make DataFusion merge partial states.
        let sql = "SELECT id, any_value(name) AS name, count(*) AS c FROM t GROUP BY id";
        for partitions in [1, 3] {
            let ours = rows(&ctx(partitions, true), sql).await;
            let theirs = rows(&ctx(partitions, false), sql).await;
            assert_eq!(ours, theirs, "{partitions} partitions");
            let nulls = rows(&ctx(partitions, true), "SELECT id FROM (SELECT id, any_value(name) AS name FROM t GROUP BY id) WHERE name IS NULL").await;
            assert!(nulls.iter().any(|l| l.trim() == "| 4  |"), "a group of NULLs gives NULL: {nulls:?}");
        }
    }

    #[test]
    fn the_first_non_null_value_of_each_group_is_kept_and_emitting_the_first_groups_renumbers_the_rest() {
        let mut acc = FirstSeen::new(DataType::Utf8);
        let a: ArrayRef = Arc::new(StringArray::from(vec![None, Some("x"), Some("y")]));
        acc.update_batch(&[a], &[0, 0, 1], None, 3).unwrap();
        let b: ArrayRef = Arc::new(StringArray::from(vec![Some("z"), Some("w"), Some("v")]));
        let filter = BooleanArray::from(vec![true, false, true]);
        acc.update_batch(&[b], &[0, 2, 2], Some(&filter), 3).unwrap();
        let first = acc.evaluate(EmitTo::First(2)).unwrap();
        let first = first.as_string::<i32>();
        assert_eq!(first.iter().collect::<Vec<_>>(), vec![Some("x"), Some("y")]);
        let rest = acc.evaluate(EmitTo::All).unwrap();
        assert_eq!(rest.as_string::<i32>().iter().collect::<Vec<_>>(), vec![Some("v")], "group 2 became group 0; the filtered row was skipped");
        assert!(acc.arrays.is_empty(), "nothing held once every group is out");
    }

    #[test]
    fn its_state_merges_back_to_the_same_values() {
        let mut acc = FirstSeen::new(DataType::Int64);
        let a: ArrayRef = Arc::new(Int64Array::from(vec![None, Some(5)]));
        acc.update_batch(&[a], &[0, 1], None, 3).unwrap();
        let state = acc.state(EmitTo::All).unwrap();
        let mut merged = FirstSeen::new(DataType::Int64);
        merged.merge_batch(&state, &[0, 1, 2], 3).unwrap();
        let out = merged.evaluate(EmitTo::All).unwrap();
        assert_eq!(out.as_primitive::<arrow::datatypes::Int64Type>().iter().collect::<Vec<_>>(), vec![None, Some(5), None]);
        let rows: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(3)]));
        let state = merged.convert_to_state(&[rows], Some(&BooleanArray::from(vec![true, true, false]))).unwrap();
        let mut from_rows = FirstSeen::new(DataType::Int64);
        from_rows.merge_batch(&state, &[0, 0, 0], 1).unwrap();
        let out = from_rows.evaluate(EmitTo::All).unwrap();
        assert_eq!(out.as_primitive::<arrow::datatypes::Int64Type>().value(0), 1, "filtered and NULL rows are no value");
    }
}
