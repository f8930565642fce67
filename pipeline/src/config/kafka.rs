//! `[kafka]`: brokers, topics, formats and their mappings, the consumer's and producer's
//! properties, and `[logs]`.

use super::*;

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
