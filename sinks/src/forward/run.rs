//! The forward loop: read a decision, deliver it to every target, then commit its offset.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::Instrument;

use super::deliver::{self, Backoff, Endpoint, Outcome};
use super::payloads::parse_decision;
use super::{ConfigProblem, ForwardConfig, StartFrom};
use crate::kafka::{producer, KafkaSinkConfig, DLQ_HEADERS};

/// Errors that stop the forwarder before it runs. Once running, it does not fail: receivers
/// and brokers that do not answer are retried until a stop is requested.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The `[forward]` section cannot run.
    #[error(transparent)]
    Config(#[from] ConfigProblem),
    /// The Kafka consumer or producer cannot be created, or the subscription fails.
    #[error("{context}: {source}")]
    Kafka {
        /// What was being done.
        context: &'static str,
        /// The client's error.
        source: KafkaError,
    },
    /// The HTTP client cannot be built (e.g. the TLS roots cannot be loaded).
    #[error("building the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Counters of a running forwarder (shared; read them while it runs).
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Records read from the topic.
    pub records: AtomicU64,
    /// Records every target accepted.
    pub delivered: AtomicU64,
    /// HTTP requests sent, retries included.
    pub requests: AtomicU64,
    /// Requests that failed and were retried (connection error, timeout, 429, 5xx).
    pub retries: AtomicU64,
    /// Records a target refused for good (a 4xx other than 429).
    pub refused: AtomicU64,
    /// Records that are not decisions.
    pub malformed: AtomicU64,
    /// Records written to the dead-letter topic (refused or malformed).
    pub dead_lettered: AtomicU64,
    /// Records whose offset was stored for commit (delivered or dead-lettered).
    pub done: AtomicU64,
}

/// A snapshot of [`ForwardStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardCounts {
    /// Records read from the topic.
    pub records: u64,
    /// Records every target accepted.
    pub delivered: u64,
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Requests that failed and were retried.
    pub retries: u64,
    /// Records a target refused for good.
    pub refused: u64,
    /// Records that are not decisions.
    pub malformed: u64,
    /// Records written to the dead-letter topic.
    pub dead_lettered: u64,
    /// Records done with (delivered or dead-lettered) and committed.
    pub done: u64,
}

impl ForwardStats {
    /// The counters now.
    pub fn snapshot(&self) -> ForwardCounts {
        ForwardCounts {
            records: self.records.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            requests: self.requests.load(Relaxed),
            retries: self.retries.load(Relaxed),
            refused: self.refused.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            done: self.done.load(Relaxed),
        }
    }
}

/// Logs rebalances and failed commits of the forwarder's consumer.
struct ForwardContext;

impl ClientContext for ForwardContext {}

impl ConsumerContext for ForwardContext {
    fn post_rebalance(&self, _base: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => tracing::info!(partitions = tpl.count(), "rebalance: partitions assigned"),
            Rebalance::Revoke(tpl) => tracing::info!(partitions = tpl.count(), "rebalance: partitions revoked"),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(offsets = ?offsets.to_topic_map(), "offsets committed"),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            // The records are delivered again after a restart or a rebalance: at least once.
            Err(e) => tracing::warn!(error = %e, "committing offsets failed; a later commit covers them"),
        }
    }
}

/// Reads decisions from the topic as a consumer group and delivers each one to every target,
/// in order per partition, committing its offset only once every target has accepted it or it
/// has been dead-lettered.
pub struct Forwarder {
    consumer: vigil_ingest::ClosedWithin<StreamConsumer<ForwardContext>>,
    dlq: FutureProducer,
    client: reqwest::Client,
    endpoints: Vec<Endpoint>,
    cfg: ForwardConfig,
    stats: Arc<ForwardStats>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the targets: their headers and routing keys are secrets.
        let targets: Vec<&str> = self.endpoints.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("Forwarder").field("group_id", &self.cfg.group_id).field("topic", &self.cfg.topic).field("targets", &targets).finish()
    }
}

impl Forwarder {
    /// Checks `cfg` (it needs at least one target), builds the HTTP client and the dead-letter
    /// producer (with `kafka`'s brokers and producer properties) and subscribes the consumer
    /// (`kafka.brokers`, plus `consumer_properties` passed to librdkafka unchanged).
    pub fn new(cfg: &ForwardConfig, kafka: &KafkaSinkConfig, consumer_properties: &BTreeMap<String, String>) -> Result<Self, ForwardError> {
        cfg.validate_for_run()?;
        let endpoints = cfg.targets.iter().map(Endpoint::new).collect::<Result<Vec<_>, _>>()?;
        let client = deliver::client(cfg)?;
        let dlq = producer(kafka).map_err(|e| match e {
            crate::Error::Create(source) => ForwardError::Kafka { context: "creating the dead-letter producer", source },
            other => unreachable!("creating a producer fails only with Create: {other}"),
        })?;
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &kafka.brokers)
            .set("enable.partition.eof", "false")
            .set("partition.assignment.strategy", "cooperative-sticky");
        for (k, v) in consumer_properties {
            cc.set(k, v);
        }
        // What the delivery guarantee rests on is not left to the shared properties.
        cc.set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", match cfg.start_from {
                StartFrom::Latest => "latest",
                StartFrom::Earliest => "earliest",
            });
        let consumer: StreamConsumer<ForwardContext> =
            cc.create_with_context(ForwardContext).map_err(|source| ForwardError::Kafka { context: "creating the consumer", source })?;
        consumer.subscribe(&[&cfg.topic]).map_err(|source| ForwardError::Kafka { context: "subscribing to the decisions topic", source })?;
        let consumer = vigil_ingest::ClosedWithin::new("forwarder consumer", consumer, vigil_ingest::CLOSE_TIMEOUT);
        Ok(Self { consumer, dlq, client, endpoints, cfg: cfg.clone(), stats: Arc::default() })
    }

    /// The counters, to read while [`Self::run`] runs.
    pub fn stats(&self) -> Arc<ForwardStats> {
        self.stats.clone()
    }

    /// Forwards until `stop` resolves, then commits what was delivered and returns the
    /// counters. A delivery still being retried at the stop is not committed: its record is
    /// delivered again by the next run.
    pub async fn run(self, stop: impl Future<Output = ()>) -> Result<ForwardCounts, ForwardError> {
        let span = tracing::info_span!("forward", group = %self.cfg.group_id, topic = %self.cfg.topic);
        async move {
            let targets: Vec<String> = self.endpoints.iter().map(|e| format!("{} ({})", e.name, e.kind.as_str())).collect();
            tracing::info!(?targets, "forwarding decisions");
            tokio::pin!(stop);
            loop {
                let received = tokio::select! {
                    biased;
                    () = &mut stop => break,
                    m = self.consumer.recv() => m.map(|m| m.detach()),
                };
                let msg = match received {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "receiving from Kafka");
                        tokio::select! {
                            biased;
                            () = &mut stop => break,
                            () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        }
                    }
                };
                self.stats.records.fetch_add(1, Relaxed);
                tokio::select! {
                    biased;
                    () = &mut stop => {
                        tracing::info!(partition = msg.partition(), offset = msg.offset(), "stopping with a record undelivered; it is delivered again by the next run");
                        break;
                    }
                    () = self.handle(&msg) => {}
                }
                self.done(&msg);
            }
            match self.consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::warn!(error = %e, "final commit failed; the last records are delivered again by the next run"),
            }
            let _ = self.dlq.flush(Duration::from_secs(5));
            let counts = self.stats.snapshot();
            tracing::info!(?counts, "stopped");
            Ok(counts)
        }
        .instrument(span)
        .await
    }

    /// Stores the record's offset and commits it (the record was delivered or dead-lettered).
    fn done(&self, m: &OwnedMessage) {
        let mut tpl = TopicPartitionList::new();
        let stored = tpl
            .add_partition_offset(m.topic(), m.partition(), Offset::Offset(m.offset() + 1))
            .and_then(|()| self.consumer.store_offsets(&tpl));
        match stored {
            Ok(()) => {
                self.stats.done.fetch_add(1, Relaxed);
                if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Async) {
                    tracing::warn!(error = %e, "committing offsets failed; a later commit covers them");
                }
            }
            // The partition was taken away meanwhile: its new owner reads the record again.
            Err(e) => tracing::warn!(error = %e, partition = m.partition(), offset = m.offset(), "cannot store the offset"),
        }
    }

    /// Delivers one record to every target (concurrently, each retried on its own) or
    /// dead-letters it. Returns once it is done with; a stop is a drop of this future.
    async fn handle(&self, m: &OwnedMessage) {
        let span = tracing::info_span!("record", partition = m.partition(), offset = m.offset(), id = tracing::field::Empty);
        async {
            let raw = m.payload().unwrap_or_default();
            let parsed = match parse_decision(raw) {
                Ok(p) => p,
                Err(reason) => {
                    self.stats.malformed.fetch_add(1, Relaxed);
                    tracing::warn!(%reason, "malformed record; it goes to the dead-letter topic");
                    self.dead_letter(m, "malformed_decision", &reason, None).await;
                    return;
                }
            };
            tracing::Span::current().record("id", parsed.decision.id.as_str());
            let ce = ce_attributes(m);
            let deliveries = self.endpoints.iter().map(|ep| {
                let (body, headers) = ep.request(&parsed, raw, &ce);
                let span = tracing::info_span!("target", name = %ep.name, kind = ep.kind.as_str());
                async move { (ep, deliver::deliver(&self.client, ep, body, headers, &self.cfg, &self.stats).await) }.instrument(span)
            });
            let mut refused_by = Vec::new();
            let mut reasons = Vec::new();
            for (ep, outcome) in join_all(deliveries).await {
                if let Outcome::Refused(reason) = outcome {
                    refused_by.push(ep.name.as_str());
                    reasons.push(reason);
                }
            }
            if refused_by.is_empty() {
                self.stats.delivered.fetch_add(1, Relaxed);
                tracing::debug!(status = parsed.decision.status.as_str(), "delivered to every target");
            } else {
                self.stats.refused.fetch_add(1, Relaxed);
                self.dead_letter(m, "refused_by_target", &reasons.join("; "), Some(&refused_by.join(","))).await;
            }
        }
        .instrument(span)
        .await
    }

    /// Writes the record, unchanged (key, payload, headers), to the dead-letter topic with the
    /// reason, its kind and the source position in headers; retries until the broker accepts it.
    async fn dead_letter(&self, m: &OwnedMessage, kind: &str, reason: &str, targets: Option<&str>) {
        let pos = [m.topic().to_string(), m.partition().to_string(), m.offset().to_string()];
        let mut backoff = Backoff::new(self.cfg.min_backoff, self.cfg.max_backoff);
        loop {
            let mut headers = OwnedHeaders::new();
            if let Some(h) = m.headers() {
                for hd in h.iter() {
                    headers = headers.insert(Header { key: hd.key, value: hd.value });
                }
            }
            headers = headers
                .insert(Header { key: DLQ_HEADERS[0], value: Some(reason) })
                .insert(Header { key: DLQ_HEADERS[1], value: Some(kind) })
                .insert(Header { key: DLQ_HEADERS[2], value: Some(pos[0].as_str()) })
                .insert(Header { key: DLQ_HEADERS[3], value: Some(pos[1].as_str()) })
                .insert(Header { key: DLQ_HEADERS[4], value: Some(pos[2].as_str()) });
            if let Some(t) = targets {
                headers = headers.insert(Header { key: "vigil.forward.targets", value: Some(t) });
            }
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.cfg.dlq_topic).headers(headers);
            if let Some(p) = m.payload() {
                rec = rec.payload(p);
            }
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            match self.dlq.send(rec, Duration::from_secs(5)).await {
                Ok(_) => {
                    self.stats.dead_lettered.fetch_add(1, Relaxed);
                    tracing::info!(topic = %self.cfg.dlq_topic, kind, "dead-lettered");
                    return;
                }
                Err((e, _)) => {
                    let wait = backoff.next_delay();
                    tracing::error!(error = %e, retry_in = ?wait, "writing to the dead-letter topic failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// The record's CloudEvents attributes (`ce_*` headers) as text.
fn ce_attributes(m: &OwnedMessage) -> Vec<(String, String)> {
    let Some(h) = m.headers() else { return Vec::new() };
    h.iter()
        .filter(|hd| hd.key.starts_with("ce_") && hd.key.len() > 3)
        .filter_map(|hd| Some((hd.key.to_string(), std::str::from_utf8(hd.value?).ok()?.to_string())))
        .collect()
}
