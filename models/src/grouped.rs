//! A DataFusion aggregate function with a groups accumulator of Vigil's own: the way
//! [`crate::percentile`] and [`crate::any_value`] replace the built-in ones of the same name.

use std::sync::Arc;

use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, AggregateFunctionSimplification, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, GroupsAccumulator, SetMonotonicity, Signature};

/// Vigil's groups accumulator for a call, or `None` where DataFusion's own serves.
pub(crate) type GroupsFor = fn(&AccumulatorArgs) -> Option<Box<dyn GroupsAccumulator>>;

/// DataFusion's `inner` with `groups` tried first for `GROUP BY`; everything else (the name,
/// aliases, signature and coercion, return field, row and sliding accumulators, partial state,
/// simplification, clauses, documentation) is `inner`'s.
pub(crate) fn with_groups(inner: Arc<AggregateUDF>, groups: GroupsFor) -> AggregateUDF {
    AggregateUDF::new_from_impl(WithGroups { inner, groups })
}

#[derive(Debug)]
pub(crate) struct WithGroups {
    inner: Arc<AggregateUDF>,
    groups: GroupsFor,
}

impl WithGroups {
    fn of(&self) -> &dyn AggregateUDFImpl {
        self.inner.inner().as_ref()
    }
}

// One wrapper per wrapped function: the function tells them apart.
impl PartialEq for WithGroups {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}

impl Eq for WithGroups {}

impl std::hash::Hash for WithGroups {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

impl AggregateUDFImpl for WithGroups {
    fn name(&self) -> &str {
        self.of().name()
    }

    fn aliases(&self) -> &[String] {
        self.of().aliases()
    }

    fn signature(&self) -> &Signature {
        self.of().signature()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.of().coerce_types(arg_types)
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.of().return_type(arg_types)
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.of().return_field(arg_fields)
    }

    fn is_nullable(&self) -> bool {
        self.of().is_nullable()
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.of().accumulator(args)
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.of().create_sliding_accumulator(args)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.of().state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        (self.groups)(&args).is_some() || self.of().groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        match (self.groups)(&args) {
            Some(acc) => Ok(acc),
            None => self.of().create_groups_accumulator(args),
        }
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.of().order_sensitivity()
    }

    fn simplify(&self) -> Option<AggregateFunctionSimplification> {
        self.of().simplify()
    }

    fn is_descending(&self) -> Option<bool> {
        self.of().is_descending()
    }

    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.of().default_value(data_type)
    }

    fn supports_null_handling_clause(&self) -> bool {
        self.of().supports_null_handling_clause()
    }

    fn supports_within_group_clause(&self) -> bool {
        self.of().supports_within_group_clause()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.of().set_monotonicity(data_type)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.of().documentation()
    }
}
