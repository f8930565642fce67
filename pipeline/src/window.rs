//! Event-time tumbling windows, the watermark and the offsets that are safe to commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::TimestampMillisecondType;
use vigil_ingest::SourcePos;

use crate::Result;

/// Window settings.
#[derive(Debug, Clone, Copy)]
pub struct WindowConfig {
    /// Tumbling window length in milliseconds (> 0).
    pub size_ms: i64,
    /// How far behind the highest event time seen a record may be and still count (>= 0).
    pub allowed_lag_ms: i64,
    /// A partition that has delivered nothing for this long stops holding the watermark back.
    pub idle_timeout: std::time::Duration,
}

/// One closed window's rows.
#[derive(Debug, Clone)]
pub struct ClosedWindow {
    /// Inclusive start, epoch ms.
    pub start_ms: i64,
    /// Exclusive end, epoch ms.
    pub end_ms: i64,
    /// Rows in the points schema.
    pub batches: Vec<RecordBatch>,
    /// Rows in the logs schema.
    pub logs: Vec<RecordBatch>,
}

impl ClosedWindow {
    /// Number of rows (points and logs).
    pub fn rows(&self) -> usize {
        self.batches.iter().chain(&self.logs).map(RecordBatch::num_rows).sum()
    }
}

/// What one [`Windower::push`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PushStats {
    /// Rows added to open windows.
    pub accepted: usize,
    /// Rows behind the watermark (kept aside, see [`Windower::take_late`]).
    pub late: usize,
    /// Rows replayed after a restore whose window was processed before the checkpoint.
    pub replayed: usize,
}

impl PushStats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: PushStats) {
        self.accepted += other.accepted;
        self.late += other.late;
        self.replayed += other.replayed;
    }
}

type PartKey = (Arc<str>, i32);

/// Whether two records come from the same partition (the same topic is usually the same `Arc`).
fn same_partition(a: &SourcePos, b: &SourcePos) -> bool {
    a.partition == b.partition && (Arc::ptr_eq(&a.topic, &b.topic) || a.topic == b.topic)
}

/// Window-start markers of rows that join no window.
const LATE: i64 = i64::MIN;
const SKIPPED: i64 = i64::MIN + 1;

#[derive(Debug, Default)]
struct OpenWindow {
    batches: Vec<RecordBatch>,
    logs: Vec<RecordBatch>,
    /// Per partition: the lowest offset among the rows of this window, and the partition's
    /// highest event time before that row (what a replay from it starts from).
    min_offset: HashMap<PartKey, (i64, i64)>,
}

/// Assigns rows to tumbling windows by event time and closes them as the watermark passes.
///
/// The watermark is tracked per source partition, as Flink does: each partition's watermark is
/// the highest event time it has delivered minus the allowed lag, and the overall watermark is the
/// lowest of them (never moving backwards). A consumer reads partitions in bursts, so one
/// partition is often seconds of event time ahead of another; a single "highest seen" watermark
/// would turn that skew into spurious lateness. A partition idle for `idle_timeout` stops holding
/// the watermark back.
///
/// Semantics, per row in arrival order: the row is late if its window's end is at or before its
/// own partition's watermark; otherwise it joins its window (a window that has already closed
/// because other partitions moved on opens again for it, and closes with the next
/// [`Self::take_closed`]: series live on one partition, so each series' window is still processed
/// once). Then its partition's watermark, and the overall one, advance. A window `[start, end)` closes once `watermark >= end`. Computing
/// lateness row by row (not batch by batch) makes the result independent of how the records were
/// grouped into polls.
#[derive(Debug)]
pub struct Windower {
    cfg: WindowConfig,
    watermark: i64,
    open: BTreeMap<i64, OpenWindow>,
    /// Next offset to read, per partition, over everything consumed.
    next_offset: HashMap<PartKey, i64>,
    /// Per partition: highest event time delivered and when it last delivered anything.
    part_max: HashMap<PartKey, (i64, std::time::Instant)>,
    late_total: u64,
    /// Restored partitions: rows below `fence` were seen before the checkpoint; those whose
    /// window had closed by the checkpoint's watermark are skipped on replay.
    fences: HashMap<PartKey, Fence>,
    /// Rows behind the watermark since the last [`Self::take_late`].
    late: Vec<LateRows>,
    replayed_total: u64,
}

/// A restored partition's replay fence.
#[derive(Debug, Clone, Copy)]
struct Fence {
    /// Next offset after everything consumed before the checkpoint.
    offset: i64,
    /// The watermark at the checkpoint: windows ending at or before it were processed.
    watermark: i64,
    /// Lowest offset the checkpoint still needed (its resume point): nothing below it may be
    /// committed until the windows open at the checkpoint have closed.
    resume: i64,
    /// End of the newest window open at the checkpoint.
    open_until: i64,
    /// The partition's highest event time before `resume`.
    resume_max: i64,
}

/// Rows that arrived behind the watermark: kept as a side output, not dropped.
#[derive(Debug, Clone)]
pub struct LateRows {
    /// The rows, in the points schema (or the logs schema when `logs`).
    pub rows: RecordBatch,
    /// Where each row came from.
    pub positions: Vec<SourcePos>,
    /// Whether the rows are log rows.
    pub logs: bool,
    /// The watermark they were behind.
    pub watermark: i64,
}

/// Where one input partition stands, as a checkpoint records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionPosition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset to resume reading from: the lowest offset still held by an open window, or the
    /// next offset after everything consumed.
    pub resume: i64,
    /// Next offset after everything consumed (rows below it were seen).
    pub fence: i64,
    /// Highest event time the partition delivered (`i64::MIN` if none).
    pub max_event_ms: i64,
    /// Highest event time among the rows before `resume` (`i64::MIN` if none): a replay from
    /// `resume` starts from it, so every replayed row is judged late or on time exactly as it
    /// was the first time.
    pub resume_max_ms: i64,
    /// The watermark when the checkpoint was taken.
    pub watermark: i64,
    /// End of the newest window open when the checkpoint was taken.
    pub open_until: i64,
}

impl Windower {
    /// A windower with no state.
    pub fn new(cfg: WindowConfig) -> Self {
        assert!(cfg.size_ms > 0 && cfg.allowed_lag_ms >= 0, "validated by the config layer");
        Self {
            cfg,
            watermark: i64::MIN,
            open: BTreeMap::new(),
            next_offset: HashMap::new(),
            part_max: HashMap::new(),
            late_total: 0,
            fences: HashMap::new(),
            late: Vec::new(),
            replayed_total: 0,
        }
    }

    /// The current watermark (epoch ms), `None` before any row.
    pub fn watermark(&self) -> Option<i64> {
        (self.watermark != i64::MIN).then_some(self.watermark)
    }

    /// Rows behind the watermark so far.
    pub fn late_total(&self) -> u64 {
        self.late_total
    }

    /// Number of windows still open.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Start of the window holding `ts`.
    pub fn window_start(&self, ts: i64) -> i64 {
        ts - ts.rem_euclid(self.cfg.size_ms)
    }

    /// Tells the windower which partitions this consumer owns. An owned partition that has not
    /// delivered anything yet holds the watermark back (until it has been idle for
    /// `idle_timeout`), so a backlog read one partition at a time is not cut short; partitions
    /// no longer owned stop counting.
    pub fn assign(&mut self, partitions: &[(Arc<str>, i32)]) {
        let now = std::time::Instant::now();
        self.part_max.retain(|k, _| partitions.contains(k));
        for k in partitions {
            self.part_max.entry(k.clone()).or_insert((i64::MIN, now));
        }
    }

    /// Re-evaluates the watermark without new rows: a partition that has gone idle since the last
    /// row stops holding it back. Call it when a poll returns nothing.
    pub fn advance_idle(&mut self) {
        let now = std::time::Instant::now();
        let idle = self.cfg.idle_timeout;
        let low = self.part_max.values().filter(|(_, seen)| now.duration_since(*seen) < idle).map(|(m, _)| *m).min();
        let high = self.part_max.values().map(|(m, _)| *m).max();
        // With every partition idle, the newest event time seen is all there is to go by.
        let low = low.or(high);
        if let Some(low) = low.filter(|l| *l != i64::MIN) {
            self.watermark = self.watermark.max(low.saturating_sub(self.cfg.allowed_lag_ms));
        }
    }

    /// Records that the given records were consumed (decoded or not), so that their offsets can be
    /// committed once nothing open holds them.
    pub fn consumed<'a>(&mut self, positions: impl IntoIterator<Item = &'a SourcePos>) {
        // One map update per run of records from the same partition (a poll is a few runs).
        let mut run: Option<(&SourcePos, i64)> = None;
        for p in positions {
            match &mut run {
                Some((first, next)) if same_partition(first, p) => *next = (*next).max(p.offset + 1),
                _ => {
                    if let Some((first, next)) = run.take() {
                        self.note_consumed(first, next);
                    }
                    run = Some((p, p.offset + 1));
                }
            }
        }
        if let Some((first, next)) = run {
            self.note_consumed(first, next);
        }
    }

    fn note_consumed(&mut self, p: &SourcePos, next: i64) {
        match self.next_offset.get_mut(&(p.topic.clone(), p.partition)) {
            Some(e) => *e = (*e).max(next),
            None => {
                self.next_offset.insert((p.topic.clone(), p.partition), next);
            }
        }
    }

    /// Adds a batch of points (points schema) whose rows came from `positions`.
    pub fn push(&mut self, points: &RecordBatch, positions: &[SourcePos]) -> Result<PushStats> {
        self.push_rows(points, positions, false)
    }

    /// Adds a batch of log rows (logs schema) whose rows came from `positions`. Logs share the
    /// windows, the watermark and the lateness rule with points.
    pub fn push_logs(&mut self, logs: &RecordBatch, positions: &[SourcePos]) -> Result<PushStats> {
        self.push_rows(logs, positions, true)
    }

    /// Both kinds of rows have the event time, `Timestamp(ms)`, as their first column.
    fn push_rows(&mut self, points: &RecordBatch, positions: &[SourcePos], logs: bool) -> Result<PushStats> {
        debug_assert_eq!(points.num_rows(), positions.len());
        self.consumed(positions);
        let n = points.num_rows();
        if n == 0 {
            return Ok(PushStats::default());
        }
        let ts = points.column(0).as_primitive::<TimestampMillisecondType>();
        let ts = ts.values();
        let size = self.cfg.size_ms;
        let lag = self.cfg.allowed_lag_ms;

        // Pass 1: lateness and window of every row, advancing the watermark row by row.
        let now = std::time::Instant::now();
        let idle = self.cfg.idle_timeout;
        let mut wm = self.watermark;
        let mut starts: Vec<i64> = Vec::with_capacity(n);
        // Each row's partition's highest event time before it.
        let mut before: Vec<i64> = Vec::with_capacity(n);
        let mut late = 0usize;
        let mut replayed = 0usize;
        let mut late_wm = i64::MIN;
        let mut i = 0;
        while i < n {
            // A run of rows from one partition: its state is read once and written back once.
            let first = &positions[i];
            let mut j = i + 1;
            while j < n && same_partition(first, &positions[j]) {
                j += 1;
            }
            let key: PartKey = (first.topic.clone(), first.partition);
            let fence = if self.fences.is_empty() { None } else { self.fences.get(&key).copied() };
            let mut max = self.part_max.get(&key).map_or(i64::MIN, |e| e.0);
            // The watermark is the lowest maximum among the partitions that are not idle (this
            // one is not: it just delivered).
            let others_low = self
                .part_max
                .iter()
                .filter(|(k, (_, seen))| **k != key && now.duration_since(*seen) < idle)
                .map(|(_, (m, _))| *m)
                .min();
            for r in i..j {
                let t = ts[r];
                let start = t - t.rem_euclid(size);
                let end = start.saturating_add(size);
                // Lateness is judged against the row's own partition: a partition that was idle,
                // or was just assigned or restored behind the others, is not late for being
                // behind them (its rows fill a window that closes again at once).
                let part_wm = max.saturating_sub(lag);
                before.push(max);
                // Rows below a restored fence were seen before the checkpoint. The replay starts
                // from the partition's progress before its resume point, so each is judged as it
                // was then: those late then were handed over as late rows then, and those in a
                // window processed then were processed; both are skipped. The others join their
                // window again.
                let seen = fence.filter(|f| positions[r].offset < f.offset);
                let behind = max != i64::MIN && end <= part_wm;
                if seen.is_some_and(|f| end <= f.watermark || behind) {
                    starts.push(SKIPPED);
                    replayed += 1;
                } else if behind {
                    starts.push(LATE);
                    late += 1;
                    late_wm = late_wm.max(part_wm);
                } else {
                    starts.push(start);
                }
                if t > max {
                    max = t;
                    let low = others_low.map_or(t, |o| o.min(t));
                    if low != i64::MIN {
                        wm = wm.max(low.saturating_sub(lag));
                    }
                }
            }
            self.part_max.insert(key, (max, now));
            i = j;
        }
        self.watermark = wm;
        self.late_total += late as u64;
        self.replayed_total += replayed as u64;
        if late > 0 {
            let mask: BooleanArray = starts.iter().map(|s| Some(*s == LATE)).collect();
            let rows = filter_record_batch(points, &mask)?;
            let positions = starts.iter().zip(positions).filter(|(s, _)| **s == LATE).map(|(_, p)| p.clone()).collect();
            self.late.push(LateRows { rows, positions, logs, watermark: late_wm });
        }

        // Pass 2: split rows by window. A poll usually spans one or two windows.
        // Windows are found run by run (rows of one window come in runs), not by sorting a copy
        // of every row's start.
        let mut distinct: Vec<i64> = Vec::new();
        let mut last = LATE;
        for &s in &starts {
            if s != last && s != LATE && s != SKIPPED && !distinct.contains(&s) {
                distinct.push(s);
            }
            last = s;
        }
        distinct.sort_unstable();
        for start in distinct {
            let w = self.open.entry(start).or_default();
            let mut i = 0;
            while i < n {
                let first = &positions[i];
                let mut lowest = (i64::MAX, i64::MIN);
                while i < n && same_partition(first, &positions[i]) {
                    if starts[i] == start && positions[i].offset < lowest.0 {
                        lowest = (positions[i].offset, before[i]);
                    }
                    i += 1;
                }
                if lowest.0 != i64::MAX {
                    let e = w.min_offset.entry((first.topic.clone(), first.partition)).or_insert(lowest);
                    if lowest.0 < e.0 {
                        *e = lowest;
                    }
                }
            }
            let batch = if starts.iter().all(|s| *s == start) {
                points.clone()
            } else {
                let mask: BooleanArray = starts.iter().map(|s| Some(*s == start)).collect();
                filter_record_batch(points, &mask)?
            };
            if batch.num_rows() > 0 {
                if logs {
                    w.logs.push(batch);
                } else {
                    w.batches.push(batch);
                }
            }
        }
        Ok(PushStats { accepted: n - late - replayed, late, replayed })
    }

    /// The open windows, oldest first: start, end and the batches of points each holds.
    pub fn open_points(&self) -> impl Iterator<Item = (i64, i64, &[RecordBatch])> {
        let size = self.cfg.size_ms;
        self.open.iter().map(move |(s, w)| (*s, s + size, w.batches.as_slice()))
    }

    /// Removes and returns, oldest first, every window whose end the watermark has reached.
    pub fn take_closed(&mut self) -> Vec<ClosedWindow> {
        let mut out = Vec::new();
        while let Some((&start, _)) = self.open.first_key_value() {
            let end = start + self.cfg.size_ms;
            if end > self.watermark {
                break;
            }
            let w = self.open.remove(&start).expect("first key exists");
            out.push(ClosedWindow { start_ms: start, end_ms: end, batches: w.batches, logs: w.logs });
        }
        out
    }

    /// Removes and returns every open window regardless of the watermark (end of a bounded input).
    pub fn take_all(&mut self) -> Vec<ClosedWindow> {
        let size = self.cfg.size_ms;
        std::mem::take(&mut self.open)
            .into_iter()
            .map(|(start, w)| ClosedWindow { start_ms: start, end_ms: start + size, batches: w.batches, logs: w.logs })
            .collect()
    }

    /// For each partition seen, the offset of the next record to read that is safe to commit:
    /// the lowest offset still held by an open window, or else the next offset after everything
    /// consumed. Call it only after the results of closed windows are durable.
    pub fn commit_positions(&self) -> Vec<(Arc<str>, i32, i64)> {
        let mut keys: Vec<&PartKey> = self.next_offset.keys().chain(self.fences.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter().filter_map(|k| Some((k.0.clone(), k.1, self.resume_of(k)?))).collect()
    }

    /// Where reading partition `k` must resume for nothing held to be lost.
    fn resume_of(&self, k: &PartKey) -> Option<i64> {
        self.resume_point(k).map(|(offset, _)| offset)
    }

    /// [`Self::resume_of`], with the partition's highest event time before that offset.
    fn resume_point(&self, k: &PartKey) -> Option<(i64, i64)> {
        let held = self.open.values().filter_map(|w| w.min_offset.get(k)).min().copied();
        // The windows open at a restored checkpoint hold rows below its resume point until
        // they close again.
        let fence = self.fences.get(k);
        let floor = fence.filter(|f| self.watermark < f.open_until).map(|f| (f.resume, f.resume_max));
        let next = match self.next_offset.get(k) {
            Some(&o) => Some((o, self.part_max.get(k).map_or(i64::MIN, |m| m.0))),
            None => fence.map(|f| (f.resume, f.resume_max)),
        };
        [held, floor, next].into_iter().flatten().min_by_key(|(offset, _)| *offset)
    }

    /// Where every partition seen stands, for a checkpoint (taken between steps, after the
    /// results of closed windows are durable).
    pub fn positions(&self) -> Vec<PartitionPosition> {
        let open_until = self.open.keys().next_back().map_or(i64::MIN, |s| s + self.cfg.size_ms);
        self.commit_positions()
            .into_iter()
            .map(|(t, p, resume)| {
                let k = (t.clone(), p);
                let fence = self.next_offset.get(&k).copied().or(self.fences.get(&k).map(|f| f.offset)).unwrap_or(resume);
                let open_until = open_until.max(self.fences.get(&k).map_or(i64::MIN, |f| f.open_until));
                PartitionPosition {
                    topic: t.to_string(),
                    partition: p,
                    resume,
                    fence: fence.max(resume),
                    max_event_ms: self.part_max.get(&k).map_or(i64::MIN, |m| m.0),
                    resume_max_ms: self.resume_point(&k).map_or(i64::MIN, |(_, m)| m),
                    watermark: self.watermark,
                    open_until,
                }
            })
            .collect()
    }

    /// Continues a partition from a checkpoint: its event-time progress counts towards the
    /// watermark, and rows below its fence whose window was processed before the checkpoint are
    /// skipped when they are read again. A windower with no watermark yet takes the
    /// checkpoint's.
    pub fn restore(&mut self, pos: &PartitionPosition) {
        let k: PartKey = (Arc::from(pos.topic.as_str()), pos.partition);
        if self.watermark == i64::MIN || pos.watermark < self.watermark && self.open.is_empty() && self.next_offset.is_empty() {
            self.watermark = pos.watermark;
        }
        // Reading resumes at `resume`: the partition's progress is what it was there, and the
        // replay brings it back to `max_event_ms`.
        self.part_max.insert(k.clone(), (pos.resume_max_ms, std::time::Instant::now()));
        self.fences.insert(k, Fence { offset: pos.fence, watermark: pos.watermark, resume: pos.resume, open_until: pos.open_until, resume_max: pos.resume_max_ms });
    }

    /// Stops tracking partitions this consumer no longer owns: their offsets are never
    /// committed again, and they stop holding the watermark. Rows already in open windows stay
    /// unless removed with [`Self::drop_series`].
    pub fn revoke(&mut self, partitions: &[(Arc<str>, i32)]) {
        for k in partitions {
            self.next_offset.remove(k);
            self.part_max.remove(k);
            self.fences.remove(k);
            for w in self.open.values_mut() {
                w.min_offset.remove(k);
            }
        }
    }

    /// Removes from the open windows the point rows of the series `drop` selects (a revoked
    /// partition's series: the new owner replays them from its checkpoint).
    pub fn drop_series(&mut self, drop: &dyn Fn(u64) -> bool) -> Result<usize> {
        let mut removed = 0;
        for w in self.open.values_mut() {
            for b in w.batches.iter_mut() {
                let ids = b.column(1).as_primitive::<arrow::datatypes::UInt64Type>();
                let mask: BooleanArray = ids.values().iter().map(|id| Some(!drop(*id))).collect();
                let before = b.num_rows();
                *b = filter_record_batch(b, &mask)?;
                removed += before - b.num_rows();
            }
            w.batches.retain(|b| b.num_rows() > 0);
        }
        Ok(removed)
    }

    /// Rows that arrived behind the watermark since the last call.
    pub fn take_late(&mut self) -> Vec<LateRows> {
        std::mem::take(&mut self.late)
    }

    /// Rows skipped on replay because their window was processed before the checkpoint.
    pub fn replayed_total(&self) -> u64 {
        self.replayed_total
    }

    /// The number of rows in open windows (for progress reporting).
    pub fn buffered_rows(&self) -> usize {
        self.open.values().flat_map(|w| w.batches.iter().chain(&w.logs)).map(|b| b.num_rows()).sum()
    }
}

#[cfg(test)]
mod tests;
