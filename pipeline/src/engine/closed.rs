//! What closing windows produces, where it goes, and what each stage of the core cost.

use vigil_models::{Decision, LogEntry};

use super::EngineError;
use crate::ResultTables;

/// The results of closing a set of windows.
#[derive(Debug)]
pub struct Closed {
    /// Windows closed.
    pub windows: usize,
    /// Their starts, epoch ms, oldest first.
    pub starts: Vec<i64>,
    /// Their points, as the feature SQL saw them (log signals included), in the batches they
    /// arrived in.
    pub points: Vec<arrow::array::RecordBatch>,
    /// Their log rows.
    pub logs: arrow::array::RecordBatch,
    /// The feature SQL's output.
    pub features: arrow::array::RecordBatch,
    /// Rows scoring at or above the anomaly threshold.
    pub anomalies: arrow::array::RecordBatch,
    /// Incidents opened, updated or resolved (rows of the `incidents` table).
    pub incidents: arrow::array::RecordBatch,
    /// New decisions.
    pub decisions: Vec<Decision>,
    /// Every decision and suppression, with its reason.
    pub log: Vec<LogEntry>,
    /// Cost rows received since the last close (the `costs` table).
    pub costs: Vec<arrow::array::RecordBatch>,
    /// Cost hours closed.
    pub cost_hours: usize,
    /// `cost_drift` rows.
    pub cost_drift: arrow::array::RecordBatch,
    /// `budgets` rows.
    pub budgets: arrow::array::RecordBatch,
    /// `efficiency` rows.
    pub efficiency: arrow::array::RecordBatch,
    /// `slo` rows.
    pub slo: arrow::array::RecordBatch,
    /// `health` rows.
    pub health: arrow::array::RecordBatch,
}

impl Closed {
    /// Appends every result except the decisions (which are visible only once the broker has
    /// them) to their tables.
    pub fn append_results(self, tables: &ResultTables) -> Result<(), EngineError> {
        for b in self.points {
            tables.append("points", b)?;
        }
        tables.append("logs", self.logs)?;
        tables.append("features", self.features)?;
        tables.append("anomalies", self.anomalies)?;
        tables.append("incidents", self.incidents)?;
        tables.append("decision_log", vigil_models::decision_log_batch(&self.log)?)?;
        for b in self.costs {
            tables.append("costs", b)?;
        }
        tables.append("cost_drift", self.cost_drift)?;
        tables.append("budgets", self.budgets)?;
        tables.append("efficiency", self.efficiency)?;
        tables.append("slo", self.slo)?;
        tables.append("health", self.health)?;
        Ok(())
    }
}

/// Time spent in each stage of the processing core since the processor was built: where a
/// batch's cost goes (`vigil bench` prints it; the engine adds the publishing).
#[derive(Debug, Default, Clone, Copy)]
pub struct StageTimes {
    /// Decoding records into Arrow rows (and series keys); for a large JSON poll, the time the
    /// loop's thread spent decoding slices itself or waiting for the pool's (the windows take
    /// the slices decoded meanwhile).
    pub decode: std::time::Duration,
    /// Lateness, watermark and splitting rows into windows (and sending them to the plan).
    pub windows: std::time::Duration,
    /// The feature SQL over closed windows: what a close waits for (with windows whose rows
    /// were sent to the plan as they arrived, only its output).
    pub features: std::time::Duration,
    /// The feature SQL's compute while windows were open, on the runtime's threads beside the
    /// loop (DataFusion's `elapsed_compute` of the windows' runs; not part of the loop's time).
    pub features_streamed: std::time::Duration,
    /// The detector ensemble and the fleet outliers, which run side by side.
    pub scoring: std::time::Duration,
    /// Of `scoring`: the ensemble's own time (itself spread over the cores by series).
    pub ensemble: std::time::Duration,
    /// Of `scoring`: the fleet check's own time (one core, beside the ensemble).
    pub fleet: std::time::Duration,
    /// The ensemble's baselines computed ahead, after a close's results were published and
    /// before the next close (`Processor::prepare_scoring`; not part of any close).
    pub ahead: std::time::Duration,
    /// Creating the scoring state of new series as their first points arrive, before the close
    /// of their first window (`Processor::ingest`; not part of any close).
    pub admit: std::time::Duration,
    /// Feature rows judged against baselines computed ahead.
    pub scored_ahead: u64,
    /// Feature rows that needed baselines and computed them at the close.
    pub baselines_at_close: u64,
    /// Period detections the ensemble ran (each series' own schedule, spread over closes).
    pub period_checks: u64,
    /// Series states the loop copied as they changed because a checkpoint being written still
    /// held them (copy on write; normally none: the writer copies them first).
    pub copied_on_write: u64,
    /// Everything after scoring: forecasts observed, cost, SLOs, signals into incidents,
    /// policies, the gate, health.
    pub decisions: std::time::Duration,
}
