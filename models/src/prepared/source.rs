//! The `points` and `logs` tables of a prepared plan: a table whose rows are swapped in before
//! each run, so the SQL is parsed, optimised and planned once and its physical plan re-executed
//! at every close.
//!
//! The table reports no statistics, so nothing in the plan depends on the rows it was planned
//! with (DataFusion answers `count(*)` from exact statistics, for one). Its rows are dealt out to
//! a fixed number of partitions; when they are dealt by DataFusion's own repartitioning hash of
//! `series_id` the table says so, and an aggregation grouped by `series_id` (and anything else)
//! runs in one step per partition instead of a partial step, a shuffle and a final step.

use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result as DfResult;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::repartition::REPARTITION_RANDOM_STATE;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream};
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender};
use futures::StreamExt;

/// The rows one run sees, one list of batches per partition.
type Rows = Arc<Mutex<Vec<Vec<RecordBatch>>>>;

/// The rows of one streamed run ([`SwappedTable::channels`]): one receiver per partition, carried
/// in the run's session config so that each run's scan reads its own rows, however many runs of
/// the same plan are under way.
#[derive(Debug)]
pub(crate) struct Streamed {
    /// Which table these rows are for (the address of its shared rows).
    table: usize,
    receivers: Mutex<Vec<Option<UnboundedReceiver<RecordBatch>>>>,
}

/// Which table `rows` belong to: the address they are shared at.
fn rows_id(rows: &Rows) -> usize {
    Arc::as_ptr(rows) as *const () as usize
}

/// A table whose rows are replaced before each run of a prepared plan.
#[derive(Debug, Clone)]
pub struct SwappedTable {
    schema: SchemaRef,
    partitions: usize,
    /// The column whose hash deals the rows out to the partitions, if any (see [`own_rows`]).
    hashed_by: Option<usize>,
    rows: Rows,
}

impl SwappedTable {
    /// An empty table of `schema` in `partitions` partitions; `hashed_by` names the column whose
    /// repartitioning hash decides each row's partition, when [`Self::set`] is given rows dealt
    /// that way.
    pub fn new(schema: SchemaRef, partitions: usize, hashed_by: Option<&str>) -> Self {
        let partitions = partitions.max(1);
        let hashed_by = hashed_by.and_then(|c| schema.index_of(c).ok());
        Self { schema, partitions, hashed_by, rows: Arc::new(Mutex::new(vec![Vec::new(); partitions])) }
    }

    /// How many partitions the table has.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// The column whose hash deals the rows out to the partitions, if any (see [`own_rows`]).
    pub fn hashed_by(&self) -> Option<usize> {
        self.hashed_by
    }

    /// Replaces the rows. `parts` has one list per partition; with `hashed_by` set, it has one
    /// list of all the rows, and each partition takes its own as it reads them ([`own_rows`]).
    pub fn set(&self, mut parts: Vec<Vec<RecordBatch>>) {
        parts.resize_with(self.partitions, Vec::new);
        *self.rows.lock().unwrap_or_else(|e| e.into_inner()) = parts;
    }

    /// Drops the rows (they are owned by the run's output from here on).
    pub fn clear(&self) {
        self.set(Vec::new());
    }

    fn id(&self) -> usize {
        rows_id(&self.rows)
    }

    /// Whether `plan` scans this table exactly once, so that a run of it can read rows sent
    /// while it runs ([`crate::prepared::Prepared::stream`]).
    pub fn scanned_once_by(&self, plan: &Arc<dyn ExecutionPlan>) -> bool {
        fn count(plan: &Arc<dyn ExecutionPlan>, id: usize) -> usize {
            let own = plan.downcast_ref::<SwappedExec>().is_some_and(|s| rows_id(&s.rows) == id);
            usize::from(own) + plan.children().into_iter().map(|c| count(c, id)).sum::<usize>()
        }
        count(plan, self.id()) == 1
    }

    /// One channel per partition for a streamed run, and the session-config extension that
    /// hands the receivers to the run's scan.
    pub(crate) fn channels(&self) -> (Vec<UnboundedSender<RecordBatch>>, Arc<Streamed>) {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..self.partitions).map(|_| futures::channel::mpsc::unbounded()).unzip();
        let streamed = Streamed { table: self.id(), receivers: Mutex::new(receivers.into_iter().map(Some).collect()) };
        (senders, Arc::new(streamed))
    }
}

#[async_trait]
impl TableProvider for SwappedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(&self, _state: &dyn Session, projection: Option<&Vec<usize>>, _filters: &[Expr], _limit: Option<usize>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        // The partitioning column, at its place in the projected schema.
        let hashed = self.hashed_by.and_then(|c| match projection {
            Some(p) => p.iter().position(|i| *i == c),
            None => Some(c),
        });
        let partitioning = match hashed {
            Some(i) => Partitioning::Hash(vec![Arc::new(Column::new(projected.field(i).name(), i)) as Arc<dyn PhysicalExpr>], self.partitions),
            None => Partitioning::UnknownPartitioning(self.partitions),
        };
        let properties = PlanProperties::new(EquivalenceProperties::new(projected.clone()), partitioning, EmissionType::Incremental, Boundedness::Bounded);
        Ok(Arc::new(SwappedExec {
            schema: projected,
            projection: projection.cloned(),
            rows: self.rows.clone(),
            hashed: hashed.map(|i| (i, self.partitions)),
            properties: Arc::new(properties),
        }))
    }
}

/// The scan of a [`SwappedTable`]: reads the rows the table holds when it is executed.
#[derive(Debug)]
struct SwappedExec {
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    rows: Rows,
    /// The partitioning column in the projected rows, and the partition count: each partition
    /// takes its own rows out of all of them (see [`SwappedTable::set`]).
    hashed: Option<(usize, usize)>,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for SwappedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SwappedExec: partitioning={}", self.properties.partitioning)
    }
}

impl ExecutionPlan for SwappedExec {
    fn name(&self) -> &str {
        "SwappedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let streamed = context.session_config().get_extension::<Streamed>().filter(|s| s.table == rows_id(&self.rows));
        if let Some(streamed) = streamed {
            // A streamed run: the rows arrive on this partition's channel until its sender is
            // dropped (with `hashed`, every partition receives every batch and keeps its own).
            let receiver = streamed.receivers.lock().unwrap_or_else(|e| e.into_inner()).get_mut(partition).and_then(Option::take);
            let Some(receiver) = receiver else {
                return Err(datafusion::error::DataFusionError::Internal(format!("partition {partition} of a streamed table was read twice")));
            };
            let (projection, hashed) = (self.projection.clone(), self.hashed);
            let mut hashes = Vec::new();
            let stream = receiver
                .map(move |b: RecordBatch| {
                    let b = match &projection {
                        Some(p) => b.project(p)?,
                        None => b,
                    };
                    match hashed {
                        Some((col, k)) => own_rows(&b, col, partition, k, &mut hashes),
                        None => Ok(b),
                    }
                })
                .filter(|b| std::future::ready(!matches!(b, Ok(b) if b.num_rows() == 0)));
            return Ok(Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(self.schema.clone(), stream)));
        }
        let Some((col, k)) = self.hashed else {
            let batches = self.rows.lock().unwrap_or_else(|e| e.into_inner()).get(partition).cloned().unwrap_or_default();
            return Ok(Box::pin(MemoryStream::try_new(batches, self.schema.clone(), self.projection.clone())?));
        };
        // Every partition reads all the rows and keeps those that hash to it, batch by batch as
        // the plan pulls them: the partitions deal in parallel, and only the columns the plan
        // reads are copied.
        let batches = self.rows.lock().unwrap_or_else(|e| e.into_inner()).first().cloned().unwrap_or_default();
        let projection = self.projection.clone();
        let mut hashes = Vec::new();
        let stream = futures::stream::iter(batches)
            .map(move |b| {
                let b = match &projection {
                    Some(p) => b.project(p)?,
                    None => b,
                };
                own_rows(&b, col, partition, k, &mut hashes)
            })
            .filter(|b| std::future::ready(!matches!(b, Ok(b) if b.num_rows() == 0)));
        Ok(Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(self.schema.clone(), stream)))
    }
}

/// The partition DataFusion's hash repartitioning gives each value of `column` among `k`.
pub fn partition_of(column: &ArrayRef, k: usize, hashes: &mut Vec<u64>) -> DfResult<()> {
    hashes.clear();
    hashes.resize(column.len(), 0);
    datafusion::common::hash_utils::create_hashes(std::slice::from_ref(column), REPARTITION_RANDOM_STATE.random_state(), hashes)?;
    let k = k as u64;
    // The same remainder; a mask where `k` allows it (two cores: a division per row saved).
    if k.is_power_of_two() {
        hashes.iter_mut().for_each(|h| *h &= k - 1);
    } else {
        hashes.iter_mut().for_each(|h| *h %= k);
    }
    Ok(())
}

/// The rows of `batch` that DataFusion's hash repartitioning of column `col` over `k`
/// partitions sends to `partition`, so that [`SwappedTable`] may declare its rows
/// hash-partitioned: every row of one `col` value lands in one partition, the one a
/// `RepartitionExec` would send it to.
pub fn own_rows(batch: &RecordBatch, col: usize, partition: usize, k: usize, hashes: &mut Vec<u64>) -> DfResult<RecordBatch> {
    if k <= 1 {
        return Ok(batch.clone());
    }
    partition_of(batch.column(col), k, hashes)?;
    let p = partition as u64;
    let mut idx: Vec<u32> = Vec::with_capacity(hashes.len());
    idx.extend(hashes.iter().enumerate().filter(|(_, h)| **h == p).map(|(i, _)| i as u32));
    let idx = UInt32Array::from(idx);
    if idx.len() == batch.num_rows() {
        return Ok(batch.clone());
    }
    Ok(take_record_batch(batch, &idx)?)
}

/// Deals `batches` out to `k` partitions, balancing rows, in order within each; a small table
/// stays in one partition.
pub fn deal_evenly(batches: Vec<RecordBatch>, k: usize) -> DfResult<Vec<Vec<RecordBatch>>> {
    let k = k.max(1);
    let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if k == 1 || n < 4096 * k || batches.is_empty() {
        return Ok(vec![batches]);
    }
    if batches.len() >= 2 * k {
        let mut parts = vec![Vec::new(); k];
        let mut filled = vec![0usize; k];
        for b in batches {
            let i = (0..k).min_by_key(|i| filled[*i]).expect("k >= 1");
            filled[i] += b.num_rows();
            parts[i].push(b);
        }
        return Ok(parts);
    }
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches)?;
    Ok((0..k).map(|i| vec![all.slice(i * n / k, (i + 1) * n / k - i * n / k)]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema, UInt64Type};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    fn ids(lo: u64, n: u64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("series_id", DataType::UInt64, false)]));
        // Spread like real series ids (hashes), not consecutive integers.
        RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from_iter_values((lo..lo + n).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))))]).unwrap()
    }

    #[tokio::test]
    async fn rows_are_dealt_to_the_partition_datafusions_own_repartitioning_sends_them_to() {
        // The table declares itself hash-partitioned by series_id: that is only true if every id
        // lands where DataFusion's RepartitionExec would put it (a join against a repartitioned
        // side relies on it).
        let batches = vec![ids(0, 5_000), ids(5_000, 3_000)];
        for k in [2usize, 3, 4] {
            let mut hashes = Vec::new();
            let ours: Vec<Vec<RecordBatch>> = (0..k).map(|p| batches.iter().map(|b| own_rows(b, 0, p, k, &mut hashes).unwrap()).collect()).collect();
            let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(k));
            ctx.register_table("t", Arc::new(MemTable::try_new(batches[0].schema(), vec![batches.clone()]).unwrap())).unwrap();
            let df = ctx.sql("SELECT series_id FROM t").await.unwrap();
            let input = df.create_physical_plan().await.unwrap();
            let col = Arc::new(Column::new("series_id", 0)) as Arc<dyn PhysicalExpr>;
            let rep = Arc::new(datafusion::physical_plan::repartition::RepartitionExec::try_new(input, Partitioning::Hash(vec![col], k)).unwrap());
            let theirs = datafusion::physical_plan::collect_partitioned(rep, ctx.task_ctx()).await.unwrap();
            let sorted = |parts: &[RecordBatch]| {
                let mut v: Vec<u64> = parts.iter().flat_map(|b| b.column(0).as_primitive::<UInt64Type>().values().to_vec()).collect();
                v.sort_unstable();
                v
            };
            let total: usize = ours.iter().flatten().map(RecordBatch::num_rows).sum();
            assert_eq!(total, 8_000, "k={k}: every row dealt once");
            for p in 0..k {
                assert_eq!(sorted(&ours[p]), sorted(&theirs[p]), "k={k}, partition {p}");
                assert!(ours[p].iter().any(|b| b.num_rows() > 0), "k={k}: partition {p} got rows");
            }
        }
    }

    #[test]
    fn an_even_deal_keeps_every_row_in_order_within_each_partition() {
        let batches: Vec<RecordBatch> = (0..7).map(|i| ids(i * 3_000, 3_000)).collect();
        let parts = deal_evenly(batches.clone(), 2).unwrap();
        assert_eq!(parts.len(), 2);
        let rows: Vec<usize> = parts.iter().map(|p| p.iter().map(RecordBatch::num_rows).sum()).collect();
        assert_eq!(rows.iter().sum::<usize>(), 21_000);
        assert!(rows.iter().all(|r| *r >= 9_000), "{rows:?}");
        // A small table stays whole.
        let small = deal_evenly(vec![ids(0, 100)], 4).unwrap();
        assert_eq!(small.len(), 1);
    }
}
