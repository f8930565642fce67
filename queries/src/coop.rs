//! Making every operator of a query yield, so its time limit can stop it.
//!
//! A query is stopped by dropping it when its deadline passes, and a deadline is only noticed
//! when the query yields to the runtime. DataFusion makes its scans yield, but an operator
//! that turns one input batch into very many output batches (a cross join feeding an
//! aggregate) can run for minutes without polling a scan again, so it never yields and never
//! times out. This rule wraps every operator above the leaves in a [`CooperativeExec`]: each
//! batch it passes up spends the task's scheduling budget, so the query yields at least every
//! 128 batches wherever it is busy.

use std::any::Any;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::ExecutionPlan;

/// Wraps every non-leaf operator in a [`CooperativeExec`] (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct YieldEverywhere;

impl PhysicalOptimizerRule for YieldEverywhere {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
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
