//! In-memory result tables with bounded retention, read by the query layer, and the part of
//! each table's Parquet history that queries read ([`crate::history`] writes it).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug)]
struct Table {
    schema: SchemaRef,
    batches: VecDeque<RecordBatch>,
    rows: usize,
    max_rows: usize,
    /// With history on: the rows not yet in a Parquet file, and the table's files.
    history: Option<TableHistory>,
}

#[derive(Debug, Default)]
struct TableHistory {
    pending: Vec<RecordBatch>,
    files: Vec<HistoryFile>,
}

/// One Parquet file of a table's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryFile {
    /// Its object path in the history store.
    pub path: String,
    /// Start of the event-time hour it belongs to (ms since the epoch).
    pub hour: i64,
    /// Rows in it.
    pub rows: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Where the history lives: the store, and the URL DataFusion reads it under.
#[derive(Debug, Clone)]
pub struct HistoryLocation {
    /// The object store (the checkpoints' store).
    pub store: Arc<dyn ObjectStore>,
    /// `vigil-history://store/`: object paths are appended to this to make file URLs.
    pub url: String,
}

/// What a query reads of a table: rows in memory and Parquet files, never the same row twice.
#[derive(Debug, Clone)]
pub struct ScanParts {
    /// The table's schema.
    pub schema: SchemaRef,
    /// Rows in memory (with history on, only those not yet written to a file).
    pub batches: Vec<RecordBatch>,
    /// Parquet files (empty with history off).
    pub files: Vec<HistoryFile>,
    /// Where the files are.
    pub location: Option<HistoryLocation>,
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
    history: RwLock<Option<HistoryLocation>>,
}

impl ResultTables {
    /// An empty set of tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates (or replaces) table `name`.
    pub fn create(&self, name: &str, schema: SchemaRef, max_rows: usize) {
        let history = self.history.read().expect("history lock").is_some().then(TableHistory::default);
        let t = Table { schema, batches: VecDeque::new(), rows: 0, max_rows, history };
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
        if let Some(h) = t.history.as_mut() {
            h.pending.push(batch.clone());
        }
        t.batches.push_back(batch);
        while t.rows > t.max_rows && t.batches.len() > 1 {
            let old = t.batches.pop_front().expect("non-empty");
            t.rows -= old.num_rows();
        }
        // One batch larger than the retention (several windows closed at once, a million
        // series' features): keep a copy of its newest rows, so the table holds `max_rows`
        // rows' worth of memory and not the whole batch's.
        if t.rows > t.max_rows {
            let b = t.batches.pop_back().expect("one batch");
            let from = (b.num_rows() - t.max_rows) as u32;
            let newest = arrow::array::UInt32Array::from_iter_values(from..b.num_rows() as u32);
            t.batches.push_back(arrow::compute::take_record_batch(&b, &newest)?);
            t.rows = t.max_rows;
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

    /// Turns the Parquet history on: from now on every appended row is also pending for a file,
    /// and queries read the files plus the pending rows.
    pub fn enable_history(&self, location: HistoryLocation) {
        *self.history.write().expect("history lock") = Some(location);
        for t in self.tables.write().expect("tables lock").values_mut() {
            t.history.get_or_insert_with(TableHistory::default);
        }
    }

    /// Where the history is, when it is on.
    pub fn history_location(&self) -> Option<HistoryLocation> {
        self.history.read().expect("history lock").clone()
    }

    /// What a query of `name` reads (see [`ScanParts`]).
    pub fn scan_parts(&self, name: &str) -> Result<ScanParts> {
        let g = self.tables.read().expect("tables lock");
        let t = g.get(name).ok_or_else(|| Error::NoTable(name.to_string()))?;
        Ok(match &t.history {
            Some(h) => ScanParts {
                schema: t.schema.clone(),
                batches: h.pending.clone(),
                files: h.files.clone(),
                location: self.history_location(),
            },
            None => ScanParts { schema: t.schema.clone(), batches: t.batches.iter().cloned().collect(), files: Vec::new(), location: None },
        })
    }

    /// The rows of `name` not yet in a file (with history on).
    pub fn pending(&self, name: &str) -> Vec<RecordBatch> {
        let g = self.tables.read().expect("tables lock");
        g.get(name).and_then(|t| t.history.as_ref()).map(|h| h.pending.clone()).unwrap_or_default()
    }

    /// Records that the first `batches` pending batches of `name` are now in `file`: from here
    /// on queries read them from the file (one lock, so no query sees them twice or not at all).
    pub fn flushed(&self, name: &str, batches: usize, file: HistoryFile) {
        let mut g = self.tables.write().expect("tables lock");
        if let Some(h) = g.get_mut(name).and_then(|t| t.history.as_mut()) {
            h.pending.drain(..batches.min(h.pending.len()));
            h.files.push(file);
        }
    }

    /// Replaces files of `name`: those in `remove` go, `add` comes (compaction, retention).
    pub fn replace_files(&self, name: &str, remove: &[String], add: Vec<HistoryFile>) {
        let mut g = self.tables.write().expect("tables lock");
        if let Some(h) = g.get_mut(name).and_then(|t| t.history.as_mut()) {
            h.files.retain(|f| !remove.contains(&f.path));
            h.files.extend(add);
        }
    }

    /// The history files of `name` (none with history off or for an unknown table).
    pub fn files(&self, name: &str) -> Vec<HistoryFile> {
        let g = self.tables.read().expect("tables lock");
        g.get(name).and_then(|t| t.history.as_ref()).map(|h| h.files.clone()).unwrap_or_default()
    }

    /// Every table's history files, by table.
    pub fn history_files(&self) -> BTreeMap<String, Vec<HistoryFile>> {
        let g = self.tables.read().expect("tables lock");
        g.iter().filter_map(|(n, t)| t.history.as_ref().map(|h| (n.clone(), h.files.clone()))).collect()
    }

    /// Sets the history files of tables (a restore); tables not named keep theirs.
    pub fn restore_history(&self, files: BTreeMap<String, Vec<HistoryFile>>) {
        let mut g = self.tables.write().expect("tables lock");
        for (name, list) in files {
            if let Some(h) = g.get_mut(&name).and_then(|t| t.history.as_mut()) {
                h.files = list;
            }
        }
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

    #[test]
    fn a_batch_larger_than_the_retention_is_cut_to_its_newest_rows_and_copied() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let t = ResultTables::new();
        t.create("t", schema.clone(), 3);
        let big = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(0..1000))]).unwrap();
        t.append("t", big).unwrap();
        assert_eq!(t.rows("t"), 3);
        let s = t.snapshot("t").unwrap();
        let kept = s.batches[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(kept.values().to_vec(), vec![997, 998, 999]);
        // A copy, not a slice holding the thousand rows' buffer.
        assert!(s.batches[0].get_array_memory_size() < 1000, "{}", s.batches[0].get_array_memory_size());
    }
}
