//! Offsets follow acknowledgements: when the broker refuses the decisions, the engine holds them
//! and retries (it does not stop), the input offsets of the window that produced them are not
//! committed, and a stop asked for meanwhile ends with an error naming what was not delivered.

use std::time::{Duration, Instant};

use crate::common::*;
use rdkafka::consumer::Consumer;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use vigil::Stats;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_not_committed_past_decisions_the_broker_did_not_acknowledge() {
    let kafka = Kafka::start(1);
    let t0 = 1_767_571_200_000i64;
    let mut input = Vec::new();
    for w in 0..40i64 {
        let v = if w == 30 { 5.0 } else { 1.0 + 0.01 * (w % 3) as f64 };
        input.push(point(t0 + w * 10_000, "cpu_utilization", "h1", "checkout", v));
    }
    kafka.produce(&input).await;

    let mut cfg = kafka.config("vigil-delivery");
    cfg.kafka.delivery_timeout = Duration::from_secs(2);
    let mut engine = vigil::Engine::new(&cfg, tables()).await.unwrap();
    // The broker now refuses every produce request: the decision about window 30 cannot be acked.
    kafka.cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 100_000]);

    let stats = engine.stats();
    let stop = engine.stop_handle();
    let run = tokio::spawn(async move { engine.run(std::future::pending(), |_| {}).await });
    let deadline = Instant::now() + Duration::from_secs(60);
    while Stats::get(&stats.delivery_failures) < 2 {
        assert!(Instant::now() < deadline, "the refused delivery was never retried: {stats:?}");
        assert!(!run.is_finished(), "the engine stopped instead of holding the decision");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(Stats::get(&stats.decisions), 0);
    // Whatever was committed stops at or before the spike's record (offset 30).
    let c = reader(&kafka.brokers, "vigil-delivery", &[]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("metrics", 0);
    let committed = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
    let at = match committed.elements()[0].offset() {
        Offset::Offset(o) => o,
        _ => 0,
    };
    drop(committed);
    assert!(at <= 30, "committed past an unacknowledged decision: {at}");
    stop.send(true).unwrap();
    let err = run.await.unwrap().expect_err("a stop while decisions are undelivered is an error");
    assert!(err.to_string().contains("decisions could not be delivered"), "{err}");
}
