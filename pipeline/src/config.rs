//! Vigil's configuration: one TOML file, every key overridable by a `VIGIL_<SECTION>_<KEY>`
//! environment variable (e.g. `VIGIL_KAFKA_BROKERS`, `VIGIL_WINDOW_SIZE=30s`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};

mod server;
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

/// `[kafka]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Consumer group id; input offsets are committed for this group.
    pub group_id: String,
    /// Topics carrying JSON metric points (a list, or one comma-separated string).
    #[serde(deserialize_with = "string_or_list")]
    pub input_topics: Vec<String>,
    /// Input format per topic (unlisted topics are `json`), e.g. `{ telegraf = "influx" }`.
    /// Metrics: `json` (JSON points), `influx` (Influx line protocol, as Telegraf's Kafka output
    /// writes it), `mapped` (any JSON, with `[kafka.mappings.<topic>]`), `otlp_proto` and
    /// `otlp_json` (OTLP metrics as the OpenTelemetry Collector's Kafka exporter writes them).
    /// Logs: `otlp_logs_proto`, `otlp_logs_json` (OTLP logs), `json_logs` (JSON log lines, with
    /// `[kafka.log_mappings.<topic>]` or the default mapping ts/level/service/message).
    pub input_formats: BTreeMap<String, String>,
    /// For topics of format `mapped`: which JSON fields make a point, per topic
    /// (`[kafka.mappings.<topic>]`).
    pub mappings: BTreeMap<String, MappingConfig>,
    /// For topics of format `json_logs`: which JSON fields are the time, level, service, message
    /// and attributes, per topic (`[kafka.log_mappings.<topic>]`).
    pub log_mappings: BTreeMap<String, LogMappingConfig>,
    /// Timestamp unit of Influx line protocol input: `ns` (Telegraf's default), `us`, `ms` or `s`.
    pub influx_precision: String,
    /// Where records that do not decode go, with the reason in headers.
    pub dlq_topic: String,
    /// Where decisions go (JSON, CloudEvents headers).
    pub decisions_topic: String,
    /// Where rows that arrive behind the watermark go (JSON, with the reason in headers).
    pub late_topic: String,
    /// Answers to decisions (approve, reject, executed, failed, snooze), read by every member.
    pub feedback_topic: String,
    /// Most records decoded per poll.
    pub max_batch: usize,
    /// How long one poll waits for a first record.
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// How long the producers retry a record before the engine stops with an error.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// How often input offsets are committed when no window closes.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Extra librdkafka consumer properties (e.g. `"security.protocol" = "ssl"`).
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka producer properties.
    pub producer: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".into(),
            group_id: "vigil".into(),
            input_topics: vec!["metrics".into()],
            input_formats: BTreeMap::new(),
            mappings: BTreeMap::new(),
            log_mappings: BTreeMap::new(),
            influx_precision: "ns".into(),
            dlq_topic: "vigil.dlq".into(),
            decisions_topic: "vigil.decisions".into(),
            late_topic: "vigil.late".into(),
            feedback_topic: "vigil.feedback".into(),
            max_batch: 10_000,
            poll_timeout: Duration::from_millis(200),
            delivery_timeout: Duration::from_secs(30),
            commit_interval: Duration::from_secs(1),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

/// `[kafka.mappings.<topic>]`: how a JSON object of any shape becomes metric points. Paths are
/// dotted (`dimensions.InstanceId`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// Path of the timestamp.
    pub time_field: String,
    /// Unit of a numeric timestamp: `s`, `ms` (default), `us` or `ns`; strings are RFC 3339.
    #[serde(default = "default_time_unit")]
    pub time_unit: String,
    /// Path of the metric name (or set `name`).
    #[serde(default)]
    pub name_field: Option<String>,
    /// Fixed metric name, when the records carry none.
    #[serde(default)]
    pub name: Option<String>,
    /// Paths of the values; each becomes its own series (`<name>_<last segment>` when several).
    #[serde(deserialize_with = "string_or_list")]
    pub value_fields: Vec<String>,
    /// Paths of the labels; the label key is the last path segment.
    #[serde(default, deserialize_with = "string_or_list")]
    pub label_fields: Vec<String>,
}

/// `[kafka.log_mappings.<topic>]`: how a JSON log line becomes a row of `logs`. Paths are dotted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogMappingConfig {
    /// Path of the timestamp (default `ts`).
    pub time_field: String,
    /// Unit of a numeric timestamp: `s`, `ms` (default), `us` or `ns`; strings are RFC 3339.
    pub time_unit: String,
    /// Path of the message (default `message`).
    pub message_field: String,
    /// Path of the level (default `level`); `""` for none.
    pub level_field: String,
    /// Path of the service name (default `service`); `""` for none.
    pub service_field: String,
    /// Service name for records without one (default `unknown`).
    pub service: String,
    /// Paths of attributes kept in the `attributes` map; the key is the last path segment.
    #[serde(deserialize_with = "string_or_list")]
    pub attribute_fields: Vec<String>,
}

impl Default for LogMappingConfig {
    fn default() -> Self {
        let m = vigil_ingest::LogMapping::default();
        Self {
            time_field: m.time_field,
            time_unit: m.time_unit,
            message_field: m.message_field,
            level_field: m.level_field.unwrap_or_default(),
            service_field: m.service_field.unwrap_or_default(),
            service: m.service,
            attribute_fields: m.attribute_fields,
        }
    }
}

impl LogMappingConfig {
    /// The ingest crate's mapping.
    pub fn to_mapping(&self) -> vigil_ingest::LogMapping {
        let opt = |s: &str| (!s.trim().is_empty()).then(|| s.to_string());
        vigil_ingest::LogMapping {
            time_field: self.time_field.clone(),
            time_unit: self.time_unit.clone(),
            message_field: self.message_field.clone(),
            level_field: opt(&self.level_field),
            service_field: opt(&self.service_field),
            service: self.service.clone(),
            attribute_fields: self.attribute_fields.clone(),
        }
    }
}

/// `[logs]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Share of equal tokens for a message to join a template, in (0, 1] (Drain's similarity).
    pub template_similarity: f64,
    /// Templates remembered per log topic; the least recently seen are forgotten first.
    pub max_templates: usize,
    /// SQL file turning the `logs` table into signal points; the shipped
    /// `sql/log_signals.sql` when unset.
    pub signals_sql_file: Option<PathBuf>,
}

impl Default for LogsConfig {
    fn default() -> Self {
        let d = vigil_ingest::DrainConfig::default();
        Self { template_similarity: d.similarity, max_templates: d.max_templates, signals_sql_file: None }
    }
}

impl LogsConfig {
    /// The template miner's configuration.
    pub fn drain(&self) -> vigil_ingest::DrainConfig {
        vigil_ingest::DrainConfig { similarity: self.template_similarity, max_templates: self.max_templates, ..Default::default() }
    }
}

/// Every input format, for validation and help.
pub const INPUT_FORMATS: [&str; 9] = ["json", "influx", "mapped", "otlp_proto", "otlp_json", "otlp_logs_proto", "otlp_logs_json", "json_logs", "focus"];

fn default_time_unit() -> String {
    "ms".into()
}

impl MappingConfig {
    /// The ingest crate's mapping.
    pub fn to_mapping(&self) -> vigil_ingest::JsonMapping {
        vigil_ingest::JsonMapping {
            time_field: self.time_field.clone(),
            time_unit: self.time_unit.clone(),
            name_field: self.name_field.clone(),
            name: self.name.clone(),
            value_fields: self.value_fields.clone(),
            label_fields: self.label_fields.clone(),
        }
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
    /// surprising still: one event, one alarm (0 = off).
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

    /// Checks every value; the error names the key and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "is empty", "set it to host:port of a broker, e.g. \"localhost:9092\""));
        }
        if k.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "is empty", "set a consumer group id, e.g. \"vigil\""));
        }
        if k.input_topics.is_empty() {
            return Err(invalid("kafka.input_topics", "lists no topic", "list the metrics topics, e.g. [\"metrics\"]"));
        }
        for (key, t) in [("kafka.dlq_topic", &k.dlq_topic), ("kafka.decisions_topic", &k.decisions_topic), ("kafka.late_topic", &k.late_topic), ("kafka.feedback_topic", &k.feedback_topic)] {
            if t.trim().is_empty() {
                return Err(invalid(key, "is empty", "name a topic"));
            }
            if k.input_topics.contains(t) {
                return Err(invalid(key, format!("`{t}` is also an input topic"), "use a topic Vigil does not read"));
            }
        }
        for (topic, format) in &k.input_formats {
            if !k.input_topics.contains(topic) {
                return Err(invalid("kafka.input_formats", format!("names topic `{topic}`, which is not in kafka.input_topics"), "add it to kafka.input_topics or remove it here"));
            }
            if !INPUT_FORMATS.contains(&format.as_str()) {
                return Err(invalid("kafka.input_formats", format!("format `{format}` for topic `{topic}` is unknown"), format!("use one of {}", INPUT_FORMATS.join(", "))));
            }
            if format == "mapped" {
                match k.mappings.get(topic) {
                    None => return Err(invalid("kafka.mappings", format!("topic `{topic}` has format \"mapped\" but no [kafka.mappings.{topic}]"), "add its mapping (time_field, name_field or name, value_fields, label_fields)")),
                    Some(m) => {
                        if let Err(e) = m.to_mapping().validate() {
                            return Err(invalid("kafka.mappings", format!("mapping of topic `{topic}`: {e}"), "fix that mapping"));
                        }
                    }
                }
            }
        }
        for topic in k.mappings.keys() {
            if k.input_formats.get(topic).map(String::as_str) != Some("mapped") {
                return Err(invalid("kafka.mappings", format!("topic `{topic}` has a mapping but its format is not \"mapped\""), format!("set kafka.input_formats.{topic} = \"mapped\" or remove the mapping")));
            }
        }
        for (topic, m) in &k.log_mappings {
            if k.input_formats.get(topic).map(String::as_str) != Some("json_logs") {
                return Err(invalid("kafka.log_mappings", format!("topic `{topic}` has a log mapping but its format is not \"json_logs\""), format!("set kafka.input_formats.{topic} = \"json_logs\" or remove the mapping")));
            }
            if let Err(e) = m.to_mapping().validate() {
                return Err(invalid("kafka.log_mappings", format!("log mapping of topic `{topic}`: {e}"), "fix that mapping"));
            }
        }
        let l = &self.logs;
        if !(l.template_similarity > 0.0 && l.template_similarity <= 1.0) {
            return Err(invalid("logs.template_similarity", format!("is {}", l.template_similarity), "use a share in (0, 1], e.g. 0.5"));
        }
        if l.max_templates < 10 || l.max_templates > 10_000_000 {
            return Err(invalid("logs.max_templates", format!("is {}", l.max_templates), "use 10 to 10000000, e.g. 10000"));
        }
        if let Some(p) = &l.signals_sql_file {
            if let Err(e) = std::fs::metadata(p) {
                return Err(invalid("logs.signals_sql_file", format!("cannot read {}: {e}", p.display()), "point it at a SQL file, or remove it to use the shipped log signals"));
            }
        }
        if vigil_ingest::Precision::parse(&k.influx_precision).is_none() {
            return Err(invalid("kafka.influx_precision", format!("is `{}`", k.influx_precision), "use \"ns\", \"us\", \"ms\" or \"s\""));
        }
        if k.max_batch == 0 || k.max_batch > 1_000_000 {
            return Err(invalid("kafka.max_batch", format!("is {}", k.max_batch), "use a value from 1 to 1000000, e.g. 10000"));
        }
        let size = self.window.size.as_millis();
        if size == 0 {
            return Err(invalid("window.size", "is zero or below a millisecond", "use a duration such as \"10s\""));
        }
        if !self.window.size.as_nanos().is_multiple_of(1_000_000) {
            return Err(invalid("window.size", "is not a whole number of milliseconds", "use a duration such as \"10s\" or \"250ms\""));
        }
        if self.window.allowed_lag > Duration::from_secs(7 * 86_400) {
            return Err(invalid("window.allowed_lag", "is over 7 days", "windows would stay open for days; use e.g. \"5s\""));
        }
        let d = &self.detector;
        if d.feature.trim().is_empty() {
            return Err(invalid("detector.feature", "is empty", "name a DOUBLE column of the feature SQL, e.g. \"mean\""));
        }
        if d.history_windows < 3 {
            return Err(invalid("detector.history_windows", format!("is {}", d.history_windows), "use at least 3 (240 is the default)"));
        }
        if d.warmup_windows < 3 || d.warmup_windows > d.history_windows {
            return Err(invalid(
                "detector.warmup_windows",
                format!("is {} with history_windows = {}", d.warmup_windows, d.history_windows),
                "use a value from 3 to detector.history_windows (20 is the default)",
            ));
        }
        if d.seasons == 0 || d.seasons > 10 {
            return Err(invalid("detector.seasons", format!("is {}", d.seasons), "use 1 to 10 (3 is the default)"));
        }
        if d.shift_windows < 2 || d.shift_windows >= d.history_windows {
            return Err(invalid(
                "detector.shift_windows",
                format!("is {} with history_windows = {}", d.shift_windows, d.history_windows),
                "use a value from 2 to below detector.history_windows (24 is the default)",
            ));
        }
        if d.calibration_windows < 20 {
            return Err(invalid("detector.calibration_windows", format!("is {}", d.calibration_windows), "use at least 20 (8000 is the default)"));
        }
        if !(d.anomaly_threshold > 0.0 && d.anomaly_threshold < 1.0) {
            return Err(invalid("detector.anomaly_threshold", format!("is {}", d.anomaly_threshold), "use a score between 0 and 1, e.g. 0.99"));
        }
        let t = self.decisions.threshold;
        if !(t > 0.0 && t <= 1.0) || t < d.anomaly_threshold {
            return Err(invalid(
                "decisions.threshold",
                format!("is {t} with detector.anomaly_threshold = {}", d.anomaly_threshold),
                "use a score in (0, 1] not below detector.anomaly_threshold, e.g. 0.999",
            ));
        }
        let fl = &self.fleet;
        if !(fl.sensitivity > 0.0 && fl.sensitivity < 1.0) {
            return Err(invalid("fleet.sensitivity", format!("is {}", fl.sensitivity), "use a number between 0 and 1 (exclusive), e.g. 0.5"));
        }
        if fl.windows < 2 || fl.windows > 10_000 {
            return Err(invalid("fleet.windows", format!("is {}", fl.windows), "use 2 to 10000 (30 is the default)"));
        }
        if fl.enabled && fl.member_labels.is_empty() {
            return Err(invalid("fleet.member_labels", "is empty", "name the label that tells members apart, e.g. [\"host\"]"));
        }
        if !(fl.min_deviation.is_finite() && fl.min_deviation >= 0.0) {
            return Err(invalid("fleet.min_deviation", format!("is {}", fl.min_deviation), "use a number of robust standard deviations, e.g. 3"));
        }
        let inc = &self.incidents;
        if inc.resolve_after.is_zero() {
            return Err(invalid("incidents.resolve_after", "is 0", "use how long every member must be quiet before an incident resolves, e.g. 10m"));
        }
        if inc.correlate_by.iter().any(|l| l.trim().is_empty()) {
            return Err(invalid("incidents.correlate_by", "has an empty label", "list label names, e.g. [\"service\", \"service.name\"]"));
        }
        if inc.max_open == 0 {
            return Err(invalid("incidents.max_open", "is 0", "use the most open incidents to hold, e.g. 10000"));
        }
        let md = self.decisions.min_deviation;
        if !(md.is_finite() && md >= 0.0) {
            return Err(invalid("decisions.min_deviation", format!("is {md}"), "use a number of robust standard deviations, e.g. 8"));
        }
        let f = &self.forecast;
        let w = self.window.size;
        for name in f.limits.keys() {
            if !f.metrics.contains(name) {
                return Err(invalid("forecast.limits", format!("has a limit for `{name}`, which is not in forecast.metrics"), format!("add \"{name}\" to forecast.metrics or remove its limit")));
            }
        }
        if let Some((name, v)) = f.limits.iter().find(|(_, v)| !v.is_finite()) {
            return Err(invalid("forecast.limits", format!("limit of `{name}` is {v}"), "use a finite number"));
        }
        if f.horizon < w || f.horizon > w * 100_000 {
            return Err(invalid("forecast.horizon", format!("is {:?} with window.size = {w:?}", f.horizon), "use at least one window and at most 100000 windows, e.g. \"30m\""));
        }
        if f.history < w * 8 || f.history > w * 1_000_000 {
            return Err(invalid("forecast.history", format!("is {:?} with window.size = {w:?}", f.history), "keep 8 to 1000000 windows, e.g. \"12h\""));
        }
        if f.refit_every < w {
            return Err(invalid("forecast.refit_every", format!("is {:?}, shorter than window.size", f.refit_every), "refit at most once per window, e.g. \"5m\""));
        }
        if f.max_period < w * 4 {
            return Err(invalid("forecast.max_period", format!("is {:?}, under four windows", f.max_period), "use e.g. \"1d\""));
        }
        let c = &self.checkpoint;
        if c.enabled {
            if c.url.trim().is_empty() {
                return Err(invalid("checkpoint.url", "is empty", "name a directory (e.g. \"/var/lib/vigil\") or a bucket (\"s3://bucket/vigil\"), or set checkpoint.enabled = false"));
            }
            if c.interval < Duration::from_secs(1) {
                return Err(invalid("checkpoint.interval", "is under a second", "use a duration such as \"30s\""));
            }
            if c.keep == 0 {
                return Err(invalid("checkpoint.keep", "is 0", "keep at least 1 (3 lets a corrupt newest one fall back to an older one)"));
            }
            if !(c.url.starts_with("s3://") || c.url.starts_with("file://") || !c.url.contains("://")) {
                return Err(invalid("checkpoint.url", format!("`{}` is neither a directory nor s3://bucket/prefix", c.url), "use a path, file:///abs/path or s3://bucket/prefix"));
            }
        }
        if self.shutdown.grace < Duration::from_millis(100) {
            return Err(invalid("shutdown.grace", "is under 100 ms", "give the final checkpoint time, e.g. \"20s\""));
        }
        if self.retention.max_rows == 0 {
            return Err(invalid("retention.max_rows", "is 0", "keep at least one row, e.g. 1000000"));
        }
        if let Some(p) = &self.features.sql_file {
            if let Err(e) = std::fs::metadata(p) {
                return Err(invalid("features.sql_file", format!("cannot read {}: {e}", p.display()), "point it at a SQL file, or remove it to use the shipped features SQL"));
            }
        }
        self.forward.validate().map_err(|p| invalid(p.key, p.problem, p.fix))?;
        self.cost.validate().map_err(|(key, problem, fix)| invalid(key, problem, fix))?;
        let mut names = std::collections::HashSet::new();
        for slo in &self.slo {
            slo.validate().map_err(|(problem, fix)| invalid("slo", problem, fix))?;
            if !names.insert(slo.name.as_str()) {
                return Err(invalid("slo", format!("two SLOs are named `{}`", slo.name), "give each [[slo]] its own name"));
            }
        }
        if self.health.every < self.window.size {
            return Err(invalid("health.every", format!("{} is shorter than a window ({})", humantime::format_duration(self.health.every), humantime::format_duration(self.window.size)), "use a multiple of window.size, e.g. \"1m\""));
        }
        if let Some(p) = &self.health.sql_file {
            if let Err(e) = std::fs::metadata(p) {
                return Err(invalid("health.sql_file", format!("cannot read {}: {e}", p.display()), "point it at a SQL file, or remove it to use the shipped sql/health.sql"));
            }
        }
        self.history.validate(&crate::engine::TABLES)?;
        Ok(())
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
