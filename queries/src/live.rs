//! The result tables as DataFusion tables: rows in memory plus the Parquet history, read at
//! scan time, so a query sees the tables as they are when it starts.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use vigil_pipeline::ResultTables;

/// The `public` schema: every result table, including those created after the query layer.
#[derive(Debug)]
pub(crate) struct VigilSchema {
    pub(crate) tables: Arc<ResultTables>,
}

#[async_trait]
impl SchemaProvider for VigilSchema {
    fn table_names(&self) -> Vec<String> {
        self.tables.names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(self.tables.scan_parts(name).ok().map(|p| Arc::new(LiveTable { name: name.to_string(), schema: p.schema, tables: self.tables.clone() }) as _))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.names().iter().any(|n| n == name)
    }
}

/// One result table: its rows in memory, unioned with its Parquet files.
#[derive(Debug)]
struct LiveTable {
    name: String,
    schema: SchemaRef,
    tables: Arc<ResultTables>,
}

#[async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // The Parquet part prunes row groups with them; DataFusion still filters every row.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(&self, state: &dyn Session, projection: Option<&Vec<usize>>, filters: &[Expr], limit: Option<usize>) -> Result<Arc<dyn ExecutionPlan>> {
        let parts = self.tables.scan_parts(&self.name).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let memory: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(&[parts.batches], self.schema.clone(), projection.cloned())?;
        let Some(location) = parts.location.filter(|_| !parts.files.is_empty()) else {
            return Ok(memory);
        };
        let url = ObjectStoreUrl::parse(&location.url)?;
        state.runtime_env().register_object_store(url.as_ref(), location.store.clone());
        let urls = parts.files.iter().map(|f| ListingTableUrl::parse(format!("{}{}", location.url, f.path))).collect::<Result<Vec<_>>>()?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options).with_schema(self.schema.clone());
        let files = ListingTable::try_new(config)?.scan(state, projection, filters, limit).await?;
        UnionExec::try_new(vec![files, memory])
    }
}
