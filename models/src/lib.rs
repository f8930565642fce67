//! # vigil-models: anomaly scoring, incidents and decision policies
//!
//! Pure functions over Arrow arrays plus explicit per-series state, nothing else: no I/O, no
//! clocks, no Kafka. The engine hands this crate the `features` batch of the windows that just
//! closed and gets back the `anomalies` batch, the incidents, and the [`Decision`]s to publish.
//!
//! - [`Detector`]: a streaming, causal detector ensemble with bounded state per series. A level
//!   part (median/MAD of recent windows), a seasonal part (period from augurs' periodogram), a
//!   shift part (change of level) and a forecast-band part each measure a deviation; each is
//!   calibrated against its own recent history into a tail probability, and the most surprising
//!   [`Part`] sets one score in [0, 1], an expected value, a normal band and a sentence naming it.
//! - [`FleetDetector`]: fleet outliers, the hosts of a service that stop behaving like the
//!   others, found by augurs' DBSCAN or MAD detectors over the recent windows.
//! - [`forecast()`]: forecasts with 80% and 95% intervals (MSTL + AutoETS from augurs, with a
//!   periodogram for the period, falling back to AutoETS, then seasonal naive), and
//!   [`time_to_threshold`] reads one against a limit.
//! - [`sql_functions`]: the same models as DataFusion functions (`robust_sigma`, `anomaly_score`,
//!   `vigil_forecast`, `vigil_period`), registered in the feature plan and the SQL service,
//!   with DataFusion's exact `percentile_cont` kept in flat vectors rather than one per group.
//! - [`Correlator`]: anomalies at or above the decision threshold, fleet outliers and forecasts
//!   reaching a limit become *signals*; the signals of one entity (a service, by default) that
//!   overlap in time are one [`Incident`], with a stable id and fingerprint, its members, the
//!   earliest mover as origin, and a resolution once every member has been quiet.
//! - [`PolicySet`] and [`Gate`]: decision policies are SQL over the `incidents` table (a file
//!   users edit, `sql/policies.toml` by default); the first that holds decides an incident, and
//!   the gate applies cooldowns, hourly limits, modes (auto, approval, dry run), approvals and
//!   suppressions from the feedback topic, logging every decision and suppression. Ids are
//!   deterministic (incident, policy, action, status), so a replay yields the same [`Decision`]s.
//! - [`cost`]: cost drift against the forecaster's expectation with root causes, budgets with
//!   period-end projections, efficiency (idle and oversized resources), and their signals.
//! - [`SloTracker`]: error budgets and multiwindow, multi-burn-rate alerts per SLO.
//! - [`HealthPlan`]: a 0-100 health score per service, composed in SQL (`sql/health.sql`).
#![deny(missing_docs)]

mod any_value;
mod columns;
pub mod cost;
mod decision;
mod detector;
mod error;
mod fleet;
mod forecast;
mod grouped;
mod health;
mod incident;
mod percentile;
mod policy;
pub mod prepared;
mod slo;
mod sql;

pub use decision::{
    anomalies_schema, decision_log_batch, decision_log_schema, decisions_batch, decisions_schema, outcomes_batch, outcomes_schema, Approval, Capacity,
    Decision, Evidence, IncidentRef, LogEntry, Mode, Outcome, Risk, Target,
};
pub use incident::{incidents_batch, incidents_schema, CapacityForecast, Changes, Correlator, Incident, IncidentConfig, Member, Signal};
pub use policy::{Feedback, FeedbackError, Gate, GateOutput, GateState, Match, PolicyError, PolicySet, PolicySpec, DEFAULT_POLICIES};
pub use detector::{Detector, DetectorConfig, Part, Score, SeriesSnapshot, SeriesState, StateBytes, MAX_REFRACTORY_WINDOWS};
pub use error::{Error, Result};
pub use fleet::{Algorithm as FleetAlgorithm, FleetConfig, FleetDetector, FleetSnapshot, Group as FleetGroup};
pub use sql::{never_skip_partial_aggregation, session_config, sql_functions, SqlFunctions};
pub use cost::{CostConfig, CostEngine, CostOutput, CostState};
pub use health::{health_inputs_batch, health_inputs_schema, HealthInput, HealthInputs, HealthPlan, DEFAULT_HEALTH_SQL};
pub use slo::{burn_rate, slo_batch, slo_schema, SloConfig, SloRow, SloState, SloTracker};
pub use forecast::{
    confirm_period, detect_period, forecast, forecast_seasonal, forecasts_schema, mase, run_forecasts, seasonal_naive, smape, time_to_threshold, Crossing, ForecastConfig, ForecastJob,
    Forecaster, History as ForecastHistory, Method, SeriesForecast,
};
