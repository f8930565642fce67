//! Kafka sinks.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use vigil_ingest::Rejected;
use vigil_models::Decision;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the sinks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Occurs when the producer cannot be created.
    #[error("kafka producer: {0}")]
    Create(rdkafka::error::KafkaError),
    /// Occurs when the broker did not acknowledge a record (after librdkafka's retries).
    #[error("delivery to `{topic}` failed for {failed} of {total} records: {first}")]
    Delivery {
        /// Topic written to.
        topic: String,
        /// Records not acknowledged.
        failed: usize,
        /// Records sent.
        total: usize,
        /// The first error.
        first: rdkafka::error::KafkaError,
    },
    /// Occurs when a topic cannot be read back (the decisions topic's tail at start).
    #[error("reading `{topic}`: {source}")]
    Read {
        /// Topic read.
        topic: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// Occurs when a decision cannot be serialised (a bug in Vigil).
    #[error("serialising a decision: {0}")]
    Json(#[from] serde_json::Error),
}

/// Producer settings shared by the sinks.
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// How long librdkafka keeps retrying a record before reporting it failed.
    pub delivery_timeout: Duration,
    /// Extra librdkafka properties, passed through unchanged.
    pub properties: BTreeMap<String, String>,
}

pub(crate) fn producer(cfg: &KafkaSinkConfig) -> Result<FutureProducer> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", cfg.delivery_timeout.as_millis().to_string());
    for (k, v) in &cfg.properties {
        cc.set(k, v);
    }
    cc.create().map_err(Error::Create)
}

async fn deliver<'a>(
    producer: &FutureProducer,
    topic: &str,
    records: impl Iterator<Item = FutureRecord<'a, [u8], [u8]>>,
) -> Result<usize> {
    let futs: Vec<_> = records.map(|r| producer.send(r, Duration::from_secs(5))).collect();
    let total = futs.len();
    let results = join_all(futs).await;
    let mut failed = 0;
    let mut first = None;
    for r in results {
        if let Err((e, _)) = r {
            failed += 1;
            first.get_or_insert(e);
        }
    }
    match first {
        None => Ok(total),
        Some(first) => Err(Error::Delivery { topic: topic.to_string(), failed, total, first }),
    }
}

/// Publishes decisions to Kafka as CloudEvents (binary mode) with JSON bodies.
pub struct DecisionSink {
    producer: FutureProducer,
    topic: String,
    source: String,
}

impl std::fmt::Debug for DecisionSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionSink").field("topic", &self.topic).finish()
    }
}

impl DecisionSink {
    /// A sink writing to `topic`; `source` becomes the CloudEvents `ce_source`.
    pub fn new(cfg: &KafkaSinkConfig, topic: &str, source: &str) -> Result<Self> {
        Ok(Self { producer: producer(cfg)?, topic: topic.to_string(), source: source.to_string() })
    }

    /// Sends every decision and waits until the broker acknowledged all of them.
    pub async fn publish(&self, decisions: &[Decision]) -> Result<usize> {
        if decisions.is_empty() {
            return Ok(0);
        }
        let bodies: Vec<Vec<u8>> = decisions.iter().map(serde_json::to_vec).collect::<Result<_, _>>()?;
        let ce_type: Vec<String> = decisions.iter().map(Decision::ce_type).collect();
        let records = decisions.iter().zip(&bodies).zip(&ce_type).map(|((d, body), ty)| {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "ce_specversion", value: Some("1.0") })
                .insert(Header { key: "ce_id", value: Some(d.id.as_str()) })
                .insert(Header { key: "ce_type", value: Some(ty.as_str()) })
                .insert(Header { key: "ce_source", value: Some(self.source.as_str()) })
                .insert(Header { key: "ce_time", value: Some(d.time.as_str()) })
                .insert(Header { key: "ce_subject", value: Some(d.entity()) })
                .insert(Header { key: "content-type", value: Some("application/json") });
            FutureRecord::to(&self.topic).key(d.entity().as_bytes()).payload(body.as_slice()).headers(headers)
        });
        let n = deliver(&self.producer, &self.topic, records).await?;
        tracing::debug!(topic = %self.topic, decisions = n, "decisions acknowledged");
        Ok(n)
    }

    /// Waits for anything still queued (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// Header names on dead-lettered records.
pub const DLQ_HEADERS: [&str; 5] =
    ["vigil.error", "vigil.error.kind", "vigil.source.topic", "vigil.source.partition", "vigil.source.offset"];

/// Publishes undecodable records to the dead-letter topic.
pub struct DeadLetterSink {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for DeadLetterSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterSink").field("topic", &self.topic).finish()
    }
}

impl DeadLetterSink {
    /// A sink writing to `topic`.
    pub fn new(cfg: &KafkaSinkConfig, topic: &str) -> Result<Self> {
        Ok(Self { producer: producer(cfg)?, topic: topic.to_string() })
    }

    /// Sends every rejected record, original key and payload, with the reason and source position
    /// in headers, and waits for the broker's acknowledgement.
    pub async fn publish(&self, rejected: &[Rejected]) -> Result<usize> {
        if rejected.is_empty() {
            return Ok(0);
        }
        let meta: Vec<[String; 3]> =
            rejected.iter().map(|r| [r.pos.topic.to_string(), r.pos.partition.to_string(), r.pos.offset.to_string()]).collect();
        let records = rejected.iter().zip(&meta).map(|(r, m)| {
            let headers = OwnedHeaders::new()
                .insert(Header { key: DLQ_HEADERS[0], value: Some(r.reason.as_str()) })
                .insert(Header { key: DLQ_HEADERS[1], value: Some(r.kind) })
                .insert(Header { key: DLQ_HEADERS[2], value: Some(m[0].as_str()) })
                .insert(Header { key: DLQ_HEADERS[3], value: Some(m[1].as_str()) })
                .insert(Header { key: DLQ_HEADERS[4], value: Some(m[2].as_str()) });
            let mut rec = FutureRecord::to(&self.topic).payload(r.payload.as_slice()).headers(headers);
            if let Some(k) = &r.key {
                rec = rec.key(k.as_slice());
            }
            rec
        });
        deliver(&self.producer, &self.topic, records).await
    }
}

/// Publishes rows that arrived behind the watermark to the late topic: one JSON object per row
/// (the row as decoded), with the reason, the watermark and the source position in headers.
pub struct LateSink {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for LateSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LateSink").field("topic", &self.topic).finish()
    }
}

/// One late row to publish.
#[derive(Debug)]
pub struct LateRecord<'a> {
    /// The row as JSON.
    pub json: &'a [u8],
    /// Why it is late.
    pub reason: &'a str,
    /// Where it came from.
    pub pos: &'a vigil_ingest::SourcePos,
}

impl LateSink {
    /// A sink writing to `topic`.
    pub fn new(cfg: &KafkaSinkConfig, topic: &str) -> Result<Self> {
        Ok(Self { producer: producer(cfg)?, topic: topic.to_string() })
    }

    /// Waits for anything still queued (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }

    /// Sends the rows and waits for the broker's acknowledgement.
    pub async fn publish(&self, rows: &[LateRecord<'_>]) -> Result<usize> {
        if rows.is_empty() {
            return Ok(0);
        }
        let meta: Vec<[String; 3]> = rows.iter().map(|r| [r.pos.topic.to_string(), r.pos.partition.to_string(), r.pos.offset.to_string()]).collect();
        let records = rows.iter().zip(&meta).map(|(r, m)| {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "vigil.late.reason", value: Some(r.reason) })
                .insert(Header { key: DLQ_HEADERS[2], value: Some(m[0].as_str()) })
                .insert(Header { key: DLQ_HEADERS[3], value: Some(m[1].as_str()) })
                .insert(Header { key: DLQ_HEADERS[4], value: Some(m[2].as_str()) })
                .insert(Header { key: "content-type", value: Some("application/json") });
            FutureRecord::<[u8], [u8]>::to(&self.topic).payload(r.json).headers(headers)
        });
        deliver(&self.producer, &self.topic, records).await
    }
}

/// A client context for reading a topic to its end: the end of a partition is expected, not an
/// error worth logging.
struct QuietEof;

impl rdkafka::ClientContext for QuietEof {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode;
        if !matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::warn!(error = %error, reason, "reading the decisions topic");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

/// The CloudEvents ids (`ce_id`) of the newest `per_partition` records of every partition of
/// `topic`: what was already published, so a replay after a crash does not publish it again.
/// A topic that does not exist yet has none.
pub fn published_ids(brokers: &str, topic: &str, per_partition: usize, timeout: Duration) -> Result<std::collections::HashSet<String>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::{Offset, TopicPartitionList};
    let mut ids = std::collections::HashSet::new();
    if per_partition == 0 {
        return Ok(ids);
    }
    let consumer: BaseConsumer<QuietEof> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "vigil-published-ids")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "50")
        .create_with_context(QuietEof)
        .map_err(Error::Create)?;
    let consumer = vigil_ingest::ClosedWithin::new("published-ids reader", consumer, vigil_ingest::CLOSE_TIMEOUT);
    let md = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| Error::Read { topic: topic.to_string(), source: e })?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (lo, hi) = consumer.fetch_watermarks(topic, p.id(), timeout).map_err(|e| Error::Read { topic: topic.to_string(), source: e })?;
            if hi > lo {
                let from = (hi - per_partition as i64).max(lo);
                tpl.add_partition_offset(topic, p.id(), Offset::Offset(from)).map_err(|e| Error::Read { topic: topic.to_string(), source: e })?;
                ends.insert(p.id(), hi);
            }
        }
    }
    if ends.is_empty() {
        return Ok(ids);
    }
    consumer.assign(&tpl).map_err(|e| Error::Read { topic: topic.to_string(), source: e })?;
    let deadline = std::time::Instant::now() + timeout;
    while !ends.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(Error::Read { topic: topic.to_string(), source: rdkafka::error::KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::OperationTimedOut) });
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if let Some(h) = m.headers() {
                    for i in 0..h.count() {
                        let hd = h.get(i);
                        if hd.key == "ce_id" {
                            if let Some(v) = hd.value {
                                ids.insert(String::from_utf8_lossy(v).into_owned());
                            }
                        }
                    }
                }
            }
            // The end of a partition as the broker reports it while fetching (some brokers'
            // answer to a watermark request is not the true end).
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ends.remove(&p);
            }
            Some(Err(e)) => return Err(Error::Read { topic: topic.to_string(), source: e }),
            None => {}
        }
    }
    Ok(ids)
}
