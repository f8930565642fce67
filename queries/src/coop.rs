//! Making every operator of a query yield, so its time limit can stop it, and refusing joins
//! that no time limit can stop.
//!
//! A query is stopped by dropping it when its deadline passes, and a deadline is only noticed
//! when the query yields to the runtime. DataFusion makes its scans yield, but an operator
//! that turns one input batch into very many output batches (a cross join feeding an
//! aggregate) can run for minutes without polling a scan again, so it never yields and never
//! times out. This rule wraps every operator above the leaves in a [`CooperativeExec`]: each
//! batch it passes up spends the task's scheduling budget, so the query yields at least every
//! 128 batches wherever it is busy.
//!
//! One operator cannot be made to yield: a join without an equality condition (a cross join,
//! or a join on an inequality) compares each probe batch with every buffered row in one call,
//! which for two large tables is minutes of work that nothing can interrupt. Such joins are
//! refused when planned if their inputs may hold more than `max_join_pairs` row pairs.

use std::any::Any;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::stats::Precision;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::joins::{CrossJoinExec, NestedLoopJoinExec};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::ExecutionPlan;

/// Wraps every non-leaf operator in a [`CooperativeExec`] and refuses joins without an
/// equality over more than `max_join_pairs` row pairs (see the module docs).
#[derive(Debug)]
pub(crate) struct YieldEverywhere {
    pub(crate) max_join_pairs: u64,
}

/// Rows an input may hold: its exact or estimated count, if known.
fn rows(plan: &Arc<dyn ExecutionPlan>) -> Option<u64> {
    let stats = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new()).ok()?;
    match stats.num_rows {
        Precision::Exact(n) | Precision::Inexact(n) => Some(n as u64),
        Precision::Absent => None,
    }
}

impl YieldEverywhere {
    fn check_join(&self, node: &Arc<dyn ExecutionPlan>) -> Result<()> {
        let any: &dyn Any = node.as_ref();
        let sides = if let Some(j) = any.downcast_ref::<NestedLoopJoinExec>() {
            (j.left().clone(), j.right().clone())
        } else if let Some(j) = any.downcast_ref::<CrossJoinExec>() {
            (j.left().clone(), j.right().clone())
        } else {
            return Ok(());
        };
        if let (Some(l), Some(r)) = (rows(&sides.0), rows(&sides.1)) {
            let pairs = l.saturating_mul(r);
            if pairs > self.max_join_pairs {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "a join without an equality condition over {l} x {r} rows ({pairs} pairs) is more than server.limits.max_join_pairs \
                     ({}); join on an equality (a = b), or filter or aggregate the inputs first",
                    self.max_join_pairs
                )));
            }
        }
        Ok(())
    }
}

impl PhysicalOptimizerRule for YieldEverywhere {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            self.check_join(&node)?;
            let any: &dyn Any = node.as_ref();
            if any.is::<CooperativeExec>() || node.children().is_empty() {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "vigil_yield_everywhere"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
