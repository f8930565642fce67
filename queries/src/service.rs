//! Running SQL over the result tables, within limits.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use vigil_pipeline::ResultTables;

use crate::live::VigilSchema;

/// Limits every query runs within (`[server.limits]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes one query may hold in DataFusion's memory pool (sorts, joins, aggregations).
    pub memory: usize,
    /// Longest a query may take, from its arrival to its last row.
    pub timeout: Duration,
    /// Queries running at once; others wait for a slot, within their timeout.
    pub max_concurrent: usize,
    /// Rows a result may have.
    pub max_rows: usize,
    /// Partitions a query's plan runs in (its share of the CPU).
    pub threads: usize,
    /// Row pairs a join without an equality condition may compare (see `server.limits`).
    pub max_join_pairs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { memory: 256 << 20, timeout: Duration::from_secs(30), max_concurrent: 4, max_rows: 1_000_000, threads: 1, max_join_pairs: 100_000_000 }
    }
}

/// The kind of a failed query, as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The SQL does not parse.
    Parse,
    /// It parses but cannot be planned (unknown table or column, wrong types, not read-only).
    Plan,
    /// It failed while running.
    Execution,
    /// It needed more memory, rows or slots than the limits allow.
    Resources,
    /// It ran past its time limit.
    Timeout,
    /// The credentials are missing or wrong.
    Auth,
    /// A bug in Vigil.
    Internal,
}

impl ErrorKind {
    /// The kind's name in JSON errors.
    pub fn name(self) -> &'static str {
        match self {
            Self::Parse => "parse",
            Self::Plan => "plan",
            Self::Execution => "execution",
            Self::Resources => "resources",
            Self::Timeout => "timeout",
            Self::Auth => "auth",
            Self::Internal => "internal",
        }
    }

    /// The Postgres SQLSTATE of the kind.
    pub fn sqlstate(self) -> &'static str {
        match self {
            Self::Parse => "42601",
            Self::Plan => "42P01",
            Self::Execution => "XX000",
            Self::Resources => "53000",
            Self::Timeout => "57014",
            Self::Auth => "28P01",
            Self::Internal => "XX000",
        }
    }
}

/// Errors of the SQL service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Occurs when the query does not parse, plan or run (the user's query is at fault), or
    /// runs out of its memory.
    #[error("{0}")]
    Query(#[from] DataFusionError),
    /// Occurs when a query runs past `server.limits.timeout`.
    #[error("the query ran past its time limit of {0:?} (server.limits.timeout) and was stopped")]
    Timeout(Duration),
    /// Occurs when a result has more rows than `server.limits.max_rows`.
    #[error("the result has more than {0} rows (server.limits.max_rows); add a LIMIT, a WHERE or an aggregate")]
    TooManyRows(usize),
    /// Occurs when `server.limits.max_concurrent` queries run for the whole timeout.
    #[error("{0} queries were running (server.limits.max_concurrent) for the whole time limit; try again later")]
    Busy(usize),
    /// Occurs when rows cannot be rendered.
    #[error("rendering rows: {0}")]
    Render(#[from] arrow::error::ArrowError),
    /// Occurs when a table vanished mid-query (a bug in Vigil).
    #[error(transparent)]
    Tables(#[from] vigil_pipeline::Error),
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Query(e) => classify(e),
            Self::Timeout(_) => ErrorKind::Timeout,
            Self::TooManyRows(_) | Self::Busy(_) => ErrorKind::Resources,
            Self::Render(_) | Self::Tables(_) => ErrorKind::Internal,
        }
    }
}

/// The kind of a DataFusion error.
pub fn classify(e: &DataFusionError) -> ErrorKind {
    match e.find_root() {
        DataFusionError::SQL(..) => ErrorKind::Parse,
        DataFusionError::Plan(_) | DataFusionError::SchemaError(..) | DataFusionError::NotImplemented(_) | DataFusionError::Configuration(_) => ErrorKind::Plan,
        DataFusionError::ResourcesExhausted(_) => ErrorKind::Resources,
        DataFusionError::Internal(_) => ErrorKind::Internal,
        _ => ErrorKind::Execution,
    }
}

/// A running query's slot: it holds one of `max_concurrent` permits until dropped, and the
/// instant the query must finish by.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    /// When the query's time is up.
    pub deadline: Instant,
}

/// Answers read-only SQL over the pipeline's result tables (memory and Parquet history) and
/// the model functions, within [`Limits`].
#[derive(Clone)]
pub struct SqlService {
    tables: Arc<ResultTables>,
    base: Arc<SessionContext>,
    limits: Limits,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for SqlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlService").field("tables", &self.tables.names()).field("limits", &self.limits).finish()
    }
}

impl SqlService {
    /// A service over `tables` with the default limits.
    pub fn new(tables: Arc<ResultTables>) -> Self {
        Self::build(tables, Vec::new(), Vec::new(), Limits::default(), "vigil")
    }

    /// A service over `tables` whose queries may also call these functions (the model
    /// functions, registered by the binary).
    pub fn with_functions(
        tables: Arc<ResultTables>,
        scalar: Vec<datafusion::logical_expr::ScalarUDF>,
        aggregate: Vec<datafusion::logical_expr::AggregateUDF>,
    ) -> Self {
        Self::build(tables, scalar, aggregate, Limits::default(), "vigil")
    }

    /// A service with these functions and limits; the catalog is named `database` (what
    /// `current_database()` returns to Postgres clients).
    pub fn build(
        tables: Arc<ResultTables>,
        scalar: Vec<datafusion::logical_expr::ScalarUDF>,
        aggregate: Vec<datafusion::logical_expr::AggregateUDF>,
        limits: Limits,
        database: &str,
    ) -> Self {
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(database, "public")
            .with_create_default_catalog_and_schema(true)
            .with_information_schema(true)
            .with_target_partitions(limits.threads.max(1));
        // As the engine's plans: DataFusion 55.2's `percentile_cont` panics when partial
        // aggregation is skipped (a table with nearly one row per group).
        vigil_models::never_skip_partial_aggregation(&mut config);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(crate::coop::YieldEverywhere { max_join_pairs: limits.max_join_pairs }))
            .build();
        let ctx = SessionContext::new_with_state(state);
        for f in scalar {
            ctx.register_udf(f);
        }
        for f in aggregate {
            ctx.register_udaf(f);
        }
        if let Some(catalog) = ctx.catalog(database) {
            let _ = catalog.register_schema("public", Arc::new(VigilSchema { tables: tables.clone() }));
        }
        if let Err(e) = datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog(&ctx, database, datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider) {
            tracing::warn!(error = %e, "pg_catalog could not be set up; Postgres clients' catalog queries will fail");
        }
        Self { tables, base: Arc::new(ctx), limits, slots: Arc::new(Semaphore::new(limits.max_concurrent.max(1))), }
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A session for one query (or one Postgres connection, which runs one at a time): the
    /// tables and functions, with a memory pool of its own of `limits.memory`.
    pub fn session(&self) -> SessionContext {
        let base = self.base.runtime_env();
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory, 1.0)
            // No spilling: a query past its memory fails rather than filling the engine's disk.
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .with_object_store_registry(base.object_store_registry.clone())
            .build_arc()
            .unwrap_or(base);
        let state = SessionStateBuilder::new_from_existing(self.base.state()).with_runtime_env(runtime).build();
        SessionContext::new_with_state(state)
    }

    /// Waits for a query slot (at most `limits.timeout`).
    pub async fn admit(&self) -> Result<Admission, Error> {
        let deadline = Instant::now() + self.limits.timeout;
        match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Admission { _permit: permit, deadline }),
            _ => Err(Error::Busy(self.limits.max_concurrent)),
        }
    }

    /// Runs `sql` and returns its batches, within the limits.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, Error> {
        Ok(self.run(sql).await?.1)
    }

    /// Runs `sql` and returns its schema and batches, within the limits.
    pub async fn run(&self, sql: &str) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>), Error> {
        let admission = self.admit().await?;
        let ctx = self.session();
        let max_rows = self.limits.max_rows;
        let run = async {
            let opts = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
            let df = ctx.sql_with_options(sql, opts).await?;
            let mut stream = df.execute_stream().await?;
            let schema = stream.schema();
            let (mut out, mut rows) = (Vec::new(), 0usize);
            while let Some(b) = stream.next().await {
                let b = b?;
                rows += b.num_rows();
                if rows > max_rows {
                    return Err(Error::TooManyRows(max_rows));
                }
                out.push(b);
            }
            Ok((schema, out))
        };
        match tokio::time::timeout_at(admission.deadline, run).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(self.limits.timeout)),
        }
    }

    /// Runs `sql` and renders the rows as a JSON array of objects (nulls explicit).
    pub async fn query_json(&self, sql: &str) -> Result<Vec<u8>, Error> {
        let batches = self.query(sql).await?;
        crate::format::json(&batches)
    }

    /// The tables queries can read.
    pub fn tables(&self) -> Vec<String> {
        self.tables.names()
    }

    /// The result tables.
    pub fn result_tables(&self) -> &Arc<ResultTables> {
        &self.tables
    }
}

#[cfg(test)]
mod tests;
