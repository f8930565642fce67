//! The Kafka consumer: one member of a consumer group reading the metrics topics.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::close::{ClosedWithin, CLOSE_TIMEOUT};
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

/// A change of the partitions this member owns, in the order the group coordinator made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// These partitions were taken away (before the next owner gets them).
    Revoked(Vec<(Arc<str>, i32)>),
    /// These partitions were given to this member.
    Assigned(Vec<(Arc<str>, i32)>),
}

/// Records rebalances as they happen (librdkafka calls it from inside a poll), for the engine
/// to act on once the poll returns.
#[derive(Default)]
pub struct RebalanceLog {
    events: Mutex<Vec<RebalanceEvent>>,
    /// Consumer lag per partition from librdkafka's latest statistics.
    lag: Mutex<Vec<(String, i32, i64)>>,
    /// Commits the coordinator refused or that failed, since the last
    /// [`KafkaSource::take_commit_failures`].
    commit_failures: Mutex<Vec<rdkafka::error::KafkaError>>,
}

impl RebalanceLog {
    fn list(tpl: &TopicPartitionList) -> Vec<(Arc<str>, i32)> {
        tpl.elements().iter().map(|e| (Arc::from(e.topic()), e.partition())).collect()
    }
    fn push(&self, e: RebalanceEvent) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }
}

impl ClientContext for RebalanceLog {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lag: Vec<(String, i32, i64)> = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values().filter(|p| p.partition >= 0 && p.consumer_lag >= 0).map(|p| (t.topic.clone(), p.partition, p.consumer_lag)))
            .collect();
        lag.sort();
        *self.lag.lock().unwrap_or_else(|p| p.into_inner()) = lag;
    }
}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, _base: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "rebalance: partitions revoked");
                self.push(RebalanceEvent::Revoked(Self::list(tpl)));
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
    fn post_rebalance(&self, _base: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "rebalance: partitions assigned");
            self.push(RebalanceEvent::Assigned(Self::list(tpl)));
        }
    }
    /// The outcome of an asynchronous commit, delivered by a poll.
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            self.commit_failures.lock().unwrap_or_else(|p| p.into_inner()).push(e);
        }
    }
}

/// How the engine's consumer fetches, beyond librdkafka's defaults (`kafka.consumer` can
/// override each). A bench's bare consumer sets the same, so both fetch alike.
///
/// When the local queue is full, fetching resumes 10 ms later rather than librdkafka's default
/// 1 s: the engine drains a full queue in a few polls and then waited for the rest of that
/// second (measured: stalls of 0.8 s in a 1.4 s run).
pub const FETCH_PROPERTIES: &[(&str, &str)] = &[("fetch.queue.backoff.ms", "10")];

/// A consumer-group member that reads batches of raw records and commits offsets on request only.
///
/// Auto-commit is off: offsets move only when [`KafkaSource::commit`] is called, which the engine
/// does after the results computed from those records are durable. Partitions are assigned
/// with `cooperative-sticky` unless the consumer properties say otherwise, so a member joining
/// or leaving moves only the partitions it must; [`KafkaSource::take_rebalances`] says which.
pub struct KafkaSource {
    /// Shared only with the batch being gathered ahead and a broker check in flight
    /// ([`KafkaSource::check_broker`]).
    consumer: Arc<ClosedWithin<StreamConsumer<RebalanceLog>>>,
    topics: Arc<HashMap<String, Arc<str>>>,
    cfg: KafkaSourceConfig,
    /// The next batch, being gathered while the caller works on the last one.
    ahead: Option<tokio::task::JoinHandle<Result<Gathered>>>,
    /// The rebalances seen by the polls of the batches returned so far, not yet taken.
    rebalances: Vec<RebalanceEvent>,
}

/// A batch of records and the rebalances the polls that gathered it saw.
struct Gathered {
    records: Vec<RawRecord>,
    rebalances: Vec<RebalanceEvent>,
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
            .set("enable.partition.eof", "false")
            .set("partition.assignment.strategy", "cooperative-sticky")
            // Statistics carry the consumer lag per partition.
            .set("statistics.interval.ms", "5000");
        for (k, v) in FETCH_PROPERTIES {
            cc.set(*k, *v);
        }
        for (k, v) in &cfg.properties {
            cc.set(k, v);
        }
        let consumer: StreamConsumer<RebalanceLog> =
            cc.create_with_context(RebalanceLog::default()).map_err(|e| Error::kafka("creating the consumer", e))?;
        let names: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| Error::kafka(format!("subscribing to {names:?}"), e))?;
        let topics = Arc::new(cfg.topics.iter().map(|t| (t.clone(), Arc::<str>::from(t.as_str()))).collect());
        Ok(Self { consumer: Arc::new(ClosedWithin::new("metrics consumer", consumer, CLOSE_TIMEOUT)), topics, cfg, ahead: None, rebalances: Vec::new() })
    }

    /// Waits up to `poll_timeout` for a record, then gathers more for up to `linger` or until
    /// `max_batch`. Returns an empty batch when nothing arrived.
    ///
    /// After a batch with records, the next one is gathered beside the caller, on the runtime,
    /// while the caller works on this one; the next call takes it. Not after a batch whose polls
    /// saw a rebalance: the caller acts on it first ([`Self::take_rebalances`], perhaps a
    /// [`Self::seek`]), and the next batch is gathered after that, so no batch holds records
    /// fetched before a seek the caller made. Each rebalance is returned by
    /// [`Self::take_rebalances`] after the batch whose polls saw it, as when batches are
    /// gathered one at a time (only polls run the rebalance callbacks).
    pub async fn next_batch(&mut self) -> Result<Vec<RawRecord>> {
        // Cancel-safe: the batch gathered ahead stays held (and is dropped with the source)
        // until it is taken.
        let got = match self.ahead.as_mut() {
            Some(ahead) => {
                let got = ahead.await;
                self.ahead = None;
                got.map_err(|e| Error::Gather(e.to_string()))?
            }
            None => gather(&self.consumer, &self.topics, self.cfg.limits()).await,
        }?;
        let Gathered { records, rebalances } = got;
        if !records.is_empty() && rebalances.is_empty() && self.rebalances.is_empty() {
            let (consumer, topics, limits) = (Arc::clone(&self.consumer), Arc::clone(&self.topics), self.cfg.limits());
            self.ahead = Some(tokio::spawn(async move { gather(&consumer, &topics, limits).await }));
        }
        self.rebalances.extend(rebalances);
        Ok(records)
    }
}

impl Drop for KafkaSource {
    /// A batch being gathered ahead is dropped, and waited for briefly, so that the consumer
    /// is closed here (through [`ClosedWithin`]) rather than on a runtime thread later.
    fn drop(&mut self) {
        if let Some(ahead) = self.ahead.take() {
            ahead.abort();
            let until = std::time::Instant::now() + Duration::from_secs(1);
            while Arc::strong_count(&self.consumer) > 1 && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// How one batch is gathered (from [`KafkaSourceConfig`]).
#[derive(Debug, Clone, Copy)]
struct Limits {
    poll_timeout: Duration,
    linger: Duration,
    max_batch: usize,
}

impl KafkaSourceConfig {
    fn limits(&self) -> Limits {
        Limits { poll_timeout: self.poll_timeout, linger: self.linger, max_batch: self.max_batch }
    }
}

/// One batch (see [`gather_records`]) and the rebalances its polls saw. After an error, those
/// are left for the next batch.
async fn gather(consumer: &StreamConsumer<RebalanceLog>, topics: &HashMap<String, Arc<str>>, limits: Limits) -> Result<Gathered> {
    let records = gather_records(consumer, topics, limits).await?;
    let mut rebalances = std::mem::take(&mut *consumer.context().events.lock().unwrap_or_else(|p| p.into_inner()));
    for e in rebalances.iter_mut() {
        let (RebalanceEvent::Revoked(l) | RebalanceEvent::Assigned(l)) = e;
        for (t, _) in l.iter_mut() {
            if let Some(known) = topics.get(&**t) {
                *t = known.clone();
            }
        }
    }
    Ok(Gathered { records, rebalances })
}

/// One batch: waits up to `poll_timeout` for a record, then gathers more for up to `linger` or
/// until `max_batch`. Empty when nothing arrived.
async fn gather_records(consumer: &StreamConsumer<RebalanceLog>, topics: &HashMap<String, Arc<str>>, limits: Limits) -> Result<Vec<RawRecord>> {
    use futures::{FutureExt, StreamExt};
    let mut out = Vec::new();
    // One message stream for the whole poll: `recv` would register and drop a waker for
    // every record (a lock each time), which cost several times the rest of the path.
    let mut stream = consumer.stream();
    let first = tokio::time::timeout(limits.poll_timeout, stream.next()).await;
    let deadline = tokio::time::Instant::now() + limits.linger;
    let mut next = match first {
        Err(_) => return Ok(out),
        Ok(r) => r,
    };
    loop {
        match next.take() {
            Some(Ok(m)) => {
                let topic = match topics.get(m.topic()) {
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
        if out.len() >= limits.max_batch {
            return Ok(out);
        }
        // Records already fetched are taken without arming a timer for each.
        if let Some(r) = stream.next().now_or_never() {
            next = r;
            continue;
        }
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(r) => next = r,
            Err(_) => return Ok(out),
        }
    }
}

impl KafkaSource {
    /// Commits, for each `(topic, partition)`, the offset of the next record to read, without
    /// waiting: the request goes to the group coordinator in the background and a failure comes
    /// back through [`Self::take_commit_failures`] after a later poll. librdkafka's synchronous
    /// commit waits without a time limit, and while the coordinator is unreachable (a broker
    /// outage) it can wait for good, even after the broker is back, which would stall the
    /// engine's loop. Offsets only move forward, so a later commit covers a failed one.
    pub fn commit(&self, next_offsets: &[(Arc<str>, i32, i64)]) -> Result<()> {
        if next_offsets.is_empty() {
            return Ok(());
        }
        self.consumer.commit(&Self::commit_list(next_offsets)?, CommitMode::Async).map_err(|e| Error::kafka("committing offsets", e))
    }

    /// Commits like [`Self::commit`], then waits at most `timeout` until the group's committed
    /// offsets read back as these (the final commit at shutdown). A coordinator that does not
    /// confirm in time is an error naming the timeout; the offsets may still land.
    pub fn commit_within(&self, next_offsets: &[(Arc<str>, i32, i64)], timeout: Duration) -> Result<()> {
        if next_offsets.is_empty() {
            return Ok(());
        }
        self.commit(next_offsets)?;
        let deadline = std::time::Instant::now() + timeout;
        let parts: Vec<(Arc<str>, i32)> = next_offsets.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if let Ok(got) = self.committed_for(&parts, left.min(Duration::from_secs(1)).max(Duration::from_millis(50))) {
                let landed = next_offsets.iter().all(|(t, p, o)| got.iter().any(|(gt, gp, go)| gt == t && gp == p && go >= o));
                if landed {
                    return Ok(());
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::kafka(
                    format!("committing offsets: the group coordinator did not confirm them within {timeout:?}"),
                    rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::OperationTimedOut),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Commits that failed since the last call (reported by polls after [`Self::commit`]).
    pub fn take_commit_failures(&self) -> Vec<rdkafka::error::KafkaError> {
        std::mem::take(&mut *self.consumer.context().commit_failures.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn commit_list(next_offsets: &[(Arc<str>, i32, i64)]) -> Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in next_offsets {
            tpl.add_partition_offset(t, *p, Offset::Offset(*o)).map_err(|e| Error::kafka("building the commit list", e))?;
        }
        Ok(tpl)
    }

    /// The rebalances seen by the polls of the batches returned since the last call, oldest
    /// first.
    pub fn take_rebalances(&mut self) -> Vec<RebalanceEvent> {
        std::mem::take(&mut self.rebalances)
    }

    /// Moves the read position of an assigned partition (to resume from a checkpoint that is
    /// older than the group's committed offset). Records of that partition already returned
    /// by [`Self::next_batch`] should be discarded by the caller: they will be read again.
    pub fn seek(&self, topic: &str, partition: i32, offset: i64) -> Result<()> {
        self.consumer
            .seek(topic, partition, Offset::Offset(offset), Duration::from_secs(10))
            .map_err(|e| Error::kafka(format!("seeking {topic}/{partition} to {offset}"), e))
    }

    /// Consumer lag per partition (records between this member's position and the partition's
    /// end), as of librdkafka's latest statistics (every 5 s).
    pub fn lag(&self) -> Vec<(Arc<str>, i32, i64)> {
        let assigned = self.assignment();
        self.consumer
            .context()
            .lag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(t, p, l)| assigned.iter().find(|(at, ap)| **at == **t && ap == p).map(|(at, _)| (at.clone(), *p, *l)))
            .collect()
    }

    /// Whether the client currently has a connection to a broker that answers: a request for
    /// the first subscribed topic's metadata within `timeout`, on a blocking thread of the
    /// runtime, so the caller goes on while it is out (it waits up to `timeout`, all of it when
    /// no broker answers, and a busy broker may take as long). The consumer is closed when the
    /// check, if still running, ends.
    pub fn check_broker(&self, timeout: Duration) -> tokio::task::JoinHandle<bool> {
        let consumer = Arc::clone(&self.consumer);
        let topic = self.cfg.topics.first().cloned();
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(topic.as_deref(), timeout).is_ok())
    }

    /// The offsets this group has committed for `partitions` (missing: none committed).
    pub fn committed_for(&self, partitions: &[(Arc<str>, i32)], timeout: Duration) -> Result<Vec<(Arc<str>, i32, i64)>> {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in partitions {
            tpl.add_partition(t, *p);
        }
        let got = self.consumer.committed_offsets(tpl, timeout).map_err(|e| Error::kafka("reading committed offsets", e))?;
        Ok(got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((self.topics.get(e.topic()).cloned().unwrap_or_else(|| Arc::from(e.topic())), e.partition(), o)),
                _ => None,
            })
            .collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    /// A mock cluster with topic `t` of two partitions holding `n` records, each `p<partition>-<i>`.
    fn cluster_with(n: usize) -> (MockCluster<'static, DefaultProducerContext>, String) {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("t", 2, 1).expect("topic");
        let brokers = cluster.bootstrap_servers();
        let producer: ThreadedProducer<DefaultProducerContext> =
            ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("producer");
        for i in 0..n {
            let p = (i % 2) as i32;
            let payload = format!("p{p}-{i}");
            producer.send(BaseRecord::<(), _>::to("t").partition(p).payload(&payload)).map_err(|(e, _)| e).expect("send");
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
        (cluster, brokers)
    }

    fn source(brokers: &str, max_batch: usize) -> KafkaSource {
        KafkaSource::new(KafkaSourceConfig {
            brokers: brokers.into(),
            group_id: "g".into(),
            topics: vec!["t".into()],
            max_batch,
            poll_timeout: Duration::from_secs(5),
            linger: Duration::from_millis(0),
            properties: BTreeMap::new(),
        })
        .expect("source")
    }

    fn offsets(records: &[RawRecord]) -> Vec<(i32, i64)> {
        records.iter().map(|r| (r.pos.partition, r.pos.offset)).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_batch_is_gathered_ahead_except_after_a_rebalance_and_each_record_comes_once() {
        let (_cluster, brokers) = cluster_with(40);
        let mut src = source(&brokers, 5);
        // The polls that see the assignment gather no batch ahead: the caller acts on the
        // rebalance first.
        let mut read = Vec::new();
        let mut rebalances = Vec::new();
        while read.is_empty() {
            read.extend(src.next_batch().await.expect("batch"));
            let seen = src.take_rebalances();
            assert!(seen.is_empty() || src.ahead.is_none(), "a batch was gathered ahead after a rebalance");
            rebalances.extend(seen);
        }
        assert!(matches!(rebalances.as_slice(), [RebalanceEvent::Assigned(p)] if p.len() == 2), "{rebalances:?}");
        // With the assignment acted on, the next batch is gathered while this one is worked on.
        let next = src.next_batch().await.expect("batch");
        assert!(!next.is_empty());
        assert!(src.ahead.is_some(), "no batch was gathered ahead of the caller");
        read.extend(next);
        while read.len() < 40 {
            read.extend(src.next_batch().await.expect("batch"));
        }
        // Every record once, each partition in offset order.
        for p in 0..2 {
            let got: Vec<i64> = offsets(&read).into_iter().filter(|(q, _)| *q == p).map(|(_, o)| o).collect();
            assert_eq!(got, (0..20).collect::<Vec<i64>>(), "partition {p}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_seek_on_a_rebalance_the_partition_is_read_from_there_and_nothing_fetched_before_it_comes() {
        let (_cluster, brokers) = cluster_with(40);
        let mut src = source(&brokers, 4);
        // Up to the batch whose polls saw the assignment, as the engine does on a restore.
        let mut first = Vec::new();
        loop {
            first.extend(src.next_batch().await.expect("batch"));
            if !src.take_rebalances().is_empty() {
                break;
            }
        }
        assert!(src.ahead.is_none());
        src.seek("t", 0, 15).expect("seek");
        let mut rest = Vec::new();
        while rest.iter().filter(|r: &&RawRecord| r.pos.partition == 0).count() < 5 {
            rest.extend(src.next_batch().await.expect("batch"));
        }
        let p0: Vec<i64> = offsets(&rest).into_iter().filter(|(q, _)| *q == 0).map(|(_, o)| o).collect();
        assert_eq!(p0[..5], [15, 16, 17, 18, 19], "partition 0 after the seek: {p0:?} (before it: {:?})", offsets(&first));
    }
}
