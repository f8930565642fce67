//! Logs into Arrow rows of the `logs` table, with their message template mined online.
//!
//! Two inputs: OTLP logs (`ExportLogsServiceRequest`, protobuf or OTLP/JSON, as the Collector's
//! Kafka exporter writes them) and JSON logs with a [`LogMapping`] that says which fields are the
//! time, level, service, message and attributes. Each record is decoded into one row per log
//! record: `ts, service, level, message, template_id, template, new_template, attributes`.
//! Levels are normalised to `trace`, `debug`, `info`, `warn`, `error`, `fatal` (or `unknown`).
//! Templates come from [`Drain`]; the pipeline turns the rows into per-window signals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, AsArray, BooleanBuilder, MapBuilder, RecordBatch, StringArray, StringBuilder, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMillisecondType};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;

use crate::drain::{Drain, DrainConfig};
use crate::json::{count_input, count_rejects, reject, IngestCounters, RawRecord, Rejected, TapeBatchDecoder};
use crate::mapped::{check_unit_and_paths, column, time_type, valid, Node};
use crate::otlp::{merge_attributes, unquote_int64, OtlpEncoding};
use crate::schema::{labels_type, ts_type};
use crate::{Result, SourcePos};

/// Longest message kept in the `message` column, in bytes (longer ones are cut at a character
/// boundary); the template is mined from the whole first [`crate::MAX_TOKENS`] tokens.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Column names of the logs schema.
pub mod log_col {
    /// Event time, `Timestamp(ms, UTC)`.
    pub const TS: &str = "ts";
    /// Service that wrote the log (`service.name` in OTLP), `Utf8`.
    pub const SERVICE: &str = "service";
    /// Normalised level, `Utf8`.
    pub const LEVEL: &str = "level";
    /// The message, `Utf8`.
    pub const MESSAGE: &str = "message";
    /// Template id, `UInt64`.
    pub const TEMPLATE_ID: &str = "template_id";
    /// Template text, `Utf8`.
    pub const TEMPLATE: &str = "template";
    /// This row created its template, `Boolean`.
    pub const NEW_TEMPLATE: &str = "new_template";
    /// Other attributes, `Map<Utf8, Utf8>`.
    pub const ATTRIBUTES: &str = "attributes";
}

/// The schema of the `logs` table.
pub fn logs_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new(log_col::TS, ts_type(), false),
            Field::new(log_col::SERVICE, DataType::Utf8, false),
            Field::new(log_col::LEVEL, DataType::Utf8, false),
            Field::new(log_col::MESSAGE, DataType::Utf8, false),
            Field::new(log_col::TEMPLATE_ID, DataType::UInt64, false),
            Field::new(log_col::TEMPLATE, DataType::Utf8, false),
            Field::new(log_col::NEW_TEMPLATE, DataType::Boolean, false),
            Field::new(log_col::ATTRIBUTES, labels_type(), true),
        ]))
    })
    .clone()
}

/// Normalises a level name (`ERROR`, `err`, `Warning`, `crit`, ...).
pub fn normalize_level(s: &str) -> &'static str {
    match s.trim().to_ascii_lowercase().as_str() {
        "trace" | "trc" | "finest" | "finer" => "trace",
        "debug" | "dbg" | "fine" | "d" => "debug",
        "info" | "information" | "informational" | "notice" | "inf" | "i" => "info",
        "warn" | "warning" | "wrn" | "w" => "warn",
        "error" | "err" | "e" | "severe" => "error",
        "fatal" | "crit" | "critical" | "alert" | "emerg" | "emergency" | "panic" | "f" => "fatal",
        _ => "unknown",
    }
}

/// OTLP severity numbers: 1-4 trace, 5-8 debug, 9-12 info, 13-16 warn, 17-20 error, 21-24 fatal.
fn severity(number: i32, text: &str) -> &'static str {
    match number {
        1..=4 => "trace",
        5..=8 => "debug",
        9..=12 => "info",
        13..=16 => "warn",
        17..=20 => "error",
        21..=24 => "fatal",
        _ => normalize_level(text),
    }
}

/// Decoded log rows.
#[derive(Debug)]
pub struct DecodedLogs {
    /// Rows in the logs schema.
    pub logs: RecordBatch,
    /// Source position of each row.
    pub positions: Vec<SourcePos>,
    /// Records that could not be decoded (or only in part), with the reason.
    pub rejected: Vec<Rejected>,
}

/// Counters specific to logs.
#[derive(Debug, Default)]
pub struct LogCounters {
    /// Log rows produced.
    pub rows: AtomicU64,
    /// Log records skipped inside otherwise good records (no time, no message).
    pub skipped: AtomicU64,
    /// Rows that created a new template.
    pub new_templates: AtomicU64,
}

/// Builds log rows, mining each message's template.
struct LogRows<'a> {
    ts: TimestampMillisecondBuilder,
    service: StringBuilder,
    level: StringBuilder,
    message: StringBuilder,
    template_id: UInt64Builder,
    template: StringBuilder,
    new: BooleanBuilder,
    attrs: MapBuilder<StringBuilder, StringBuilder>,
    records: Vec<&'a RawRecord>,
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl<'a> LogRows<'a> {
    fn new() -> Self {
        Self {
            ts: TimestampMillisecondBuilder::new().with_timezone("+00:00"),
            service: StringBuilder::new(),
            level: StringBuilder::new(),
            message: StringBuilder::new(),
            template_id: UInt64Builder::new(),
            template: StringBuilder::new(),
            new: BooleanBuilder::new(),
            attrs: MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()),
            records: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push<'l>(
        &mut self,
        drain: &mut Drain,
        ts_ms: i64,
        service: &str,
        level: &str,
        message: &str,
        attrs: impl IntoIterator<Item = (&'l str, &'l str)>,
        record: &'a RawRecord,
    ) -> Result<()> {
        let mined = drain.mine(service, message);
        self.ts.append_value(ts_ms);
        self.service.append_value(service);
        self.level.append_value(level);
        self.message.append_value(cut(message, MAX_MESSAGE_BYTES));
        self.template_id.append_value(mined.id);
        self.template.append_value(mined.template);
        self.new.append_value(mined.new);
        for (k, v) in attrs {
            self.attrs.keys().append_value(k);
            self.attrs.values().append_value(v);
        }
        self.attrs.append(true)?;
        self.records.push(record);
        Ok(())
    }

    fn finish(mut self, c: &IngestCounters, lc: &LogCounters, mut rejected: Vec<Rejected>) -> Result<DecodedLogs> {
        let new = self.new.finish();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.ts.finish()),
            Arc::new(self.service.finish()),
            Arc::new(self.level.finish()),
            Arc::new(self.message.finish()),
            Arc::new(self.template_id.finish()),
            Arc::new(self.template.finish()),
            Arc::new(new.clone()),
            Arc::new(self.attrs.finish()),
        ];
        let logs = RecordBatch::try_new(logs_schema(), cols)?;
        rejected.sort_by_key(|r| (r.pos.partition, r.pos.offset));
        count_rejects(c, &rejected);
        lc.rows.fetch_add(logs.num_rows() as u64, Ordering::Relaxed);
        c.points.fetch_add(logs.num_rows() as u64, Ordering::Relaxed);
        lc.new_templates.fetch_add(new.true_count() as u64, Ordering::Relaxed);
        let positions = self.records.iter().map(|r| r.pos.clone()).collect();
        Ok(DecodedLogs { logs, positions, rejected })
    }
}

/// Decodes OTLP logs records.
#[derive(Debug)]
pub struct OtlpLogsDecoder {
    encoding: OtlpEncoding,
    drain: Drain,
    counters: Arc<IngestCounters>,
    logs: Arc<LogCounters>,
    skipped_attributes: AtomicU64,
}

impl OtlpLogsDecoder {
    /// The template miner (its state goes into checkpoints).
    pub fn drain_mut(&mut self) -> &mut Drain {
        &mut self.drain
    }

    /// The template miner.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// A decoder for `encoding`, mining templates with `drain`, reporting into `counters`.
    pub fn new(encoding: OtlpEncoding, drain: DrainConfig, counters: Arc<IngestCounters>) -> Self {
        Self { encoding, drain: Drain::new(drain), counters, logs: Arc::default(), skipped_attributes: AtomicU64::new(0) }
    }

    /// Log counters.
    pub fn log_counters(&self) -> &Arc<LogCounters> {
        &self.logs
    }

    /// Templates currently known.
    pub fn templates(&self) -> usize {
        self.drain.templates()
    }

    /// Decodes a batch of records.
    pub fn decode(&mut self, records: &[RawRecord]) -> Result<DecodedLogs> {
        self.decode_refs(&records.iter().collect::<Vec<_>>())
    }

    /// Like [`Self::decode`], over borrowed records.
    pub fn decode_refs(&mut self, records: &[&RawRecord]) -> Result<DecodedLogs> {
        let c = self.counters.clone();
        count_input(&c, records);
        let mut rows = LogRows::new();
        let mut rejected = Vec::new();
        for &r in records {
            let payload = r.payload.as_deref().unwrap_or_default();
            let req = match self.encoding {
                OtlpEncoding::Proto => ExportLogsServiceRequest::decode(payload).map_err(|e| format!("not an OTLP ExportLogsServiceRequest: {e}")),
                OtlpEncoding::Json => serde_json::from_slice::<ExportLogsServiceRequest>(&unquote_int64(payload)).map_err(|e| format!("not OTLP/JSON logs: {e}")),
            };
            let req = match req {
                Ok(req) => req,
                Err(reason) => {
                    rejected.push(reject(r, "syntax", reason));
                    continue;
                }
            };
            for rl in &req.resource_logs {
                let resource = rl.resource.as_ref().map(|x| merge_attributes(&[], &x.attributes, &self.skipped_attributes)).unwrap_or_default();
                let service = resource.iter().find(|(k, _)| k == "service.name").map_or("unknown", |(_, v)| v.as_str()).to_string();
                for sl in &rl.scope_logs {
                    for lr in &sl.log_records {
                        let t = if lr.time_unix_nano != 0 { lr.time_unix_nano } else { lr.observed_time_unix_nano };
                        let message = match lr.body.as_ref().and_then(|b| b.value.as_ref()) {
                            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                            Some(any_value::Value::IntValue(i)) => Some(i.to_string()),
                            Some(any_value::Value::DoubleValue(d)) => Some(d.to_string()),
                            Some(any_value::Value::BoolValue(b)) => Some(b.to_string()),
                            Some(any_value::Value::KvlistValue(kv)) => kv.values.iter().find(|k| k.key == "message" || k.key == "msg").and_then(|k| match k.value.as_ref()?.value.as_ref()? {
                                any_value::Value::StringValue(s) => Some(s.clone()),
                                _ => None,
                            }),
                            _ => None,
                        };
                        let (Some(message), true) = (message, t != 0) else {
                            self.logs.skipped.fetch_add(1, Ordering::Relaxed);
                            c.skipped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        let level = severity(lr.severity_number, &lr.severity_text);
                        let attrs = merge_attributes(&resource, &lr.attributes, &self.skipped_attributes);
                        let attrs = attrs.iter().filter(|(k, _)| k != "service.name").map(|(k, v)| (k.as_str(), v.as_str()));
                        rows.push(&mut self.drain, (t / 1_000_000) as i64, &service, level, &message, attrs, r)?;
                    }
                }
            }
        }
        rows.finish(&c, &self.logs, rejected)
    }
}

/// Which fields of a JSON log object are what. Paths are dotted (`kubernetes.pod_name`).
#[derive(Debug, Clone, PartialEq)]
pub struct LogMapping {
    /// Path of the timestamp.
    pub time_field: String,
    /// Unit of a numeric timestamp: `s`, `ms`, `us` or `ns` (strings are parsed as RFC 3339).
    pub time_unit: String,
    /// Path of the message.
    pub message_field: String,
    /// Path of the level; without one every row is `unknown`.
    pub level_field: Option<String>,
    /// Path of the service name.
    pub service_field: Option<String>,
    /// Service name used when there is no `service_field` or the record has none.
    pub service: String,
    /// Paths of attributes to keep; the key is the last path segment.
    pub attribute_fields: Vec<String>,
}

impl Default for LogMapping {
    fn default() -> Self {
        Self {
            time_field: "ts".into(),
            time_unit: "ms".into(),
            message_field: "message".into(),
            level_field: Some("level".into()),
            service_field: Some("service".into()),
            service: "unknown".into(),
            attribute_fields: Vec::new(),
        }
    }
}

impl LogMapping {
    /// Checks the mapping; the error says what is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let paths = [&self.time_field, &self.message_field].into_iter().chain(&self.level_field).chain(&self.service_field).chain(&self.attribute_fields);
        check_unit_and_paths(&self.time_unit, paths)
    }
}

/// Decodes JSON log records with a [`LogMapping`], through the batched tape decoder.
#[derive(Debug)]
pub struct JsonLogDecoder {
    mapping: LogMapping,
    inner: TapeBatchDecoder,
    drain: Drain,
    counters: Arc<IngestCounters>,
    logs: Arc<LogCounters>,
}

impl JsonLogDecoder {
    /// The template miner (its state goes into checkpoints).
    pub fn drain_mut(&mut self) -> &mut Drain {
        &mut self.drain
    }

    /// The template miner.
    pub fn drain(&self) -> &Drain {
        &self.drain
    }

    /// A decoder for `mapping`; the error names what is wrong with it.
    pub fn new(mapping: LogMapping, drain: DrainConfig, counters: Arc<IngestCounters>) -> std::result::Result<Self, String> {
        mapping.validate()?;
        let mut root = Node::default();
        root.insert(&mapping.time_field, time_type(&mapping.time_unit))?;
        root.insert(&mapping.message_field, DataType::Utf8)?;
        for p in mapping.level_field.iter().chain(mapping.service_field.iter()).chain(mapping.attribute_fields.iter()) {
            root.insert(p, DataType::Utf8)?;
        }
        let schema: SchemaRef = Arc::new(Schema::new(root.fields()));
        Ok(Self { mapping, inner: TapeBatchDecoder::new(schema, true), drain: Drain::new(drain), counters, logs: Arc::default() })
    }

    /// Log counters.
    pub fn log_counters(&self) -> &Arc<LogCounters> {
        &self.logs
    }

    /// Decodes a batch of records.
    pub fn decode(&mut self, records: &[RawRecord]) -> Result<DecodedLogs> {
        self.decode_refs(&records.iter().collect::<Vec<_>>())
    }

    /// Like [`Self::decode`], over borrowed records.
    pub fn decode_refs(&mut self, records: &[&RawRecord]) -> Result<DecodedLogs> {
        let c = self.counters.clone();
        count_input(&c, records);
        let mut rejected = Vec::new();
        let (batch, rows) = self.inner.decode_records(records, &mut rejected)?;
        let m = &self.mapping;
        let ts_col = cast(column(&batch, &m.time_field).expect("schema has the time field"), &ts_type())?;
        let ts = ts_col.as_primitive::<TimestampMillisecondType>();
        let text = |p: &str| -> StringArray { column(&batch, p).expect("schema has the field").as_string::<i32>().clone() };
        let message = text(&m.message_field);
        let level = m.level_field.as_deref().map(text);
        let service = m.service_field.as_deref().map(text);
        let attrs: Vec<(&str, &str, StringArray)> =
            m.attribute_fields.iter().map(|p| (p.as_str(), p.rsplit('.').next().unwrap_or(p), text(p))).collect();
        let mut out = LogRows::new();
        for (i, r) in rows.iter().enumerate() {
            let mut missing = Vec::new();
            if !valid(&batch, &m.time_field, i) {
                missing.push(m.time_field.as_str());
            }
            if !valid(&batch, &m.message_field, i) {
                missing.push(m.message_field.as_str());
            }
            if !missing.is_empty() {
                let fields = missing.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ");
                rejected.push(reject(r, "missing_field", format!("missing or null mapped field {fields}")));
                continue;
            }
            let lvl = match (&m.level_field, &level) {
                (Some(p), Some(a)) if valid(&batch, p, i) => normalize_level(a.value(i)),
                _ => "unknown",
            };
            let svc = match (&m.service_field, &service) {
                (Some(p), Some(a)) if valid(&batch, p, i) && !a.value(i).is_empty() => a.value(i),
                _ => m.service.as_str(),
            };
            let row_attrs = attrs.iter().filter(|(p, _, _)| valid(&batch, p, i)).map(|(_, k, a)| (*k, a.value(i)));
            out.push(&mut self.drain, ts.value(i), svc, lvl, message.value(i), row_attrs, r)?;
        }
        out.finish(&c, &self.logs, rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;

    fn rec(offset: i64, s: &str) -> RawRecord {
        RawRecord { payload: Some(s.as_bytes().to_vec()), key: None, pos: SourcePos { topic: "logs".into(), partition: 0, offset } }
    }

    fn col(b: &RecordBatch, name: &str) -> Vec<String> {
        let a = b.column_by_name(name).unwrap().as_string::<i32>();
        (0..a.len()).map(|i| a.value(i).to_string()).collect()
    }

    #[test]
    fn json_logs_are_mapped_levels_normalised_and_templates_mined() {
        let mut d = JsonLogDecoder::new(
            LogMapping { attribute_fields: vec!["k8s.pod".into()], ..Default::default() },
            DrainConfig::default(),
            Arc::default(),
        )
        .unwrap();
        let out = d
            .decode(&[
                rec(0, r#"{"ts": 1767571200000, "level": "INFO", "service": "api", "message": "GET /cart 200 in 12 ms", "k8s": {"pod": "api-1"}}"#),
                rec(1, r#"{"ts": "2026-01-05T00:00:01Z", "level": "ERR", "service": "api", "message": "GET /cart 500 in 3 ms"}"#),
                rec(2, r#"{"ts": 1767571202000, "level": "warning", "message": "disk nearly full"}"#),
                rec(3, r#"{"ts": 1767571202000, "level": "info"}"#),
                rec(4, r#"not json"#),
            ])
            .unwrap();
        assert_eq!(col(&out.logs, "level"), vec!["info", "error", "warn"]);
        assert_eq!(col(&out.logs, "service"), vec!["api", "api", "unknown"]);
        let t = col(&out.logs, "template");
        assert_eq!(t[1], "GET /cart <*> in <*> ms");
        let new = out.logs.column_by_name("new_template").unwrap().as_boolean();
        assert_eq!((new.value(0), new.value(1), new.value(2)), (true, false, true));
        assert_eq!(out.rejected.iter().map(|r| (r.pos.offset, r.kind)).collect::<Vec<_>>(), vec![(3, "missing_field"), (4, "syntax")]);
        assert_eq!(out.positions.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn otlp_logs_take_service_from_the_resource_and_level_from_severity() {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
        use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        use opentelemetry_proto::tonic::resource::v1::Resource;
        let s = |v: &str| Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) });
        let req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource { attributes: vec![KeyValue { key: "service.name".into(), value: s("payments"), ..Default::default() }], ..Default::default() }),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        LogRecord { time_unix_nano: 1_767_571_200_000_000_000, severity_number: 17, body: s("card declined"), ..Default::default() },
                        LogRecord { observed_time_unix_nano: 1_767_571_201_000_000_000, severity_text: "WARN".into(), body: s("slow"), ..Default::default() },
                        LogRecord { time_unix_nano: 1_767_571_201_000_000_000, ..Default::default() },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let r = RawRecord { payload: Some(req.encode_to_vec()), key: None, pos: SourcePos { topic: "otlp-logs".into(), partition: 0, offset: 0 } };
        let mut d = OtlpLogsDecoder::new(OtlpEncoding::Proto, DrainConfig::default(), Arc::default());
        let out = d.decode(&[r]).unwrap();
        assert_eq!(col(&out.logs, "service"), vec!["payments", "payments"]);
        assert_eq!(col(&out.logs, "level"), vec!["error", "warn"]);
        assert_eq!(d.log_counters().skipped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn bad_mappings_are_refused() {
        let m = LogMapping { time_unit: "h".into(), ..Default::default() };
        assert!(JsonLogDecoder::new(m, DrainConfig::default(), Arc::default()).unwrap_err().contains("time_unit"));
        let m = LogMapping { message_field: "ts".into(), ..Default::default() };
        assert!(JsonLogDecoder::new(m, DrainConfig::default(), Arc::default()).unwrap_err().contains("twice"));
    }
}
