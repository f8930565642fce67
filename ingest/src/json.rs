//! Batched JSON metric point decoding into Arrow.
//!
//! The fast path hands a whole poll's worth of payloads to arrow's JSON tape decoder at once. Only
//! when that batch fails (a syntax or type error somewhere in it) are the records decoded one by
//! one to find the culprits; the good ones are then decoded together again. Missing and null
//! required fields are found vectorised from the validity of the decoded columns, so they never
//! force the slow path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, MapArray, RecordBatch, StringArray, StringBuilder,
    UInt64Builder,
};
use arrow::compute::filter_record_batch;
use arrow_json::reader::{Decoder, ReaderBuilder};

use crate::schema::{col, points_schema, wire_schema};
use crate::series::write_series_key;
use crate::source::SourcePos;
use crate::Result;

/// One Kafka record as read from the broker, before decoding.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// The record value; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
    /// The record key, if any.
    pub key: Option<Vec<u8>>,
    /// Where it came from.
    pub pos: SourcePos,
}

/// A record that could not be decoded, with the reason, ready for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The original payload, unchanged (empty for a tombstone).
    pub payload: Vec<u8>,
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// Where it came from.
    pub pos: SourcePos,
    /// A short machine-readable kind: `syntax`, `type`, `missing_field`, `empty`, `multiple`.
    pub kind: &'static str,
    /// Human-readable reason.
    pub reason: String,
}

/// The outcome of decoding one poll's records.
#[derive(Debug)]
pub struct DecodedBatch {
    /// Decoded rows in the [`points_schema`], in input order.
    pub points: RecordBatch,
    /// Source position of each row of `points`.
    pub positions: Vec<SourcePos>,
    /// Records that did not decode.
    pub rejected: Vec<Rejected>,
}

/// Running counters of the decoder, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Records seen.
    pub records: AtomicU64,
    /// Payload bytes seen.
    pub bytes: AtomicU64,
    /// Points (or, for log formats, log rows) decoded.
    pub points: AtomicU64,
    /// Records rejected (sent to the dead-letter topic).
    pub rejected: AtomicU64,
    /// Of which: JSON syntax errors, truncation, empty payloads, several objects.
    pub rejected_syntax: AtomicU64,
    /// Of which: a field of the wrong type or an unparsable timestamp or number.
    pub rejected_type: AtomicU64,
    /// Of which: a required field (`ts`, `name`, `value`) missing or null.
    pub rejected_missing: AtomicU64,
    /// Parts of otherwise good records left out, the rest kept: OTLP data points without a
    /// value, OTLP log records without a time or message, line-protocol string fields.
    pub skipped: AtomicU64,
}

impl IngestCounters {
    /// Adds `other`'s values into these counters.
    pub fn add(&self, other: &IngestCounters) {
        let r = Ordering::Relaxed;
        for (a, b) in [
            (&self.records, &other.records),
            (&self.bytes, &other.bytes),
            (&self.points, &other.points),
            (&self.rejected, &other.rejected),
            (&self.rejected_syntax, &other.rejected_syntax),
            (&self.rejected_type, &other.rejected_type),
            (&self.rejected_missing, &other.rejected_missing),
            (&self.skipped, &other.skipped),
        ] {
            a.fetch_add(b.load(r), r);
        }
    }
}

/// One set of [`IngestCounters`] per input format, fixed when the decoders are built.
#[derive(Debug, Default)]
pub struct FormatCounters {
    formats: Vec<(String, Arc<IngestCounters>)>,
}

impl FormatCounters {
    /// The counters of `format`, created on first use.
    pub fn for_format(&mut self, format: &str) -> Arc<IngestCounters> {
        if let Some((_, c)) = self.formats.iter().find(|(f, _)| f == format) {
            return c.clone();
        }
        let c = Arc::new(IngestCounters::default());
        self.formats.push((format.to_string(), c.clone()));
        c
    }

    /// Every format and its counters, in the order they were created.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &IngestCounters)> {
        self.formats.iter().map(|(f, c)| (f.as_str(), c.as_ref()))
    }

    /// The sum over all formats, as of now.
    pub fn total(&self) -> IngestCounters {
        let t = IngestCounters::default();
        for (_, c) in &self.formats {
            t.add(c);
        }
        t
    }
}

/// Decodes JSON metric points, `{"ts": <epoch ms | RFC 3339>, "name": .., "labels": {..}, "value": ..}`,
/// into Arrow batches in the [`points_schema`].
#[derive(Debug)]
pub struct JsonPointDecoder {
    inner: TapeBatchDecoder,
    counters: Arc<IngestCounters>,
}

/// Decodes JSON objects of any shape into Arrow with a given schema, a batch at a time, isolating
/// bad records: the shared engine of the JSON-based formats.
#[derive(Debug)]
pub(crate) struct TapeBatchDecoder {
    schema: arrow::datatypes::SchemaRef,
    coerce_primitive: bool,
    decoder: Decoder,
}

/// Most records decoded in one call (the Kafka source caps polls far below this).
pub(crate) const MAX_ROWS: usize = 1 << 20;

fn new_decoder(schema: &arrow::datatypes::SchemaRef, coerce_primitive: bool) -> Decoder {
    // One poll is one batch; polls are capped well below this.
    ReaderBuilder::new(schema.clone())
        .with_batch_size(MAX_ROWS)
        .with_coerce_primitive(coerce_primitive)
        .build_decoder()
        .expect("decoding schemas are built from supported types")
}

fn looks_like_one_object(p: &[u8]) -> bool {
    let t = p.trim_ascii();
    t.len() >= 2 && t[0] == b'{' && t[t.len() - 1] == b'}'
}

impl Default for JsonPointDecoder {
    fn default() -> Self {
        Self::new(Arc::new(IngestCounters::default()))
    }
}

impl JsonPointDecoder {
    /// A decoder reporting into `counters`.
    pub fn new(counters: Arc<IngestCounters>) -> Self {
        Self { inner: TapeBatchDecoder::new(wire_schema(), false), counters }
    }

    /// The counters this decoder updates.
    pub fn counters(&self) -> &Arc<IngestCounters> {
        &self.counters
    }

    /// Decodes a batch of records. Never fails because of a record's content: bad records are
    /// returned in [`DecodedBatch::rejected`] and the good ones in the same batch still decode.
    pub fn decode(&mut self, records: &[RawRecord]) -> Result<DecodedBatch> {
        self.decode_refs(&records.iter().collect::<Vec<_>>())
    }

    /// Like [`Self::decode`], over records borrowed from elsewhere (no payload copies).
    pub fn decode_refs(&mut self, records: &[&RawRecord]) -> Result<DecodedBatch> {
        let c = self.counters.clone();
        count_input(&c, records);
        // The common shape of a point, when every record of the batch has it.
        if let Some(rows) = crate::json_fast::decode_common(records) {
            return rows.finish(&c, Vec::new());
        }

        let mut rejected = Vec::new();
        let (wire, candidates) = self.inner.decode_records(records, &mut rejected)?;
        let (points, positions, missing) = to_points(&wire, &candidates)?;
        rejected.extend(missing);
        rejected.sort_by_key(|r| (r.pos.partition, r.pos.offset));
        count_rejects(&c, &rejected);
        c.points.fetch_add(points.num_rows() as u64, Ordering::Relaxed);
        Ok(DecodedBatch { points, positions, rejected })
    }
}

/// Rows in the wire shape (ts, name, labels, value), built one point at a time by the decoders
/// that do not go through arrow's JSON decoder directly; `finish` turns them into points.
pub(crate) struct WireRows<'a> {
    ts: arrow::array::TimestampMillisecondBuilder,
    name: StringBuilder,
    labels: arrow::array::MapBuilder<StringBuilder, StringBuilder>,
    value: arrow::array::Float64Builder,
    records: Vec<&'a RawRecord>,
}

impl<'a> WireRows<'a> {
    pub(crate) fn new() -> Self {
        Self {
            ts: arrow::array::TimestampMillisecondBuilder::new().with_timezone("+00:00"),
            name: StringBuilder::new(),
            labels: arrow::array::MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()),
            value: arrow::array::Float64Builder::new(),
            records: Vec::new(),
        }
    }

    /// Adds one point that came from `record`.
    pub(crate) fn push<'l>(
        &mut self,
        ts_ms: i64,
        name: &str,
        labels: impl IntoIterator<Item = (&'l str, &'l str)>,
        value: f64,
        record: &'a RawRecord,
    ) -> Result<()> {
        self.ts.append_value(ts_ms);
        self.name.append_value(name);
        for (k, v) in labels {
            self.labels.keys().append_value(k);
            self.labels.values().append_value(v);
        }
        self.labels.append(true)?;
        self.value.append_value(value);
        self.records.push(record);
        Ok(())
    }

    /// The rows pushed so far, in the wire schema.
    fn wire_batch(&mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.ts.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.labels.finish()),
            Arc::new(self.value.finish()),
        ];
        Ok(RecordBatch::try_new(wire_schema(), cols)?)
    }

    /// The rows in the wire schema, before they become points.
    #[cfg(test)]
    pub(crate) fn into_wire(mut self) -> Result<RecordBatch> {
        self.wire_batch()
    }

    /// The points, with `rejected` sorted by position and everything counted.
    pub(crate) fn finish(mut self, c: &IngestCounters, mut rejected: Vec<Rejected>) -> Result<DecodedBatch> {
        let wire = self.wire_batch()?;
        let (points, positions, missing) = to_points(&wire, &self.records)?;
        rejected.extend(missing);
        rejected.sort_by_key(|r| (r.pos.partition, r.pos.offset));
        count_rejects(c, &rejected);
        c.points.fetch_add(points.num_rows() as u64, Ordering::Relaxed);
        Ok(DecodedBatch { points, positions, rejected })
    }
}

/// Counts records and payload bytes coming into a decoder.
pub(crate) fn count_input(c: &IngestCounters, records: &[&RawRecord]) {
    c.records.fetch_add(records.len() as u64, Ordering::Relaxed);
    let bytes: usize = records.iter().map(|r| r.payload.as_ref().map_or(0, Vec::len)).sum();
    c.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
}

pub(crate) fn count_rejects(c: &IngestCounters, rejected: &[Rejected]) {
    for r in rejected {
        c.rejected.fetch_add(1, Ordering::Relaxed);
        match r.kind {
            "type" => c.rejected_type.fetch_add(1, Ordering::Relaxed),
            "missing_field" => c.rejected_missing.fetch_add(1, Ordering::Relaxed),
            _ => c.rejected_syntax.fetch_add(1, Ordering::Relaxed),
        };
    }
}

impl TapeBatchDecoder {
    pub(crate) fn new(schema: arrow::datatypes::SchemaRef, coerce_primitive: bool) -> Self {
        let decoder = new_decoder(&schema, coerce_primitive);
        Self { schema, coerce_primitive, decoder }
    }

    /// Decodes `records` into one batch in `schema`; bad ones are appended to `rejected`.
    /// Returns the batch and the record behind each of its rows.
    pub(crate) fn decode_records<'a>(
        &mut self,
        records: &[&'a RawRecord],
        rejected: &mut Vec<Rejected>,
    ) -> Result<(RecordBatch, Vec<&'a RawRecord>)> {
        let mut candidates: Vec<&RawRecord> = Vec::with_capacity(records.len());
        for &r in records {
            match &r.payload {
                Some(p) if looks_like_one_object(p) => candidates.push(r),
                Some(p) if p.trim_ascii().is_empty() => {
                    rejected.push(reject(r, "syntax", "empty record: no JSON object".into()))
                }
                None => rejected.push(reject(r, "syntax", "empty record: no JSON object".into())),
                // Not obviously one object: find out exactly what is wrong with it below.
                Some(_) => match self.decode_one(r) {
                    Ok(()) => candidates.push(r),
                    Err(rej) => rejected.push(rej),
                },
            }
        }

        let batch = match self.decode_all(&candidates) {
            Some(batch) => batch,
            None => {
                // Something in the batch is malformed: isolate it record by record.
                let mut good = Vec::with_capacity(candidates.len());
                for r in candidates {
                    match self.decode_one(r) {
                        Ok(()) => good.push(r),
                        Err(rej) => rejected.push(rej),
                    }
                }
                candidates = good;
                self.decode_all(&candidates).ok_or_else(|| {
                    arrow::error::ArrowError::JsonError(
                        "records that decode one by one failed to decode together".into(),
                    )
                })?
            }
        };

        Ok((batch, candidates))
    }

    /// Decodes all `records` in one pass; `None` if any of them fails or the row count is off.
    fn decode_all(&mut self, records: &[&RawRecord]) -> Option<RecordBatch> {
        let mut buf = Vec::with_capacity(records.iter().map(|r| payload(r).len() + 1).sum());
        for r in records {
            buf.extend_from_slice(payload(r));
            buf.push(b'\n');
        }
        let res = (|| {
            let mut off = 0;
            while off < buf.len() {
                let n = self.decoder.decode(&buf[off..])?;
                if n == 0 {
                    break;
                }
                off += n;
            }
            if self.decoder.has_partial_record() {
                return Err(arrow::error::ArrowError::JsonError("truncated".into()));
            }
            self.decoder.flush()
        })();
        match res {
            Ok(Some(b)) if b.num_rows() == records.len() => Some(b),
            Ok(None) if records.is_empty() => Some(RecordBatch::new_empty(self.schema.clone())),
            _ => {
                self.decoder = new_decoder(&self.schema, self.coerce_primitive);
                None
            }
        }
    }

    /// Decodes one record alone to learn whether, and why, it is bad.
    fn decode_one(&mut self, r: &RawRecord) -> std::result::Result<(), Rejected> {
        let p = payload(r);
        let res = match self.decoder.decode(p) {
            Err(e) => Err(("syntax", clean(e))),
            Ok(n) if n < p.len() && !p[n..].trim_ascii().is_empty() => {
                Err(("multiple", "more than one JSON value in the record".to_string()))
            }
            Ok(_) if self.decoder.has_partial_record() => {
                Err(("syntax", "truncated JSON: the record ends inside an object".to_string()))
            }
            Ok(_) => match self.decoder.flush() {
                Err(e) => Err(("type", clean(e))),
                Ok(None) => Err(("syntax", "no JSON object in the record".to_string())),
                Ok(Some(b)) if b.num_rows() != 1 => {
                    Err(("multiple", format!("{} JSON objects in one record", b.num_rows())))
                }
                Ok(Some(_)) => Ok(()),
            },
        };
        res.map_err(|(kind, reason)| {
            self.decoder = new_decoder(&self.schema, self.coerce_primitive);
            reject(r, kind, reason)
        })
    }
}

fn payload(r: &RawRecord) -> &[u8] {
    r.payload.as_deref().unwrap_or_default()
}

pub(crate) fn reject(r: &RawRecord, kind: &'static str, reason: String) -> Rejected {
    Rejected { payload: payload(r).to_vec(), key: r.key.clone(), pos: r.pos.clone(), kind, reason }
}

/// Arrow's messages are prefixed with the error class; keep the part a user can act on.
fn clean(e: arrow::error::ArrowError) -> String {
    let s = e.to_string();
    let s = s.strip_prefix("Json error: ").unwrap_or(&s);
    let s = s.strip_prefix("Parser error: ").unwrap_or(s);
    s.replace("whilst decoding field", "field").to_string()
}

/// Turns decoded wire rows into points: drops rows missing a required field (as rejects) and adds
/// the series key and id columns.
pub(crate) fn to_points(
    wire: &RecordBatch,
    records: &[&RawRecord],
) -> Result<(RecordBatch, Vec<SourcePos>, Vec<Rejected>)> {
    let ts = wire.column(0);
    let name = wire.column(1).as_string::<i32>();
    let value = wire.column(3);
    let n = wire.num_rows();

    let mut rejected = Vec::new();
    let mut keep = Vec::with_capacity(n);
    for (i, record) in records.iter().enumerate().take(n) {
        let missing: Vec<&str> = [(col::TS, ts.is_null(i)), (col::NAME, name.is_null(i)), (col::VALUE, value.is_null(i))]
            .iter()
            .filter(|(_, null)| *null)
            .map(|(f, _)| *f)
            .collect();
        if missing.is_empty() {
            keep.push(true);
        } else {
            keep.push(false);
            let fields = missing.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ");
            rejected.push(reject(record, "missing_field", format!("missing or null required field {fields}")));
        }
    }
    let wire = if rejected.is_empty() { wire.clone() } else { filter_record_batch(wire, &BooleanArray::from(keep.clone()))? };
    let positions = positions_of(records.iter().zip(&keep).filter(|(_, k)| **k).map(|(r, _)| &r.pos));

    let name = wire.column(1).as_string::<i32>();
    let labels_col: &MapArray = wire.column(2).as_map();
    let (keys, ids) = series_columns(name, labels_col);
    let cols: Vec<ArrayRef> = vec![
        wire.column(0).clone(),
        Arc::new(ids),
        Arc::new(keys),
        wire.column(1).clone(),
        wire.column(2).clone(),
        wire.column(3).clone(),
    ];
    Ok((RecordBatch::try_new(points_schema(), cols)?, positions, rejected))
}

/// Copies of `positions` whose topic names are new `Arc`s of this call's own: decoders run on
/// several cores at once, and cloning the source's one `Arc` per row from each of them would
/// make its reference count bounce between the cores' caches.
pub(crate) fn positions_of<'a>(positions: impl Iterator<Item = &'a SourcePos>) -> Vec<SourcePos> {
    let mut local: Option<(&'a Arc<str>, Arc<str>)> = None;
    positions
        .map(|p| {
            let topic = match &local {
                Some((source, mine)) if Arc::ptr_eq(source, &p.topic) => mine.clone(),
                _ => {
                    let mine: Arc<str> = Arc::from(&*p.topic);
                    local = Some((&p.topic, mine.clone()));
                    mine
                }
            };
            SourcePos { topic, partition: p.partition, offset: p.offset }
        })
        .collect()
}

fn series_columns(name: &StringArray, labels: &MapArray) -> (StringArray, arrow::array::UInt64Array) {
    let n = name.len();
    let mut keys = StringBuilder::with_capacity(n, n * 48);
    let mut ids = UInt64Builder::with_capacity(n);
    let lk = labels.keys().as_string::<i32>();
    let lv = labels.values().as_string::<i32>();
    let offsets = labels.value_offsets();
    for i in 0..n {
        let pairs = if labels.is_null(i) {
            0..0
        } else {
            offsets[i] as usize..offsets[i + 1] as usize
        };
        // The key is written straight into the column, then hashed where it lies.
        let begin = keys.offsets_slice().last().map_or(0, |o| *o as usize);
        write_series_key(&mut keys, name.value(i), pairs.map(|j| (lk.value(j), if lv.is_null(j) { "" } else { lv.value(j) })));
        ids.append_value(xxhash_rust::xxh3::xxh3_64(&keys.values_slice()[begin..]));
        keys.append_value("");
    }
    (keys.finish(), ids.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, TimestampMillisecondArray, UInt64Array};

    fn rec(offset: i64, s: &str) -> RawRecord {
        RawRecord {
            payload: Some(s.as_bytes().to_vec()),
            key: Some(b"k".to_vec()),
            pos: SourcePos { topic: "metrics".into(), partition: 0, offset },
        }
    }

    #[test]
    fn decodes_epoch_ms_and_rfc3339_timestamps_with_labels() {
        let mut d = JsonPointDecoder::default();
        let out = d
            .decode(&[
                rec(0, r#"{"ts": 1700000000000, "name": "cpu", "labels": {"service": "s", "host": "h1"}, "value": 0.5}"#),
                rec(1, r#"{"ts": "2023-11-14T22:13:20Z", "name": "cpu", "labels": {"host": "h1", "service": "s"}, "value": 1}"#),
                rec(2, r#"{"ts": 1700000000000, "name": "up", "value": 1}"#),
            ])
            .unwrap();
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        let p = &out.points;
        assert_eq!(p.num_rows(), 3);
        let ts = p.column(0).as_any().downcast_ref::<TimestampMillisecondArray>().unwrap();
        assert_eq!(ts.value(0), 1_700_000_000_000);
        assert_eq!(ts.value(1), 1_700_000_000_000);
        let keys = p.column(2).as_string::<i32>();
        assert_eq!(keys.value(0), r#"cpu{host="h1",service="s"}"#);
        assert_eq!(keys.value(1), keys.value(0));
        assert_eq!(keys.value(2), "up");
        let ids = p.column(1).as_any().downcast_ref::<UInt64Array>().unwrap();
        assert_eq!(ids.value(0), ids.value(1));
        for i in 0..3 {
            assert_eq!(ids.value(i), crate::series::series_id(keys.value(i)), "the id is the hash of the key written in place");
        }
        let v = p.column(5).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(v.value(1), 1.0);
        assert_eq!(out.positions.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn bad_records_are_rejected_with_reasons_and_good_ones_in_the_same_batch_survive() {
        let counters = Arc::new(IngestCounters::default());
        let mut d = JsonPointDecoder::new(counters.clone());
        let good = r#"{"ts": 1700000000000, "name": "cpu", "labels": {"host": "h1"}, "value": 0.5}"#;
        let out = d
            .decode(&[
                rec(0, good),
                rec(1, "this is not json"),
                rec(2, r#"{"ts": 1700000000000, "name": "cpu", "val"#), // truncated
                rec(3, r#"{"ts": 1700000000000, "name": "cpu", "value": "high"}"#), // wrong type
                rec(4, r#"{"ts": 1700000000000, "name": "cpu"}"#), // missing value
                rec(5, r#"{"ts": "yesterday", "name": "cpu", "value": 1}"#), // bad timestamp
                rec(6, good),
                rec(7, ""),
                rec(8, r#"{"ts": 1, "name": "a", "value": 1}{"ts": 2, "name": "b", "value": 2}"#),
                rec(9, r#"{"name": "cpu", "value": 1, "labels": {"host": 7}}"#), // missing ts, bad label
                rec(10, good),
            ])
            .unwrap();
        assert_eq!(out.points.num_rows(), 3);
        assert_eq!(out.positions.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![0, 6, 10]);
        let by_offset: std::collections::BTreeMap<i64, (&str, &str)> =
            out.rejected.iter().map(|r| (r.pos.offset, (r.kind, r.reason.as_str()))).collect();
        assert_eq!(by_offset.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 7, 8, 9]);
        assert_eq!(by_offset[&2].1, "truncated JSON: the record ends inside an object");
        assert!(by_offset[&3].1.contains("value"), "{}", by_offset[&3].1);
        assert_eq!(by_offset[&3].0, "type");
        assert_eq!(by_offset[&4], ("missing_field", "missing or null required field `value`"));
        assert!(by_offset[&5].1.contains("yesterday"), "{}", by_offset[&5].1);
        assert_eq!(by_offset[&7].1, "empty record: no JSON object");
        assert_eq!(by_offset[&8].0, "multiple");
        let rej = out.rejected.iter().find(|r| r.pos.offset == 1).unwrap();
        assert_eq!(rej.payload, b"this is not json");
        assert_eq!(rej.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(counters.records.load(Ordering::Relaxed), 11);
        assert_eq!(counters.points.load(Ordering::Relaxed), 3);
        assert_eq!(counters.rejected.load(Ordering::Relaxed), 8);
        assert_eq!(counters.rejected_missing.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn decoder_recovers_after_a_bad_batch() {
        let mut d = JsonPointDecoder::default();
        let _ = d.decode(&[rec(0, "{\"ts\": ")]).unwrap();
        let out = d.decode(&[rec(1, r#"{"ts": 5, "name": "m", "value": 2}"#)]).unwrap();
        assert_eq!(out.points.num_rows(), 1);
        assert!(out.rejected.is_empty());
    }

    #[test]
    fn empty_input_gives_an_empty_batch() {
        let mut d = JsonPointDecoder::default();
        let out = d.decode(&[]).unwrap();
        assert_eq!(out.points.num_rows(), 0);
        assert_eq!(out.points.schema(), points_schema());
    }
}
