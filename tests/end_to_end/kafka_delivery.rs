//! Offsets follow acknowledgements: when the broker refuses the decisions, the engine stops with
//! an error and the input offsets of the window that produced them are not committed.



use std::time::Duration;

use crate::common::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
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
    cfg.kafka.delivery_timeout = Duration::from_secs(3);
    let mut engine = vigil::Engine::new(&cfg, tables()).await.unwrap();
    // The broker now refuses every produce request: the decision about window 30 cannot be acked.
    kafka.cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 64]);

    let stats = engine.stats();
    let mut failed = None;
    for _ in 0..400 {
        match engine.step().await {
            Ok(_) => {}
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let err = failed.expect("the engine reports the failed delivery");
    assert!(err.to_string().contains("vigil.decisions"), "{err}");
    assert_eq!(Stats::get(&stats.decisions), 0);
    // Whatever was committed stops at or before the spike's record (offset 30).
    let committed = engine.committed().unwrap();
    let at = committed.iter().find(|c| c.1 == 0).map_or(0, |c| c.2);
    assert!(at <= 30, "committed past an unacknowledged decision: {committed:?}");
}
