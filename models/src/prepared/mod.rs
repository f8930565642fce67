//! SQL planned once and re-executed: a table whose rows are swapped in before each run
//! ([`SwappedTable`]) and a plan over it ([`Prepared`]). The feature plan runs at every close,
//! the policies whenever an incident opens or changes, the health score every `health.every`:
//! parsing, optimising and planning each text again every time cost more than running it over
//! a few rows.

mod source;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};

pub use source::{deal_evenly, own_rows, partition_of, SwappedTable};

/// Makes `c` fit for plans executed more than once: a physical plan with dynamic filters
/// cannot be (their filters keep the first run's values).
pub fn reusable_plans(c: &mut SessionConfig) {
    c.options_mut().optimizer.enable_dynamic_filter_pushdown = false;
}

/// One SQL text over the tables of a context, planned once where it can be. Its tables are
/// [`SwappedTable`]s whose rows the caller sets before [`Self::execute`] and clears after.
#[derive(Debug)]
pub struct Prepared {
    sql: String,
    /// The physical plan; `None` when the SQL must be planned at every run.
    plan: Option<Arc<dyn ExecutionPlan>>,
}

impl Prepared {
    /// Plans `sql` over `ctx`'s tables, once, unless it calls a function that planning folds to
    /// a constant (`now()`, `current_date()`): that one is planned at every run, so it sees the
    /// time of the run. `ctx` must have been configured with [`reusable_plans`].
    pub async fn new(ctx: &SessionContext, sql: &str) -> DfResult<Self> {
        let state = ctx.state();
        let logical = state.create_logical_plan(sql).await?;
        let plan = if folds_at_planning(&logical)? {
            None
        } else {
            let df = ctx.execute_logical_plan(logical).await?;
            Some(df.create_physical_plan().await?)
        };
        Ok(Self { sql: sql.to_string(), plan })
    }

    /// The SQL text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The physical plan made once, if the SQL did not need planning at every run.
    pub fn plan(&self) -> Option<&Arc<dyn ExecutionPlan>> {
        self.plan.as_ref()
    }

    /// Runs the plan over what the tables hold now. Returns the batches and the schema the plan
    /// was made with (the batches' own schema is the truth when there are any: execution may
    /// pick other physical string types than planning).
    pub async fn execute(&self, ctx: &SessionContext) -> DfResult<(Vec<RecordBatch>, SchemaRef)> {
        let (plan, planned) = match &self.plan {
            Some(plan) => (reset_plan_states(plan.clone())?, plan.schema()),
            None => {
                let df = ctx.sql(&self.sql).await?;
                let planned: SchemaRef = Arc::new(df.schema().as_arrow().clone());
                (df.create_physical_plan().await?, planned)
            }
        };
        Ok((collect(plan, ctx.task_ctx()).await?, planned))
    }
}

/// Whether `plan` calls a function whose value planning fixes (a stable one, such as `now()`).
fn folds_at_planning(plan: &LogicalPlan) -> DfResult<bool> {
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e {
                    if f.func.signature().volatility == Volatility::Stable {
                        found = true;
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(found)
}
