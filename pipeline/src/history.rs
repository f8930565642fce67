//! The result tables' Parquet history: every row a table receives is also written to a Parquet
//! file in the checkpoints' store, under `history/{table}/{date}/{hour}/`, so results survive a
//! restart and stay queryable beyond the rows kept in memory.
//!
//! Files are written at each checkpoint, before it (beside the engine's loop: the rows are
//! taken with [`HistoryWriter::take`] and written by [`TakenRows::write`]), and the checkpoint
//! lists them: after a crash
//! the restore keeps exactly the files of the checkpoint it restores, deletes this member's newer
//! ones (the replay writes their rows again), and nothing is counted twice. Once an hour of event
//! time is over, its files are merged into one (compaction, also beside the loop: `take` chooses
//! the hours, `write` reads, merges and writes them, and the loop switches the tables to the
//! merged file when the checkpoint listing it is settled); files older than their table's
//! retention are deleted. Files a checkpoint stops listing are deleted only after that checkpoint
//! is written, so the previous checkpoint never points at a missing file.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use bytes::Bytes;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::store::StoreError;
use crate::tables::{HistoryFile, HistoryLocation, ResultTables};

/// Milliseconds in an hour.
const HOUR_MS: i64 = 3_600_000;

/// The URL DataFusion reads the history store under (object paths are appended).
pub const HISTORY_URL: &str = "vigil-history://store/";

/// Errors of the history writer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// Occurs when rows cannot be encoded to (or a file decoded from) Parquet.
    #[error("history of table `{table}`: Parquet: {source}")]
    Parquet {
        /// The table.
        table: String,
        /// The cause.
        source: datafusion::parquet::errors::ParquetError,
    },
    /// Occurs when the store refuses a read, write or delete.
    #[error("history of table `{table}`: storage: {source}")]
    Store {
        /// The table.
        table: String,
        /// The cause.
        source: object_store::Error,
    },
}

/// The history's part of a checkpoint: each table's files and the next file number.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryState {
    /// Files per table.
    pub files: BTreeMap<String, Vec<HistoryFile>>,
    /// The next file number of this member.
    pub seq: u64,
}

/// What a flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// New files written.
    pub written: usize,
    /// Rows in them.
    pub rows: u64,
    /// Hours of a table merged into one file (by [`HistoryWriter::take`]: chosen to be).
    pub compacted: usize,
    /// Files past retention, dropped from the list.
    pub expired: usize,
}

/// A table's pending rows taken for a file ([`HistoryWriter::take`]).
#[derive(Debug)]
struct TakenFile {
    table: String,
    path: String,
    hour: i64,
    batches: Vec<RecordBatch>,
}

/// A finished hour of a table whose files are to be merged into one ([`HistoryWriter::take`]).
#[derive(Debug)]
struct TakenMerge {
    table: String,
    hour: i64,
    /// The merged file's path.
    path: String,
    files: Vec<HistoryFile>,
}

/// The rows a checkpoint takes for the history, the hours it merges, and the files it lists
/// besides them.
#[derive(Debug)]
pub struct TakenRows {
    store: Arc<dyn ObjectStore>,
    files: Vec<TakenFile>,
    merges: Vec<TakenMerge>,
    listed: HistoryState,
}

/// A file written from taken rows or merged from an hour's files, to be recorded in the tables
/// ([`HistoryWriter::apply`]).
#[derive(Debug)]
pub struct WrittenFile {
    table: String,
    batches: usize,
    /// The files it replaces (a merged hour's), none for new rows.
    replaces: Vec<String>,
    /// The file.
    pub file: HistoryFile,
}

impl WrittenFile {
    /// Whether it merged an hour's files (rather than holding new rows).
    pub fn is_merge(&self) -> bool {
        !self.replaces.is_empty()
    }
}

impl TakenRows {
    /// Encodes each file (zstd Parquet, on a thread of lower priority) and writes it. Returns the files
    /// written, and the history's state for the checkpoint: the files listed when the rows
    /// were taken and the new ones. The files written are returned even when a later one
    /// fails: they are in the store, and the next checkpoint lists them.
    pub async fn write(self) -> (Vec<WrittenFile>, Result<HistoryState, HistoryError>) {
        let TakenRows { store, files, merges, mut listed } = self;
        let mut written = Vec::new();
        for f in files {
            let TakenFile { table, path, hour, batches } = f;
            let n = batches.len();
            let t = table.clone();
            let file = match write_file(&store, &table, path, hour, move || Ok((batches.iter().map(RecordBatch::num_rows).sum(), encode(&t, &batches)?))).await {
                Ok(f) => f,
                Err(e) => return (written, Err(e)),
            };
            listed.files.entry(table.clone()).or_default().push(file.clone());
            written.push(WrittenFile { table, batches: n, replaces: Vec::new(), file });
        }
        for m in merges {
            let file = match merge(&store, &m).await {
                Ok(f) => f,
                Err(e) => return (written, Err(e)),
            };
            let replaces: Vec<String> = m.files.into_iter().map(|f| f.path).collect();
            let list = listed.files.entry(m.table.clone()).or_default();
            list.retain(|f| !replaces.contains(&f.path));
            list.push(file.clone());
            written.push(WrittenFile { table: m.table, batches: 0, replaces, file });
        }
        (written, Ok(listed))
    }
}

/// Reads an hour's files, and writes their rows as one file.
async fn merge(store: &Arc<dyn ObjectStore>, m: &TakenMerge) -> Result<HistoryFile, HistoryError> {
    let mut parts = Vec::with_capacity(m.files.len());
    for f in &m.files {
        parts.push(get(store, &f.path, &m.table).await?);
    }
    let t = m.table.clone();
    write_file(store, &m.table, m.path.clone(), m.hour, move || {
        let mut batches = Vec::new();
        for bytes in parts {
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).and_then(|b| b.build()).map_err(|source| HistoryError::Parquet { table: t.clone(), source })?;
            for b in reader {
                batches.push(b.map_err(|e| HistoryError::Parquet { table: t.clone(), source: e.into() })?);
            }
        }
        Ok((batches.iter().map(RecordBatch::num_rows).sum(), encode(&t, &batches)?))
    })
    .await
}

/// Writes the file `encode` makes (its rows and bytes; run on a thread of lower priority) at
/// `path`.
async fn write_file(
    store: &Arc<dyn ObjectStore>,
    table: &str,
    path: String,
    hour: i64,
    encode: impl FnOnce() -> Result<(usize, Vec<u8>), HistoryError> + Send + 'static,
) -> Result<HistoryFile, HistoryError> {
    let stopped = || HistoryError::Parquet { table: table.into(), source: datafusion::parquet::errors::ParquetError::General("encoding stopped".into()) };
    let (rows, bytes) = crate::background::run("vigil-history", encode).await.ok_or_else(stopped)??;
    let size = bytes.len() as u64;
    store.put(&Path::from(path.as_str()), PutPayload::from(bytes)).await.map_err(|source| HistoryError::Store { table: table.into(), source })?;
    Ok(HistoryFile { path, hour, rows: rows as u64, bytes: size })
}

async fn get(store: &Arc<dyn ObjectStore>, path: &str, table: &str) -> Result<Bytes, HistoryError> {
    let r = store.get(&Path::from(path)).await.map_err(|source| HistoryError::Store { table: table.into(), source })?;
    r.bytes().await.map_err(|source| HistoryError::Store { table: table.into(), source })
}

/// Writes, compacts and expires the history of [`ResultTables`] (see the module docs).
#[derive(Debug)]
pub struct HistoryWriter {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    member: String,
    seq: u64,
    retention: Duration,
    per_table: BTreeMap<String, Duration>,
    /// Files no longer listed, deleted after the next checkpoint is written.
    obsolete: Vec<String>,
}

impl HistoryWriter {
    /// A writer into `{prefix}/history` of `store`, naming its files after `member`; it turns
    /// the history on in `tables`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &Path,
        member: &str,
        retention: Duration,
        per_table: BTreeMap<String, Duration>,
        tables: &ResultTables,
    ) -> Self {
        tables.enable_history(HistoryLocation { store: store.clone(), url: HISTORY_URL.into() });
        let member: String = member.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        Self { store, dir: prefix.clone().join("history"), member, seq: 0, retention, per_table, obsolete: Vec::new() }
    }

    /// The state a checkpoint keeps.
    pub fn state(&self, tables: &ResultTables) -> HistoryState {
        HistoryState { files: tables.history_files(), seq: self.seq }
    }

    /// Restores the files of a checkpoint and deletes this member's files it does not list
    /// (written after it; the replay writes their rows again). Returns how many were deleted.
    pub async fn restore(&mut self, state: Option<HistoryState>, tables: &ResultTables) -> Result<usize, HistoryError> {
        let state = state.unwrap_or_default();
        self.seq = state.seq;
        let listed: HashSet<String> = state.files.values().flatten().map(|f| f.path.clone()).collect();
        tables.restore_history(state.files);
        let mine = format!("{}-", self.member);
        let mut orphans = Vec::new();
        let mut list = self.store.list(Some(&self.dir));
        while let Some(meta) = list.try_next().await.map_err(|source| HistoryError::Store { table: "*".into(), source })? {
            let name = meta.location.filename().unwrap_or_default();
            if name.starts_with(&mine) && !listed.contains(meta.location.as_ref()) {
                orphans.push(meta.location);
            }
        }
        for p in &orphans {
            self.delete(p.as_ref(), "*").await?;
        }
        Ok(orphans.len())
    }

    /// Writes every table's pending rows to a file of the hour `clock_ms` falls in, merges the
    /// files of finished hours, and drops files past retention (deleted after the checkpoint).
    pub async fn flush(&mut self, tables: &ResultTables, clock_ms: i64) -> Result<FlushStats, HistoryError> {
        let (taken, mut stats) = self.take(tables, clock_ms);
        let (written, listed) = taken.write().await;
        listed?;
        stats.written = written.iter().filter(|w| !w.is_merge()).count();
        stats.rows = written.iter().filter(|w| !w.is_merge()).map(|w| w.file.rows).sum();
        for w in written {
            self.apply(w, tables);
        }
        Ok(stats)
    }

    /// The first half of [`Self::flush`], for a checkpoint: takes every table's pending rows
    /// (shared batches, not copied) and names their files, expires files, and chooses the
    /// finished hours whose files are merged. [`TakenRows::write`] encodes and writes the
    /// files and merges the hours, beside the loop; until [`Self::apply`] the rows stay
    /// pending, so queries read them from memory, and an hour's files stay those queries read.
    pub fn take(&mut self, tables: &ResultTables, clock_ms: i64) -> (TakenRows, FlushStats) {
        let mut stats = FlushStats::default();
        let hour = clock_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let mut files = Vec::new();
        let mut merges = Vec::new();
        for name in tables.names() {
            let pending = tables.pending(&name);
            let rows: usize = pending.iter().map(RecordBatch::num_rows).sum();
            if rows > 0 {
                let path = self.file_path(&name, hour);
                files.push(TakenFile { table: name.clone(), path, hour, batches: pending });
            }
            stats.expired += self.expire(tables, &name, clock_ms);
            // Merges files of finished hours only (the files taken above are of this hour),
            // and of hours not expired.
            let due = self.merges_due(tables, &name, hour);
            stats.compacted += due.len();
            merges.extend(due);
        }
        (TakenRows { store: self.store.clone(), files, merges, listed: self.state(tables) }, stats)
    }

    /// Records a file written beside the loop in the tables: queries read its rows from it
    /// from now on, not from the pending batches; a merged hour's files are replaced by it
    /// (and deleted once a checkpoint no longer lists them).
    pub fn apply(&mut self, written: WrittenFile, tables: &ResultTables) {
        let WrittenFile { table, batches, replaces, file } = written;
        if replaces.is_empty() {
            tables.flushed(&table, batches, file);
        } else {
            tables.replace_files(&table, &replaces, vec![file]);
            self.obsolete.extend(replaces);
        }
    }

    /// Deletes the files the last written checkpoint no longer lists.
    pub async fn checkpoint_written(&mut self) -> Result<(), HistoryError> {
        for p in std::mem::take(&mut self.obsolete) {
            self.delete(&p, "*").await?;
        }
        Ok(())
    }

    fn file_path(&mut self, table: &str, hour: i64) -> String {
        let seq = self.seq;
        self.seq += 1;
        let t = chrono::DateTime::from_timestamp_millis(hour).unwrap_or_default();
        self.dir
            .clone()
            .join(table)
            .join(t.format("%Y-%m-%d").to_string())
            .join(t.format("%H").to_string())
            .join(format!("{}-{seq:010}.parquet", self.member))
            .to_string()
    }

    /// The finished hours of `table` with more than one file, each with its merged file's path.
    fn merges_due(&mut self, tables: &ResultTables, table: &str, current_hour: i64) -> Vec<TakenMerge> {
        let mut by_hour: BTreeMap<i64, Vec<HistoryFile>> = BTreeMap::new();
        for f in tables.files(table).into_iter().filter(|f| f.hour < current_hour) {
            by_hour.entry(f.hour).or_default().push(f);
        }
        by_hour
            .into_iter()
            .filter(|(_, files)| files.len() > 1)
            .map(|(hour, files)| TakenMerge { table: table.into(), hour, path: self.file_path(table, hour), files })
            .collect()
    }

    /// Drops the files of `table` whose hour ended longer than its retention before `clock_ms`.
    fn expire(&mut self, tables: &ResultTables, table: &str, clock_ms: i64) -> usize {
        let keep = self.per_table.get(table).copied().unwrap_or(self.retention);
        let cutoff = clock_ms - keep.as_millis() as i64;
        let old: Vec<String> = tables
            .files(table)
            .into_iter()
            .filter(|f| f.hour + HOUR_MS <= cutoff)
            .map(|f| f.path)
            .collect();
        if !old.is_empty() {
            tables.replace_files(table, &old, Vec::new());
        }
        let n = old.len();
        self.obsolete.extend(old);
        n
    }

    async fn delete(&self, path: &str, table: &str) -> Result<(), HistoryError> {
        match self.store.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(HistoryError::Store { table: table.into(), source }),
        }
    }
}

/// Rows as one zstd-compressed Parquet file.
fn encode(table: &str, batches: &[RecordBatch]) -> Result<Vec<u8>, HistoryError> {
    let err = |source| HistoryError::Parquet { table: table.into(), source };
    let schema = batches.first().map(RecordBatch::schema).unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
    let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build();
    let mut w = ArrowWriter::try_new(Vec::new(), schema, Some(props)).map_err(err)?;
    for b in batches {
        w.write(b).map_err(err)?;
    }
    w.into_inner().map_err(err)
}

/// Opens the history store of a checkpoint configuration (the same store, `history/` under its
/// prefix).
pub fn open_store(url: &str, options: &BTreeMap<String, String>) -> Result<(Arc<dyn ObjectStore>, Path), StoreError> {
    let (store, prefix, _) = crate::store::open_location(url, options)?;
    Ok((store, prefix))
}

#[cfg(test)]
mod tests;
