//! `vigil bench`: the engine's processing core (decode → windows → feature SQL → detector →
//! decisions) over a JSON-lines file of metric points, without Kafka, so its cost can be measured
//! apart from the broker's. Reports events/s of wall time and of CPU time (events per core-second),
//! latency percentiles per input batch, and the detector's state per series.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use vigil_ingest::{RawRecord, SourcePos};

use crate::config::Config;
use crate::engine::{EngineError, Processor};

/// What a bench run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Records processed.
    pub events: u64,
    /// Payload bytes processed.
    pub bytes: u64,
    /// Series seen.
    pub series: usize,
    /// Windows closed.
    pub windows: u64,
    /// Decisions made.
    pub decisions: u64,
    /// Wall time of the processing loop, seconds.
    pub wall_s: f64,
    /// CPU time (user + system) of the process during the loop, seconds.
    pub cpu_s: f64,
    /// The system part of `cpu_s` (page faults, the kernel zeroing fresh pages), seconds.
    pub sys_s: f64,
    /// Per-batch processing latency percentiles, milliseconds: p50, p95, p99, max.
    pub batch_ms: [f64; 4],
    /// Records per batch.
    pub batch: usize,
    /// Detector state per series at most, bytes (values, residuals, calibration).
    pub state_bytes_per_series: usize,
    /// A checkpoint of all state at the end of the run: bytes, and milliseconds to snapshot
    /// and encode it and to write it to a local directory.
    pub checkpoint: CheckpointCost,
    /// Where the time went, stage by stage.
    pub stages: Stages,
    /// Feature rows the detector scored (series × windows past warm-up): with none, the run
    /// did not measure scoring.
    pub scored: u64,
    /// Feature rows produced (series × windows).
    pub feature_rows: u64,
    /// Wall seconds of a parse-only pass over the same records: the engine's decoders, on
    /// the same cores, keeping nothing (the yardstick of the processing core).
    pub parse_s: f64,
    /// The slowest batches that closed windows, slowest first, with where their time went.
    pub slowest: Vec<SlowBatch>,
    /// The most period detections the ensemble ran in one batch (see `stages` for all).
    pub most_period_checks: u64,
}

/// A batch that closed windows, and its time stage by stage.
#[derive(Debug, Clone, Copy)]
pub struct SlowBatch {
    /// Its place in the run (0 is the first batch).
    pub index: usize,
    /// Windows it closed.
    pub windows: usize,
    /// Its latency, ms.
    pub ms: f64,
    /// The stages' time within it.
    pub stages: Stages,
}

/// How many of the slowest closing batches a report lists.
const SLOWEST: usize = 3;

/// Seconds per stage of the processing core.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stages {
    /// The processor's own stages.
    pub core: vigil_pipeline::engine::StageTimes,
    /// Results into the SQL tables and decisions encoded as the sink sends them (no broker:
    /// `--kafka` measures that path).
    pub publish: std::time::Duration,
}

impl Stages {
    /// Each stage's name (parts of a stage indented) and time, in the order of the loop.
    fn rows(&self) -> [(&'static str, std::time::Duration); 10] {
        let c = &self.core;
        [
            ("decode", c.decode),
            ("windows", c.windows),
            ("new series", c.admit),
            ("feature plan", c.features),
            ("  while open", c.features_streamed),
            ("scoring", c.scoring),
            ("  ensemble", c.ensemble),
            ("  fleet", c.fleet),
            ("decisions", c.decisions),
            ("publish", self.publish),
        ]
    }
}

/// The cost of one checkpoint of everything the run learned.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointCost {
    /// Series whose state it holds.
    pub series: usize,
    /// Size written.
    pub bytes: u64,
    /// Taking the state (what the loop waits for: per series a shared pointer, not a copy), ms.
    pub snapshot_ms: f64,
    /// Taking it and copying what is shared (beside the loop, before the next close), ms.
    pub detach_ms: f64,
    /// Taking, copying and encoding it, ms.
    pub encode_ms: f64,
    /// The whole checkpoint (encode and write, fsync-free rename), ms.
    pub total_ms: f64,
    /// Checkpoint bytes of one series whose detector history is full (the steady state; the
    /// run's series may have seen fewer windows).
    pub full_series_bytes: usize,
}

impl BenchReport {
    /// Human-readable lines.
    pub fn render(&self) -> String {
        format!(
            "events            {}\n\
             bytes             {} ({:.1} MB)\n\
             series            {}\n\
             windows closed    {}\n\
             decisions         {}\n\
             wall              {:.2} s -> {:.0} events/s\n\
             parse only        {:.2} s -> {:.0} events/s (same decoders and cores, nothing kept); the engine runs at {:.1}% of it\n\
             cpu               {:.2} s -> {:.0} events/s per core ({:.2} s of it in the kernel)\n\
             throughput        {:.1} MB/s per core\n\
             batch latency     p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} records per batch)\n\
             state per series  {} bytes at most (detector)\n\
             checkpoint        {} series: {:.1} MB, {:.0} ms ({:.0} ms to take the state, which the loop waits for; {:.0} ms with copying it beside the loop; {:.0} ms with encoding); per 10,000 series {:.1} MB, {:.0} ms\n\
             checkpoint, full  {} bytes per series with a full history ({:.0} MB per 10,000 series)\n\
             scored            {} of {} feature rows (series x windows past warm-up)\n\
             periods           {} detections, at most {} in one batch\n\
             stages            {}\n\
             slowest closes    {}\n",
            self.events,
            self.bytes,
            self.bytes as f64 / 1e6,
            self.series,
            self.windows,
            self.decisions,
            self.wall_s,
            self.events as f64 / self.wall_s,
            self.parse_s,
            self.events as f64 / self.parse_s.max(1e-9),
            100.0 * self.parse_s / self.wall_s.max(1e-9),
            self.cpu_s,
            self.events as f64 / self.cpu_s.max(1e-9),
            self.sys_s,
            self.bytes as f64 / 1e6 / self.cpu_s.max(1e-9),
            self.batch_ms[0],
            self.batch_ms[1],
            self.batch_ms[2],
            self.batch_ms[3],
            self.batch,
            self.state_bytes_per_series,
            self.checkpoint.series,
            self.checkpoint.bytes as f64 / 1e6,
            self.checkpoint.total_ms,
            self.checkpoint.snapshot_ms,
            self.checkpoint.detach_ms,
            self.checkpoint.encode_ms,
            self.checkpoint.bytes as f64 / 1e6 * 10_000.0 / self.checkpoint.series.max(1) as f64,
            self.checkpoint.total_ms * 10_000.0 / self.checkpoint.series.max(1) as f64,
            self.checkpoint.full_series_bytes,
            self.checkpoint.full_series_bytes as f64 * 10_000.0 / 1e6,
            self.scored,
            self.feature_rows,
            self.stages.core.period_checks,
            self.most_period_checks,
            self.render_stages(),
            self.render_slowest(),
        )
    }
}

impl BenchReport {
    /// One line per stage: seconds, share of the loop's wall time, and ns per event.
    fn render_stages(&self) -> String {
        let rows = self.stages.rows();
        let mut out = String::new();
        for (i, (name, d)) in rows.iter().enumerate() {
            let s = d.as_secs_f64();
            if i > 0 {
                out.push_str("\n                  ");
            }
            out.push_str(&format!(
                "{name:<13} {s:>7.2} s  {:>5.1}%  {:>7.0} ns/event",
                100.0 * s / self.wall_s.max(1e-9),
                s * 1e9 / self.events.max(1) as f64
            ));
        }
        out
    }
}

impl SlowBatch {
    /// `#index (n windows) ms: stage ms, …` for the stages that took a millisecond or more.
    fn render(&self) -> String {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let parts = self.stages.rows();
        let list: Vec<String> = parts.iter().filter(|(_, d)| ms(*d) >= 1.0).map(|(n, d)| format!("{} {:.1}", n.trim(), ms(*d))).collect();
        let periods = self.stages.core.period_checks;
        format!("batch #{} ({} windows, {periods} period detections) {:.1} ms: {}", self.index, self.windows, self.ms, list.join(", "))
    }
}

impl BenchReport {
    fn render_slowest(&self) -> String {
        if self.slowest.is_empty() {
            return "none (no batch closed a window)".into();
        }
        self.slowest.iter().map(SlowBatch::render).collect::<Vec<_>>().join("\n                  ")
    }
}

/// The stages' time from `before` to `after`.
fn stages_between(before: &vigil_pipeline::engine::StageTimes, after: &vigil_pipeline::engine::StageTimes) -> vigil_pipeline::engine::StageTimes {
    vigil_pipeline::engine::StageTimes {
        decode: after.decode.saturating_sub(before.decode),
        windows: after.windows.saturating_sub(before.windows),
        features: after.features.saturating_sub(before.features),
        features_streamed: after.features_streamed.saturating_sub(before.features_streamed),
        scoring: after.scoring.saturating_sub(before.scoring),
        ensemble: after.ensemble.saturating_sub(before.ensemble),
        fleet: after.fleet.saturating_sub(before.fleet),
        ahead: after.ahead.saturating_sub(before.ahead),
        admit: after.admit.saturating_sub(before.admit),
        scored_ahead: after.scored_ahead.saturating_sub(before.scored_ahead),
        baselines_at_close: after.baselines_at_close.saturating_sub(before.baselines_at_close),
        period_checks: after.period_checks.saturating_sub(before.period_checks),
        copied_on_write: after.copied_on_write.saturating_sub(before.copied_on_write),
        decisions: after.decisions.saturating_sub(before.decisions),
    }
}

/// User and system CPU seconds of this process.
fn cpu_seconds() -> (f64, f64) {
    // utime and stime are fields 14 and 15 of /proc/self/stat, in clock ticks (100 Hz on Linux).
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else { return (0.0, 0.0) };
    let Some(rest) = s.rsplit_once(')').map(|x| x.1) else { return (0.0, 0.0) };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) / 100.0, t(12) / 100.0)
}

/// Synthesises `events` JSON lines shaped like the benchmark generator's: `hosts` × 5 metrics,
/// one point per series per second, with a little jitter. One incident is in it: from 80% of
/// the run, for 3 seconds, `latency_ms` of one host in 500 is eight times its usual level (so
/// that decisions are made and published, not only scores).
pub fn synthesize(events: usize, hosts: usize) -> Vec<Vec<u8>> {
    synthesize_as(events, hosts, "json")
}

/// The mapping `vigil bench --format mapped` decodes with (CloudWatch metric stream shape).
pub fn bench_mapping() -> crate::config::MappingConfig {
    crate::config::MappingConfig {
        time_field: "timestamp".into(),
        time_unit: "ms".into(),
        name_field: Some("metric_name".into()),
        name: None,
        value_fields: vec!["value.max".into()],
        label_fields: vec!["namespace".into(), "dimensions.host".into(), "dimensions.service".into()],
    }
}

/// Like [`synthesize`], in `format`: `json` points, `influx` line protocol (one field per line,
/// nanosecond timestamps) or `mapped` CloudWatch-style JSON (see [`bench_mapping`]).
pub fn synthesize_as(events: usize, hosts: usize, format: &str) -> Vec<Vec<u8>> {
    Synth::new(events, hosts, format).collect()
}

/// The records of [`synthesize_as`], one at a time (so a run can make each batch when it needs
/// it instead of holding the whole input).
#[derive(Debug, Clone)]
pub struct Synth {
    format: String,
    events: usize,
    hosts: usize,
    made: usize,
    tick: i64,
    host: usize,
    metric: usize,
    spike_at: i64,
    x: u64,
}

const SYNTH_METRICS: [&str; 5] = ["cpu_utilization", "mem_used_bytes", "http_requests", "http_errors", "latency_ms"];

impl Synth {
    /// `events` records of `hosts` × 5 series in `format`.
    pub fn new(events: usize, hosts: usize, format: &str) -> Self {
        let hosts = hosts.max(1);
        let spike_at = (events / (hosts * SYNTH_METRICS.len())) as i64 * 4 / 5;
        Self { format: format.to_string(), events, hosts, made: 0, tick: 0, host: 0, metric: 0, spike_at, x: 0x9e3779b97f4a7c15 }
    }
}

impl Iterator for Synth {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.made >= self.events {
            return None;
        }
        let (h, m, tick) = (self.host, SYNTH_METRICS[self.metric], self.tick);
        self.made += 1;
        self.metric += 1;
        if self.metric == SYNTH_METRICS.len() {
            (self.metric, self.host) = (0, self.host + 1);
            if self.host == self.hosts {
                (self.host, self.tick) = (0, self.tick + 1);
            }
        }
        let x = &mut self.x;
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        let jitter = (*x % 600) as i64 - 300;
        let mut v = 50.0 + (*x % 1000) as f64 / 100.0 + (h % 7) as f64;
        if m == "latency_ms" && h % 500 == 0 && (self.spike_at..self.spike_at + 3).contains(&tick) {
            v *= 8.0;
        }
        let ts = 1_700_000_000_000 + tick * 1_000 + jitter;
        let svc = h % 40;
        let line = match self.format.as_str() {
            "influx" => format!("{m},host=host-{h},service=svc-{svc} value={v} {}", ts * 1_000_000),
            "mapped" => format!(
                r#"{{"namespace":"bench","metric_name":"{m}","dimensions":{{"host":"host-{h}","service":"svc-{svc}"}},"timestamp":{ts},"value":{{"max":{v},"min":{v},"sum":{v},"count":1}},"unit":"None"}}"#
            ),
            _ => format!(r#"{{"ts":{ts},"name":"{m}","labels":{{"host":"host-{h}","service":"svc-{svc}"}},"value":{v}}}"#),
        };
        Some(line.into_bytes())
    }
}

/// Reads a JSON-lines file into one payload per line.
pub fn read_lines(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let data = std::fs::read(path)?;
    Ok(data.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect())
}

/// `line` as the Kafka source hands a record over: on `topic`, partition 0, at `offset`.
pub(crate) fn record(topic: &Arc<str>, offset: usize, line: Vec<u8>) -> RawRecord {
    RawRecord { payload: Some(line), key: None, pos: SourcePos { topic: topic.clone(), partition: 0, offset: offset as i64 } }
}

/// Runs the processing core over `lines` in batches of `batch` records.
pub async fn run(cfg: &Config, lines: Vec<Vec<u8>>, batch: usize) -> Result<BenchReport, EngineError> {
    let mut core = Processor::new(cfg).await?;
    let tables = vigil_pipeline::ResultTables::new();
    core.create_tables(&tables, cfg.retention.max_rows);
    let mut publish = std::time::Duration::ZERO;
    let mut feature_rows = 0u64;
    let topic: Arc<str> = Arc::from("bench");
    let bytes: u64 = lines.iter().map(|l| l.len() as u64).sum();
    let events = lines.len() as u64;
    // Records as the Kafka source would hand them over, prepared outside the timed loop.
    let mut batches: Vec<Vec<RawRecord>> = Vec::new();
    let mut it = lines.into_iter().enumerate().peekable();
    while it.peek().is_some() {
        batches.push(
            it.by_ref()
                .take(batch)
                .map(|(i, l)| record(&topic, i, l))
                .collect(),
        );
    }
    let parse_s = parse_only(cfg, &batches).await?;
    let mut lat = Vec::with_capacity(batches.len());
    let (mut windows, mut decisions) = (0u64, 0u64);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut closing: Vec<SlowBatch> = Vec::new();
    for (index, b) in batches.into_iter().enumerate() {
        let before = core.stage_times();
        let t = Instant::now();
        core.ingest(&b)?;
        drop(b);
        if let Some(c) = core.close_ready().await? {
            let n = c.windows;
            let p = publish_closed(c, &tables, &mut windows, &mut decisions, &mut feature_rows)?;
            publish += p;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            let core = stages_between(&before, &core.stage_times());
            closing.push(SlowBatch { index, windows: n, ms, stages: Stages { core, publish: p } });
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let most_period_checks = closing.iter().map(|c| c.stages.core.period_checks).max().unwrap_or(0);
    closing.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    closing.truncate(SLOWEST);
    if let Some(c) = core.close_all().await? {
        publish += publish_closed(c, &tables, &mut windows, &mut decisions, &mut feature_rows)?;
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds();
    let (cpu_s, sys_s) = (cpu1.0 + cpu1.1 - cpu0.0 - cpu0.1, cpu1.1 - cpu0.1);
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    let ring = vigil_models::Detector::new(cfg.detector.model_config(cfg.window.size)).max_bytes_per_series();
    let checkpoint = checkpoint_cost(&core, cfg).await?;
    Ok(BenchReport {
        events,
        bytes,
        series: core.series(),
        windows,
        decisions,
        wall_s,
        cpu_s,
        sys_s,
        batch_ms: [pct(0.5), pct(0.95), pct(0.99), lat.last().copied().unwrap_or(0.0)],
        batch,
        state_bytes_per_series: ring,
        checkpoint,
        stages: Stages { core: core.stage_times(), publish },
        scored: core.scored(),
        feature_rows,
        parse_s,
        slowest: closing,
        most_period_checks,
    })
}

/// Decodes every batch with a processor of its own (so the run's decoders start cold) and
/// keeps nothing; wall seconds.
async fn parse_only(cfg: &Config, batches: &[Vec<RawRecord>]) -> Result<f64, EngineError> {
    let mut parser = Processor::new(cfg).await?;
    let t = Instant::now();
    let mut rows = 0;
    for b in batches {
        rows += parser.decode_only(b)?;
    }
    std::hint::black_box(rows);
    Ok(t.elapsed().as_secs_f64())
}

/// Does with a close's results what the engine does, without a broker: the decisions'
/// message bodies are encoded, and every result goes into its SQL table. Returns the time taken.
pub(crate) fn publish_closed(
    c: vigil_pipeline::engine::Closed,
    tables: &vigil_pipeline::ResultTables,
    windows: &mut u64,
    decisions: &mut u64,
    feature_rows: &mut u64,
) -> Result<std::time::Duration, EngineError> {
    let t = Instant::now();
    *windows += c.windows as u64;
    *decisions += c.decisions.len() as u64;
    *feature_rows += c.features.num_rows() as u64;
    let bodies: usize = c.decisions.iter().map(|d| serde_json::to_vec(d).map_or(0, |b| b.len())).sum();
    std::hint::black_box(bodies);
    tables.append("decisions", vigil_models::decisions_batch(&c.decisions)?)?;
    c.append_results(tables)?;
    Ok(t.elapsed())
}

/// Takes one checkpoint of everything `core` holds, into a temporary local directory.
async fn checkpoint_cost(core: &Processor, cfg: &Config) -> Result<CheckpointCost, EngineError> {
    use vigil_pipeline::engine::{state::partition_section, PublishedIds, SectionWriter, GLOBAL_SECTION};
    use vigil_pipeline::store::{CheckpointStore, Section};
    let t = Instant::now();
    let mut taken = vec![(GLOBAL_SECTION.to_string(), core.snapshot_global(&PublishedIds::new(1))?)];
    let mut series = 0;
    let positions = core.windower().positions();
    for (p, (w, n)) in positions.iter().zip(core.snapshot_partitions(&positions)?) {
        series += n;
        taken.push((partition_section(&p.topic, p.partition), w));
    }
    let snapshot_ms = t.elapsed().as_secs_f64() * 1000.0;
    for (_, w) in &mut taken {
        w.detach();
    }
    let detach_ms = t.elapsed().as_secs_f64() * 1000.0;
    let sections = taken.into_iter().map(|(name, w)| Ok(Section { name, bytes: w.finish()? })).collect::<Result<Vec<_>, EngineError>>()?;
    let encode_ms = t.elapsed().as_secs_f64() * 1000.0;
    let dir = std::env::temp_dir().join(format!("vigil-bench-checkpoint-{}", std::process::id()));
    let store = CheckpointStore::open(&dir.display().to_string(), &Default::default(), 1)?;
    let written = store.write("bench", sections, serde_json::json!({})).await?;
    let total_ms = t.elapsed().as_secs_f64() * 1000.0;
    let _ = std::fs::remove_dir_all(&dir);
    // One series observed past its longest history, as every series is in a long run.
    let dcfg = cfg.detector.model_config(cfg.window.size);
    let cap = dcfg.history.max(dcfg.seasons * dcfg.max_period + 1) + dcfg.calibration;
    let mut d = vigil_models::Detector::new(dcfg);
    for i in 0..cap as i64 {
        d.observe_at(1, i * 10_000, 100.0 + (i % 97) as f64 * 0.37 + (i % 13) as f64);
    }
    let mut w = SectionWriter::default();
    w.put("detector", &d, &|_| true)?;
    let full_series_bytes = w.finish()?.len();
    Ok(CheckpointCost { series, bytes: written.bytes, snapshot_ms, detach_ms, encode_ms, total_ms, full_series_bytes })
}
