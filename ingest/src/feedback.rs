//! The feedback topic's reader: answers to decisions (approve, reject, executed, failed,
//! snooze) from executors and people.
//!
//! Every engine reads every partition of it (no consumer group: an answer concerns the member
//! holding the decision, and each member ignores the answers about decisions it does not know).
//! Where reading resumes is part of the engine's checkpoint, not committed to Kafka, so that
//! the answers and the state they changed are restored together.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::close::{ClosedWithin, CLOSE_TIMEOUT};
use crate::json::RawRecord;
use crate::source::SourcePos;
use crate::{Error, Result};

/// Reads the feedback topic from given positions.
pub struct FeedbackSource {
    consumer: ClosedWithin<BaseConsumer>,
    topic: Arc<str>,
    /// Next offset to read per partition.
    next: BTreeMap<i32, i64>,
    assigned: bool,
    last_look: Option<Instant>,
}

impl std::fmt::Debug for FeedbackSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedbackSource").field("topic", &self.topic).field("next", &self.next).finish()
    }
}

impl FeedbackSource {
    /// A reader of `topic` that resumes at `positions` (partition → next offset); partitions
    /// without one are read from their beginning.
    pub fn new(brokers: &str, topic: &str, client_id: &str, positions: BTreeMap<i32, i64>, properties: &BTreeMap<String, String>) -> Result<Self> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", brokers)
            .set("group.id", format!("{client_id}.feedback"))
            .set("client.id", format!("{client_id}.feedback"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        for (k, v) in properties {
            if !matches!(k.as_str(), "group.id" | "group.instance.id" | "enable.auto.commit" | "partition.assignment.strategy") {
                cc.set(k, v);
            }
        }
        let consumer: BaseConsumer = cc.create().map_err(|e| Error::kafka("creating the feedback consumer", e))?;
        let mut s = Self { consumer: ClosedWithin::new("feedback consumer", consumer, CLOSE_TIMEOUT), topic: Arc::from(topic), next: positions, assigned: false, last_look: None };
        s.try_assign(Duration::from_secs(5));
        Ok(s)
    }

    /// Assigns every partition of the topic once it exists (looked for every 30 s, waiting at
    /// most `timeout` for the broker: after start this runs on the engine's loop).
    fn try_assign(&mut self, timeout: Duration) {
        if self.assigned || self.last_look.is_some_and(|t| t.elapsed() < Duration::from_secs(30)) {
            return;
        }
        self.last_look = Some(Instant::now());
        let parts: Vec<i32> = match self.consumer.fetch_metadata(Some(&self.topic), timeout) {
            Ok(md) => md.topics().iter().filter(|t| t.error().is_none()).flat_map(|t| t.partitions().iter().map(|p| p.id())).collect(),
            Err(e) => {
                tracing::debug!(error = %e, topic = %self.topic, "feedback topic metadata unavailable");
                return;
            }
        };
        if parts.is_empty() {
            tracing::warn!(topic = %self.topic, "the feedback topic does not exist (yet): approvals and snoozes wait until it does; looking again in 30 s");
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            let at = self.next.get(p).map_or(Offset::Beginning, |o| Offset::Offset(*o));
            let _ = tpl.add_partition_offset(&self.topic, *p, at);
        }
        match self.consumer.assign(&tpl) {
            Ok(()) => {
                self.assigned = true;
                tracing::info!(topic = %self.topic, partitions = parts.len(), "reading feedback");
            }
            Err(e) => tracing::warn!(error = %e, topic = %self.topic, "cannot read the feedback topic; trying again in 30 s"),
        }
    }

    /// The records that arrived, at most `max`, without waiting.
    pub fn poll(&mut self, max: usize) -> Vec<RawRecord> {
        self.try_assign(Duration::from_millis(500));
        let mut out = Vec::new();
        if !self.assigned {
            return out;
        }
        while out.len() < max {
            match self.consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => {
                    self.next.insert(m.partition(), m.offset() + 1);
                    out.push(RawRecord {
                        payload: m.payload().map(<[u8]>::to_vec),
                        key: m.key().map(<[u8]>::to_vec),
                        pos: SourcePos { topic: self.topic.clone(), partition: m.partition(), offset: m.offset() },
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "feedback poll");
                    break;
                }
                None => break,
            }
        }
        out
    }

    /// Where reading resumes, per partition (for the checkpoint).
    pub fn positions(&self) -> BTreeMap<i32, i64> {
        self.next.clone()
    }
}
