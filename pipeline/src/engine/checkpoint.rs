//! Checkpoints and rebalances: the engine's state taken between two steps, copied, encoded and
//! written beside the loop (or waited for, on a rebalance, `commit` and at shutdown), and
//! restored when a partition is assigned.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_ingest::{RawRecord, RebalanceEvent};

use super::{state, stats, Engine, EngineError, PartKey, Stats, GLOBAL_SECTION};
use crate::store::{CheckpointStore, Section};

/// A checkpoint's state, taken and not yet encoded.
struct Taken {
    store: Arc<CheckpointStore>,
    member: String,
    sections: Vec<(String, state::SectionWriter)>,
    /// The result history's rows taken for files, which the checkpoint lists once written.
    history: Option<crate::history::TakenRows>,
    meta: serde_json::Value,
    series: usize,
    partitions: usize,
    started: Instant,
    /// What taking it cost the loop.
    pause: Duration,
}

/// A checkpoint written.
struct Done {
    written: crate::store::Written,
    series: usize,
    partitions: usize,
    took: Duration,
    pause: Duration,
    /// Copying what the stages still shared, beside the loop (until then a close copies each
    /// state it changes).
    copy: Duration,
}

/// What writing a checkpoint did: the history files written (recorded in the tables whatever
/// became of the checkpoint) and the checkpoint.
struct Outcome {
    files: Vec<crate::history::WrittenFile>,
    done: Result<Done, EngineError>,
}

/// A periodic checkpoint being encoded and written beside the loop.
pub(super) struct Writing {
    handle: tokio::task::JoinHandle<Outcome>,
}

impl Taken {
    /// Makes the states taken its own (copies what the stages still share: at the loop's
    /// priority, so that it is done before the next close, which would otherwise copy each
    /// state it changes), writes the history's files, then encodes the sections (on a thread
    /// of lower priority: postcard over every series' state) and writes them.
    async fn write(self) -> Outcome {
        let Taken { store, member, sections, history, meta, series, partitions, started, pause } = self;
        let copying = Instant::now();
        let detached = crate::background::run_now("vigil-checkpoint", move || {
            let mut sections = sections;
            for (_, w) in &mut sections {
                w.detach();
            }
            sections
        })
        .await;
        let copy = copying.elapsed();
        // The history's rows are written to their files whatever becomes of the rest.
        let mut files = Vec::new();
        let mut listed = None;
        if let Some(rows) = history {
            let (written, l) = rows.write().await;
            files = written;
            listed = Some(l);
        }
        let done = async {
            let mut sections = detached.ok_or_else(|| EngineError::Checkpoint("copying its state stopped".into()))?;
            if let Some(listed) = listed {
                let mut w = state::SectionWriter::default();
                w.put_value("files", 1, &listed?)?;
                sections.push((state::HISTORY_SECTION.to_string(), w));
            }
            let encoded = crate::background::run("vigil-checkpoint", move || {
                sections.into_iter().map(|(name, w)| Ok(Section { name, bytes: w.finish()? })).collect::<Result<Vec<Section>, EngineError>>()
            })
            .await
            .ok_or_else(|| EngineError::Checkpoint("encoding it stopped".into()))??;
            let written = store.write(&member, encoded, meta).await?;
            Ok(Done { written, series, partitions, took: started.elapsed(), pause, copy })
        }
        .await;
        Outcome { files, done }
    }
}

impl Engine {
    /// Acts on the rebalances since the last poll. Records of revoked partitions in `raw` are
    /// dropped (the next owner reads them), and so are those of partitions moved back to their
    /// checkpoint's offsets.
    pub(super) async fn handle_rebalances(&mut self, raw: &mut Vec<RawRecord>) -> Result<(), EngineError> {
        for ev in self.source.take_rebalances() {
            Stats::add(&self.stats.rebalances, 1);
            match ev {
                RebalanceEvent::Revoked(parts) => {
                    let parts: Vec<PartKey> = parts.into_iter().filter(|p| self.assigned.contains(p)).collect();
                    if parts.is_empty() {
                        continue;
                    }
                    if self.store.is_some() {
                        self.checkpoint_logged(Some(&parts)).await;
                    }
                    let removed = self.core.forget_partitions(&parts)?;
                    self.assigned.retain(|p| !parts.contains(p));
                    raw.retain(|r| !parts.iter().any(|(t, p)| *p == r.pos.partition && **t == *r.pos.topic));
                    self.assign_windows();
                    tracing::info!(partitions = ?names(&parts), rows_dropped = removed, "partitions revoked: checkpointed and handed over");
                }
                RebalanceEvent::Assigned(parts) => {
                    let new: Vec<PartKey> = parts.into_iter().filter(|p| !self.assigned.contains(p)).collect();
                    self.assigned.extend(new.iter().cloned());
                    if self.store.is_some() && !new.is_empty() {
                        // A checkpoint still being written lands first: the newest one is what
                        // a restore reads.
                        self.settle_checkpoint().await;
                        let moved = self.restore_partitions(&new).await?;
                        raw.retain(|r| !moved.iter().any(|(t, p)| *p == r.pos.partition && **t == *r.pos.topic));
                        self.refresh_published().await;
                    }
                    self.assign_windows();
                    tracing::info!(partitions = ?names(&new), "partitions assigned");
                }
            }
        }
        if !self.assigned.is_empty() && !self.stats.ready.load(Ordering::Relaxed) {
            self.stats.ready.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Restores `parts` from the newest checkpoint holding each; returns the partitions whose
    /// read position was moved back to their checkpoint.
    async fn restore_partitions(&mut self, parts: &[PartKey]) -> Result<Vec<PartKey>, EngineError> {
        let Some(store) = &self.store else { return Ok(Vec::new()) };
        let mut need: HashMap<String, PartKey> = parts.iter().map(|(t, p)| (state::partition_section(t, *p), (t.clone(), *p))).collect();
        let mut restored = Vec::new();
        while !need.is_empty() {
            let found = store.load_newest(|m| m.sections.iter().any(|s| need.contains_key(&s.name))).await?;
            let Some((loaded, skipped)) = found else { break };
            if !skipped.is_empty() {
                tracing::warn!(skipped = ?skipped, used = %loaded.manifest.id, "newer checkpoints were unreadable; using an older one");
            }
            let names: Vec<String> = loaded.manifest.sections.iter().map(|s| s.name.clone()).filter(|n| need.contains_key(n)).collect();
            for name in names {
                let Some(bytes) = loaded.section(&name) else { continue };
                let pos = self.core.restore_partition(&name, bytes)?;
                let key = need.remove(&name).expect("selected from need");
                Stats::add(&self.stats.restored_partitions, 1);
                tracing::info!(partition = %format!("{}/{}", key.0, key.1), checkpoint = %loaded.manifest.id, resume = pos.resume, series = self.core.owned_series(&key), "partition restored");
                restored.push((key, pos));
            }
        }
        for (t, p) in need.values() {
            tracing::info!(partition = %format!("{t}/{p}"), "no checkpoint holds this partition: its series start from nothing, from the group's committed offset");
        }
        // Read each restored partition from its checkpoint's resume point.
        let keys: Vec<PartKey> = restored.iter().map(|(k, _)| k.clone()).collect();
        let committed: HashMap<PartKey, i64> = match self.source.committed_for(&keys, Duration::from_secs(10)) {
            Ok(c) => c.into_iter().map(|(t, p, o)| ((t, p), o)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not read committed offsets; moving every restored partition to its checkpoint");
                HashMap::new()
            }
        };
        let mut moved = Vec::new();
        for (k, pos) in restored {
            if committed.get(&k) == Some(&pos.resume) {
                continue;
            }
            match self.source.seek(&k.0, k.1, pos.resume) {
                Ok(()) => moved.push(k),
                Err(e) => tracing::warn!(error = %e, partition = %format!("{}/{}", k.0, k.1), "could not move to the checkpoint's offset; reading from the committed offset"),
            }
        }
        Ok(moved)
    }

    /// Writes a checkpoint of `parts` (all assigned partitions when `None`) and the global
    /// state, and waits for it (after the periodic one being written, if any). Returns its size
    /// in bytes.
    pub async fn checkpoint(&mut self, parts: Option<&[PartKey]>) -> Result<u64, EngineError> {
        self.settle_checkpoint().await;
        let Some(taken) = self.take_checkpoint(parts).await? else { return Ok(0) };
        let outcome = taken.write().await;
        self.checkpoint_written(outcome).await
    }

    /// The periodic checkpoint: the state is taken between two steps (shared, copied on write:
    /// the only part the loop waits for), then copied, encoded and written by a task beside the loop, so that a
    /// large state does not hold up the windows' closes. One at a time; a rebalance, a commit
    /// or the shutdown waits for it before taking its own.
    ///
    /// A checkpoint due is taken right after a close (`closed`): the next close is then a window
    /// away, so the pause of taking the state delays none while it is shorter than a window, and
    /// the states are copied beside the loop before that close changes them. Without closes
    /// (input idle or held back), it is taken two windows after it was due: one window let a
    /// close that came a little late find the checkpoint just taken and its states still
    /// shared (measured: up to 85,586 of 100,000 states copied by the loop in one run).
    pub(super) async fn checkpoint_beside(&mut self, closed: bool) {
        if let Some(w) = &self.writing {
            if !w.handle.is_finished() {
                return;
            }
            self.settle_checkpoint().await;
        }
        let due = self.last_checkpoint.elapsed();
        if due < self.checkpoint_interval {
            return;
        }
        if !closed && due < self.checkpoint_interval + 2 * self.window {
            return;
        }
        match self.take_checkpoint(None).await {
            Ok(Some(taken)) => self.writing = Some(Writing { handle: tokio::spawn(taken.write()) }),
            Ok(None) => {}
            Err(e) => self.checkpoint_failed(&e),
        }
    }

    /// Waits for the checkpoint being written beside the loop, if any, and notes its outcome.
    async fn settle_checkpoint(&mut self) {
        let Some(w) = self.writing.take() else { return };
        let outcome = match w.handle.await {
            Ok(outcome) => outcome,
            Err(e) => Outcome { files: Vec::new(), done: Err(EngineError::Checkpoint(format!("the task writing it stopped: {e}"))) },
        };
        if let Err(e) = self.checkpoint_written(outcome).await {
            self.checkpoint_failed(&e);
        }
    }

    /// Takes the state of `parts` (all assigned partitions when `None`) and the global state,
    /// with the offsets it corresponds to: a consistent cut, not yet encoded.
    async fn take_checkpoint(&mut self, parts: Option<&[PartKey]>) -> Result<Option<Taken>, EngineError> {
        let Some(store) = &self.store else { return Ok(None) };
        let store = store.clone();
        let t0 = Instant::now();
        let owned: &[PartKey] = parts.unwrap_or(&self.assigned);
        let positions: Vec<crate::PartitionPosition> = self
            .core
            .windower()
            .positions()
            .into_iter()
            .filter(|p| owned.iter().any(|(t, n)| **t == *p.topic && *n == p.partition))
            .collect();
        let mut sections = vec![(GLOBAL_SECTION.to_string(), self.core.snapshot_global(&self.published)?)];
        let mut history = None;
        if let Some(h) = self.history.as_mut() {
            // The rows so far go to Parquet files (written beside the loop, before the
            // checkpoint, which lists them).
            let clock = self.core.windower().watermark().unwrap_or_else(stats::now_ms);
            history = Some(h.take(&self.tables, clock).0);
        }
        let mut series = 0;
        for (pos, (w, n)) in positions.iter().zip(self.core.snapshot_partitions(&positions)?) {
            series += n;
            sections.push((state::partition_section(&pos.topic, pos.partition), w));
        }
        let meta = serde_json::json!({ "partitions": positions, "member": self.member });
        let pause = t0.elapsed();
        self.last_checkpoint = Instant::now();
        Ok(Some(Taken { store, member: self.member.clone(), sections, history, meta, series, partitions: positions.len(), started: t0, pause }))
    }

    /// Notes a checkpoint's outcome: the history files written recorded in the tables, stats,
    /// and the history files it no longer lists deleted.
    async fn checkpoint_written(&mut self, outcome: Outcome) -> Result<u64, EngineError> {
        let Outcome { files, done } = outcome;
        let new = || files.iter().filter(|f| !f.is_merge());
        Stats::add(&self.stats.history_files, new().count());
        Stats::add(&self.stats.history_rows, new().map(|f| f.file.rows as usize).sum());
        if let Some(h) = self.history.as_mut() {
            for f in files {
                h.apply(f, &self.tables);
            }
        }
        let done = done?;
        if let Some(h) = self.history.as_mut() {
            h.checkpoint_written().await?;
        }
        Stats::add(&self.stats.checkpoints, 1);
        self.stats.checkpoint_at_ms.store(stats::now_ms(), Ordering::Relaxed);
        self.stats.checkpoint_bytes.store(done.written.bytes, Ordering::Relaxed);
        self.stats.checkpoint_us.store(done.took.as_micros() as u64, Ordering::Relaxed);
        self.stats.checkpoint_pause_us.store(done.pause.as_micros() as u64, Ordering::Relaxed);
        self.stats.checkpoint_copy_us.store(done.copy.as_micros() as u64, Ordering::Relaxed);
        self.stats.checkpoint_series.store(done.series as u64, Ordering::Relaxed);
        tracing::debug!(
            id = %done.written.id,
            bytes = done.written.bytes,
            series = done.series,
            partitions = done.partitions,
            ms = done.took.as_millis() as u64,
            loop_ms = done.pause.as_millis() as u64,
            copy_ms = done.copy.as_millis() as u64,
            "checkpoint written"
        );
        Ok(done.written.bytes)
    }

    fn checkpoint_failed(&mut self, e: &EngineError) {
        Stats::add(&self.stats.checkpoint_failures, 1);
        self.last_checkpoint = Instant::now();
        tracing::warn!(error = %e, "checkpoint failed; the previous one still holds, retrying at the next interval");
    }

    /// A checkpoint whose failure is logged and counted, not fatal: the previous one still
    /// holds, and the next interval tries again.
    async fn checkpoint_logged(&mut self, parts: Option<&[PartKey]>) {
        if let Err(e) = self.checkpoint(parts).await {
            self.checkpoint_failed(&e);
        }
    }
}

/// `topic/partition` of each.
fn names(parts: &[PartKey]) -> Vec<String> {
    parts.iter().map(|(t, p)| format!("{t}/{p}")).collect()
}
