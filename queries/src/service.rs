//! Running SQL over snapshots of the result tables.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;
use vigil_pipeline::ResultTables;

/// Errors of the SQL service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Occurs when the query does not parse, plan or run (the user's query is at fault).
    #[error("{0}")]
    Query(#[from] datafusion::error::DataFusionError),
    /// Occurs when rows cannot be rendered as JSON.
    #[error("rendering rows: {0}")]
    Render(#[from] arrow::error::ArrowError),
    /// Occurs when a table vanished mid-query (a bug in Vigil).
    #[error(transparent)]
    Tables(#[from] vigil_pipeline::Error),
}

/// Answers read-only SQL over the pipeline's result tables.
#[derive(Debug, Clone)]
pub struct SqlService {
    tables: Arc<ResultTables>,
    scalar: Vec<datafusion::logical_expr::ScalarUDF>,
    aggregate: Vec<datafusion::logical_expr::AggregateUDF>,
}

impl SqlService {
    /// A service over `tables`.
    pub fn new(tables: Arc<ResultTables>) -> Self {
        Self { tables, scalar: Vec::new(), aggregate: Vec::new() }
    }

    /// A service over `tables` whose queries may also call these functions (the model
    /// functions, registered by the binary).
    pub fn with_functions(
        tables: Arc<ResultTables>,
        scalar: Vec<datafusion::logical_expr::ScalarUDF>,
        aggregate: Vec<datafusion::logical_expr::AggregateUDF>,
    ) -> Self {
        Self { tables, scalar, aggregate }
    }

    /// Runs `sql` and returns its batches.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, Error> {
        let ctx = SessionContext::new();
        for f in &self.scalar {
            ctx.register_udf(f.clone());
        }
        for f in &self.aggregate {
            ctx.register_udaf(f.clone());
        }
        for name in self.tables.names() {
            let snap = self.tables.snapshot(&name)?;
            let table = MemTable::try_new(snap.schema, vec![snap.batches])?;
            ctx.register_table(name.as_str(), Arc::new(table))?;
        }
        let opts = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let df = ctx.sql_with_options(sql, opts).await?;
        Ok(df.collect().await?)
    }

    /// Runs `sql` and renders the rows as a JSON array of objects (nulls explicit).
    pub async fn query_json(&self, sql: &str) -> Result<Vec<u8>, Error> {
        let batches = self.query(sql).await?;
        let mut w = arrow_json::WriterBuilder::new().with_explicit_nulls(true).build::<_, arrow_json::writer::JsonArray>(Vec::new());
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        w.write_batches(&refs)?;
        w.finish()?;
        let mut out = w.into_inner();
        if out.is_empty() {
            out.extend_from_slice(b"[]");
        }
        Ok(out)
    }

    /// The tables queries can read.
    pub fn tables(&self) -> Vec<String> {
        self.tables.names()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    fn service() -> SqlService {
        let t = Arc::new(ResultTables::new());
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        t.create("anomalies", schema.clone(), 100);
        t.append("anomalies", RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap()).unwrap();
        t.create("decisions", Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)])), 100);
        SqlService::new(t)
    }

    #[tokio::test]
    async fn counts_rows_as_json() {
        let s = service();
        let out = s.query_json("select count(*) as n, sum(x) as s from anomalies").await.unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"[{"n":3,"s":6}]"#);
        let out = s.query_json("select * from decisions").await.unwrap();
        assert_eq!(out, b"[]");
    }

    #[tokio::test]
    async fn queries_cannot_change_tables() {
        let s = service();
        assert!(s.query("drop table anomalies").await.is_err());
        assert!(s.query("create table t as select 1").await.is_err());
        assert!(s.query("insert into anomalies values (4)").await.is_err());
        assert!(s.query("select nope from anomalies").await.is_err());
    }
}
