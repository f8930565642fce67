//! The Kafka-free core of the engine: decode, window, run the feature plan, score, decide.

use std::sync::Arc;

use vigil_ingest::{IngestCounters, JsonPointDecoder};
use vigil_models::{Correlator, Decision, Detector, Feedback, Gate, IncidentConfig, LogEntry, Outcome, PolicySet, Signal};

pub use super::closed::{Closed, StageTimes};
use super::EngineError;
use crate::config::{Config, ConfigError};
use crate::{FeaturePlan, ResultTables, Windower};

/// What the answers on the feedback topic did.
#[derive(Debug, Default)]
pub struct Answered {
    /// Decisions approved: to publish now.
    pub decisions: Vec<Decision>,
    /// Audit entries.
    pub log: Vec<LogEntry>,
    /// Answers recorded.
    pub outcomes: Vec<Outcome>,
    /// Malformed records, for the dead-letter topic.
    pub rejected: Vec<vigil_ingest::Rejected>,
}

/// A non-default input format's decoder.
#[derive(Debug)]
pub(super) enum TopicDecoder {
    Influx(vigil_ingest::InfluxDecoder),
    Mapped(Box<vigil_ingest::MappedJsonDecoder>),
    Otlp(Box<vigil_ingest::OtlpMetricsDecoder>),
    OtlpLogs(Box<vigil_ingest::OtlpLogsDecoder>),
    JsonLogs(Box<vigil_ingest::JsonLogDecoder>),
    Focus(vigil_ingest::FocusDecoder),
}

/// What a topic's records decode into.
enum Decoded {
    Points(vigil_ingest::DecodedBatch),
    Logs(vigil_ingest::DecodedLogs),
    Costs(vigil_ingest::DecodedCosts),
}

impl TopicDecoder {
    fn decode(&mut self, raw: &[&vigil_ingest::RawRecord]) -> vigil_ingest::Result<Decoded> {
        Ok(match self {
            Self::Influx(d) => Decoded::Points(d.decode_refs(raw)?),
            Self::Mapped(d) => Decoded::Points(d.decode_refs(raw)?),
            Self::Otlp(d) => Decoded::Points(d.decode_refs(raw)?),
            Self::OtlpLogs(d) => Decoded::Logs(d.decode_refs(raw)?),
            Self::JsonLogs(d) => Decoded::Logs(d.decode_refs(raw)?),
            Self::Focus(d) => Decoded::Costs(d.decode_refs(raw)?),
        })
    }
}

/// The Kafka-free core of the engine: decode, window, run the feature plan, score, decide.
/// The engine drives it from Kafka; `vigil bench` drives it from a file, so both measure and run
/// exactly the same code.
pub struct Processor {
    /// JSON point decoders, [`decode::SLICES_PER_CORE`] per core: a large poll is decoded in as
    /// many slices, on every core at once.
    decoders: Vec<JsonPointDecoder>,
    /// Decoders of the topics that are not JSON points.
    pub(super) others: std::collections::HashMap<String, TopicDecoder>,
    /// Decoder counters per input format.
    counters: Arc<vigil_ingest::FormatCounters>,
    pub(super) windower: Windower,
    pub(super) plan: FeaturePlan,
    pub(super) detector: Detector,
    /// The end of the last window closed: when the next values are expected.
    next_window_ms: Option<i64>,
    /// Signals into incidents.
    pub(super) correlator: Correlator,
    /// The decision policies.
    pub(super) policies: PolicySet,
    /// Cooldowns, limits, modes, approvals and suppressions.
    pub(super) gate: Gate,
    /// Capacity signals from the last refit, for the next close (checkpointed).
    pub(super) pending_signals: Vec<Signal>,
    /// Where the feedback topic's reading resumes (partition → next offset).
    pub(super) feedback_positions: std::collections::BTreeMap<i32, i64>,
    feature: String,
    pub(super) forecaster: vigil_models::Forecaster,
    pub(super) fleet: Option<vigil_models::FleetDetector>,
    forecast_cfg: vigil_models::ForecastConfig,
    /// The refit running in the background, if any.
    refit: Option<tokio::task::JoinHandle<vigil_models::Result<arrow::array::RecordBatch>>>,
    /// The input partition each series' points came from: state is checkpointed and handed
    /// over per partition.
    pub(super) owner: super::state::Owners,
    /// Cost drift, budgets and efficiency (their own hourly clock).
    pub(super) cost: vigil_models::CostEngine,
    /// Cost rows for the `costs` table, until the next close.
    pending_costs: Vec<arrow::array::RecordBatch>,
    /// Cost rows for hours already closed, for the late topic.
    late_costs: Vec<crate::LateRows>,
    /// SLO error budgets and burn rates.
    pub(super) slo: vigil_models::SloTracker,
    /// What the health score reads, between two rows.
    health_inputs: vigil_models::HealthInputs,
    health: vigil_models::HealthPlan,
    health_every_ms: i64,
    next_health_ms: i64,
    correlate_by: Vec<String>,
    /// Whether new series' scoring state is created as their points arrive: with the shipped
    /// features SQL, which gives every series with points in a window a feature row at its
    /// close (a SQL of one's own may leave series out, and their state would be held for
    /// nothing).
    admit_ahead: bool,
    times: StageTimes,
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
        // Decoding and scoring are spread over every core the process may use.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Four shards per core: the fleet check runs beside the ensemble on one of the cores,
        // and with one shard per core the core that finishes it first had no shard left to take.
        let detector = Detector::with_shards(d.model_config(cfg.window.size), 4 * cores);
        let correlator = Correlator::new(IncidentConfig {
            correlate_by: cfg.incidents.correlate_by.clone(),
            resolve_after_ms: cfg.incidents.resolve_after.as_millis() as i64,
            threshold: cfg.decisions.threshold,
            min_deviation: cfg.decisions.min_deviation,
            full_support: d.history_windows as u32,
            max_open: cfg.incidents.max_open,
        });
        let (text, source) = cfg.policies_text()?;
        let policies = PolicySet::new(&text, &source)
            .await
            .map_err(|e| ConfigError::Invalid { key: "decisions.policies_file", problem: e.to_string(), fix: "fix the policy (see sql/policies.toml)".into() })?;
        let gate = Gate::new(policies.specs().to_vec(), cfg.decisions.reject_suppress.as_millis() as i64, cfg.decisions.snooze.as_millis() as i64);
        let windower = Windower::new(crate::WindowConfig {
            size_ms: cfg.window.size.as_millis() as i64,
            allowed_lag_ms: cfg.window.allowed_lag.as_millis() as i64,
            idle_timeout: cfg.window.idle_timeout,
        });
        let mut counters = vigil_ingest::FormatCounters::default();
        let json_counters = counters.for_format("json");
        let decoders = (0..decode::SLICES_PER_CORE * cores).map(|_| JsonPointDecoder::new(json_counters.clone())).collect();
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
                "focus" => TopicDecoder::Focus(
                    vigil_ingest::FocusDecoder::new(&cfg.cost.column, c)
                        .map_err(|e| ConfigError::Invalid { key: "cost.column", problem: e, fix: "use one of the FOCUS cost columns".into() })?,
                ),
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
        let health = vigil_models::HealthPlan::new(&cfg.health_sql()?)
            .await
            .map_err(|e| ConfigError::Invalid { key: "health.sql_file", problem: e.to_string(), fix: "fix the health SQL (see sql/health.sql)".into() })?;
        Ok(Self {
            decoders,
            others,
            counters: Arc::new(counters),
            windower,
            plan,
            detector,
            next_window_ms: None,
            correlator,
            policies,
            gate,
            pending_signals: Vec::new(),
            feedback_positions: Default::default(),
            feature: d.feature.clone(),
            forecaster,
            fleet: cfg.fleet.enabled.then(|| vigil_models::FleetDetector::new(cfg.fleet.model_config())),
            forecast_cfg,
            refit: None,
            owner: Default::default(),
            cost: vigil_models::CostEngine::new(cfg.cost.clone()),
            pending_costs: Vec::new(),
            late_costs: Vec::new(),
            slo: vigil_models::SloTracker::new(cfg.slo.clone(), cfg.incidents.correlate_by.clone(), &d.feature),
            health_inputs: vigil_models::HealthInputs::new(cfg.incidents.correlate_by.clone(), cfg.decisions.threshold),
            health,
            health_every_ms: cfg.health.every.as_millis() as i64,
            next_health_ms: i64::MIN,
            correlate_by: cfg.incidents.correlate_by.clone(),
            admit_ahead: sql == crate::DEFAULT_FEATURES_SQL,
            times: StageTimes::default(),
        })
    }

    /// Whether a topic's records go through the event-time windows (points and logs do; cost
    /// rows have their own hourly clock and must not hold the watermark).
    pub fn windowed(&self, topic: &str) -> bool {
        !matches!(self.others.get(topic), Some(TopicDecoder::Focus(_)))
    }

    /// Adds decoded cost rows to their hours; rows for hours already closed go to the late
    /// side output. Returns how many were late.
    fn push_costs(&mut self, d: vigil_ingest::DecodedCosts) -> Result<usize, EngineError> {
        let rows = vigil_models::cost::cost_rows(&d.costs)?;
        let late = self.cost.push(&rows);
        if late.is_empty() {
            if d.costs.num_rows() > 0 {
                self.pending_costs.push(d.costs);
            }
            return Ok(0);
        }
        let mut keep = vec![true; rows.len()];
        for &i in &late {
            keep[i] = false;
        }
        let mask = arrow::array::BooleanArray::from(keep.clone());
        let on_time = arrow::compute::filter_record_batch(&d.costs, &mask).map_err(vigil_models::Error::from)?;
        let late_idx = arrow::array::UInt32Array::from(late.iter().map(|&i| i as u32).collect::<Vec<_>>());
        let late_rows = arrow::compute::take_record_batch(&d.costs, &late_idx).map_err(vigil_models::Error::from)?;
        if on_time.num_rows() > 0 {
            self.pending_costs.push(on_time);
        }
        let positions = late.iter().map(|&i| d.positions[i].clone()).collect();
        self.late_costs.push(crate::LateRows { rows: late_rows, positions, logs: true, watermark: self.cost.closed_until().unwrap_or(i64::MIN) });
        Ok(late.len())
    }

    /// Cost rows that arrived for hours already closed.
    pub fn take_late_costs(&mut self) -> Vec<crate::LateRows> {
        std::mem::take(&mut self.late_costs)
    }

    /// Creates the result tables this processor's output goes to.
    pub fn create_tables(&self, tables: &ResultTables, max_rows: usize) {
        tables.create("points", self.plan.points_schema(), max_rows);
        tables.create("logs", self.plan.logs_schema(), max_rows);
        tables.create("features", self.plan.output_schema(), max_rows);
        tables.create("anomalies", vigil_models::anomalies_schema(), max_rows);
        tables.create("forecasts", vigil_models::forecasts_schema(), max_rows);
        tables.create("incidents", vigil_models::incidents_schema(), max_rows);
        tables.create("decisions", vigil_models::decisions_schema(), max_rows);
        tables.create("decision_log", vigil_models::decision_log_schema(), max_rows);
        tables.create("decision_outcomes", vigil_models::outcomes_schema(), max_rows);
        tables.create("late_points", super::late::late_points_schema(), max_rows);
        tables.create("costs", vigil_ingest::costs_schema(), max_rows);
        tables.create("cost_drift", vigil_models::cost::cost_drift_schema(), max_rows);
        tables.create("budgets", vigil_models::cost::budgets_schema(), max_rows);
        tables.create("efficiency", vigil_models::cost::efficiency_schema(), max_rows);
        tables.create("slo", vigil_models::slo_schema(), max_rows);
        tables.create("health", self.health.schema(), max_rows);
    }

    /// Decodes a batch, notes every record as consumed, and adds the points to their windows.
    pub fn ingest(&mut self, raw: &[vigil_ingest::RawRecord]) -> Result<(Vec<vigil_ingest::Rejected>, crate::PushStats), EngineError> {
        self.windower.consumed(raw.iter().map(|r| &r.pos));
        if self.json_only(raw) {
            let t = std::time::Instant::now();
            let mut rejected = Vec::new();
            let mut pushed = crate::PushStats::default();
            let mut admitting = std::time::Duration::ZERO;
            // The decoders are lent to the pool's threads and this one, which takes each decoded
            // slice into its windows and sends it on to the feature plan.
            let mut decoders = std::mem::take(&mut self.decoders);
            let decoding = decode::decode_in_order(&mut decoders, raw, |d| {
                let new = self.owner.note(&d.points, &d.positions);
                let p = self.windower.push(&d.points, &d.positions)?;
                admitting += self.admit(&d.points, &new, p);
                pushed.add(p);
                rejected.extend(d.rejected);
                self.feed_plan()
            });
            self.decoders = decoders;
            let decoding = decoding?;
            // Each slice's rejects are in position order; so are all of them together.
            rejected.sort_by_key(|r| (r.pos.partition, r.pos.offset));
            self.times.decode += decoding;
            self.times.windows += t.elapsed().saturating_sub(decoding + admitting);
            return Ok((rejected, pushed));
        }
        // Mixed topics: decode each format's records together (topics keep their own order).
        let groups = self.by_format(raw);
        let mut rejected = Vec::new();
        let mut pushed = crate::PushStats::default();
        for (topic, records) in groups {
            let t = std::time::Instant::now();
            let decoded = match topic.and_then(|t| self.others.get_mut(t)) {
                Some(d) => d.decode(&records)?,
                None => Decoded::Points(self.decoders[0].decode_refs(&records)?),
            };
            let t1 = std::time::Instant::now();
            self.times.decode += t1 - t;
            let mut admitting = std::time::Duration::ZERO;
            let p = match decoded {
                Decoded::Points(d) => {
                    rejected.extend(d.rejected);
                    let new = self.owner.note(&d.points, &d.positions);
                    let p = self.windower.push(&d.points, &d.positions)?;
                    admitting = self.admit(&d.points, &new, p);
                    p
                }
                Decoded::Logs(d) => {
                    rejected.extend(d.rejected);
                    self.windower.push_logs(&d.logs, &d.positions)?
                }
                Decoded::Costs(mut d) => {
                    rejected.append(&mut d.rejected);
                    crate::PushStats { late: self.push_costs(d)?, ..Default::default() }
                }
            };
            self.times.windows += t1.elapsed().saturating_sub(admitting);
            pushed.add(p);
        }
        let t = std::time::Instant::now();
        self.feed_plan()?;
        self.times.windows += t.elapsed();
        Ok((rejected, pushed))
    }

    /// Sends the oldest open window's points that its run of the feature plan has not seen yet.
    /// Only that window, the next to close, has a run (so the plan holds the state of one window
    /// beside what it held before): newer windows' batches wait in the windower, and a window
    /// that has become the oldest sends all of them with the next poll (not inside the close
    /// that made it the oldest, whose decisions are waited for).
    fn feed_plan(&mut self) -> Result<(), EngineError> {
        if let Some((start, end, batches)) = self.windower.open_points().next() {
            self.plan.feed_window(start, end, batches)?;
        }
        Ok(())
    }

    /// Decodes a poll with the decoders [`Self::ingest`] uses (a large JSON poll on every core,
    /// in one slice per core) and keeps nothing: the parse-only pass `vigil bench` measures the
    /// engine against. Returns the rows decoded.
    pub fn decode_only(&mut self, raw: &[vigil_ingest::RawRecord]) -> Result<usize, EngineError> {
        if self.json_only(raw) {
            // One slice per core: a parse alone has no other work to overlap, and more slices only
            // add their own cost to the figure the engine is measured against.
            let per_core = self.decoders.len() / decode::SLICES_PER_CORE;
            return Ok(decode::decode_all(&mut self.decoders[..per_core.max(1)], raw)?.iter().map(|d| d.points.num_rows()).sum());
        }
        let mut rows = 0;
        for (topic, records) in self.by_format(raw) {
            rows += match topic.and_then(|t| self.others.get_mut(t)) {
                Some(d) => match d.decode(&records)? {
                    Decoded::Points(d) => d.points.num_rows(),
                    Decoded::Logs(d) => d.logs.num_rows(),
                    Decoded::Costs(d) => d.costs.num_rows(),
                },
                None => self.decoders[0].decode_refs(&records)?.points.num_rows(),
            };
        }
        Ok(rows)
    }

    /// Whether every record of the poll is a JSON point (none is on a topic of another format).
    fn json_only(&self, raw: &[vigil_ingest::RawRecord]) -> bool {
        self.others.is_empty() || !raw.iter().any(|r| self.others.contains_key(&*r.pos.topic))
    }

    /// The records of a poll by the topic of their non-JSON format (`None`: JSON points), each
    /// group in poll order.
    fn by_format<'r>(&self, raw: &'r [vigil_ingest::RawRecord]) -> std::collections::BTreeMap<Option<&'r str>, Vec<&'r vigil_ingest::RawRecord>> {
        let mut groups: std::collections::BTreeMap<Option<&str>, Vec<&vigil_ingest::RawRecord>> = Default::default();
        for r in raw {
            groups.entry(self.others.contains_key(&*r.pos.topic).then_some(&*r.pos.topic)).or_default().push(r);
        }
        groups
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

    /// Time spent in each stage so far.
    pub fn stage_times(&self) -> StageTimes {
        StageTimes {
            scored_ahead: self.detector.scored_ahead(),
            baselines_at_close: self.detector.baselines_at_close(),
            period_checks: self.detector.period_checks(),
            copied_on_write: self.detector.copied_on_write(),
            ..self.times
        }
    }

    /// Computes ahead what every series' next value will be judged against (most of the
    /// ensemble's work: see [`Detector::prepare`]), so that the next close waits only for the
    /// rest. For the time between a close and the next, when the results of the close are
    /// out; the scores are the same with or without. Returns the series prepared.
    pub fn prepare_scoring(&mut self) -> usize {
        let t = std::time::Instant::now();
        let n = self.detector.prepare(self.next_window_ms);
        self.times.ahead += t.elapsed();
        n
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
                // A limit expected within the horizon is a signal for the next close.
                self.pending_signals.extend(Correlator::capacity_signals(&batch)?);
                Ok(Some(batch))
            }
            Err(e) => {
                tracing::error!(error = %e, "forecast refit failed; the next one is scheduled as usual");
                Ok(None)
            }
        }
    }

    /// Applies answers read from the feedback topic.
    pub fn feedback(&mut self, records: &[vigil_ingest::RawRecord]) -> Answered {
        let mut out = Answered::default();
        for r in records {
            self.feedback_positions.insert(r.pos.partition, r.pos.offset + 1);
            let parsed = match &r.payload {
                Some(p) => Feedback::parse(p),
                None => Err(vigil_models::FeedbackError("empty record (tombstone)".into())),
            };
            match parsed {
                Ok(f) => {
                    let g = self.gate.feedback(&f);
                    out.decisions.extend(g.publish);
                    out.log.extend(g.log);
                    out.outcomes.extend(g.outcomes);
                }
                Err(e) => out.rejected.push(vigil_ingest::Rejected {
                    payload: r.payload.clone().unwrap_or_default(),
                    key: r.key.clone(),
                    pos: r.pos.clone(),
                    kind: "feedback",
                    reason: e.to_string(),
                }),
            }
        }
        out
    }

    /// The decoders' counters per input format.
    pub fn format_counters(&self) -> Arc<vigil_ingest::FormatCounters> {
        self.counters.clone()
    }

    /// Feature rows the detector has scored (past warm-up).
    pub fn scored(&self) -> u64 {
        self.detector.scored()
    }

    /// Series the detector holds state for.
    pub fn series(&self) -> usize {
        self.detector.series()
    }

    /// Bytes of detector state held over every series, by part.
    pub fn detector_bytes(&self) -> vigil_models::StateBytes {
        self.detector.state_by_part()
    }

    /// The windower (watermark, open windows, offsets).
    pub fn windower(&self) -> &Windower {
        &self.windower
    }

    /// The windower, to move the watermark or take late rows.
    pub fn windower_mut(&mut self) -> &mut Windower {
        &mut self.windower
    }

}

#[path = "close.rs"]
mod close;
#[cfg(test)]
use close::in_window_order;
#[path = "admit.rs"]
mod admit;
#[path = "decode.rs"]
mod decode;

#[cfg(test)]
#[path = "processor_tests.rs"]
mod tests;
