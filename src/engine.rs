//! The engine: wires ingest → pipeline → models → sinks into one consume-process-commit loop.
//!
//! One step: poll a batch from Kafka, decode it (rejects go to the dead-letter topic and are
//! acknowledged), add the points to their windows, and for the windows the watermark has closed
//! run the feature SQL, score the features, decide, publish the decisions and wait for the
//! broker's acknowledgement. Only then are input offsets committed, and only up to the lowest
//! offset still held by an open window: a crash at any point replays, and never skips, input.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use vigil_ingest::{IngestCounters, JsonPointDecoder, KafkaSource, KafkaSourceConfig};
use vigil_models::{Decision, DecisionConfig, DecisionRule, Detector};
use vigil_pipeline::{FeaturePlan, ResultTables, Windower};
use vigil_sinks::{DeadLetterSink, DecisionSink, KafkaSinkConfig};

use crate::config::{Config, ConfigError};

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
    Pipeline(#[from] vigil_pipeline::Error),
    /// The detector or decision rule rejected its input.
    #[error(transparent)]
    Models(#[from] vigil_models::Error),
    /// A sink could not deliver: nothing is committed past the undelivered results.
    #[error(transparent)]
    Sink(#[from] vigil_sinks::Error),
}

/// Engine counters, readable while it runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Polls that returned at least one record.
    pub polls: AtomicU64,
    /// Records consumed.
    pub records: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Points dropped because their window had closed.
    pub late: AtomicU64,
    /// Windows closed and processed.
    pub windows_closed: AtomicU64,
    /// Feature rows computed.
    pub feature_rows: AtomicU64,
    /// Anomalies (score at or above the anomaly threshold).
    pub anomalies: AtomicU64,
    /// Decisions published and acknowledged.
    pub decisions: AtomicU64,
    /// Forecast rows computed (one per series and step ahead).
    pub forecasts: AtomicU64,
    /// Offset commits.
    pub commits: AtomicU64,
    /// Current watermark, epoch ms (`i64::MIN` before any data).
    pub watermark_ms: AtomicI64,
}

impl Stats {
    fn add(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// The running pipeline. See the module docs.
pub struct Engine {
    source: KafkaSource,
    core: Processor,
    decisions: DecisionSink,
    dlq: DeadLetterSink,
    tables: Arc<ResultTables>,
    stats: Arc<Stats>,
    commit_interval: std::time::Duration,
    last_commit: Instant,
    dirty: bool,
    assigned: Vec<(std::sync::Arc<str>, i32)>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("source", &self.source).finish()
    }
}

/// The results of closing a set of windows.
#[derive(Debug)]
pub struct Closed {
    /// Windows closed.
    pub windows: usize,
    /// Their points, as the feature SQL saw them (log signals included).
    pub points: arrow::array::RecordBatch,
    /// Their log rows.
    pub logs: arrow::array::RecordBatch,
    /// The feature SQL's output.
    pub features: arrow::array::RecordBatch,
    /// Rows scoring at or above the anomaly threshold.
    pub anomalies: arrow::array::RecordBatch,
    /// New decisions.
    pub decisions: Vec<Decision>,
}

/// A non-default input format's decoder.
#[derive(Debug)]
enum TopicDecoder {
    Influx(vigil_ingest::InfluxDecoder),
    Mapped(Box<vigil_ingest::MappedJsonDecoder>),
    Otlp(Box<vigil_ingest::OtlpMetricsDecoder>),
    OtlpLogs(Box<vigil_ingest::OtlpLogsDecoder>),
    JsonLogs(Box<vigil_ingest::JsonLogDecoder>),
}

/// What a topic's records decode into.
enum Decoded {
    Points(vigil_ingest::DecodedBatch),
    Logs(vigil_ingest::DecodedLogs),
}

impl TopicDecoder {
    fn decode(&mut self, raw: &[&vigil_ingest::RawRecord]) -> vigil_ingest::Result<Decoded> {
        Ok(match self {
            Self::Influx(d) => Decoded::Points(d.decode_refs(raw)?),
            Self::Mapped(d) => Decoded::Points(d.decode_refs(raw)?),
            Self::Otlp(d) => Decoded::Points(d.decode_refs(raw)?),
            Self::OtlpLogs(d) => Decoded::Logs(d.decode_refs(raw)?),
            Self::JsonLogs(d) => Decoded::Logs(d.decode_refs(raw)?),
        })
    }
}

/// The Kafka-free core of the engine: decode, window, run the feature plan, score, decide.
/// The engine drives it from Kafka; `vigil bench` drives it from a file, so both measure and run
/// exactly the same code.
pub struct Processor {
    decoder: JsonPointDecoder,
    /// Decoders of the topics that are not JSON points.
    others: std::collections::HashMap<String, TopicDecoder>,
    /// Decoder counters per input format.
    counters: Arc<vigil_ingest::FormatCounters>,
    windower: Windower,
    plan: FeaturePlan,
    detector: Detector,
    rule: DecisionRule,
    feature: String,
    forecaster: vigil_models::Forecaster,
    fleet: Option<vigil_models::FleetDetector>,
    forecast_cfg: vigil_models::ForecastConfig,
    /// The refit running in the background, if any.
    refit: Option<tokio::task::JoinHandle<vigil_models::Result<arrow::array::RecordBatch>>>,
}

impl Processor {
    /// Builds the stages from `cfg` (the Kafka sections are not used).
    pub async fn new(cfg: &Config) -> Result<Self, EngineError> {
        cfg.validate()?;
        let sql = cfg.features_sql()?;
        let log_sql = cfg.log_signals_sql()?;
        let functions = vigil_models::sql_functions();
        let plan = FeaturePlan::with_functions(&sql, &log_sql, &cfg.detector.feature, functions.scalar, functions.aggregate).await?;
        let d = &cfg.detector;
        let detector = Detector::new(d.model_config(cfg.window.size));
        let rule = DecisionRule::new(DecisionConfig {
            threshold: cfg.decisions.threshold,
            min_deviation: cfg.decisions.min_deviation,
            rearm_ms: cfg.decisions.rearm_after.as_millis() as i64,
            full_support: d.history_windows as u32,
        });
        let windower = Windower::new(vigil_pipeline::WindowConfig {
            size_ms: cfg.window.size.as_millis() as i64,
            allowed_lag_ms: cfg.window.allowed_lag.as_millis() as i64,
            idle_timeout: cfg.window.idle_timeout,
        });
        let mut counters = vigil_ingest::FormatCounters::default();
        let decoder = JsonPointDecoder::new(counters.for_format("json"));
        let precision = vigil_ingest::Precision::parse(&cfg.kafka.influx_precision).unwrap_or_default();
        let mut others = std::collections::HashMap::new();
        for (topic, format) in &cfg.kafka.input_formats {
            let c = counters.for_format(format);
            let dec = match format.as_str() {
                "influx" => TopicDecoder::Influx(vigil_ingest::InfluxDecoder::new(precision, c)),
                "mapped" => {
                    let m = cfg.kafka.mappings.get(topic).map(|m| m.to_mapping()).ok_or_else(|| {
                        ConfigError::Invalid { key: "kafka.mappings", problem: format!("no mapping for topic `{topic}`"), fix: "add one".into() }
                    })?;
                    let d = vigil_ingest::MappedJsonDecoder::new(m, c)
                        .map_err(|e| ConfigError::Invalid { key: "kafka.mappings", problem: e, fix: "fix the mapping".into() })?;
                    TopicDecoder::Mapped(Box::new(d))
                }
                "otlp_proto" | "otlp_json" => {
                    let enc = if format == "otlp_proto" { vigil_ingest::OtlpEncoding::Proto } else { vigil_ingest::OtlpEncoding::Json };
                    TopicDecoder::Otlp(Box::new(vigil_ingest::OtlpMetricsDecoder::new(enc, c)))
                }
                "otlp_logs_proto" | "otlp_logs_json" => {
                    let enc = if format == "otlp_logs_proto" { vigil_ingest::OtlpEncoding::Proto } else { vigil_ingest::OtlpEncoding::Json };
                    TopicDecoder::OtlpLogs(Box::new(vigil_ingest::OtlpLogsDecoder::new(enc, cfg.logs.drain(), c)))
                }
                "json_logs" => {
                    let m = cfg.kafka.log_mappings.get(topic).cloned().unwrap_or_default().to_mapping();
                    let d = vigil_ingest::JsonLogDecoder::new(m, cfg.logs.drain(), c)
                        .map_err(|e| ConfigError::Invalid { key: "kafka.log_mappings", problem: e, fix: "fix the mapping".into() })?;
                    TopicDecoder::JsonLogs(Box::new(d))
                }
                _ => continue,
            };
            others.insert(topic.clone(), dec);
        }
        let f = &cfg.forecast;
        let window_ms = cfg.window.size.as_millis() as i64;
        let windows = |d: std::time::Duration| (d.as_millis() as i64 / window_ms).max(1) as usize;
        let forecaster = vigil_models::Forecaster::new(
            f.metrics.iter().map(|m| (m.clone(), f.limits.get(m).copied())),
            window_ms,
            windows(f.history),
            f.refit_every.as_millis() as i64,
        );
        let forecast_cfg = vigil_models::ForecastConfig { horizon: windows(f.horizon), max_period: windows(f.max_period) };
        Ok(Self {
            decoder,
            others,
            counters: Arc::new(counters),
            windower,
            plan,
            detector,
            rule,
            feature: d.feature.clone(),
            forecaster,
            fleet: cfg.fleet.enabled.then(|| vigil_models::FleetDetector::new(cfg.fleet.model_config())),
            forecast_cfg,
            refit: None,
        })
    }

    /// Creates the result tables this processor's output goes to.
    pub fn create_tables(&self, tables: &ResultTables, max_rows: usize) {
        tables.create("points", self.plan.points_schema(), max_rows);
        tables.create("logs", self.plan.logs_schema(), max_rows);
        tables.create("features", self.plan.output_schema(), max_rows);
        tables.create("anomalies", vigil_models::anomalies_schema(), max_rows);
        tables.create("forecasts", vigil_models::forecasts_schema(), max_rows);
        tables.create("decisions", vigil_models::decisions_schema(), max_rows);
    }

    /// Decodes a batch, notes every record as consumed, and adds the points to their windows.
    pub fn ingest(&mut self, raw: &[vigil_ingest::RawRecord]) -> Result<(Vec<vigil_ingest::Rejected>, vigil_pipeline::PushStats), EngineError> {
        self.windower.consumed(raw.iter().map(|r| &r.pos));
        if self.others.is_empty() || !raw.iter().any(|r| self.others.contains_key(&*r.pos.topic)) {
            let decoded = self.decoder.decode(raw)?;
            let pushed = self.windower.push(&decoded.points, &decoded.positions)?;
            return Ok((decoded.rejected, pushed));
        }
        // Mixed topics: decode each format's records together (topics keep their own order).
        let mut groups: std::collections::BTreeMap<Option<&str>, Vec<&vigil_ingest::RawRecord>> = Default::default();
        for r in raw {
            let key = self.others.contains_key(&*r.pos.topic).then_some(&*r.pos.topic);
            groups.entry(key).or_default().push(r);
        }
        let mut rejected = Vec::new();
        let mut pushed = vigil_pipeline::PushStats::default();
        for (topic, records) in groups {
            let decoded = match topic.and_then(|t| self.others.get_mut(t)) {
                Some(d) => d.decode(&records)?,
                None => Decoded::Points(self.decoder.decode_refs(&records)?),
            };
            let p = match decoded {
                Decoded::Points(d) => {
                    rejected.extend(d.rejected);
                    self.windower.push(&d.points, &d.positions)?
                }
                Decoded::Logs(d) => {
                    rejected.extend(d.rejected);
                    self.windower.push_logs(&d.logs, &d.positions)?
                }
            };
            pushed.accepted += p.accepted;
            pushed.late += p.late;
        }
        Ok((rejected, pushed))
    }

    /// Processes the windows the watermark has closed, if any.
    pub async fn close_ready(&mut self) -> Result<Option<Closed>, EngineError> {
        let closed = self.windower.take_closed();
        self.close(closed).await
    }

    /// Processes every open window (end of a bounded input).
    pub async fn close_all(&mut self) -> Result<Option<Closed>, EngineError> {
        let all = self.windower.take_all();
        self.close(all).await
    }

    async fn close(&mut self, closed: Vec<vigil_pipeline::ClosedWindow>) -> Result<Option<Closed>, EngineError> {
        if closed.is_empty() {
            return Ok(None);
        }
        let span = tracing::debug_span!("close", windows = closed.len(), first_start = closed[0].start_ms);
        let _g = span.enter();
        let vigil_pipeline::PlanOutput { points, logs, features } = self.plan.run(&closed).await?;
        let mut anomalies = self.detector.score_batch(&features, &self.feature)?;
        if let Some(fleet) = self.fleet.as_mut() {
            let outliers = fleet.observe(&features, &self.feature)?;
            if outliers.num_rows() > 0 {
                anomalies = arrow::compute::concat_batches(&anomalies.schema(), [&anomalies, &outliers]).map_err(vigil_models::Error::from)?;
            }
        }
        let decisions = self.rule.decide(&anomalies)?;
        if self.forecaster.enabled() {
            self.forecaster.observe(&features, &self.feature);
            // A change point makes the series' forecast stale: refit at the next chance.
            let parts = anomalies.column_by_name("part").map(|c| arrow::array::AsArray::as_string::<i32>(c).clone());
            let ids = anomalies.column_by_name("series_id").map(|c| arrow::array::AsArray::as_primitive::<arrow::datatypes::UInt64Type>(c).clone());
            if let (Some(parts), Some(ids)) = (parts, ids) {
                for i in 0..anomalies.num_rows() {
                    if parts.value(i) == vigil_models::Part::Shift.name() && self.forecaster.refit_soon(ids.value(i)) {
                        tracing::debug!(series_id = ids.value(i), "change point: forecast refit brought forward");
                    }
                }
            }
            // Refits run on a blocking thread, one at a time, never on this path.
            if self.refit.is_none() {
                let now = closed.last().map_or(i64::MIN, |w| w.end_ms);
                if let Some(jobs) = self.forecaster.due(now) {
                    let (cfg, window_ms) = (self.forecast_cfg, self.forecaster.window_ms());
                    self.refit = Some(tokio::task::spawn_blocking(move || {
                        let _span = tracing::debug_span!("refit", series = jobs.len()).entered();
                        vigil_models::run_forecasts(&jobs, &cfg, window_ms)
                    }));
                }
            }
        }
        Ok(Some(Closed { windows: closed.len(), points, logs, features, anomalies, decisions }))
    }

    /// The decoders' counters summed over every format, as of now.
    pub fn ingest_counters(&self) -> Arc<IngestCounters> {
        Arc::new(self.counters.total())
    }

    /// The forecasts of a finished background refit, if one has finished since the last call.
    /// With `wait`, waits for a running refit.
    pub async fn take_forecasts(&mut self, wait: bool) -> Result<Option<arrow::array::RecordBatch>, EngineError> {
        match &self.refit {
            Some(h) if wait || h.is_finished() => {}
            _ => return Ok(None),
        }
        let h = self.refit.take().expect("checked above");
        match h.await {
            Ok(r) => {
                let batch = r?;
                // The detector's forecast part checks the coming windows against these bands.
                self.detector.use_forecasts(&batch);
                Ok(Some(batch))
            }
            Err(e) => {
                tracing::error!(error = %e, "forecast refit failed; the next one is scheduled as usual");
                Ok(None)
            }
        }
    }

    /// The decoders' counters per input format.
    pub fn format_counters(&self) -> Arc<vigil_ingest::FormatCounters> {
        self.counters.clone()
    }

    /// Series the detector holds state for.
    pub fn series(&self) -> usize {
        self.detector.series()
    }

}

/// Names of the result tables the engine keeps.
pub const TABLES: [&str; 6] = ["points", "logs", "features", "anomalies", "forecasts", "decisions"];

impl Engine {
    /// Builds every stage from `cfg`, creates the result tables in `tables`, and subscribes.
    pub async fn new(cfg: &Config, tables: Arc<ResultTables>) -> Result<Self, EngineError> {
        let core = Processor::new(cfg).await?;
        core.create_tables(&tables, cfg.retention.max_rows);
        let k = &cfg.kafka;
        let source = KafkaSource::new(KafkaSourceConfig {
            brokers: k.brokers.clone(),
            group_id: k.group_id.clone(),
            topics: k.input_topics.clone(),
            max_batch: k.max_batch,
            poll_timeout: k.poll_timeout,
            linger: std::time::Duration::from_millis(20),
            properties: k.consumer.clone(),
        })?;
        let sink_cfg = KafkaSinkConfig { brokers: k.brokers.clone(), delivery_timeout: k.delivery_timeout, properties: k.producer.clone() };
        let decisions = DecisionSink::new(&sink_cfg, &k.decisions_topic, &format!("/vigil/{}", k.group_id))?;
        let dlq = DeadLetterSink::new(&sink_cfg, &k.dlq_topic)?;
        Ok(Self {
            source,
            core,
            decisions,
            dlq,
            tables,
            stats: Arc::new(Stats::default()),
            commit_interval: k.commit_interval,
            last_commit: Instant::now(),
            dirty: false,
            assigned: Vec::new(),
        })
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

    /// One poll-process-commit cycle. Returns the decisions published (and acknowledged) in it.
    pub async fn step(&mut self) -> Result<Vec<Decision>, EngineError> {
        let raw = match self.source.next_batch().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "poll failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                return Ok(Vec::new());
            }
        };
        let mut published = Vec::new();
        let raw_was_empty = raw.is_empty();
        if !raw.is_empty() {
            let span = tracing::debug_span!("batch", records = raw.len());
            let _g = span.enter();
            Stats::add(&self.stats.polls, 1);
            Stats::add(&self.stats.records, raw.len());
            let assigned = self.source.assignment();
            if assigned != self.assigned {
                tracing::info!(partitions = ?assigned.iter().map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>(), "assignment changed");
                self.core.windower.assign(&assigned);
                self.assigned = assigned;
            }
            let (rejected, pushed) = self.core.ingest(&raw)?;
            drop(raw);
            if !rejected.is_empty() {
                for r in rejected.iter().take(3) {
                    tracing::debug!(topic = %r.pos.topic, partition = r.pos.partition, offset = r.pos.offset, reason = %r.reason, "dead-lettering record");
                }
                self.dlq.publish(&rejected).await?;
                Stats::add(&self.stats.dead_lettered, rejected.len());
            }
            Stats::add(&self.stats.late, pushed.late);
            self.dirty = true;
            if let Some(wm) = self.core.windower.watermark() {
                self.stats.watermark_ms.store(wm, Ordering::Relaxed);
            }
            if let Some(closed) = self.core.close_ready().await? {
                published = self.publish(closed).await?;
                self.commit()?;
            }
        }
        if let Some(f) = self.core.take_forecasts(false).await? {
            Stats::add(&self.stats.forecasts, f.num_rows());
            self.tables.append("forecasts", f)?;
        }
        if raw_was_empty {
            // Nothing arrived: a partition may have gone idle, which can release the watermark.
            self.core.windower.advance_idle();
            if let Some(wm) = self.core.windower.watermark() {
                self.stats.watermark_ms.store(wm, Ordering::Relaxed);
            }
            if let Some(closed) = self.core.close_ready().await? {
                published = self.publish(closed).await?;
                self.commit()?;
            }
        }
        if self.dirty && self.last_commit.elapsed() >= self.commit_interval {
            self.commit()?;
        }
        Ok(published)
    }

    async fn publish(&mut self, c: Closed) -> Result<Vec<Decision>, EngineError> {
        // Durable first, then visible: a decision is in the table only once the broker has it.
        self.decisions.publish(&c.decisions).await?;
        Stats::add(&self.stats.windows_closed, c.windows);
        Stats::add(&self.stats.feature_rows, c.features.num_rows());
        Stats::add(&self.stats.anomalies, c.anomalies.num_rows());
        Stats::add(&self.stats.decisions, c.decisions.len());
        self.tables.append("points", c.points)?;
        self.tables.append("logs", c.logs)?;
        self.tables.append("features", c.features)?;
        self.tables.append("anomalies", c.anomalies)?;
        self.tables.append("decisions", DecisionRule::to_batch(&c.decisions)?)?;
        Ok(c.decisions)
    }

    /// Commits the input offsets whose results are durable.
    pub fn commit(&mut self) -> Result<(), EngineError> {
        let pos = self.core.windower.commit_positions();
        self.source.commit(&pos)?;
        Stats::add(&self.stats.commits, 1);
        self.last_commit = Instant::now();
        self.dirty = false;
        Ok(())
    }

    /// The offsets the group has committed (for tests and diagnostics).
    pub fn committed(&self) -> Result<Vec<(String, i32, i64)>, EngineError> {
        Ok(self.source.committed(std::time::Duration::from_secs(5))?)
    }

    /// Runs steps until `shutdown` resolves or an error stops it; calls `on_decision` for each
    /// acknowledged decision. On shutdown, commits what is durable; open windows are not flushed
    /// (they are replayed from Kafka on the next start).
    pub async fn run(
        &mut self,
        shutdown: impl Future<Output = ()>,
        mut on_decision: impl FnMut(&Decision),
    ) -> Result<(), EngineError> {
        use futures::FutureExt;
        tokio::pin!(shutdown);
        // Shutdown is checked between steps, never inside one: a step is not cancelled halfway
        // through publishing (each step waits at most `kafka.poll_timeout` for input).
        loop {
            if (&mut shutdown).now_or_never().is_some() {
                break;
            }
            for d in self.step().await? {
                on_decision(&d);
            }
        }
        self.commit()?;
        self.decisions.flush(std::time::Duration::from_secs(5));
        Ok(())
    }

    /// Closes every open window regardless of the watermark and publishes its results (for a
    /// bounded input that has ended), then commits.
    pub async fn drain(&mut self) -> Result<Vec<Decision>, EngineError> {
        let out = match self.core.close_all().await? {
            Some(c) => self.publish(c).await?,
            None => Vec::new(),
        };
        if let Some(f) = self.core.take_forecasts(true).await? {
            Stats::add(&self.stats.forecasts, f.num_rows());
            self.tables.append("forecasts", f)?;
        }
        self.commit()?;
        Ok(out)
    }
}

/// The counters served on `GET /metrics`: engine totals, then per input format
/// (`{format="..."}`, and `{format="...",kind="..."}` for rejects).
pub fn counters_fn(stats: Arc<Stats>, formats: Arc<vigil_ingest::FormatCounters>) -> vigil_queries::CountersFn {
    Arc::new(move || {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &stats;
        let i = formats.total();
        let mut out: Vec<(String, String, u64)> = vec![
            ("vigil_records_total".into(), "Records consumed from the input topics.".into(), g(&s.records)),
            ("vigil_ingest_bytes_total".into(), "Payload bytes consumed, all formats.".into(), g(&i.bytes)),
            ("vigil_points_total".into(), "Points decoded (a line-protocol, mapped or OTLP record can make several).".into(), g(&i.points)),
            ("vigil_dead_lettered_total".into(), "Records sent to the dead-letter topic.".into(), g(&s.dead_lettered)),
            ("vigil_rejected_syntax_total".into(), "Rejected: malformed, truncated or empty records, in any format.".into(), g(&i.rejected_syntax)),
            ("vigil_rejected_type_total".into(), "Rejected: a field of the wrong type.".into(), g(&i.rejected_type)),
            ("vigil_rejected_missing_field_total".into(), "Rejected: a required field missing or null.".into(), g(&i.rejected_missing)),
            ("vigil_late_total".into(), "Points and log rows dropped because their window had closed.".into(), g(&s.late)),
            ("vigil_windows_closed_total".into(), "Windows closed and processed.".into(), g(&s.windows_closed)),
            ("vigil_anomalies_total".into(), "Anomalies scored at or above the anomaly threshold.".into(), g(&s.anomalies)),
            ("vigil_decisions_total".into(), "Decisions published and acknowledged.".into(), g(&s.decisions)),
            ("vigil_forecast_rows_total".into(), "Forecast rows computed (series x steps ahead).".into(), g(&s.forecasts)),
            ("vigil_commits_total".into(), "Input offset commits.".into(), g(&s.commits)),
        ];
        type Pick = fn(&IngestCounters) -> &AtomicU64;
        let families: [(&str, &str, Pick); 4] = [
            ("vigil_format_records_total", "Records read, per input format.", |c| &c.records),
            ("vigil_format_bytes_total", "Payload bytes read, per input format.", |c| &c.bytes),
            ("vigil_format_points_total", "Points or log rows decoded, per input format.", |c| &c.points),
            ("vigil_format_skipped_total", "Parts of good records left out (OTLP points without a value, line-protocol string fields, ...), per input format.", |c| &c.skipped),
        ];
        for (name, help, pick) in families {
            for (f, c) in formats.iter() {
                out.push((format!("{name}{{format=\"{f}\"}}"), help.into(), g(pick(c))));
            }
        }
        let kinds: [(&str, Pick); 3] = [("syntax", |c| &c.rejected_syntax), ("type", |c| &c.rejected_type), ("missing_field", |c| &c.rejected_missing)];
        for (f, c) in formats.iter() {
            for (kind, pick) in kinds {
                out.push((format!("vigil_format_rejected_total{{format=\"{f}\",kind=\"{kind}\"}}"), "Records rejected, per input format and kind of error.".into(), g(pick(c))));
            }
        }
        out
    })
}
