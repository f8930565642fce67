//! The engine: wires ingest → windows → models → sinks into one consume-process-commit loop,
//! with checkpoints, rebalances and a clean stop.
//!
//! One step: poll a batch from Kafka, act on rebalances (a revoked partition is checkpointed
//! and forgotten, an assigned one restored from the newest checkpoint holding it), decode the
//! batch (rejects go to the dead-letter topic), add the points to their windows (rows behind
//! the watermark go to the late topic and `late_points`), and for the windows the watermark
//! has closed run the feature SQL, score, decide, publish the decisions not already on the
//! topic and wait for the broker's acknowledgement. Only then are input offsets committed, and
//! only up to the lowest offset still held by an open window. Every `checkpoint.interval`, and
//! at shutdown, all state is written with the offsets it corresponds to.
//!
//! A crash therefore replays input from the newest checkpoint's offsets: rows of windows that
//! were processed before it are skipped (the replay fence), the windows closed after it are
//! closed again with the same state, and their decisions, whose ids are deterministic, are not
//! published twice (the ids on the decisions topic's tail are read at start and on assignment).

#[cfg(test)]
mod decide_tests;
mod checkpoint;
mod commit;
mod delivery;
pub mod late;
mod closed;
mod decide;
mod processor;
pub mod state;
mod stats;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_ingest::{IngestCounters, KafkaSource, KafkaSourceConfig};
use vigil_models::Decision;
use vigil_sinks::{DeadLetterSink, DecisionSink, KafkaSinkConfig, LateRecord, LateSink};

use checkpoint::Writing;
use crate::config::{Config, ConfigError};
use crate::store::CheckpointStore;
use crate::ResultTables;

pub use delivery::IoTimes;
use delivery::retry;
pub use processor::{Answered, Closed, Processor, StageTimes};
pub use state::{PublishedIds, SectionReader, SectionWriter, StateError, Stateful, GLOBAL_SECTION};
pub use stats::{metrics_fn, Histogram, Metric, MetricKind, MetricsFn, Stats, LATENCY_BUCKETS};

/// Errors that stop the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Kafka consumer failure.
    #[error(transparent)]
    Ingest(#[from] vigil_ingest::Error),
    /// The feature plan failed.
    #[error(transparent)]
    Pipeline(#[from] crate::Error),
    /// The detector or decision rule rejected its input.
    #[error(transparent)]
    Models(#[from] vigil_models::Error),
    /// A sink could not deliver: nothing is committed past the undelivered results.
    #[error(transparent)]
    Sink(#[from] vigil_sinks::Error),
    /// A checkpoint's contents are unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The checkpoint store failed or holds a checkpoint this build cannot read (boxed: the
    /// object store's errors are large, and every result of the loop would carry their size).
    #[error(transparent)]
    Store(Box<crate::store::StoreError>),
    /// The Parquet history could not be written or restored.
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
    /// A checkpoint's encoding or writing task stopped without finishing (it panicked or the
    /// runtime is shutting down).
    #[error("checkpoint not written: {0}")]
    Checkpoint(String),
    /// Asked to stop while results could not be delivered (the broker unreachable): nothing
    /// was checkpointed or committed past them, so they are derived again on the next start.
    #[error("stopped while {0} could not be delivered; they are derived again from the input on the next start")]
    StoppedUndelivered(&'static str),
    /// The final checkpoint, commit and flush did not finish within `shutdown.grace`.
    #[error("shutdown did not finish within shutdown.grace ({0:?}); the next start resumes from the previous checkpoint")]
    ShutdownTimeout(Duration),
}

impl From<crate::store::StoreError> for EngineError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Store(Box::new(e))
    }
}

/// Names of the result tables the engine keeps.
pub const TABLES: [&str; 16] = [
    "points",
    "logs",
    "features",
    "anomalies",
    "forecasts",
    "incidents",
    "decisions",
    "decision_log",
    "decision_outcomes",
    "late_points",
    "costs",
    "cost_drift",
    "budgets",
    "efficiency",
    "slo",
    "health",
];

type PartKey = (Arc<str>, i32);

/// The running pipeline. See the module docs.
pub struct Engine {
    source: KafkaSource,
    feedback: vigil_ingest::FeedbackSource,
    core: Processor,
    decisions: DecisionSink,
    dlq: DeadLetterSink,
    late: LateSink,
    tables: Arc<ResultTables>,
    stats: Arc<Stats>,
    commit_interval: Duration,
    last_commit: Instant,
    dirty: bool,
    /// Time spent waiting for and copying polled records, publishing results, committing.
    io_times: IoTimes,
    assigned: Vec<PartKey>,
    store: Option<Arc<CheckpointStore>>,
    /// The periodic checkpoint being encoded and written beside the loop, if any.
    writing: Option<Writing>,
    history: Option<crate::history::HistoryWriter>,
    member: String,
    checkpoint_interval: Duration,
    /// The windows' size: how long a periodic checkpoint may wait for a close to follow.
    window: Duration,
    last_checkpoint: Instant,
    published: PublishedIds,
    brokers: String,
    decisions_topic: String,
    dedup_tail: usize,
    grace: Duration,
    last_check: Instant,
    /// The broker check in flight, started by `housekeeping` off the loop.
    broker_check: Option<tokio::task::JoinHandle<bool>>,
    stop: tokio::sync::watch::Receiver<bool>,
    stop_tx: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("source", &self.source).field("member", &self.member).finish()
    }
}

impl Engine {
    /// Builds every stage from `cfg`, creates the result tables in `tables`, restores the
    /// state that spans partitions from the newest checkpoint, reads the ids already on the
    /// decisions topic, and subscribes. Partition state is restored as partitions are assigned.
    pub async fn new(cfg: &Config, tables: Arc<ResultTables>) -> Result<Self, EngineError> {
        let mut core = Processor::new(cfg).await?;
        core.create_tables(&tables, cfg.retention.max_rows);
        let k = &cfg.kafka;
        let sink_cfg = KafkaSinkConfig { brokers: k.brokers.clone(), delivery_timeout: k.delivery_timeout, properties: k.producer.clone() };
        let decisions = DecisionSink::new(&sink_cfg, &k.decisions_topic, &format!("/vigil/{}", k.group_id))?;
        let dlq = DeadLetterSink::new(&sink_cfg, &k.dlq_topic)?;
        let late = LateSink::new(&sink_cfg, &k.late_topic)?;
        let stats = Arc::new(Stats::default());
        stats.broker_ok.store(true, Ordering::Relaxed);
        let mut published = PublishedIds::new(cfg.decisions.dedup_tail.max(1) * 8);
        let mut history = match (cfg.checkpoint.enabled, cfg.history.enabled) {
            (true, true) => {
                let c = &cfg.checkpoint;
                let (store, prefix) = crate::history::open_store(&c.url, &c.options)?;
                let per_table = cfg.history.tables.iter().map(|(k, v)| (k.clone(), v.retention)).collect();
                Some(crate::history::HistoryWriter::new(store, &prefix, &c.member_name(), cfg.history.retention, per_table, &tables))
            }
            _ => None,
        };
        let store = if cfg.checkpoint.enabled {
            let c = &cfg.checkpoint;
            let store = CheckpointStore::open(&c.url, &c.options, c.keep)?;
            let mut history_state = None;
            match store.load_newest(|_| true).await? {
                Some((loaded, skipped)) => {
                    if let Some(bytes) = loaded.section(GLOBAL_SECTION) {
                        core.restore_global(bytes, &mut published)?;
                    }
                    if let Some(bytes) = loaded.section(state::HISTORY_SECTION) {
                        history_state = state::SectionReader::new(state::HISTORY_SECTION, bytes)?.value("files", 1)?;
                    }
                    tracing::info!(checkpoint = %loaded.manifest.id, store = %store.describe(), skipped = ?skipped, "restored the state that spans partitions");
                }
                None => tracing::info!(store = %store.describe(), "no checkpoint yet: every stage starts from nothing"),
            }
            if let Some(h) = history.as_mut() {
                let deleted = h.restore(history_state, &tables).await?;
                tracing::info!(files = tables.history_files().values().map(Vec::len).sum::<usize>(), deleted_newer = deleted, "result history restored");
            }
            Some(store)
        } else {
            None
        };
        let source = KafkaSource::new(KafkaSourceConfig {
            brokers: k.brokers.clone(),
            group_id: k.group_id.clone(),
            topics: k.input_topics.clone(),
            max_batch: k.max_batch,
            poll_timeout: k.poll_timeout,
            linger: Duration::from_millis(20),
            properties: k.consumer.clone(),
        })?;
        let feedback = vigil_ingest::FeedbackSource::new(
            &k.brokers,
            &k.feedback_topic,
            &format!("{}.{}", k.group_id, cfg.checkpoint.member_name()),
            core.feedback_positions.clone(),
            &k.consumer,
        )?;
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut engine = Self {
            source,
            feedback,
            core,
            decisions,
            dlq,
            late,
            tables,
            stats,
            commit_interval: k.commit_interval,
            last_commit: Instant::now(),
            dirty: false,
            io_times: IoTimes::default(),
            assigned: Vec::new(),
            store: store.map(Arc::new),
            writing: None,
            history,
            member: cfg.checkpoint.member_name(),
            checkpoint_interval: cfg.checkpoint.interval,
            window: cfg.window.size,
            last_checkpoint: Instant::now(),
            published,
            brokers: k.brokers.clone(),
            decisions_topic: k.decisions_topic.clone(),
            dedup_tail: cfg.decisions.dedup_tail,
            grace: cfg.shutdown.grace,
            last_check: Instant::now(),
            broker_check: None,
            stop,
            stop_tx,
        };
        engine.refresh_published().await;
        Ok(engine)
    }

    /// Time spent in each stage of the processing core so far, and the feature rows scored.
    pub fn stage_times(&self) -> (StageTimes, u64) {
        (self.core.stage_times(), self.core.scored())
    }

    /// Series the detector holds state for.
    pub fn series(&self) -> usize {
        self.core.series()
    }

    /// Time spent on the Kafka side of the loop so far.
    pub fn io_times(&self) -> IoTimes {
        self.io_times
    }

    /// The engine's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The decoders' counters summed over every format, as of now.
    pub fn ingest_counters(&self) -> Arc<IngestCounters> {
        self.core.ingest_counters()
    }

    /// The decoders' counters per input format.
    pub fn format_counters(&self) -> Arc<vigil_ingest::FormatCounters> {
        self.core.format_counters()
    }

    /// Reads the ids already on the decisions topic (a failure only warns: the ids kept in the
    /// checkpoint still apply).
    async fn refresh_published(&mut self) {
        if self.dedup_tail == 0 {
            return;
        }
        let (brokers, topic, n) = (self.brokers.clone(), self.decisions_topic.clone(), self.dedup_tail);
        let read = tokio::task::spawn_blocking(move || vigil_sinks::published_ids(&brokers, &topic, n, Duration::from_secs(10))).await;
        match read {
            Ok(Ok(ids)) => {
                let n = ids.len();
                for id in ids {
                    self.published.insert(id);
                }
                tracing::debug!(ids = n, topic = %self.decisions_topic, "decision ids already published");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "could not read the decisions topic's tail; only the ids kept in the checkpoint prevent republishing"),
            Err(e) => tracing::warn!(error = %e, "reading the decisions topic's tail failed"),
        }
    }

    /// Whether a stop was asked for.
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// One poll-process-commit cycle. Returns the decisions published (and acknowledged) in it.
    pub async fn step(&mut self) -> Result<Vec<Decision>, EngineError> {
        let mut stop = self.stop.clone();
        let closed_before = self.stats.windows_closed.load(Ordering::Relaxed);
        let t_poll = Instant::now();
        let polled = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return Ok(Vec::new()),
            r = self.source.next_batch() => r,
        };
        self.io_times.poll += t_poll.elapsed();
        let mut raw = match polled {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "poll failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                Vec::new()
            }
        };
        self.handle_rebalances(&mut raw).await?;
        let mut published = Vec::new();
        let raw_was_empty = raw.is_empty();
        if !raw.is_empty() {
            let span = tracing::debug_span!("batch", records = raw.len());
            let _g = span.enter();
            Stats::add(&self.stats.polls, 1);
            Stats::add(&self.stats.records, raw.len());
            self.stats.broker_ok.store(true, Ordering::Relaxed);
            let (rejected, pushed) = self.core.ingest(&raw)?;
            drop(raw);
            if !rejected.is_empty() {
                for r in rejected.iter().take(3) {
                    tracing::debug!(topic = %r.pos.topic, partition = r.pos.partition, offset = r.pos.offset, reason = %r.reason, "dead-lettering record");
                }
                let dlq = &self.dlq;
                retry("dead letters", &self.stop, &self.stats.delivery_failures, || dlq.publish(&rejected)).await?;
                Stats::add(&self.stats.dead_lettered, rejected.len());
            }
            Stats::add(&self.stats.late, pushed.late);
            Stats::add(&self.stats.replayed, pushed.replayed);
            self.publish_late().await?;
            self.dirty = true;
            self.note_watermark();
            published = self.close_and_publish().await?;
        }
        published.extend(self.answer_feedback().await?);
        if let Some(f) = self.core.take_forecasts(false).await? {
            Stats::add(&self.stats.forecasts, f.num_rows());
            self.tables.append("forecasts", f)?;
        }
        if raw_was_empty {
            // Nothing arrived: a partition may have gone idle, which can release the watermark.
            self.core.windower_mut().advance_idle();
            self.note_watermark();
            published.extend(self.close_and_publish().await?);
        }
        if self.store.is_some() {
            let closed = self.stats.windows_closed.load(Ordering::Relaxed) > closed_before;
            self.checkpoint_beside(closed).await;
        }
        // A commit refused since the last one is retried even when no record arrives.
        self.note_commit_failures();
        if self.dirty && self.last_commit.elapsed() >= self.commit_interval {
            self.commit_offsets()?;
        }
        self.housekeeping();
        self.stats.last_step_ms.store(stats::now_ms(), Ordering::Relaxed);
        Ok(published)
    }

    fn note_watermark(&self) {
        if let Some(wm) = self.core.windower().watermark() {
            self.stats.watermark_ms.store(wm, Ordering::Relaxed);
        }
    }

    /// Lag per partition and the broker check, every few seconds. The check is a request to
    /// the broker: it runs beside the loop, and its answer is taken at the first step after it
    /// came (measured: a check done on the loop stopped it for up to 450 ms while the broker
    /// was busy, and would stop it for the whole timeout every time during an outage).
    fn housekeeping(&mut self) {
        use futures::FutureExt;
        if let Some(done) = self.broker_check.as_mut().filter(|c| c.is_finished()).and_then(|c| c.now_or_never()) {
            self.broker_check = None;
            // A check that panicked says nothing about the broker.
            if let Ok(ok) = done {
                if !ok && self.stats.broker_ok.load(Ordering::Relaxed) {
                    tracing::warn!(brokers = %self.brokers, "no broker answers; polling on, results are held until it is back");
                }
                self.stats.broker_ok.store(ok, Ordering::Relaxed);
            }
        }
        if self.last_check.elapsed() < Duration::from_secs(5) {
            return;
        }
        self.last_check = Instant::now();
        let lag: Vec<(String, i32, i64)> = self.source.lag().into_iter().map(|(t, p, l)| (t.to_string(), p, l)).collect();
        *self.stats.lag.lock().unwrap_or_else(|e| e.into_inner()) = lag;
        if self.broker_check.is_none() {
            self.broker_check = Some(self.source.check_broker(Duration::from_millis(500)));
        }
    }

    /// Closes the windows the watermark has passed, publishes their results, and commits.
    async fn close_and_publish(&mut self) -> Result<Vec<Decision>, EngineError> {
        let t0 = Instant::now();
        let wall_ms = stats::now_ms();
        let Some(closed) = self.core.close_ready().await? else { return Ok(Vec::new()) };
        if let Some(wm) = self.core.windower().watermark() {
            self.stats.close_behind_ms.store(wall_ms - wm, Ordering::Relaxed);
        }
        let t1 = Instant::now();
        let windows = closed.windows;
        let out = self.publish(closed).await?;
        let t2 = Instant::now();
        self.io_times.publish += t2 - t1;
        self.stats.close_latency.observe(t0.elapsed());
        if windows > 0 {
            let ms = |d: Duration| (d.as_secs_f64() * 1e3 * 10.0).round() / 10.0;
            tracing::debug!(windows, close_ms = ms(t1 - t0), publish_ms = ms(t2 - t1), "close to ack");
        }
        self.commit_offsets()?;
        self.io_times.commit += t2.elapsed();
        if windows > 0 {
            // The results are out: what the next close will judge its values against is
            // computed now, not while it is waited for.
            self.core.prepare_scoring();
        }
        Ok(out)
    }

    /// The windower follows the assigned partitions of the windowed topics (cost topics have
    /// their own clock and never hold the watermark).
    fn assign_windows(&mut self) {
        let windowed: Vec<PartKey> = self.assigned.iter().filter(|(t, _)| self.core.windowed(t)).cloned().collect();
        self.core.windower_mut().assign(&windowed);
    }

    async fn publish_late(&mut self) -> Result<(), EngineError> {
        let mut late = self.core.windower_mut().take_late();
        late.extend(self.core.take_late_costs());
        for rows in late {
            {
                let mut by_topic = self.stats.late_by_topic.lock().unwrap_or_else(|e| e.into_inner());
                for p in &rows.positions {
                    *by_topic.entry(p.topic.to_string()).or_insert(0) += 1;
                }
            }
            let json = late::json_rows(&rows).map_err(crate::Error::from)?;
            let why = late::reason(rows.watermark);
            let records: Vec<LateRecord<'_>> =
                json.iter().zip(&rows.positions).map(|(j, pos)| LateRecord { json: j, reason: &why, pos }).collect();
            let sink = &self.late;
            retry("late rows", &self.stop, &self.stats.delivery_failures, || sink.publish(&records)).await?;
            if let Some(b) = late::late_points(&rows).map_err(crate::Error::from)? {
                self.tables.append("late_points", b)?;
            }
        }
        Ok(())
    }

    /// Applies the answers that arrived on the feedback topic; publishes the decisions they
    /// approved.
    async fn answer_feedback(&mut self) -> Result<Vec<Decision>, EngineError> {
        let records = self.feedback.poll(1000);
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let a = self.core.feedback(&records);
        Stats::add(&self.stats.feedback, records.len());
        if !a.rejected.is_empty() {
            for r in &a.rejected {
                tracing::warn!(partition = r.pos.partition, offset = r.pos.offset, reason = %r.reason, "malformed feedback: dead-lettered");
            }
            let dlq = &self.dlq;
            retry("dead letters", &self.stop, &self.stats.delivery_failures, || dlq.publish(&a.rejected)).await?;
            Stats::add(&self.stats.dead_lettered, a.rejected.len());
        }
        let out = self.publish_decisions(&a.decisions).await?;
        self.tables.append("decision_log", vigil_models::decision_log_batch(&a.log)?)?;
        self.tables.append("decision_outcomes", vigil_models::outcomes_batch(&a.outcomes)?)?;
        Ok(out)
    }

    /// Publishes the decisions not already on the topic and waits for the broker; returns them.
    async fn publish_decisions(&mut self, decisions: &[Decision]) -> Result<Vec<Decision>, EngineError> {
        let fresh: Vec<Decision> = decisions.iter().filter(|d| !self.published.contains(&d.id)).cloned().collect();
        let repeated = decisions.len() - fresh.len();
        if repeated > 0 {
            tracing::info!(decisions = repeated, "already on the decisions topic (published before a restart): not sent again");
            Stats::add(&self.stats.decisions_deduplicated, repeated);
        }
        let sink = &self.decisions;
        retry("decisions", &self.stop, &self.stats.delivery_failures, || sink.publish(&fresh)).await?;
        for d in &fresh {
            self.published.insert(d.id.clone());
        }
        Stats::add(&self.stats.decisions, fresh.len());
        self.tables.append("decisions", vigil_models::decisions_batch(&fresh)?)?;
        Ok(fresh)
    }

    async fn publish(&mut self, c: Closed) -> Result<Vec<Decision>, EngineError> {
        // Durable first, then visible: a decision is in the table only once the broker has it.
        // A decision whose id is already on the topic (published before a crash) is not sent
        // again.
        let fresh = self.publish_decisions(&c.decisions).await?;
        Stats::add(&self.stats.windows_closed, c.windows);
        Stats::add(&self.stats.feature_rows, c.features.num_rows());
        Stats::add(&self.stats.anomalies, c.anomalies.num_rows());
        Stats::add(&self.stats.incidents, c.incidents.num_rows());
        if c.windows > 0 {
            tracing::debug!(starts = ?c.starts, "windows closed");
        }
        Stats::add(&self.stats.cost_hours, c.cost_hours);
        c.append_results(&self.tables)?;
        Ok(fresh)
    }

    /// Runs steps until `shutdown` resolves or an error stops it; calls `on_decision` for each
    /// acknowledged decision. On shutdown: stops polling, takes a final checkpoint, commits
    /// what is durable and flushes the producers, all within `shutdown.grace`.
    pub async fn run(
        &mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        mut on_decision: impl FnMut(&Decision),
    ) -> Result<(), EngineError> {
        let tx = self.stop_tx.clone();
        let forward = tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        let res = async {
            while !self.stopping() {
                for d in self.step().await? {
                    on_decision(&d);
                }
            }
            Ok::<(), EngineError>(())
        }
        .await;
        forward.abort();
        res?;
        let grace = self.grace;
        tracing::info!(grace = ?grace, "stopping: final checkpoint, commit, flush");
        match tokio::time::timeout(grace, self.finish()).await {
            Ok(r) => r,
            Err(_) => Err(EngineError::ShutdownTimeout(grace)),
        }
    }

    async fn finish(&mut self) -> Result<(), EngineError> {
        if self.store.is_some() {
            self.checkpoint(None).await?;
        }
        self.commit_offsets_waiting(Some(self.grace / 4))?;
        self.decisions.flush(self.grace / 2);
        self.late.flush(self.grace / 4);
        tracing::info!("stopped cleanly");
        Ok(())
    }

    /// Asks a running [`Self::run`] to stop (as its `shutdown` future would).
    pub fn stop_handle(&self) -> tokio::sync::watch::Sender<bool> {
        self.stop_tx.clone()
    }

    /// Closes every open window regardless of the watermark and publishes its results (for a
    /// bounded input that has ended), then checkpoints and commits.
    pub async fn drain(&mut self) -> Result<Vec<Decision>, EngineError> {
        let out = match self.core.close_all().await? {
            Some(c) => self.publish(c).await?,
            None => Vec::new(),
        };
        if let Some(f) = self.core.take_forecasts(true).await? {
            Stats::add(&self.stats.forecasts, f.num_rows());
            self.tables.append("forecasts", f)?;
        }
        self.commit().await?;
        Ok(out)
    }
}
