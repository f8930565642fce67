//! In-memory result tables with bounded retention, read by the query layer.

use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::{Error, Result};

#[derive(Debug)]
struct Table {
    schema: SchemaRef,
    batches: VecDeque<RecordBatch>,
    rows: usize,
    max_rows: usize,
}

/// A consistent copy of a table's current contents (cheap: batches are reference counted).
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    /// The table's schema.
    pub schema: SchemaRef,
    /// Its batches, oldest first.
    pub batches: Vec<RecordBatch>,
}

/// Named tables of Arrow batches; each keeps at most `max_rows` of its newest rows, dropping
/// whole oldest batches first. Safe to share between the engine (writer) and the query server.
#[derive(Debug, Default)]
pub struct ResultTables {
    tables: RwLock<HashMap<String, Table>>,
}

impl ResultTables {
    /// An empty set of tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates (or replaces) table `name`.
    pub fn create(&self, name: &str, schema: SchemaRef, max_rows: usize) {
        let t = Table { schema, batches: VecDeque::new(), rows: 0, max_rows };
        self.tables.write().expect("tables lock").insert(name.to_string(), t);
    }

    /// Appends a batch to `name`, evicting the oldest batches beyond the retention.
    pub fn append(&self, name: &str, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let mut g = self.tables.write().expect("tables lock");
        let t = g.get_mut(name).ok_or_else(|| Error::NoTable(name.to_string()))?;
        if batch.schema() != t.schema {
            return Err(Error::Plan(format!("batch schema does not match table `{name}`")));
        }
        t.rows += batch.num_rows();
        t.batches.push_back(batch);
        while t.rows > t.max_rows && t.batches.len() > 1 {
            let old = t.batches.pop_front().expect("non-empty");
            t.rows -= old.num_rows();
        }
        Ok(())
    }

    /// A snapshot of `name`.
    pub fn snapshot(&self, name: &str) -> Result<TableSnapshot> {
        let g = self.tables.read().expect("tables lock");
        let t = g.get(name).ok_or_else(|| Error::NoTable(name.to_string()))?;
        Ok(TableSnapshot { schema: t.schema.clone(), batches: t.batches.iter().cloned().collect() })
    }

    /// Names of all tables, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tables.read().expect("tables lock").keys().cloned().collect();
        v.sort();
        v
    }

    /// Rows currently held by `name` (0 if absent).
    pub fn rows(&self, name: &str) -> usize {
        self.tables.read().expect("tables lock").get(name).map_or(0, |t| t.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn retention_drops_the_oldest_batches() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let t = ResultTables::new();
        t.create("t", schema.clone(), 5);
        for i in 0..4 {
            let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![i, i]))]).unwrap();
            t.append("t", b).unwrap();
        }
        let s = t.snapshot("t").unwrap();
        assert_eq!(t.rows("t"), 4);
        let first = s.batches[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
        assert_eq!(first, 2, "the two oldest batches were evicted");
        assert!(matches!(t.append("nope", s.batches[0].clone()), Err(Error::NoTable(_))));
    }
}
