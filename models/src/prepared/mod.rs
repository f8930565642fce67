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
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use futures::channel::mpsc::UnboundedSender;
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

    /// Starts a run over `table` whose rows are sent while it runs ([`StreamedRun::send`]).
    /// `None` when the plan cannot stream: it is planned at every run, it scans `table` more
    /// than once, or there is no tokio runtime to run it on.
    pub fn stream(&self, ctx: &SessionContext, table: &SwappedTable) -> DfResult<Option<StreamedRun>> {
        let Some(plan) = self.plan.as_ref().filter(|p| table.scanned_once_by(p)) else { return Ok(None) };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return Ok(None) };
        let planned = plan.schema();
        let plan = reset_plan_states(plan.clone())?;
        let (senders, streamed) = table.channels();
        let state = ctx.state();
        let config = state.config().clone().with_extension(streamed);
        let task_ctx = Arc::new(TaskContext::from(&state).with_session_config(config));
        let task = runtime.spawn(collect(plan.clone(), task_ctx));
        Ok(Some(StreamedRun { senders, broadcast: table.hashed_by().is_some(), next: 0, task, planned, plan }))
    }
}

/// One run of a [`Prepared`] plan that reads its table's rows as they are sent, started before
/// the rows exist ([`Prepared::stream`]): the plan works through each batch as it arrives (an
/// aggregation groups it into its hash table at once), on the runtime's threads, and
/// [`Self::finish`] only waits for what is left once the last batch is in.
#[derive(Debug)]
pub struct StreamedRun {
    senders: Vec<UnboundedSender<RecordBatch>>,
    /// Whether each batch goes to every partition (which keeps its own rows) or to one.
    broadcast: bool,
    next: usize,
    task: tokio::task::JoinHandle<DfResult<Vec<RecordBatch>>>,
    planned: SchemaRef,
    /// The plan being run, for its metrics once it has finished.
    plan: Arc<dyn ExecutionPlan>,
}

impl StreamedRun {
    /// Sends `batch` (the table's schema) to the run.
    pub fn send(&mut self, batch: &RecordBatch) -> DfResult<()> {
        let closed = || DataFusionError::Execution("the streamed run has already stopped (its error comes with finish)".into());
        if self.broadcast {
            for s in &self.senders {
                s.unbounded_send(batch.clone()).map_err(|_| closed())?;
            }
        } else {
            let i = self.next % self.senders.len();
            self.next += 1;
            self.senders[i].unbounded_send(batch.clone()).map_err(|_| closed())?;
        }
        Ok(())
    }

    /// Ends the input and returns what the plan produced, as [`Prepared::execute`] does, and
    /// the compute time its operators reported over the whole run (DataFusion's
    /// `elapsed_compute`, summed over the plan).
    pub async fn finish(self) -> DfResult<(Vec<RecordBatch>, SchemaRef, std::time::Duration)> {
        drop(self.senders);
        let batches = self.task.await.map_err(|e| DataFusionError::External(Box::new(e)))??;
        Ok((batches, self.planned, std::time::Duration::from_nanos(compute_ns(&self.plan) as u64)))
    }
}

/// The `elapsed_compute` every operator of `plan` reported, in ns.
fn compute_ns(plan: &Arc<dyn ExecutionPlan>) -> usize {
    plan.metrics().and_then(|m| m.elapsed_compute()).unwrap_or(0) + plan.children().into_iter().map(compute_ns).sum::<usize>()
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
