//! `vigil bench --memory`: the resident memory the engine needs per active series.
//!
//! The synthetic records of [`crate::bench::Synth`] are made a batch at a time, just before the
//! processing core takes them, so that the process holds one poll's worth of input, as the Kafka
//! source does, and its resident set is the engine's own: windows, the feature plan, every
//! model's state, the SQL result tables within their retention. The resident set is read after
//! every window close (where it peaks: the closed windows' batches, the feature rows and the
//! scores are all alive then) and once more at the end, after the allocator has been asked to
//! return what is free. Throughput is not measured here (making the records is in the loop).

use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_ingest::RawRecord;

use crate::bench::{publish_closed, record, Synth};
use crate::config::Config;
use crate::engine::{EngineError, Processor};

/// What a memory run measured.
#[derive(Debug, Clone, Default)]
pub struct MemoryReport {
    /// Records processed.
    pub events: u64,
    /// Series seen.
    pub series: usize,
    /// Windows closed.
    pub windows: u64,
    /// Feature rows the detector scored (series × windows past warm-up).
    pub scored: u64,
    /// Feature rows produced.
    pub feature_rows: u64,
    /// Resident set before the first record, bytes (the process with the engine built).
    pub rss_start: u64,
    /// The largest resident set read after a window close, bytes.
    pub rss_peak: u64,
    /// Resident set at the end, every window closed, the allocator's free pages returned, bytes.
    pub rss_end: u64,
    /// The kernel's high-water mark of the resident set over the whole process, bytes.
    pub rss_hwm: u64,
    /// Detector state per series at most, bytes (the model's own bound).
    pub detector_bytes_per_series: usize,
    /// Bytes of detector state held over every series at the end, by part.
    pub detector: vigil_models::StateBytes,
    /// Wall seconds of the run (records made in the loop included).
    pub wall_s: f64,
}

impl MemoryReport {
    /// Human-readable lines.
    pub fn render(&self) -> String {
        let per = |b: u64| b.saturating_sub(self.rss_start) as f64 / self.series.max(1) as f64;
        let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
        format!(
            "events            {}\n\
             series            {}\n\
             windows closed    {}\n\
             scored            {} of {} feature rows (series x windows past warm-up)\n\
             rss at start      {:.1} MiB (engine built, no records)\n\
             rss peak          {:.1} MiB after a window close -> {:.0} bytes per series above the start\n\
             rss at end        {:.1} MiB (all windows closed, allocator collected) -> {:.0} bytes per series above the start\n\
             rss high water    {:.1} MiB (the kernel's, over the whole process)\n\
             detector state    {:.1} MiB held, {:.0} bytes per series; {} bytes per series at most\n\
             by part           {}\n\
             values coded      {} of {} series (exact multiples of a unit, in the bits they span; the others in single precision)\n\
             wall              {:.1} s (records made in the loop: not a throughput figure)\n",
            self.events,
            self.series,
            self.windows,
            self.scored,
            self.feature_rows,
            mb(self.rss_start),
            mb(self.rss_peak),
            per(self.rss_peak),
            mb(self.rss_end),
            per(self.rss_end),
            mb(self.rss_hwm),
            mb(self.detector.total() as u64),
            self.detector.total() as f64 / self.series.max(1) as f64,
            self.detector_bytes_per_series,
            self.by_part(),
            self.detector.coded,
            self.series,
            self.wall_s,
        )
    }

    /// The detector's state per series, by part.
    fn by_part(&self) -> String {
        let d = &self.detector;
        let per = |b: usize| b as f64 / d.series.max(1) as f64;
        format!(
            "map {:.0}, structs {:.0}, values {:.0}, seasonal {:.0} ({} series with a season), history {:.0}, refractory {:.0}, calibration {:.0}, forecast {:.0} bytes per series",
            per(d.tables),
            per(d.structs),
            per(d.values),
            per(d.seasonal),
            d.seasonal_series,
            per(d.history),
            per(d.refractory),
            per(d.calibration),
            per(d.forecast),
        )
    }
}

/// Runs the processing core over `synth`, made `batch` records at a time, and reads the
/// process's resident set as it goes.
pub async fn run(cfg: &Config, synth: Synth, batch: usize) -> Result<MemoryReport, EngineError> {
    let mut core = Processor::new(cfg).await?;
    let tables = vigil_pipeline::ResultTables::new();
    core.create_tables(&tables, cfg.retention.max_rows);
    let topic: Arc<str> = Arc::from("bench");
    let mut r = MemoryReport { rss_start: collected_rss().await, ..Default::default() };
    let t0 = Instant::now();
    let (mut windows, mut decisions, mut feature_rows) = (0u64, 0u64, 0u64);
    let mut synth = synth.enumerate().peekable();
    while synth.peek().is_some() {
        let records: Vec<RawRecord> = synth
            .by_ref()
            .take(batch.max(1))
            .map(|(i, l)| record(&topic, i, l))
            .collect();
        r.events += records.len() as u64;
        core.ingest(&records)?;
        if let Some(c) = core.close_ready().await? {
            publish_closed(c, &tables, &mut windows, &mut decisions, &mut feature_rows)?;
            // As the engine does after a close: the next close's baselines, computed ahead.
            core.prepare_scoring();
            r.rss_peak = r.rss_peak.max(status_bytes("VmRSS:"));
        }
    }
    if let Some(c) = core.close_all().await? {
        publish_closed(c, &tables, &mut windows, &mut decisions, &mut feature_rows)?;
        r.rss_peak = r.rss_peak.max(status_bytes("VmRSS:"));
    }
    r.wall_s = t0.elapsed().as_secs_f64();
    r.rss_end = collected_rss().await;
    r.rss_hwm = status_bytes("VmHWM:");
    r.series = core.series();
    r.windows = windows;
    r.scored = core.scored();
    r.feature_rows = feature_rows;
    r.detector_bytes_per_series = vigil_models::Detector::new(cfg.detector.model_config(cfg.window.size)).max_bytes_per_series();
    r.detector = core.detector_bytes();
    Ok(r)
}

/// The resident set after asking the allocator to return its free pages (twice, a purge delay
/// apart: mimalloc hands freed pages back after a delay), bytes.
async fn collected_rss() -> u64 {
    for _ in 0..2 {
        // SAFETY: `mi_collect` only walks mimalloc's own heaps; it is harmless when mimalloc is
        // linked but not the global allocator.
        unsafe { libmimalloc_sys::mi_collect(true) };
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    status_bytes("VmRSS:")
}

/// A `kB` field of `/proc/self/status`, in bytes (0 where it cannot be read).
fn status_bytes(field: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else { return 0 };
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The resident set is read from the kernel: a process has one, and it grows when a
    /// buffer is touched.
    #[test]
    fn the_resident_set_is_read_and_grows_with_touched_memory() {
        let before = status_bytes("VmRSS:");
        assert!(before > 0);
        let v = vec![1u8; 64 << 20];
        let after = status_bytes("VmRSS:");
        assert!(after >= before + (48 << 20), "{before} -> {after}");
        std::hint::black_box(&v);
        assert!(status_bytes("VmHWM:") >= after);
        assert_eq!(status_bytes("NoSuchField:"), 0);
    }

    /// A small run closes windows, scores series and reports the memory it read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_reports_memory_per_series() {
        let mut cfg = Config::default();
        cfg.kafka.input_topics = vec!["bench".into()];
        cfg.window.size = Duration::from_secs(1);
        let r = run(&cfg, Synth::new(50 * 30, 10, "json"), 500).await.unwrap();
        assert_eq!(r.events, 1500);
        assert_eq!(r.series, 50);
        assert!(r.windows >= 20, "{r:?}");
        assert!(r.scored > 0, "{r:?}");
        assert!(r.rss_start > 0 && r.rss_peak > 0 && r.rss_end > 0 && r.rss_hwm >= r.rss_peak, "{r:?}");
        let held = r.detector.total();
        assert!(held > 0 && held <= 50 * r.detector_bytes_per_series, "{r:?}");
        assert_eq!(r.detector.series, 50);
        assert!(r.detector.structs > 0 && r.detector.values > 0 && r.detector.history > 0, "{r:?}");
        assert!(r.render().contains("bytes per series above the start"));
        assert!(r.render().contains("by part           map "), "{}", r.render());
    }
}
