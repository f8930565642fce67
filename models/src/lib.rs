//! # vigil-models: anomaly scoring and decision rules
//!
//! Pure functions over Arrow arrays plus explicit per-series state, nothing else: no I/O, no
//! clocks, no Kafka. The engine hands this crate the `features` batch of the windows that just
//! closed and gets back the `anomalies` batch and the [`Decision`]s to publish.
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
//!   `vigil_forecast`, `vigil_period`), registered in the feature plan and the SQL service.
//! - [`DecisionRule`]: turns anomalies at or above a score into [`Decision`]s with deterministic
//!   ids (rule + series + window), so a replay of the same input yields the same ids, and
//!   suppresses repeats while a series stays anomalous.
#![deny(missing_docs)]

mod columns;
mod decision;
mod detector;
mod error;
mod fleet;
mod forecast;
mod sql;

pub use decision::{anomalies_schema, decisions_schema, Decision, DecisionConfig, DecisionRule, Evidence, Recommendation, SeriesRef};
pub use detector::{Detector, DetectorConfig, Part, Score, SeriesState};
pub use error::{Error, Result};
pub use fleet::{Algorithm as FleetAlgorithm, FleetConfig, FleetDetector, Group as FleetGroup};
pub use sql::{sql_functions, SqlFunctions};
pub use forecast::{
    detect_period, forecast, forecasts_schema, mase, run_forecasts, seasonal_naive, smape, time_to_threshold, Crossing, ForecastConfig, ForecastJob,
    Forecaster, History as ForecastHistory, Method, SeriesForecast,
};
