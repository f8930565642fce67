//! OTLP metrics as the OpenTelemetry Collector's Kafka exporter writes them: one
//! `ExportMetricsServiceRequest` per record, as protobuf (`otlp_proto`) or OTLP/JSON (`otlp_json`).
//!
//! Every data point becomes one or more points in the points schema:
//!
//! | OTLP type | points |
//! |---|---|
//! | gauge | `<name>` = the value |
//! | sum, monotonic | `<name>` = rate per second. Cumulative sums are differenced against the previous point of the same stream; a value that went down or a new start time is a counter reset (the rate is then taken since the new start). The first point of a stream only sets the baseline. |
//! | sum, not monotonic | `<name>` = the value (an up-down counter is a level, not a rate) |
//! | histogram, exponential histogram | `<name>.count` and `<name>.sum` as rates per second, `<name>.p50`, `<name>.p95`, `<name>.p99` estimated from the buckets of the interval (linear within a bucket, as Prometheus' `histogram_quantile`) |
//! | summary | `<name>.count` as a rate, `<name>.p<q>` for each quantile sent |
//!
//! Labels are the resource attributes (`service.name`, `host.name`, `k8s.*`, ...) and the data
//! point's attributes, which win on a clash; keys are kept as OpenTelemetry names them. Data points
//! without a value (the "no recorded value" flag, or no value at all) are skipped and counted;
//! the rest of the record is kept. A record that does not parse is dead-lettered.
//!
//! Cumulative streams need the previous point: that state is per stream, explicit, and bounded
//! (streams not seen for [`STREAM_TTL_NS`] are dropped, and at most [`MAX_STREAMS`] are kept).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point, metric, number_data_point, ExponentialHistogramDataPoint, HistogramDataPoint, NumberDataPoint,
};
use prost::Message;

use crate::json::{count_input, reject, DecodedBatch, IngestCounters, RawRecord, WireRows};
use crate::Result;

mod histogram;
use histogram::{exp_hist_parts, hist_parts, HistParts, Layout};
#[cfg(test)]
use histogram::ExpBuckets;

/// Cumulative streams unseen for this long (event time) are forgotten.
pub const STREAM_TTL_NS: u64 = 3_600 * 1_000_000_000;
/// At most this many cumulative streams are remembered.
pub const MAX_STREAMS: usize = 1_000_000;

const DELTA: i32 = 1;
const CUMULATIVE: i32 = 2;
const NO_RECORDED_VALUE: u32 = 1;
const QUANTILES: [(f64, &str); 3] = [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")];

/// How OTLP messages are serialised on the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpEncoding {
    /// Protobuf (the Collector's `otlp_proto`, its default).
    Proto,
    /// OTLP/JSON (the Collector's `otlp_json`).
    Json,
}

/// Counters specific to OTLP metrics.
#[derive(Debug, Default)]
pub struct OtlpCounters {
    /// Data points read (of every type).
    pub data_points: AtomicU64,
    /// Data points skipped: no recorded value, no timestamp, or a non-finite value.
    pub skipped_points: AtomicU64,
    /// First points of cumulative streams (they set the baseline and yield no rate).
    pub baselines: AtomicU64,
    /// Counter resets seen in cumulative streams.
    pub resets: AtomicU64,
    /// Attributes with array, map or bytes values, left out of the labels.
    pub skipped_attributes: AtomicU64,
}

/// The last point of a cumulative stream (opaque; checkpoints hold it, see
/// [`OtlpMetricsDecoder::export`]).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct Prev {
    start: u64,
    time: u64,
    count: f64,
    sum: f64,
    /// The cumulative buckets, for histograms.
    layout: Option<Layout>,
}

/// Decodes OTLP metrics records into points.
#[derive(Debug)]
pub struct OtlpMetricsDecoder {
    encoding: OtlpEncoding,
    counters: Arc<IngestCounters>,
    otlp: Arc<OtlpCounters>,
    streams: HashMap<u64, Prev>,
    newest: u64,
    batches: u64,
}

/// One output point before it is appended.
struct Out {
    ts_ms: i64,
    name: String,
    value: f64,
}

fn scalar(v: &AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

/// Renders attributes into sorted, de-duplicated labels: `over` wins over `base`.
pub(crate) fn merge_attributes(base: &[(String, String)], over: &[KeyValue], skipped: &AtomicU64) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = base.to_vec();
    for kv in over {
        match kv.value.as_ref().and_then(scalar) {
            Some(v) => match out.iter_mut().find(|(k, _)| *k == kv.key) {
                Some(slot) => slot.1 = v,
                None => out.push((kv.key.clone(), v)),
            },
            None => {
                skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    out.sort();
    out
}

/// OTLP/JSON writes 64-bit integers as strings (`"asInt":"2048"`, `"intValue":"5"`), as the
/// Collector does; the generated types read those two oneof members only as numbers (the oneof is
/// flattened, and a failed member silently becomes "no value"). This removes the quotes around
/// the digits of exactly those keys. A key is a quoted name followed by `:`; inside a JSON string
/// quotes are escaped, so a message that merely mentions `"asInt"` is never touched.
pub(crate) fn unquote_int64(json: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const KEYS: [&[u8]; 2] = [b"\"asInt\"", b"\"intValue\""];
    let skip_ws = |mut i: usize| {
        while json.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        i
    };
    // One pass: at each quote, is this one of the keys followed by `:` and a quoted integer?
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(q) = json[i..].iter().position(|b| *b == b'"') {
        let at = i + q;
        i = at + 1;
        let Some(key) = KEYS.iter().find(|k| json[at..].starts_with(k)) else { continue };
        let colon = skip_ws(at + key.len());
        if json.get(colon) != Some(&b':') {
            continue;
        }
        let open = skip_ws(colon + 1);
        if json.get(open) != Some(&b'"') {
            continue;
        }
        let start = open + 1;
        let digits = start + usize::from(json.get(start) == Some(&b'-'));
        let end = digits + json[digits..].iter().take_while(|b| b.is_ascii_digit()).count();
        if end > digits && json.get(end) == Some(&b'"') {
            let o = out.get_or_insert_with(|| Vec::with_capacity(json.len()));
            o.extend_from_slice(&json[copied..open]);
            o.extend_from_slice(&json[start..end]);
            copied = end + 1;
            i = copied;
        }
    }
    match out {
        None => std::borrow::Cow::Borrowed(json),
        Some(mut o) => {
            o.extend_from_slice(&json[copied..]);
            std::borrow::Cow::Owned(o)
        }
    }
}

/// Reads an OTLP/JSON metrics request. The generated types require every field of an
/// exponential histogram point and of its bucket lists, while OTLP/JSON (like all proto3 JSON)
/// leaves out fields at their default value; requests with exponential histograms therefore go
/// through a value tree that gets the defaults filled in. All others deserialize directly.
fn metrics_from_json(payload: &[u8]) -> std::result::Result<ExportMetricsServiceRequest, String> {
    let json = unquote_int64(payload);
    let err = |e: serde_json::Error| format!("not OTLP/JSON metrics: {e}");
    if find(&json, b"\"exponentialHistogram\"").is_none() {
        return serde_json::from_slice(&json).map_err(err);
    }
    let mut v: serde_json::Value = serde_json::from_slice(&json).map_err(err)?;
    fill_exponential_defaults(&mut v);
    serde_json::from_value(v).map_err(err)
}

fn fill_exponential_defaults(v: &mut serde_json::Value) {
    use serde_json::{json, Value};
    let Some(rms) = v.get_mut("resourceMetrics").and_then(Value::as_array_mut) else { return };
    for rm in rms {
        let Some(sms) = rm.get_mut("scopeMetrics").and_then(Value::as_array_mut) else { continue };
        for sm in sms {
            let Some(ms) = sm.get_mut("metrics").and_then(Value::as_array_mut) else { continue };
            for m in ms {
                let Some(pts) = m.get_mut("exponentialHistogram").and_then(|h| h.get_mut("dataPoints")).and_then(Value::as_array_mut) else { continue };
                for p in pts {
                    let Some(o) = p.as_object_mut() else { continue };
                    for (k, d) in [("attributes", json!([])), ("startTimeUnixNano", json!(0)), ("timeUnixNano", json!(0)), ("count", json!(0)), ("scale", json!(0)), ("zeroCount", json!(0)), ("flags", json!(0)), ("exemplars", json!([])), ("zeroThreshold", json!(0.0))] {
                        o.entry(k).or_insert(d);
                    }
                    for side in ["positive", "negative"] {
                        if let Some(b) = o.get_mut(side).and_then(Value::as_object_mut) {
                            b.entry("offset").or_insert(json!(0));
                            b.entry("bucketCounts").or_insert(json!([]));
                        }
                    }
                }
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

type Labels = Vec<(String, String)>;

fn ns_to_ms(ns: u64) -> i64 {
    (ns / 1_000_000) as i64
}

fn stream_key(name: &str, labels: &[(String, String)], kind: u8) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(name.as_bytes());
    h.update(&[0xff, kind]);
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update(&[0]);
        h.update(v.as_bytes());
        h.update(&[0]);
    }
    h.digest()
}

impl OtlpMetricsDecoder {
    /// A decoder for `encoding`, reporting into `counters`.
    pub fn new(encoding: OtlpEncoding, counters: Arc<IngestCounters>) -> Self {
        Self { encoding, counters, otlp: Arc::new(OtlpCounters::default()), streams: HashMap::new(), newest: 0, batches: 0 }
    }

    /// OTLP-specific counters.
    pub fn otlp_counters(&self) -> &Arc<OtlpCounters> {
        &self.otlp
    }

    fn skip(&self) {
        self.otlp.skipped_points.fetch_add(1, Ordering::Relaxed);
        self.counters.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// The cumulative streams' last points (and the newest time seen), for a checkpoint: without
    /// them the first point of every stream after a restart yields no rate.
    pub fn export(&self) -> (Vec<(u64, Prev)>, u64) {
        (self.streams.iter().map(|(k, v)| (*k, v.clone())).collect(), self.newest)
    }

    /// Takes cumulative streams from a checkpoint.
    pub fn import(&mut self, streams: Vec<(u64, Prev)>, newest: u64) {
        self.streams.extend(streams.into_iter().take(crate::otlp::MAX_STREAMS));
        self.newest = self.newest.max(newest);
    }

    /// Cumulative streams currently remembered.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Decodes a batch of records.
    pub fn decode(&mut self, records: &[RawRecord]) -> Result<DecodedBatch> {
        self.decode_refs(&records.iter().collect::<Vec<_>>())
    }

    /// Like [`Self::decode`], over records borrowed from elsewhere.
    pub fn decode_refs(&mut self, records: &[&RawRecord]) -> Result<DecodedBatch> {
        let c = self.counters.clone();
        count_input(&c, records);
        let mut rows = WireRows::new();
        let mut rejected = Vec::new();
        let mut out = Vec::new();
        for &r in records {
            let payload = r.payload.as_deref().unwrap_or_default();
            let req = match self.encoding {
                OtlpEncoding::Proto => ExportMetricsServiceRequest::decode(payload).map_err(|e| format!("not an OTLP ExportMetricsServiceRequest: {e}")),
                OtlpEncoding::Json => metrics_from_json(payload),
            };
            let req = match req {
                Ok(req) => req,
                Err(reason) => {
                    rejected.push(reject(r, "syntax", reason));
                    continue;
                }
            };
            for rm in &req.resource_metrics {
                let resource = rm.resource.as_ref().map(|r| merge_attributes(&[], &r.attributes, &self.otlp.skipped_attributes)).unwrap_or_default();
                for sm in &rm.scope_metrics {
                    for m in &sm.metrics {
                        let Some(data) = &m.data else { continue };
                        self.metric(&m.name, data, &resource, &mut out);
                        for (o, labels) in out.drain(..) {
                            rows.push(o.ts_ms, &o.name, labels.iter().map(|(k, v)| (k.as_str(), v.as_str())), o.value, r)?;
                        }
                    }
                }
            }
        }
        self.evict();
        rows.finish(&c, rejected)
    }

    fn metric(&mut self, name: &str, data: &metric::Data, resource: &[(String, String)], out: &mut Vec<(Out, Vec<(String, String)>)>) {
        match data {
            metric::Data::Gauge(g) => {
                for p in &g.data_points {
                    if let Some((ts, v, labels)) = self.number(p, resource) {
                        out.push((Out { ts_ms: ns_to_ms(ts), name: name.to_string(), value: v }, labels));
                    }
                }
            }
            metric::Data::Sum(s) => {
                for p in &s.data_points {
                    let Some((ts, v, labels)) = self.number(p, resource) else { continue };
                    if !s.is_monotonic {
                        out.push((Out { ts_ms: ns_to_ms(ts), name: name.to_string(), value: v }, labels));
                        continue;
                    }
                    let key = stream_key(name, &labels, 0);
                    let rate = match s.aggregation_temporality {
                        CUMULATIVE => self.cumulative(key, p.start_time_unix_nano, ts, v, 0.0, None).map(|d| d.count_rate),
                        _ => delta_rate(p.start_time_unix_nano, ts, v),
                    };
                    if let Some(rate) = rate {
                        out.push((Out { ts_ms: ns_to_ms(ts), name: name.to_string(), value: rate }, labels));
                    }
                }
            }
            metric::Data::Histogram(h) => {
                for p in &h.data_points {
                    self.histogram(name, h.aggregation_temporality, hist_parts(p), resource, &p.attributes, out);
                }
            }
            metric::Data::ExponentialHistogram(h) => {
                for p in &h.data_points {
                    self.histogram(name, h.aggregation_temporality, exp_hist_parts(p), resource, &p.attributes, out);
                }
            }
            metric::Data::Summary(s) => {
                for p in &s.data_points {
                    self.otlp.data_points.fetch_add(1, Ordering::Relaxed);
                    if p.time_unix_nano == 0 || p.flags & NO_RECORDED_VALUE != 0 {
                        self.skip();
                        continue;
                    }
                    let labels = merge_attributes(resource, &p.attributes, &self.otlp.skipped_attributes);
                    let ts = ns_to_ms(p.time_unix_nano);
                    let key = stream_key(name, &labels, 2);
                    if let Some(d) = self.cumulative(key, p.start_time_unix_nano, p.time_unix_nano, p.count as f64, p.sum, None) {
                        out.push((Out { ts_ms: ts, name: format!("{name}.count"), value: d.count_rate }, labels.clone()));
                    }
                    for q in &p.quantile_values {
                        if q.value.is_finite() && (0.0..=1.0).contains(&q.quantile) {
                            let suffix = format!("p{}", (q.quantile * 100.0 * 1000.0).round() / 1000.0);
                            out.push((Out { ts_ms: ts, name: format!("{name}.{suffix}"), value: q.value }, labels.clone()));
                        }
                    }
                }
            }
        }
    }

    /// The time, value and labels of a number data point, or `None` (counted) when it has none.
    fn number(&self, p: &NumberDataPoint, resource: &[(String, String)]) -> Option<(u64, f64, Labels)> {
        self.otlp.data_points.fetch_add(1, Ordering::Relaxed);
        let v = match p.value {
            Some(number_data_point::Value::AsDouble(d)) => d,
            Some(number_data_point::Value::AsInt(i)) => i as f64,
            None => f64::NAN,
        };
        if p.time_unix_nano == 0 || p.flags & NO_RECORDED_VALUE != 0 || !v.is_finite() {
            self.skip();
            return None;
        }
        Some((p.time_unix_nano, v, merge_attributes(resource, &p.attributes, &self.otlp.skipped_attributes)))
    }

    #[allow(clippy::too_many_arguments)]
    fn histogram(
        &mut self,
        name: &str,
        temporality: i32,
        parts: Option<HistParts>,
        resource: &[(String, String)],
        attributes: &[KeyValue],
        out: &mut Vec<(Out, Vec<(String, String)>)>,
    ) {
        self.otlp.data_points.fetch_add(1, Ordering::Relaxed);
        let Some(h) = parts else {
            self.skip();
            return;
        };
        let labels = merge_attributes(resource, attributes, &self.otlp.skipped_attributes);
        let ts = ns_to_ms(h.time);
        let (count_rate, sum_rate, layout) = if temporality == CUMULATIVE {
            let key = stream_key(name, &labels, 1);
            match self.cumulative(key, h.start, h.time, h.count as f64, h.sum, Some(h.layout)) {
                Some(d) => (d.count_rate, d.sum_rate, d.layout),
                None => return,
            }
        } else if temporality == DELTA {
            match interval_secs(h.start, h.time) {
                Some(s) => (h.count as f64 / s, h.sum / s, Some(h.layout)),
                None => (h.count as f64, h.sum, Some(h.layout)),
            }
        } else {
            self.skip();
            return;
        };
        out.push((Out { ts_ms: ts, name: format!("{name}.count"), value: count_rate }, labels.clone()));
        if sum_rate.is_finite() {
            out.push((Out { ts_ms: ts, name: format!("{name}.sum"), value: sum_rate }, labels.clone()));
        }
        if let Some(b) = layout.map(|l| l.buckets()) {
            for (q, suffix) in QUANTILES {
                if let Some(v) = b.quantile(&b.counts, q) {
                    out.push((Out { ts_ms: ts, name: format!("{name}.{suffix}"), value: v }, labels.clone()));
                }
            }
        }
    }

    /// Differences a cumulative point against the stream's previous one. `None` for the first
    /// point of a stream (baseline) and for points that do not move time forward. A count that
    /// went down or a new start time is a reset: the rate is then taken since the new start.
    fn cumulative(&mut self, key: u64, start: u64, time: u64, count: f64, sum: f64, layout: Option<Layout>) -> Option<Delta> {
        self.newest = self.newest.max(time);
        let now = Prev { start, time, count, sum, layout };
        let Some(prev) = self.streams.insert(key, now) else {
            self.otlp.baselines.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if time <= prev.time {
            // A duplicate or out-of-order point: keep the newer state.
            self.streams.insert(key, prev);
            return None;
        }
        let cur = self.streams.get(&key).expect("inserted above");
        let reset = count < prev.count || (start != 0 && prev.start != 0 && start != prev.start);
        if reset {
            self.otlp.resets.fetch_add(1, Ordering::Relaxed);
            let secs = interval_secs(start, time)?;
            if start < prev.time {
                // The start time does not say when within the interval the reset happened.
                return None;
            }
            return Some(Delta { count_rate: count / secs, sum_rate: sum / secs, layout: cur.layout.clone() });
        }
        let secs = (time - prev.time) as f64 / 1e9;
        let layout = match (&cur.layout, &prev.layout) {
            (Some(a), Some(b)) => a.minus(b),
            _ => None,
        };
        Some(Delta { count_rate: (count - prev.count) / secs, sum_rate: (sum - prev.sum) / secs, layout })
    }

    fn evict(&mut self) {
        // The TTL sweep is O(streams): run it every 256 batches, or at once when over the cap.
        self.batches += 1;
        if self.streams.len() <= MAX_STREAMS && !self.batches.is_multiple_of(256) {
            return;
        }
        let horizon = self.newest.saturating_sub(STREAM_TTL_NS);
        self.streams.retain(|_, p| p.time >= horizon);
        if self.streams.len() > MAX_STREAMS {
            // Still too many live streams: keep the most recently updated ones.
            let mut times: Vec<u64> = self.streams.values().map(|p| p.time).collect();
            let cut = times.len() - MAX_STREAMS;
            let (_, t, _) = times.select_nth_unstable(cut);
            let t = *t;
            self.streams.retain(|_, p| p.time > t);
        }
    }
}

struct Delta {
    count_rate: f64,
    sum_rate: f64,
    /// Buckets of the interval, when known.
    layout: Option<Layout>,
}

fn interval_secs(start: u64, time: u64) -> Option<f64> {
    (start != 0 && time > start).then(|| (time - start) as f64 / 1e9)
}

fn delta_rate(start: u64, time: u64, v: f64) -> Option<f64> {
    Some(match interval_secs(start, time) {
        Some(s) => v / s,
        None => v,
    })
}

#[cfg(test)]
mod tests;
