//! Vigil's configuration: one TOML file, every key overridable by a `VIGIL_<SECTION>_<KEY>`
//! environment variable (e.g. `VIGIL_KAFKA_BROKERS`, `VIGIL_WINDOW_SIZE=30s`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};

mod kafka;
mod server;
mod validate;
pub use kafka::{KafkaConfig, LogMappingConfig, LogsConfig, MappingConfig, INPUT_FORMATS};
pub use server::{Credentials, HistoryConfig, ServerConfig, SqlLimits, TableHistoryConfig, UserConfig};

/// A configuration problem, naming the key and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable does not parse, or a key is unknown or mistyped.
    #[error("config key `{key}`: {problem} (in {origin})")]
    Parse {
        /// Dotted key (or section, for an unknown key).
        key: String,
        /// What is wrong.
        problem: String,
        /// Where the value came from: the file or the environment.
        origin: String,
    },
    /// A value parses but is not acceptable.
    #[error("config key `{key}`: {problem}; {fix}")]
    Invalid {
        /// Dotted key, e.g. `window.size`.
        key: &'static str,
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
}

fn invalid(key: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, problem: problem.into(), fix: fix.into() }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Brokers, topics and client settings.
    pub kafka: KafkaConfig,
    /// Event-time windows.
    pub window: WindowConfig,
    /// The feature SQL.
    pub features: FeaturesConfig,
    /// Log template mining and log signals.
    pub logs: LogsConfig,
    /// The anomaly detector.
    pub detector: DetectorConfig,
    /// Forecasts and time-to-limit.
    pub forecast: ForecastSection,
    /// Decisions: thresholds, policies, feedback.
    pub decisions: DecisionsConfig,
    /// Incidents: correlation and resolution.
    pub incidents: IncidentsConfig,
    /// Fleet outliers.
    pub fleet: FleetSection,
    /// Cost: FOCUS rows and cost metrics, drift, budgets and efficiency (`docs/COST.md`).
    pub cost: vigil_models::CostConfig,
    /// Service level objectives, one `[[slo]]` each (`docs/HEALTH.md`).
    pub slo: Vec<vigil_models::SloConfig>,
    /// The health score per service.
    pub health: HealthConfig,
    /// The SQL surface: HTTP, Postgres wire, credentials, limits.
    pub server: ServerConfig,
    /// The result tables' Parquet history.
    pub history: HistoryConfig,
    /// How much of each result table is kept in memory.
    pub retention: RetentionConfig,
    /// Checkpoints of every stage's state.
    pub checkpoint: CheckpointConfig,
    /// Stopping on SIGTERM or SIGINT.
    pub shutdown: ShutdownConfig,
    /// `vigil forward`: delivery of decisions to HTTP receivers (Alertmanager-compatible
    /// webhooks, PagerDuty, generic webhooks).
    pub forward: vigil_sinks::ForwardConfig,
}

/// `[checkpoint]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Take checkpoints and restore from them. Off, a restart replays the input of the open
    /// windows but every series' model starts from nothing.
    pub enabled: bool,
    /// Where checkpoints go: a local directory (relative to the working directory, or
    /// `file:///abs/path`), or object storage, `s3://bucket/prefix`.
    pub url: String,
    /// How often a checkpoint is taken (one is also taken at shutdown and when partitions are
    /// revoked).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How many checkpoints are kept (older ones are deleted; the newest holding each partition
    /// is kept too).
    pub keep: usize,
    /// This instance's name in checkpoint names (default: `$HOSTNAME` or `vigil-<pid>`).
    pub member: Option<String>,
    /// Object storage settings that override the `AWS_*` environment: `endpoint`, `region`,
    /// `access_key_id`, `secret_access_key`, `allow_http`.
    pub options: BTreeMap<String, String>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { enabled: true, url: "vigil-state".into(), interval: Duration::from_secs(30), keep: 3, member: None, options: BTreeMap::new() }
    }
}

impl CheckpointConfig {
    /// The member name: configured, or `$HOSTNAME` (a pod's name in Kubernetes), or `vigil-<pid>`.
    pub fn member_name(&self) -> String {
        self.member
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| format!("vigil-{}", std::process::id()))
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM or SIGINT Vigil stops polling, takes a checkpoint, commits and flushes its
    /// producers; past this long it exits with an error instead of hanging (Kubernetes sends
    /// SIGKILL after its own `terminationGracePeriodSeconds`, 30 s by default: keep this below).
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace: Duration::from_secs(20) }
    }
}

/// `[window]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Tumbling window length, e.g. `"10s"`.
    #[serde(with = "humantime_serde")]
    pub size: Duration,
    /// How far behind the newest event time a record may arrive and still count, e.g. `"5s"`.
    #[serde(with = "humantime_serde")]
    pub allowed_lag: Duration,
    /// A partition that delivers nothing for this long (wall clock) stops holding the watermark
    /// back, so one quiet partition cannot stall every window.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self { size: Duration::from_secs(10), allowed_lag: Duration::from_secs(5), idle_timeout: Duration::from_secs(30) }
    }
}

/// `[features]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesConfig {
    /// SQL file computing per-series features from `points`; the shipped `sql/features.sql`
    /// when unset.
    pub sql_file: Option<PathBuf>,
}

/// `[detector]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// The feature column scored (a DOUBLE column of the feature SQL).
    pub feature: String,
    /// Windows in each series' level baseline.
    pub history_windows: usize,
    /// Windows a series must see before it may be scored.
    pub warmup_windows: usize,
    /// Longest season the seasonal part looks for, e.g. `"1d"` (`"0s"` turns it off). In
    /// windows it is `max_season / window.size`, at most 1440; a series then keeps up to
    /// `seasons` × that many values.
    #[serde(with = "humantime_serde")]
    pub max_season: Duration,
    /// Past periods the seasonal expectation is the median of.
    pub seasons: usize,
    /// Windows in the short window the shift (change-point) part compares with the baseline.
    pub shift_windows: usize,
    /// Deviations per part remembered to calibrate scores (a score of 0.999 means one in a
    /// thousand of these).
    pub calibration_windows: usize,
    /// Windows after a surprising one during which a window scores only if it is more
    /// surprising still: one event, one alarm (0 = off; at most 65,535).
    pub refractory_windows: usize,
    /// Anomaly scores at or above this are kept in the `anomalies` table.
    pub anomaly_threshold: f64,
}

/// Longest season in windows, whatever `max_season` says (bounds the state per series).
pub const MAX_PERIOD_WINDOWS: usize = 1440;

impl Default for DetectorConfig {
    fn default() -> Self {
        let d = vigil_models::DetectorConfig::default();
        Self {
            feature: "mean".into(),
            history_windows: d.history,
            warmup_windows: d.warmup,
            max_season: Duration::from_secs(86_400),
            seasons: d.seasons,
            shift_windows: d.shift_windows,
            calibration_windows: d.calibration,
            refractory_windows: d.refractory,
            anomaly_threshold: d.anomaly_threshold,
        }
    }
}

impl DetectorConfig {
    /// The model's configuration for series with one value per `window` (shared by the engine,
    /// `vigil eval` and `vigil backtest`).
    pub fn model_config(&self, window: Duration) -> vigil_models::DetectorConfig {
        let w = window.as_millis().max(1);
        let max_period = ((self.max_season.as_millis() / w) as usize).min(MAX_PERIOD_WINDOWS);
        vigil_models::DetectorConfig {
            history: self.history_windows,
            warmup: self.warmup_windows,
            max_period: if max_period >= 4 { max_period } else { 0 },
            seasons: self.seasons,
            shift_windows: self.shift_windows,
            calibration: self.calibration_windows,
            refractory: self.refractory_windows,
            anomaly_threshold: self.anomaly_threshold,
        }
    }
}

/// `[forecast]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForecastSection {
    /// Metric names to forecast (every series of each); empty turns forecasting off.
    #[serde(deserialize_with = "string_or_list")]
    pub metrics: Vec<String>,
    /// Upper limits per metric name (disk full, memory limit, CPU target): forecasts say when
    /// they will be reached, e.g. `{ memory_used_bytes = 8e9 }`.
    pub limits: BTreeMap<String, f64>,
    /// How far ahead, e.g. `"30m"`.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
    /// History kept per series and fitted on, e.g. `"12h"`.
    #[serde(with = "humantime_serde")]
    pub history: Duration,
    /// Event time between refits (they run in the background), e.g. `"5m"`.
    #[serde(with = "humantime_serde")]
    pub refit_every: Duration,
    /// Longest seasonal period looked for, e.g. `"1d"`.
    #[serde(with = "humantime_serde")]
    pub max_period: Duration,
}

impl Default for ForecastSection {
    fn default() -> Self {
        Self {
            metrics: Vec::new(),
            limits: BTreeMap::new(),
            horizon: Duration::from_secs(30 * 60),
            history: Duration::from_secs(12 * 3600),
            refit_every: Duration::from_secs(5 * 60),
            max_period: Duration::from_secs(86_400),
        }
    }
}

/// `[decisions]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionsConfig {
    /// Anomalies scoring at or above this become decisions (the score is one minus a tail
    /// probability: 0.999 is one in a thousand windows of that series).
    pub threshold: f64,
    /// And only when the value is at least this many robust standard deviations from what the
    /// part that fired expected: statistically rare is not enough to page someone, the change
    /// must be large too. Departures from a flat baseline always qualify.
    pub min_deviation: f64,
    /// The decision policies (TOML; see `sql/policies.toml`, the default shipped with Vigil):
    /// SQL over the `incidents` table choosing the action, target, parameters, risk, mode,
    /// cooldown and hourly limit. Checked at start; `vigil policies` checks a file.
    pub policies_file: Option<PathBuf>,
    /// A fingerprint rejected on the feedback topic makes no decision for this long.
    #[serde(with = "humantime_serde")]
    pub reject_suppress: Duration,
    /// A snooze on the feedback topic without `until` lasts this long.
    #[serde(with = "humantime_serde")]
    pub snooze: Duration,
    /// At start and when partitions are assigned, the ids of the newest this many decisions per
    /// partition of the decisions topic are read, so that a decision published before a crash
    /// is not published again when its input is replayed.
    pub dedup_tail: usize,
}

impl Default for DecisionsConfig {
    fn default() -> Self {
        Self {
            threshold: 0.999,
            min_deviation: 8.0,
            policies_file: None,
            reject_suppress: Duration::from_secs(3600),
            snooze: Duration::from_secs(3600),
            dedup_tail: 10_000,
        }
    }
}

/// `[incidents]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentsConfig {
    /// Labels naming the entity an incident is about, tried in order (their values share one
    /// name space: `service="cart"` and `service.name="cart"` are one entity). Signals of series
    /// with none of them are incidents of their own.
    pub correlate_by: Vec<String>,
    /// An incident resolves once every member has been quiet this long (event time); it is also
    /// the correlation span: a signal within it of the incident's last one joins it.
    #[serde(with = "humantime_serde")]
    pub resolve_after: Duration,
    /// Open incidents held at most; beyond it the longest-quiet one is resolved.
    pub max_open: usize,
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        Self { correlate_by: vec!["service".into(), "service.name".into(), "k8s.namespace.name".into()], resolve_after: Duration::from_secs(600), max_open: 10_000 }
    }
}

/// augurs' outlier detector for `[fleet] algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetAlgorithm {
    /// One-dimensional DBSCAN per window (three or more members).
    Dbscan,
    /// Median absolute deviation from the group.
    Mad,
}

/// `[fleet]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    /// Compare the members of each group (series of one metric that differ only in a member
    /// label) and report the ones that stop behaving like the rest.
    pub enabled: bool,
    /// Labels naming a member within its group, e.g. `["host", "host.name"]`.
    pub member_labels: Vec<String>,
    /// `"dbscan"` (needs three or more members) or `"mad"`.
    pub algorithm: FleetAlgorithm,
    /// augurs' sensitivity in (0, 1): higher flags more.
    pub sensitivity: f64,
    /// Recent windows compared.
    pub windows: usize,
    /// A flagged member must also be this many robust standard deviations from the group.
    pub min_deviation: f64,
}

impl Default for FleetSection {
    fn default() -> Self {
        let d = vigil_models::FleetConfig::default();
        Self { enabled: true, member_labels: d.member_labels, algorithm: FleetAlgorithm::Dbscan, sensitivity: d.sensitivity, windows: d.window, min_deviation: d.min_z }
    }
}

impl FleetSection {
    /// The model's configuration.
    pub fn model_config(&self) -> vigil_models::FleetConfig {
        vigil_models::FleetConfig {
            member_labels: self.member_labels.clone(),
            window: self.windows,
            sensitivity: self.sensitivity,
            algorithm: match self.algorithm {
                FleetAlgorithm::Dbscan => vigil_models::FleetAlgorithm::Dbscan,
                FleetAlgorithm::Mad => vigil_models::FleetAlgorithm::Mad,
            },
            min_z: self.min_deviation,
            ..Default::default()
        }
    }
}

/// `[health]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// The health SQL (over `health_inputs`); the shipped `sql/health.sql` when unset.
    pub sql_file: Option<PathBuf>,
    /// A `health` row per service this often (event time).
    #[serde(with = "humantime_serde")]
    pub every: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self { sql_file: None, every: Duration::from_secs(60) }
    }
}

/// `[retention]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Rows kept per result table (`points`, `logs`, `features`, `anomalies`, `decisions`); oldest dropped first.
    pub max_rows: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { max_rows: 1_000_000 }
    }
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
        OneOrMany::Many(v) => v,
    })
}

impl Config {
    /// Loads defaults, then `path` (if given; it must exist), then `VIGIL_*` variables, and
    /// validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = path {
            fig = fig.merge(Toml::file_exact(p));
        }
        // VIGIL_KAFKA_GROUP_ID -> kafka.group_id: the first `_` separates section and key.
        // VIGIL_CONFIG (the file path) and other single-word variables are not keys.
        let env = Env::prefixed("VIGIL_").filter_map(|k| {
            let k = k.as_str().to_ascii_lowercase();
            k.find('_').map(|i| format!("{}.{}", &k[..i], &k[i + 1..]).into())
        });
        let cfg: Config = fig.merge(env).extract().map_err(|e| {
            let origin = match (&e.metadata, &e.metadata.as_ref().and_then(|m| m.source.as_ref())) {
                (_, Some(src)) => src.to_string(),
                (Some(m), None) => m.name.to_string(),
                _ => "the configuration".to_string(),
            };
            let key = if e.path.is_empty() { "(top level)".to_string() } else { e.path.join(".").to_ascii_lowercase() };
            ConfigError::Parse { key, problem: e.kind.to_string(), origin }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The health SQL text: the configured file or the shipped default.
    pub fn health_sql(&self) -> Result<String, ConfigError> {
        match &self.health.sql_file {
            None => Ok(vigil_models::DEFAULT_HEALTH_SQL.to_string()),
            Some(p) => std::fs::read_to_string(p).map_err(|e| invalid("health.sql_file", format!("cannot read {}: {e}", p.display()), "point it at a readable SQL file")),
        }
    }

    /// What `vigil forward` needs on top of [`Self::validate`]: at least one target in
    /// `[forward]`, and every PagerDuty routing key found.
    pub fn validate_forward(&self) -> Result<(), ConfigError> {
        self.forward.validate_for_run().map_err(|p| invalid(p.key, p.problem, p.fix))
    }

    /// The feature SQL text: the configured file or the shipped default.
    pub fn features_sql(&self) -> Result<String, ConfigError> {
        match &self.features.sql_file {
            None => Ok(crate::DEFAULT_FEATURES_SQL.to_string()),
            Some(p) => std::fs::read_to_string(p).map_err(|e| {
                invalid("features.sql_file", format!("cannot read {}: {e}", p.display()), "point it at a readable SQL file")
            }),
        }
    }

    /// The policy file's text and where it came from: the configured file or the shipped default.
    pub fn policies_text(&self) -> Result<(String, String), ConfigError> {
        match &self.decisions.policies_file {
            None => Ok((vigil_models::DEFAULT_POLICIES.to_string(), "sql/policies.toml (built in)".into())),
            Some(p) => std::fs::read_to_string(p).map(|t| (t, p.display().to_string())).map_err(|e| {
                invalid("decisions.policies_file", format!("cannot read {}: {e}", p.display()), "point it at a readable TOML file of [[policy]] entries")
            }),
        }
    }

    /// The log-signal SQL text: the configured file or the shipped default.
    pub fn log_signals_sql(&self) -> Result<String, ConfigError> {
        match &self.logs.signals_sql_file {
            None => Ok(crate::DEFAULT_LOG_SIGNALS_SQL.to_string()),
            Some(p) => std::fs::read_to_string(p).map_err(|e| {
                invalid("logs.signals_sql_file", format!("cannot read {}: {e}", p.display()), "point it at a readable SQL file")
            }),
        }
    }

    /// The configuration as TOML (what `vigil config` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Loads `toml` from a file of its own, removed afterwards.
    fn load_str(toml: &str) -> Result<Config, ConfigError> {
        let p = std::env::temp_dir().join(format!("vigil-cfg-{}-{:?}.toml", std::process::id(), std::thread::current().id()));
        std::fs::File::create(&p).unwrap().write_all(toml.as_bytes()).unwrap();
        let loaded = Config::load(Some(&p));
        let _ = std::fs::remove_file(&p);
        loaded
    }

    #[test]
    fn defaults_are_valid_and_a_file_overrides_them() {
        Config::default().validate().unwrap();
        let c = load_str("[kafka]\nbrokers = \"b:9092\"\ninput_topics = [\"a\", \"b\"]\n[window]\nsize = \"30s\"\n").unwrap();
        assert_eq!(c.kafka.brokers, "b:9092");
        assert_eq!(c.kafka.input_topics, vec!["a", "b"]);
        assert_eq!(c.window.size, Duration::from_secs(30));
        assert_eq!(c.window.allowed_lag, Duration::from_secs(5));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load_str("[kafka]\nbrokerz = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("brokerz") && e.contains("kafka"), "{e}");
    }

    #[test]
    fn bad_value_names_key_and_fix() {
        let e = load_str("[window]\nsize = \"0s\"\n").unwrap_err().to_string();
        assert!(e.starts_with("config key `window.size`: is zero"), "{e}");
        let e = load_str("[window]\nsize = \"ten seconds\"\n").unwrap_err().to_string();
        assert!(e.contains("size"), "{e}");
        let e = load_str("[decisions]\nthreshold = 0.2\n").unwrap_err().to_string();
        assert!(e.contains("`decisions.threshold`"), "{e}");
        let e = load_str("[fleet]\nalgorithm = \"kmeans\"\n").unwrap_err().to_string();
        assert!(e.contains("`fleet.algorithm`") && e.contains("dbscan"), "{e}");
        let e = load_str("[detector]\nrefractory_windows = 70000\n").unwrap_err().to_string();
        assert!(e.contains("`detector.refractory_windows`") && e.contains("at most 65535"), "{e}");
        assert!(load_str("[detector]\nrefractory_windows = 65535\n").is_ok());
    }

    #[test]
    fn log_and_otlp_formats_load_and_their_mistakes_are_named() {
        let c = load_str(
            "[kafka]\ninput_topics = [\"otlp\", \"app-logs\"]\ninput_formats = { otlp = \"otlp_proto\", app-logs = \"json_logs\" }\n\
             [kafka.log_mappings.app-logs]\nmessage_field = \"msg\"\nattribute_fields = \"host, pod\"\n[logs]\nmax_templates = 500\n",
        )
        .unwrap();
        assert_eq!(c.kafka.log_mappings["app-logs"].to_mapping().message_field, "msg");
        assert_eq!(c.kafka.log_mappings["app-logs"].attribute_fields, vec!["host", "pod"]);
        assert_eq!(c.logs.drain().max_templates, 500);
        let e = load_str("[kafka]\ninput_formats = { metrics = \"otlp\" }\n").unwrap_err().to_string();
        assert!(e.starts_with("config key `kafka.input_formats`") && e.contains("otlp_proto"), "{e}");
        let e = load_str("[kafka.log_mappings.metrics]\nmessage_field = \"m\"\n").unwrap_err().to_string();
        assert!(e.starts_with("config key `kafka.log_mappings`") && e.contains("json_logs"), "{e}");
        let e = load_str("[logs]\ntemplate_similarity = 1.5\n").unwrap_err().to_string();
        assert!(e.starts_with("config key `logs.template_similarity`"), "{e}");
    }

    #[test]
    fn forecast_settings_are_checked_against_the_window() {
        let c = load_str("[forecast]\nmetrics = \"disk_used_percent\"\nlimits = { disk_used_percent = 90 }\nhorizon = \"1h\"\n").unwrap();
        assert_eq!(c.forecast.metrics, vec!["disk_used_percent"]);
        let e = load_str("[forecast]\nmetrics = [\"a\"]\nlimits = { b = 1 }\n").unwrap_err().to_string();
        assert!(e.starts_with("config key `forecast.limits`") && e.contains("`b`"), "{e}");
        let e = load_str("[forecast]\nhorizon = \"1s\"\n").unwrap_err().to_string();
        assert!(e.starts_with("config key `forecast.horizon`"), "{e}");
        let e = load_str("[forecast]\nrefit_every = \"1s\"\n").unwrap_err().to_string();
        assert!(e.starts_with("config key `forecast.refit_every`"), "{e}");
    }

    #[test]
    fn forward_targets_load_and_their_mistakes_are_named() {
        let c = load_str("[forward]\ntimeout = \"5s\"\n[[forward.targets]]\nname = \"pd\"\nkind = \"pagerduty\"\nrouting_key = \"R\"\n").unwrap();
        assert_eq!(c.forward.timeout, Duration::from_secs(5));
        assert_eq!(c.forward.targets[0].kind, vigil_sinks::TargetKind::Pagerduty);
        c.validate_forward().unwrap();
        let e = Config::default().validate_forward().unwrap_err().to_string();
        assert!(e.starts_with("config key `forward.targets`: lists no target"), "{e}");
        let e = load_str("[[forward.targets]]\nname = \"pd\"\nkind = \"pagerduty\"\n").unwrap_err().to_string();
        assert!(e.starts_with("config key `forward.targets`") && e.contains("routing_key"), "{e}");
        let e = load_str("[[forward.targets]]\nname = \"am\"\nkind = \"alertmanager\"\n").unwrap_err().to_string();
        assert!(e.starts_with("config key `forward.targets`") && e.contains("no url"), "{e}");
        let e = load_str("[[forward.targets]]\nname = \"x\"\nkind = \"slack\"\nurl = \"http://x\"\n").unwrap_err().to_string();
        assert!(e.contains("`forward.targets.0.kind`") && e.contains("`alertmanager`, `pagerduty`, `webhook`"), "{e}");
    }
}
