//! The engine's counters, gauges and latency histogram, and the probes built on them.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vigil_ingest::IngestCounters;

/// Kind of a [`Metric`] in the Prometheus text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A histogram sample (`_bucket{le=...}`, `_sum`, `_count`); `name` carries the suffix.
    Histogram,
}

impl MetricKind {
    /// The `# TYPE` word.
    pub fn name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One sample for `GET /metrics`: `name` may carry labels (`name{k="v"}`).
#[derive(Debug, Clone)]
pub struct Metric {
    /// Sample name with labels.
    pub name: String,
    /// The family's help text.
    pub help: String,
    /// The family's type.
    pub kind: MetricKind,
    /// The value.
    pub value: f64,
}

/// Produces the samples of `GET /metrics`.
pub type MetricsFn = Arc<dyn Fn() -> Vec<Metric> + Send + Sync>;

/// Upper bounds, in seconds, of the window-close latency histogram.
pub const LATENCY_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Exact samples kept for percentiles (the newest; about 800 KB at most).
const RECENT_SAMPLES: usize = 100_000;

/// A fixed-bucket latency histogram, plus the newest samples for exact percentiles.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
    recent: std::sync::Mutex<std::collections::VecDeque<u64>>,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() == RECENT_SAMPLES {
            r.pop_front();
        }
        r.push_back(d.as_micros() as u64);
    }

    /// The `q` quantile (0..=1) of the newest samples, nearest rank; `None` before any.
    pub fn percentile(&self, q: f64) -> Option<std::time::Duration> {
        let mut v: Vec<u64> = self.recent.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(std::time::Duration::from_micros(v[rank - 1]))
    }

    /// The newest samples, microseconds, oldest first.
    pub fn samples(&self) -> Vec<u64> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect()
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Engine counters and gauges, readable while it runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Polls that returned at least one record.
    pub polls: AtomicU64,
    /// Records consumed.
    pub records: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Rows that arrived behind the watermark (sent to the late topic and `late_points`).
    pub late: AtomicU64,
    /// Rows read again after a restore whose window was processed before the checkpoint.
    pub replayed: AtomicU64,
    /// Windows closed and processed.
    pub windows_closed: AtomicU64,
    /// Feature rows computed.
    pub feature_rows: AtomicU64,
    /// Anomalies (score at or above the anomaly threshold).
    pub anomalies: AtomicU64,
    /// Decisions published and acknowledged.
    pub decisions: AtomicU64,
    /// Decisions not published because the decisions topic already held their id.
    pub decisions_deduplicated: AtomicU64,
    /// Incident changes (opened, updated, resolved).
    pub incidents: AtomicU64,
    /// Cost hours closed (on the cost clock).
    pub cost_hours: AtomicU64,
    /// Records read from the feedback topic.
    pub feedback: AtomicU64,
    /// Forecast rows computed (one per series and step ahead).
    pub forecasts: AtomicU64,
    /// Deliveries (decisions, dead letters, late rows) the broker did not acknowledge; each is
    /// retried, nothing is committed past it.
    pub delivery_failures: AtomicU64,
    /// Offset commits.
    pub commits: AtomicU64,
    /// Offset commits the group refused or that failed (a rebalance, an unreachable coordinator); retried at the next chance.
    pub commit_failures: AtomicU64,
    /// Current watermark, epoch ms (`i64::MIN` before any data).
    pub watermark_ms: AtomicI64,
    /// The wall clock minus the watermark when the last close began, ms (with event time
    /// that keeps pace with the clock, what it adds above its usual value is how late the
    /// close came because the loop was not reading).
    pub close_behind_ms: AtomicI64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Checkpoints that failed to write.
    pub checkpoint_failures: AtomicU64,
    /// Wall time of the last checkpoint written, epoch ms (0 before the first).
    pub checkpoint_at_ms: AtomicI64,
    /// Bytes of the last checkpoint.
    pub checkpoint_bytes: AtomicU64,
    /// Duration of the last checkpoint, microseconds.
    pub checkpoint_us: AtomicU64,
    /// The part of the last checkpoint the loop waited for (taking the state), microseconds.
    pub checkpoint_pause_us: AtomicU64,
    /// The last checkpoint's copy of what the stages still shared, beside the loop,
    /// microseconds (a close before it ended copied the states it changed itself).
    pub checkpoint_copy_us: AtomicU64,
    /// Series whose state the last checkpoint held.
    pub checkpoint_series: AtomicU64,
    /// Parquet files of the result history written.
    pub history_files: AtomicU64,
    /// Rows written to the result history.
    pub history_rows: AtomicU64,
    /// Partitions restored from a checkpoint.
    pub restored_partitions: AtomicU64,
    /// Rebalances seen (revocations and assignments).
    pub rebalances: AtomicU64,
    /// Wall time of the last step that completed without error, epoch ms.
    pub last_step_ms: AtomicI64,
    /// Whether the last broker check succeeded.
    pub broker_ok: AtomicBool,
    /// Set once the state is restored and the first partitions are assigned.
    pub ready: AtomicBool,
    /// Window close to decisions acknowledged by the broker.
    pub close_latency: Histogram,
    /// Consumer lag per assigned partition (records not read yet).
    pub lag: Mutex<Vec<(String, i32, i64)>>,
    /// Rows behind the watermark per input topic.
    pub late_by_topic: Mutex<std::collections::BTreeMap<String, u64>>,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Stats {
    pub(crate) fn add(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Liveness: the engine completed a step within `max_age` and the broker answered its
    /// last check. The body says why not.
    pub fn health(&self, max_age: std::time::Duration) -> (bool, serde_json::Value) {
        let last = self.last_step_ms.load(Ordering::Relaxed);
        let age_ms = if last == 0 { None } else { Some(now_ms() - last) };
        let stepping = age_ms.is_some_and(|a| a <= max_age.as_millis() as i64);
        let broker = self.broker_ok.load(Ordering::Relaxed);
        let ok = stepping && broker;
        let body = serde_json::json!({
            "status": if ok { "ok" } else { "unhealthy" },
            "last_step_age_ms": age_ms,
            "broker_reachable": broker,
        });
        (ok, body)
    }

    /// Readiness: state restored and partitions assigned.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let ready = self.ready.load(Ordering::Relaxed);
        (ready, serde_json::json!({ "status": if ready { "ready" } else { "starting" } }))
    }
}

/// The samples served on `GET /metrics`: engine totals and gauges, the latency histogram, lag
/// per partition, then per input format (`{format="..."}`, and `{format="...",kind="..."}`
/// for rejects).
pub fn metrics_fn(stats: Arc<Stats>, formats: Arc<vigil_ingest::FormatCounters>) -> MetricsFn {
    Arc::new(move || {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let s = &stats;
        let i = formats.total();
        let counter = |name: &str, help: &str, value: f64| Metric { name: name.into(), help: help.into(), kind: MetricKind::Counter, value };
        let gauge = |name: &str, help: &str, value: f64| Metric { name: name.into(), help: help.into(), kind: MetricKind::Gauge, value };
        let mut out: Vec<Metric> = vec![
            counter("vigil_records_total", "Records consumed from the input topics.", g(&s.records)),
            counter("vigil_ingest_bytes_total", "Payload bytes consumed, all formats.", g(&i.bytes)),
            counter("vigil_points_total", "Points decoded (a line-protocol, mapped or OTLP record can make several).", g(&i.points)),
            counter("vigil_dead_lettered_total", "Records sent to the dead-letter topic.", g(&s.dead_lettered)),
            counter("vigil_rejected_syntax_total", "Rejected: malformed, truncated or empty records, in any format.", g(&i.rejected_syntax)),
            counter("vigil_rejected_type_total", "Rejected: a field of the wrong type.", g(&i.rejected_type)),
            counter("vigil_rejected_missing_field_total", "Rejected: a required field missing or null.", g(&i.rejected_missing)),
            counter("vigil_late_total", "Points and log rows behind the watermark, sent to the late topic.", g(&s.late)),
            counter("vigil_replayed_total", "Rows read again after a restore whose window was processed before the checkpoint.", g(&s.replayed)),
            counter("vigil_windows_closed_total", "Windows closed and processed.", g(&s.windows_closed)),
            counter("vigil_anomalies_total", "Anomalies scored at or above the anomaly threshold.", g(&s.anomalies)),
            counter("vigil_decisions_total", "Decisions published and acknowledged.", g(&s.decisions)),
            counter("vigil_decisions_deduplicated_total", "Decisions not published again because the decisions topic already held their id.", g(&s.decisions_deduplicated)),
            counter("vigil_incident_changes_total", "Incidents opened, updated or resolved.", g(&s.incidents)),
            counter("vigil_cost_hours_closed_total", "Cost hours closed on the cost clock.", g(&s.cost_hours)),
            counter("vigil_feedback_total", "Records read from the feedback topic.", g(&s.feedback)),
            counter("vigil_forecast_rows_total", "Forecast rows computed (series x steps ahead).", g(&s.forecasts)),
            counter("vigil_commits_total", "Input offset commits.", g(&s.commits)),
            counter("vigil_commit_failures_total", "Offset commits the group refused or that failed (a rebalance, an unreachable coordinator), retried at the next chance.", g(&s.commit_failures)),
            counter("vigil_delivery_failures_total", "Deliveries the broker did not acknowledge (retried; nothing committed past them).", g(&s.delivery_failures)),
            counter("vigil_checkpoints_total", "Checkpoints written.", g(&s.checkpoints)),
            counter("vigil_checkpoint_failures_total", "Checkpoints that failed to write (the next one retries).", g(&s.checkpoint_failures)),
            counter("vigil_restored_partitions_total", "Partitions whose state was restored from a checkpoint.", g(&s.restored_partitions)),
            counter("vigil_rebalances_total", "Partition revocations and assignments.", g(&s.rebalances)),
        ];
        let wm = s.watermark_ms.load(Ordering::Relaxed);
        if wm != i64::MIN {
            out.push(gauge("vigil_watermark_seconds", "The event-time watermark, seconds since the epoch.", wm as f64 / 1000.0));
        }
        let at = s.checkpoint_at_ms.load(Ordering::Relaxed);
        if at > 0 {
            out.push(gauge("vigil_checkpoint_age_seconds", "Seconds since the last checkpoint was written.", (now_ms() - at) as f64 / 1000.0));
        }
        out.push(gauge("vigil_checkpoint_bytes", "Size of the last checkpoint.", g(&s.checkpoint_bytes)));
        out.push(gauge("vigil_checkpoint_duration_seconds", "Time the last checkpoint took (snapshot, encode, write).", g(&s.checkpoint_us) / 1e6));
        out.push(gauge(
            "vigil_checkpoint_pause_seconds",
            "Time the loop stopped for the last checkpoint (taking the state; encoding and writing run beside it).",
            g(&s.checkpoint_pause_us) / 1e6,
        ));
        out.push(gauge(
            "vigil_checkpoint_copy_seconds",
            "Time the last checkpoint took to copy, beside the loop, the states the stages still shared (a close before it ended copied those it changed).",
            g(&s.checkpoint_copy_us) / 1e6,
        ));
        out.push(gauge("vigil_checkpoint_series", "Series whose state the last checkpoint held.", g(&s.checkpoint_series)));
        out.push(counter("vigil_history_files_written_total", "Parquet files of the result history written.", g(&s.history_files)));
        out.push(counter("vigil_history_rows_written_total", "Rows written to the result history.", g(&s.history_rows)));
        out.push(gauge("vigil_ready", "1 once state is restored and partitions are assigned.", s.ready.load(Ordering::Relaxed) as u8 as f64));
        for (t, p, lag) in s.lag.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.push(gauge(&format!("vigil_consumer_lag{{topic=\"{t}\",partition=\"{p}\"}}"), "Records of an assigned partition not read yet.", *lag as f64));
        }
        for (t, n) in s.late_by_topic.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.push(counter(&format!("vigil_late_rows_total{{topic=\"{t}\"}}"), "Rows behind the watermark, per input topic.", *n as f64));
        }
        let h = &s.close_latency;
        let hist = "Window close to its decisions acknowledged by the broker, seconds.";
        for (b, c) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            out.push(Metric { name: format!("vigil_window_close_to_ack_seconds_bucket{{le=\"{b}\"}}"), help: hist.into(), kind: MetricKind::Histogram, value: g(c) });
        }
        out.push(Metric { name: "vigil_window_close_to_ack_seconds_bucket{le=\"+Inf\"}".into(), help: hist.into(), kind: MetricKind::Histogram, value: g(&h.count) });
        out.push(Metric { name: "vigil_window_close_to_ack_seconds_sum".into(), help: hist.into(), kind: MetricKind::Histogram, value: g(&h.sum_us) / 1e6 });
        out.push(Metric { name: "vigil_window_close_to_ack_seconds_count".into(), help: hist.into(), kind: MetricKind::Histogram, value: g(&h.count) });
        type Pick = fn(&IngestCounters) -> &AtomicU64;
        let families: [(&str, &str, Pick); 4] = [
            ("vigil_format_records_total", "Records read, per input format.", |c| &c.records),
            ("vigil_format_bytes_total", "Payload bytes read, per input format.", |c| &c.bytes),
            ("vigil_format_points_total", "Points or log rows decoded, per input format.", |c| &c.points),
            ("vigil_format_skipped_total", "Parts of good records left out (OTLP points without a value, line-protocol string fields, ...), per input format.", |c| &c.skipped),
        ];
        for (name, help, pick) in families {
            for (f, c) in formats.iter() {
                out.push(counter(&format!("{name}{{format=\"{f}\"}}"), help, g(pick(c))));
            }
        }
        let kinds: [(&str, Pick); 3] = [("syntax", |c| &c.rejected_syntax), ("type", |c| &c.rejected_type), ("missing_field", |c| &c.rejected_missing)];
        for (f, c) in formats.iter() {
            for (kind, pick) in kinds {
                out.push(counter(&format!("vigil_format_rejected_total{{format=\"{f}\",kind=\"{kind}\"}}"), "Records rejected, per input format and kind of error.", g(pick(c))));
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn percentiles_come_from_the_exact_samples() {
        let h = Histogram::default();
        assert_eq!(h.percentile(0.99), None);
        for ms in 1..=100u64 {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(h.percentile(0.5), Some(Duration::from_millis(50)));
        assert_eq!(h.percentile(0.99), Some(Duration::from_millis(99)));
        assert_eq!(h.percentile(1.0), Some(Duration::from_millis(100)));
        assert_eq!(h.count(), 100);
    }
}
