use super::*;
use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema};
use object_store::local::LocalFileSystem;

/// A test's directory, removed when the test ends.
struct Scratch(std::path::PathBuf);

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(name: &str) -> (Arc<dyn ObjectStore>, Scratch, ResultTables) {
    let dir = std::env::temp_dir().join(format!("vigil-history-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&dir).unwrap());
    let tables = ResultTables::new();
    (store, Scratch(dir), tables)
}

fn schema() -> arrow::datatypes::SchemaRef {
    Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]))
}

fn batch(v: Vec<i64>) -> RecordBatch {
    RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(v))]).unwrap()
}

fn files_on_disk(dir: &std::path::Path) -> usize {
    fn walk(d: &std::path::Path, n: &mut usize) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), n);
            } else if e.path().extension().is_some_and(|x| x == "parquet") {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(dir, &mut n);
    n
}

const H: i64 = HOUR_MS;

#[tokio::test]
async fn flushed_rows_move_from_memory_to_files_once() {
    let (store, dir, tables) = setup("flush");
    let mut w = HistoryWriter::new(store, &Path::default(), "m1", Duration::from_secs(86_400), BTreeMap::new(), &tables);
    tables.create("t", schema(), 100);
    tables.append("t", batch(vec![1, 2])).unwrap();
    tables.append("t", batch(vec![3])).unwrap();
    let before = tables.scan_parts("t").unwrap();
    assert_eq!((before.batches.len(), before.files.len()), (2, 0));
    let s = w.flush(&tables, 10 * H + 5).await.unwrap();
    assert_eq!((s.written, s.rows), (1, 3));
    let after = tables.scan_parts("t").unwrap();
    assert!(after.batches.is_empty(), "the flushed rows are read from the file only");
    assert_eq!(after.files.len(), 1);
    assert!(after.files[0].path.starts_with("history/t/1970-01-01/10/m1-"), "{}", after.files[0].path);
    assert_eq!(files_on_disk(&dir), 1);
    // Nothing pending: no new file.
    assert_eq!(w.flush(&tables, 10 * H + 6).await.unwrap().written, 0);
}

#[tokio::test]
async fn finished_hours_are_compacted_and_old_ones_expire() {
    let (store, dir, tables) = setup("compact");
    let mut per_table = BTreeMap::new();
    per_table.insert("t".to_string(), Duration::from_secs(2 * 3600));
    let mut w = HistoryWriter::new(store.clone(), &Path::default(), "m1", Duration::from_secs(86_400), per_table, &tables);
    tables.create("t", schema(), 100);
    for (i, clock) in [10 * H + 1, 10 * H + 2, 10 * H + 3].into_iter().enumerate() {
        tables.append("t", batch(vec![i as i64])).unwrap();
        w.flush(&tables, clock).await.unwrap();
    }
    assert_eq!(tables.scan_parts("t").unwrap().files.len(), 3);
    // The next hour: hour 10's three files become one of 3 rows.
    tables.append("t", batch(vec![9])).unwrap();
    let s = w.flush(&tables, 11 * H + 1).await.unwrap();
    assert_eq!(s.compacted, 1);
    let files = tables.scan_parts("t").unwrap().files;
    assert_eq!(files.len(), 2);
    assert_eq!(files.iter().find(|f| f.hour == 10 * H).unwrap().rows, 3);
    // The replaced files stay on disk until the checkpoint listing the new one is written.
    assert_eq!(files_on_disk(&dir), 5);
    w.checkpoint_written().await.unwrap();
    assert_eq!(files_on_disk(&dir), 2);
    // Retention 2 h: at 13:00 hour 10 (ended 11:00) is older than 2 h and goes; hour 11 stays.
    let s = w.flush(&tables, 13 * H).await.unwrap();
    assert_eq!(s.expired, 1);
    assert_eq!(tables.scan_parts("t").unwrap().files.iter().map(|f| f.hour).collect::<Vec<_>>(), vec![11 * H]);
}

#[tokio::test]
async fn an_hour_is_merged_beside_the_loop_and_the_tables_switch_when_it_is_applied() {
    let (store, dir, tables) = setup("merge-beside");
    let mut w = HistoryWriter::new(store.clone(), &Path::default(), "m1", Duration::from_secs(86_400), BTreeMap::new(), &tables);
    tables.create("t", schema(), 100);
    for (i, clock) in [10 * H + 1, 10 * H + 2].into_iter().enumerate() {
        tables.append("t", batch(vec![i as i64])).unwrap();
        w.flush(&tables, clock).await.unwrap();
    }
    // The loop's part: nothing read or written, the hour chosen.
    let (taken, stats) = w.take(&tables, 11 * H + 1);
    assert_eq!(stats.compacted, 1);
    assert_eq!(files_on_disk(&dir), 2);
    let (written, listed) = taken.write().await;
    let listed = listed.unwrap();
    assert_eq!(tables.scan_parts("t").unwrap().files.len(), 2, "queries read the hour's files until the merge is applied");
    assert_eq!(listed.files["t"].len(), 1, "the checkpoint lists the merged file only");
    assert_eq!(listed.files["t"][0].rows, 2);
    assert_eq!(written.len(), 1);
    assert!(written[0].is_merge());
    for f in written {
        w.apply(f, &tables);
    }
    let files = tables.scan_parts("t").unwrap().files;
    assert_eq!((files.len(), files[0].rows), (1, 2));
    assert_eq!(files_on_disk(&dir), 3, "the merged files stay until a checkpoint no longer lists them");
    w.checkpoint_written().await.unwrap();
    assert_eq!(files_on_disk(&dir), 1);
}

#[tokio::test]
async fn a_restore_keeps_the_checkpoints_files_and_deletes_newer_ones() {
    let (store, dir, tables) = setup("restore");
    let mut w = HistoryWriter::new(store.clone(), &Path::default(), "m1", Duration::from_secs(86_400), BTreeMap::new(), &tables);
    tables.create("t", schema(), 100);
    tables.append("t", batch(vec![1])).unwrap();
    w.flush(&tables, H).await.unwrap();
    let checkpointed = w.state(&tables);
    // Written after the checkpoint, then a crash.
    tables.append("t", batch(vec![2])).unwrap();
    w.flush(&tables, H).await.unwrap();
    assert_eq!(files_on_disk(&dir), 2);
    // Another member's file in the same store is not touched.
    store.put(&Path::from("history/t/1970-01-01/01/m2-0000000000.parquet"), PutPayload::from(encode("t", &[batch(vec![7])]).unwrap())).await.unwrap();

    let fresh = ResultTables::new();
    let mut w2 = HistoryWriter::new(store, &Path::default(), "m1", Duration::from_secs(86_400), BTreeMap::new(), &fresh);
    fresh.create("t", schema(), 100);
    let deleted = w2.restore(Some(checkpointed.clone()), &fresh).await.unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(fresh.scan_parts("t").unwrap().files, checkpointed.files["t"]);
    assert_eq!(files_on_disk(&dir), 2, "the checkpoint's file and the other member's");
    assert_eq!(w2.state(&fresh).seq, checkpointed.seq);
}
