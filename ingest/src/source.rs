//! The Kafka consumer: one member of a consumer group reading the metrics topics.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::json::RawRecord;
use crate::{Error, Result};

/// Where a record came from: topic, partition and offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcePos {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

/// Settings of a [`KafkaSource`].
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Consumer group id; offsets are committed for this group.
    pub group_id: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Most records returned by one [`KafkaSource::next_batch`].
    pub max_batch: usize,
    /// How long one [`KafkaSource::next_batch`] waits for a first record.
    pub poll_timeout: Duration,
    /// How long it keeps gathering after the first record, to fill a batch.
    pub linger: Duration,
    /// Extra librdkafka properties, passed through unchanged.
    pub properties: BTreeMap<String, String>,
}

/// A consumer-group member that reads batches of raw records and commits offsets on request only.
///
/// Auto-commit is off: offsets move only when [`KafkaSource::commit`] is called, which the engine
/// does after the results computed from those records are acknowledged by their sinks.
pub struct KafkaSource {
    consumer: StreamConsumer,
    topics: HashMap<String, Arc<str>>,
    cfg: KafkaSourceConfig,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").field("cfg", &self.cfg).finish()
    }
}

impl KafkaSource {
    /// Creates the consumer and subscribes to the configured topics.
    pub fn new(cfg: KafkaSourceConfig) -> Result<Self> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let consumer: StreamConsumer = cc.create().map_err(|e| Error::kafka("creating the consumer", e))?;
        let names: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| Error::kafka(format!("subscribing to {names:?}"), e))?;
        let topics = cfg.topics.iter().map(|t| (t.clone(), Arc::<str>::from(t.as_str()))).collect();
        Ok(Self { consumer, topics, cfg })
    }

    /// Waits up to `poll_timeout` for a record, then gathers more for up to `linger` or until
    /// `max_batch`. Returns an empty batch when nothing arrived.
    pub async fn next_batch(&mut self) -> Result<Vec<RawRecord>> {
        let mut out = Vec::new();
        let first = tokio::time::timeout(self.cfg.poll_timeout, self.consumer.recv()).await;
        let deadline = tokio::time::Instant::now() + self.cfg.linger;
        let mut next = match first {
            Err(_) => return Ok(out),
            Ok(r) => Some(r),
        };
        loop {
            match next.take() {
                Some(Ok(m)) => {
                    let topic = match self.topics.get(m.topic()) {
                        Some(t) => t.clone(),
                        None => Arc::from(m.topic()),
                    };
                    let pos = SourcePos { topic, partition: m.partition(), offset: m.offset() };
                    out.push(RawRecord { payload: m.payload().map(<[u8]>::to_vec), key: m.key().map(<[u8]>::to_vec), pos });
                }
                Some(Err(e)) => {
                    if out.is_empty() {
                        return Err(Error::kafka("receiving", e));
                    }
                    tracing::warn!(error = %e, "kafka receive error; returning the records gathered so far");
                    return Ok(out);
                }
                None => {}
            }
            if out.len() >= self.cfg.max_batch {
                return Ok(out);
            }
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(r) => next = Some(r),
                Err(_) => return Ok(out),
            }
        }
    }

    /// Commits, for each `(topic, partition)`, the offset of the next record to read.
    pub fn commit(&self, next_offsets: &[(Arc<str>, i32, i64)]) -> Result<()> {
        if next_offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in next_offsets {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o)).map_err(|e| Error::kafka("building the commit list", e))?;
        }
        self.consumer.commit(&tpl, CommitMode::Sync).map_err(|e| Error::kafka("committing offsets", e))
    }

    /// The partitions currently assigned to this member, as `(topic, partition)`.
    pub fn assignment(&self) -> Vec<(Arc<str>, i32)> {
        match self.consumer.assignment() {
            Ok(tpl) => tpl
                .elements()
                .iter()
                .map(|e| {
                    let t = self.topics.get(e.topic()).cloned().unwrap_or_else(|| Arc::from(e.topic()));
                    (t, e.partition())
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The offsets this group has committed for the partitions currently assigned.
    pub fn committed(&self, timeout: Duration) -> Result<Vec<(String, i32, i64)>> {
        let tpl = self.consumer.committed(timeout).map_err(|e| Error::kafka("reading committed offsets", e))?;
        Ok(tpl
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.topic().to_string(), e.partition(), o)),
                _ => None,
            })
            .collect())
    }
}
