//! Feature-plan runs that start before their window closes: a window's rows are sent to its own
//! run of the prepared plan (the engine starts one for the oldest open window, with every row it
//! holds, then sends it each new batch), so the aggregation groups them while the window is
//! open, on the runtime's threads, and a close only waits for the plan to emit its groups.
//!
//! A run stands for a window only if it saw every row the window closes with: the close checks
//! the row count, and a window whose rows were removed (a revoked partition's series) or whose
//! run missed a batch is run from its rows at the close instead, as every window was before.

use std::collections::BTreeMap;
use std::sync::Mutex;

use arrow::array::RecordBatch;
use vigil_models::prepared::StreamedRun;

use crate::window::ClosedWindow;

/// The run of one open window.
#[derive(Debug)]
pub(super) struct WindowRun {
    pub run: StreamedRun,
    pub end_ms: i64,
    /// Point rows sent so far.
    pub rows: usize,
    /// The batches sent, with their window columns: the `points` rows of the close.
    pub fed: Vec<RecordBatch>,
}

/// The runs of the open windows, by window start.
#[derive(Debug, Default)]
pub(super) struct Streams {
    runs: Mutex<BTreeMap<i64, WindowRun>>,
}

impl Streams {
    /// Sends `batch` (points schema with the window columns) to window `start_ms`'s run, starting
    /// the run with `start` if there is none yet; `start` returning `None` sends nothing.
    pub fn feed(
        &self,
        start_ms: i64,
        end_ms: i64,
        batch: RecordBatch,
        start: impl FnOnce() -> crate::Result<Option<StreamedRun>>,
    ) -> crate::Result<()> {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let run = match runs.entry(start_ms) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => match start()? {
                Some(run) => v.insert(WindowRun { run, end_ms, rows: 0, fed: Vec::new() }),
                None => return Ok(()),
            },
        };
        // A run that has stopped reports why when it is finished; its count still moves, so a
        // close never takes a partial run for the window.
        let _ = run.run.send(&batch);
        run.rows += batch.num_rows();
        run.fed.push(batch);
        Ok(())
    }

    /// The run of each of `windows` that saw exactly its point rows (`None` where there is none).
    pub fn take(&self, windows: &[ClosedWindow]) -> Vec<Option<WindowRun>> {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        windows
            .iter()
            .map(|w| {
                let rows: usize = w.batches.iter().map(RecordBatch::num_rows).sum();
                runs.remove(&w.start_ms).filter(|r| r.end_ms == w.end_ms && r.rows == rows)
            })
            .collect()
    }

    /// Drops every run (rows left the open windows other than by a close).
    pub fn clear(&self) {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// How many batches window `start_ms`'s run has been sent (0 without a run).
    pub fn sent(&self, start_ms: i64) -> usize {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).get(&start_ms).map_or(0, |r| r.fed.len())
    }

    /// How many windows have a run under way.
    pub fn len(&self) -> usize {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, RecordBatch, UInt32Array};
    use arrow::datatypes::{DataType, Float64Type, TimestampMillisecondType, UInt64Type};
    use vigil_ingest::{DrainConfig, JsonLogDecoder, JsonPointDecoder, LogMapping, RawRecord, SourcePos};

    use crate::plan::{FeaturePlan, DEFAULT_FEATURES_SQL, DEFAULT_LOG_SIGNALS_SQL};
    use crate::window::{ClosedWindow, WindowConfig, Windower};

    fn records(lines: &[String], topic: &str) -> Vec<RawRecord> {
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| RawRecord { payload: Some(l.clone().into_bytes()), key: None, pos: SourcePos { topic: topic.into(), partition: 0, offset: i as i64 } })
            .collect()
    }

    /// Three windows of 10 s over `hosts` series, pushed in polls of 700 points (so each window
    /// holds a batch per poll), plus log lines.
    fn windows(hosts: usize) -> Vec<ClosedWindow> {
        let points: Vec<String> = (0..hosts * 9)
            .map(|i| {
                let (h, k) = (i % hosts, i / hosts);
                format!(r#"{{"ts": {}, "name": "cpu", "labels": {{"host": "h{h}"}}, "value": {}}}"#, 1_000 + k as i64 * 3_333, (i * 37 % 101) as f64 / 7.0)
            })
            .collect();
        let logs: Vec<String> = (0..30)
            .map(|i| format!(r#"{{"ts": {}, "level": "{}", "service": "api", "message": "GET /cart 200 in {i} ms"}}"#, 1_000 + i * 1_000, if i % 4 == 0 { "error" } else { "info" }))
            .collect();
        let mut w = Windower::new(WindowConfig { size_ms: 10_000, allowed_lag_ms: 0, idle_timeout: std::time::Duration::from_secs(60) });
        for poll in records(&points, "m").chunks(700) {
            let out = JsonPointDecoder::default().decode(poll).unwrap();
            w.push(&out.points, &out.positions).unwrap();
        }
        let logs = JsonLogDecoder::new(LogMapping::default(), DrainConfig::default(), Default::default()).unwrap().decode(&records(&logs, "logs")).unwrap();
        w.push_logs(&logs.logs, &logs.positions).unwrap();
        w.take_all()
    }

    /// Feeds each window's batches as they would arrive: after every poll, the window's points
    /// so far.
    fn feed_as_they_came(p: &FeaturePlan, w: &ClosedWindow, batches: &[RecordBatch]) {
        for k in 1..=batches.len() {
            p.feed_window(w.start_ms, w.end_ms, &batches[..k]).unwrap();
        }
    }

    /// `f`'s rows ordered by window and series, so that runs giving their rows in another order
    /// compare equal.
    fn sorted(f: &RecordBatch) -> RecordBatch {
        let starts = f.column_by_name("window_start").unwrap().as_primitive::<TimestampMillisecondType>();
        let ids = f.column_by_name("series_id").unwrap().as_primitive::<UInt64Type>();
        let mut idx: Vec<u32> = (0..f.num_rows() as u32).collect();
        idx.sort_by_key(|&i| (starts.value(i as usize), ids.value(i as usize), f.column_by_name("series").unwrap().as_string::<i32>().value(i as usize).to_string()));
        arrow::compute::take_record_batch(f, &UInt32Array::from(idx)).unwrap()
    }

    fn assert_same(got: &RecordBatch, want: &RecordBatch) {
        let (got, want) = (sorted(got), sorted(want));
        assert_eq!(got.schema(), want.schema());
        assert_eq!(got.num_rows(), want.num_rows());
        for (i, f) in got.schema().fields().iter().enumerate() {
            if f.data_type() == &DataType::Float64 {
                let (a, b) = (got.column(i).as_primitive::<Float64Type>(), want.column(i).as_primitive::<Float64Type>());
                for r in 0..a.len() {
                    assert!((a.value(r) - b.value(r)).abs() <= 1e-9 * a.value(r).abs().max(1.0), "{} row {r}: {} against {}", f.name(), a.value(r), b.value(r));
                }
            } else {
                assert_eq!(got.column(i), want.column(i), "{}", f.name());
            }
        }
    }

    /// The shipped plan with the functions the engine registers (its `any_value` and
    /// `percentile_cont` among them).
    async fn plan(partitions: usize) -> FeaturePlan {
        let f = vigil_models::sql_functions();
        FeaturePlan::build(DEFAULT_FEATURES_SQL, DEFAULT_LOG_SIGNALS_SQL, "mean", f.scalar, f.aggregate, partitions).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn windows_run_as_their_rows_arrive_give_what_running_their_rows_at_the_close_gives() {
        for partitions in [1, 2, 3] {
            let closed = windows(2_000);
            let streamed = plan(partitions).await;
            assert!(streamed.streams());
            // Three windows of points, each from several polls, and one of log lines alone.
            assert_eq!(closed.iter().map(|w| w.batches.len()).filter(|n| *n > 1).count(), 3);
            for w in &closed {
                feed_as_they_came(&streamed, w, &w.batches);
            }
            assert_eq!(streamed.streaming_windows(), 3, "one run per open window");
            let got = streamed.run(&closed).await.unwrap();
            assert_eq!(streamed.streaming_windows(), 0, "a close ends its windows' runs");
            assert!(got.streamed_compute > std::time::Duration::ZERO, "the runs' compute is reported");
            let want = plan(partitions).await.run(&closed).await.unwrap();
            assert_eq!(got.features.num_rows(), want.features.num_rows());
            assert!(want.features.num_rows() > 3 * 2_000, "the log signals are features too");
            assert_same(&got.features, &want.features);
            let rows = |p: &[RecordBatch]| p.iter().map(RecordBatch::num_rows).sum::<usize>();
            assert_eq!(rows(&got.points), rows(&want.points), "the points table gets every row once");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_window_whose_run_missed_rows_is_run_from_its_rows() {
        let closed = windows(500);
        let p = plan(2).await;
        // The first window's first poll never reached its run; the others' runs saw everything.
        feed_as_they_came(&p, &closed[0], &closed[0].batches[1..]);
        for w in &closed[1..] {
            feed_as_they_came(&p, w, &w.batches);
        }
        assert_eq!(p.streaming_windows(), 3);
        let want = plan(2).await.run(&closed).await.unwrap().features;
        assert_same(&p.run(&closed).await.unwrap().features, &want);
        // Runs dropped (a revoked partition's rows left the windows): the close runs the rows.
        for w in &closed {
            feed_as_they_came(&p, w, &w.batches);
        }
        p.forget_streams();
        assert_eq!(p.streaming_windows(), 0);
        assert_same(&p.run(&closed).await.unwrap().features, &want);
    }

    /// Plans `sql`, which cannot run while a window is open, feeds it ten windows as their rows
    /// came, and runs them at their close: (the windows, their features).
    async fn run_at_the_close(sql: &str) -> (Vec<ClosedWindow>, RecordBatch) {
        let p = FeaturePlan::new(sql, "mean").await.unwrap();
        assert!(!p.streams());
        let closed = windows(10);
        for w in &closed {
            feed_as_they_came(&p, w, &w.batches);
        }
        assert_eq!(p.streaming_windows(), 0);
        let f = p.run(&closed).await.unwrap().features;
        (closed, f)
    }

    #[tokio::test]
    async fn sql_reading_points_twice_is_run_at_the_close() {
        let sql = "SELECT window_start, window_end, series_id, series, name, avg(value) AS mean, (SELECT count(*) FROM points) AS total \
                   FROM points GROUP BY window_start, window_end, series_id, series, name";
        let (closed, f) = run_at_the_close(sql).await;
        let total = f.column_by_name("total").unwrap().as_primitive::<arrow::datatypes::Int64Type>();
        let points: usize = closed.iter().flat_map(|w| &w.batches).map(RecordBatch::num_rows).sum();
        assert!(total.values().iter().all(|t| *t as usize > points), "every point and log signal of the close");
    }

    #[tokio::test]
    async fn sql_reading_a_table_the_runs_while_open_do_not_have_plans_and_runs_at_the_close() {
        // The runs while a window is open have a context of their own, with `points` only.
        let sql = "SELECT window_start, window_end, series_id, any_value(series) AS series, any_value(name) AS name, avg(value) AS mean, \
                   (SELECT count(*) FROM logs) AS log_rows FROM points GROUP BY window_start, window_end, series_id";
        let (closed, f) = run_at_the_close(sql).await;
        let series: std::collections::HashSet<u64> = closed
            .iter()
            .flat_map(|w| &w.batches)
            .flat_map(|b| b.column(1).as_primitive::<UInt64Type>().values().to_vec())
            .collect();
        assert!(f.num_rows() >= series.len(), "a row per series and window: {} rows for {} series", f.num_rows(), series.len());
    }
}
