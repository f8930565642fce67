//! Influx line protocol (Telegraf's Kafka output) into Arrow points.
//!
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`, one or more lines per
//! record. Every numeric field becomes its own series, named `<measurement>_<field>` with the
//! tags as labels (Telegraf's Prometheus naming). Integers (`12i`, `12u`), floats and booleans
//! (as 0/1) are values; string fields are skipped and counted. The timestamp unit is configured
//! (`ns` by Telegraf's default). A line without a timestamp is rejected: Vigil works in event time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::json::{count_input, reject, DecodedBatch, IngestCounters, RawRecord, WireRows};
use crate::Result;

/// Unit of line protocol timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Nanoseconds (Telegraf's default).
    #[default]
    Nanoseconds,
    /// Microseconds.
    Microseconds,
    /// Milliseconds.
    Milliseconds,
    /// Seconds.
    Seconds,
}

impl Precision {
    /// Parses `ns`, `us`, `ms` or `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ns" => Self::Nanoseconds,
            "us" | "µs" => Self::Microseconds,
            "ms" => Self::Milliseconds,
            "s" => Self::Seconds,
            _ => return None,
        })
    }

    fn to_ms(self, t: i64) -> Option<i64> {
        match self {
            Self::Nanoseconds => Some(t.div_euclid(1_000_000)),
            Self::Microseconds => Some(t.div_euclid(1_000)),
            Self::Milliseconds => Some(t),
            Self::Seconds => t.checked_mul(1_000),
        }
    }
}

/// Counters specific to line protocol.
#[derive(Debug, Default)]
pub struct InfluxCounters {
    /// Lines parsed into at least one point.
    pub lines: AtomicU64,
    /// String fields skipped (not numeric).
    pub string_fields_skipped: AtomicU64,
    /// Records of several lines of which only some parsed (good lines kept, record dead-lettered).
    pub partial_records: AtomicU64,
}

/// Decodes Influx line protocol records into points.
#[derive(Debug)]
pub struct InfluxDecoder {
    precision: Precision,
    counters: Arc<IngestCounters>,
    influx: Arc<InfluxCounters>,
}

struct Line {
    measurement: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, f64)>,
    ts: i64,
}

fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some(n @ (',' | '=' | ' ' | '"' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits `s` at unescaped occurrences of `sep`, outside double quotes when `quotes` is set.
fn split_unescaped(s: &str, sep: u8, quotes: bool) -> Vec<&str> {
    let b = s.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut i, mut in_q) = (0, 0, false);
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'"' if quotes => in_q = !in_q,
            c if c == sep && !in_q => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&s[start.min(s.len())..]);
    parts
}

fn first_unescaped(s: &str, c: u8) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == c {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn parse_value(v: &str) -> std::result::Result<Option<f64>, String> {
    if v.starts_with('"') {
        return if v.len() >= 2 && v.ends_with('"') { Ok(None) } else { Err(format!("unterminated string field value {v}")) };
    }
    match v {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(Some(1.0)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(Some(0.0)),
        _ => {}
    }
    let num = v.strip_suffix('i').or_else(|| v.strip_suffix('u'));
    let parsed = match num {
        Some(n) => n.parse::<i128>().ok().map(|x| x as f64),
        None => v.parse::<f64>().ok().filter(|x| x.is_finite()),
    };
    parsed.map(Some).ok_or_else(|| format!("field value `{v}` is not a number, boolean or string"))
}

impl InfluxDecoder {
    /// A decoder for timestamps in `precision`, reporting into `counters`.
    pub fn new(precision: Precision, counters: Arc<IngestCounters>) -> Self {
        Self { precision, counters, influx: Arc::new(InfluxCounters::default()) }
    }

    /// Line-protocol counters.
    pub fn influx_counters(&self) -> &Arc<InfluxCounters> {
        &self.influx
    }

    fn parse_line(&self, line: &str) -> std::result::Result<Line, String> {
        // measurement+tags | fields | timestamp, separated by unescaped spaces outside quotes.
        let parts: Vec<&str> = split_unescaped(line, b' ', true).into_iter().filter(|p| !p.is_empty()).collect();
        if parts.len() < 2 {
            return Err("expected `measurement[,tags] fields timestamp`".into());
        }
        if parts.len() > 3 {
            return Err("unexpected text after the timestamp".into());
        }
        let head = split_unescaped(parts[0], b',', false);
        let measurement = unescape(head[0]);
        if measurement.is_empty() {
            return Err("empty measurement name".into());
        }
        let mut tags = Vec::with_capacity(head.len() - 1);
        for t in &head[1..] {
            let kv = split_unescaped(t, b'=', false);
            if kv.len() != 2 || kv[0].is_empty() {
                return Err(format!("bad tag `{t}`: expected key=value"));
            }
            tags.push((unescape(kv[0]), unescape(kv[1])));
        }
        let mut fields = Vec::new();
        for f in split_unescaped(parts[1], b',', true) {
            let Some(eq) = first_unescaped(f, b'=') else { return Err(format!("bad field `{f}`: expected key=value")) };
            let (k, v) = (&f[..eq], &f[eq + 1..]);
            if k.is_empty() || v.is_empty() {
                return Err(format!("bad field `{f}`: expected key=value"));
            }
            match parse_value(v)? {
                Some(x) => fields.push((unescape(k), x)),
                None => {
                    self.influx.string_fields_skipped.fetch_add(1, Ordering::Relaxed);
                    self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let Some(ts) = parts.get(2) else { return Err("missing timestamp (Vigil needs event time)".into()) };
        let raw: i64 = ts.parse().map_err(|_| format!("timestamp `{ts}` is not an integer"))?;
        let ts = self.precision.to_ms(raw).ok_or_else(|| format!("timestamp `{ts}` is out of range"))?;
        Ok(Line { measurement, tags, fields, ts })
    }

    /// Decodes a batch of records. Bad records go to [`DecodedBatch::rejected`]; in a record of
    /// several lines the good lines are kept and the record is also dead-lettered with the reason.
    pub fn decode(&mut self, records: &[RawRecord]) -> Result<DecodedBatch> {
        self.decode_refs(&records.iter().collect::<Vec<_>>())
    }

    /// Like [`Self::decode`], over records borrowed from elsewhere (no payload copies).
    pub fn decode_refs(&mut self, records: &[&RawRecord]) -> Result<DecodedBatch> {
        let c = self.counters.clone();
        count_input(&c, records);
        let mut rows = WireRows::new();
        let mut rejected = Vec::new();
        for &r in records {
            let payload = r.payload.as_deref().unwrap_or_default();
            let Ok(text) = std::str::from_utf8(payload) else {
                rejected.push(reject(r, "syntax", "record is not UTF-8 text".into()));
                continue;
            };
            let (mut good, mut errors, mut total) = (0usize, Vec::new(), 0usize);
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                total += 1;
                match self.parse_line(line) {
                    Ok(l) => {
                        if l.fields.is_empty() {
                            continue;
                        }
                        good += 1;
                        for (f, v) in &l.fields {
                            let name = format!("{}_{}", l.measurement, f);
                            rows.push(l.ts, &name, l.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())), *v, r)?;
                        }
                    }
                    Err(e) => errors.push(format!("line {}: {e}", n + 1)),
                }
            }
            if total == 0 {
                rejected.push(reject(r, "syntax", "empty record: no line protocol".into()));
            } else if !errors.is_empty() {
                let kind = if good == 0 { "syntax" } else { "partial" };
                if good > 0 {
                    self.influx.partial_records.fetch_add(1, Ordering::Relaxed);
                }
                let mut reason = errors.join("; ");
                if good > 0 {
                    reason = format!("{good} of {total} lines kept; {reason}");
                }
                rejected.push(reject(r, kind, reason));
            }
            self.influx.lines.fetch_add(good as u64, Ordering::Relaxed);
        }
        rows.finish(&c, rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourcePos;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, TimestampMillisecondType};

    fn rec(offset: i64, s: &str) -> RawRecord {
        RawRecord { payload: Some(s.as_bytes().to_vec()), key: None, pos: SourcePos { topic: "telegraf".into(), partition: 0, offset } }
    }

    fn decoder() -> InfluxDecoder {
        InfluxDecoder::new(Precision::Nanoseconds, Arc::new(IngestCounters::default()))
    }

    #[test]
    fn one_series_per_numeric_field_with_tags_as_labels() {
        let mut d = decoder();
        let out = d
            .decode(&[rec(0, "cpu,host=h1,cpu=cpu0 usage_idle=97.5,usage_user=1.25,count=3i,ok=true,note=\"x y\" 1700000000123456789")])
            .unwrap();
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        let p = &out.points;
        assert_eq!(p.num_rows(), 4);
        let keys = p.column(2).as_string::<i32>();
        assert_eq!(keys.value(0), r#"cpu_usage_idle{cpu="cpu0",host="h1"}"#);
        assert_eq!(keys.value(2), r#"cpu_count{cpu="cpu0",host="h1"}"#);
        let v = p.column(5).as_primitive::<Float64Type>();
        assert_eq!((v.value(0), v.value(1), v.value(2), v.value(3)), (97.5, 1.25, 3.0, 1.0));
        let ts = p.column(0).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.value(0), 1_700_000_000_123);
        assert_eq!(d.influx_counters().string_fields_skipped.load(Ordering::Relaxed), 1);
        assert_eq!(out.positions.len(), 4);
    }

    #[test]
    fn escapes_in_measurement_tags_and_fields() {
        let mut d = InfluxDecoder::new(Precision::Seconds, Arc::new(IngestCounters::default()));
        let out = d.decode(&[rec(0, r#"disk\ io,path=/var\,log,dc=eu\ west read\=bytes=10 1700000000"#)]).unwrap();
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        let keys = out.points.column(2).as_string::<i32>();
        assert_eq!(keys.value(0), r#"disk io_read=bytes{dc="eu west",path="/var,log"}"#);
        let ts = out.points.column(0).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.value(0), 1_700_000_000_000);
    }

    #[test]
    fn bad_lines_are_rejected_with_reasons_and_good_lines_kept() {
        let mut d = decoder();
        let out = d
            .decode(&[
                rec(0, "mem,host=h1 used=1 1700000000000000000"),
                rec(1, "mem,host=h1 used=abc 1700000000000000000"),
                rec(2, "mem,host=h1 used=1"),
                rec(3, "mem,host=h1 used=2 1700000000000000000\nmem,host=h2 used= 1700000000000000000"),
                rec(4, ""),
                rec(5, "mem,host used=1 1"),
            ])
            .unwrap();
        assert_eq!(out.points.num_rows(), 2);
        assert_eq!(out.positions.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![0, 3]);
        let r: Vec<(i64, &str, &str)> = out.rejected.iter().map(|r| (r.pos.offset, r.kind, r.reason.as_str())).collect();
        assert_eq!(r.len(), 5);
        assert!(r[0].2.contains("`abc` is not a number"), "{r:?}");
        assert!(r[1].2.contains("missing timestamp"), "{r:?}");
        assert_eq!(r[2].1, "partial");
        assert!(r[2].2.starts_with("1 of 2 lines kept"), "{r:?}");
        assert!(r[3].2.contains("empty"), "{r:?}");
        assert!(r[4].2.contains("bad tag"), "{r:?}");
        assert_eq!(d.influx_counters().partial_records.load(Ordering::Relaxed), 1);
        assert!(out.points.column(4).as_map().is_valid(0));
    }

    #[test]
    fn precision_converts_to_milliseconds() {
        assert_eq!(Precision::Nanoseconds.to_ms(1_500_000), Some(1));
        assert_eq!(Precision::Microseconds.to_ms(1_500_000), Some(1_500));
        assert_eq!(Precision::Seconds.to_ms(2), Some(2_000));
        assert_eq!(Precision::Seconds.to_ms(i64::MAX), None);
        assert_eq!(Precision::parse("us"), Some(Precision::Microseconds));
        assert_eq!(Precision::parse("h"), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A deterministic sweep of hostile inputs (proper fuzzing is a follow-up).
        let mut d = decoder();
        let mut x: u64 = 1;
        for len in 0..400usize {
            let mut bytes = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let table = b"ab,= \\\"0123456789.ei\n-tf";
                bytes.push(table[(x % table.len() as u64) as usize]);
            }
            let r = RawRecord { payload: Some(bytes), key: None, pos: SourcePos { topic: "t".into(), partition: 0, offset: len as i64 } };
            let out = d.decode(&[r]).unwrap();
            assert_eq!(out.positions.len(), out.points.num_rows(), "every row keeps its source position");
        }
    }
}
