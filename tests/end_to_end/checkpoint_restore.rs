//! State survives a crash: an engine restored from a checkpoint scores warm, so a spike right
//! after the restart is decided (a cold detector would still be in warm-up); a corrupt newest
//! checkpoint falls back to the previous one; a broker outage holds results back without
//! stopping the engine; a periodic checkpoint waits for a close.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::process::{check_decisions, read_decisions, stream, Incident, T0, WINDOW_MS};
use vigil::Stats;

const SERIES: usize = 12;

async fn wait_for(stats: &Stats, cond: impl Fn(&Stats) -> bool, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond(stats) {
        assert!(Instant::now() < deadline, "timed out: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn produce(kafka: &Kafka, windows: &[Vec<(i32, String, Vec<u8>)>]) {
    let p = crate::process::producer(&kafka.brokers);
    for w in windows {
        crate::process::produce_window(&p, w).await;
    }
}

fn newest_data_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "data"))
        .collect();
    files.sort();
    files.pop().expect("a checkpoint was written")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_is_warm_and_a_corrupt_newest_checkpoint_falls_back_to_the_previous() {
    init_tracing();
    let kafka = Kafka::start(2);
    // The spike comes two windows after the restart: a detector starting from nothing needs
    // 20 windows of warm-up before it scores anything.
    let incidents = [Incident { series: 3, window: 40 }, Incident { series: 8, window: 62 }];
    let data = stream(SERIES, 70, 2, &incidents, 5);
    let mut cfg = kafka.config("vigil-warm");
    // One spike per host: every host its own incident.
    cfg.incidents.correlate_by = vec!["host".into()];
    cfg.window.idle_timeout = Duration::from_millis(500);
    cfg.fleet.enabled = false;
    let state = std::path::PathBuf::from(&cfg.checkpoint.url);

    produce(&kafka, &data[..50]).await;
    let mut first = vigil::Engine::new(&cfg, tables()).await.unwrap();
    step_until(&mut first, Duration::from_secs(90), |s| Stats::get(&s.windows_closed) >= 49).await;
    first.checkpoint(None).await.unwrap();
    let older = newest_data_file(&state);
    produce(&kafka, &data[50..60]).await;
    step_until(&mut first, Duration::from_secs(90), |s| Stats::get(&s.windows_closed) >= 58).await;
    first.checkpoint(None).await.unwrap();
    let newest = newest_data_file(&state);
    assert_ne!(older, newest);
    drop(first); // a crash: no final checkpoint
    // Damage the newest checkpoint: the restart must use the previous one, not start cold.
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();

    produce(&kafka, &data[60..]).await;
    let second_tables = tables();
    let mut second = vigil::Engine::new(&cfg, second_tables.clone()).await.unwrap();
    let stats = second.stats();
    step_until(&mut second, Duration::from_secs(90), |s| s.watermark_ms.load(Ordering::Relaxed) >= T0 + 68 * WINDOW_MS).await;
    assert_eq!(Stats::get(&stats.restored_partitions), 2, "both partitions restored from the older checkpoint");
    assert_eq!(Stats::get(&stats.late), 0, "a replay is not late data");
    // It resumed from the older checkpoint's offsets (windows 50.. again), not from the newer
    // committed offsets, and it did not redo what the checkpoint already held.
    let snap = second_tables.snapshot("features").unwrap();
    let starts: std::collections::BTreeSet<i64> = snap
        .batches
        .iter()
        .flat_map(|b| arrow::array::AsArray::as_primitive::<arrow::datatypes::TimestampMillisecondType>(b.column_by_name("window_start").unwrap()).values().to_vec())
        .collect();
    let first_redone = (starts.first().unwrap() - T0) / WINDOW_MS;
    assert!((45..=53).contains(&first_redone), "the restart re-closed windows from {first_redone} on");
    let decisions = read_decisions(&kafka.brokers, "vigil.decisions");
    check_decisions(&decisions, &incidents).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_of_a_minute_holds_results_back_and_loses_nothing() {
    init_tracing();
    let kafka = Kafka::start(2);
    let incidents = [Incident { series: 2, window: 35 }, Incident { series: 9, window: 60 }];
    let data = stream(SERIES, 72, 2, &incidents, 9);
    let mut cfg = kafka.config("vigil-outage");
    cfg.incidents.correlate_by = vec!["host".into()];
    cfg.window.idle_timeout = Duration::from_millis(500);
    cfg.fleet.enabled = false;
    cfg.kafka.delivery_timeout = Duration::from_secs(5);
    produce(&kafka, &data[..40]).await;
    let mut engine = vigil::Engine::new(&cfg, tables()).await.unwrap();
    let stats = engine.stats();
    let stop = engine.stop_handle();
    let run = tokio::spawn(async move { engine.run(std::future::pending(), |_| {}).await });
    wait_for(&stats, |s| Stats::get(&s.windows_closed) >= 38, 60).await;

    kafka.cluster.broker_down(1).unwrap();
    let down = Instant::now();
    let mut saw_unhealthy = false;
    while down.elapsed() < Duration::from_secs(60) {
        assert!(!run.is_finished(), "the engine stopped during the outage");
        saw_unhealthy |= !stats.health(Duration::from_secs(60)).0;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(saw_unhealthy, "/healthz reported the broker unreachable during the outage");
    kafka.cluster.broker_up(1).unwrap();

    produce(&kafka, &data[40..]).await;
    // Windows 0..=70 close (71 stays open behind the watermark); none is lost or doubled.
    wait_for(&stats, |s| Stats::get(&s.windows_closed) >= 71, 90).await;
    assert_eq!(Stats::get(&stats.windows_closed), 71);
    assert!(stats.health(Duration::from_secs(60)).0, "healthy again: {:?}", stats.health(Duration::from_secs(60)).1);
    stop.send(true).unwrap();
    run.await.unwrap().unwrap();
    let decisions = read_decisions(&kafka.brokers, "vigil.decisions");
    check_decisions(&decisions, &incidents).unwrap();
}


/// A periodic checkpoint that falls due waits for a close and is taken right after it (the next
/// close is then a window away), not at the first step after it is due; with no close at all,
/// it is taken two windows after it was due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_checkpoint_is_taken_right_after_a_close_or_two_windows_after_it_is_due() {
    init_tracing();
    let kafka = Kafka::start(1);
    let data = stream(4, 12, 1, &[], 7);
    let mut cfg = kafka.config("vigil-after-close");
    cfg.checkpoint.interval = Duration::from_secs(1);
    // No partition goes idle: without records the watermark stays, and no window closes.
    cfg.window.idle_timeout = Duration::from_secs(3600);
    cfg.fleet.enabled = false;
    produce(&kafka, &data[..6]).await;
    let mut engine = vigil::Engine::new(&cfg, tables()).await.unwrap();
    let stats = engine.stats();
    step_until(&mut engine, Duration::from_secs(90), |s| Stats::get(&s.windows_closed) >= 4 && Stats::get(&s.checkpoints) >= 1).await;
    let closed = Stats::get(&stats.windows_closed);

    // Due every second, but no window closes for three seconds: no periodic checkpoint. One taken
    // meanwhile would be written beside the loop and settled by the next checkpoint, so the
    // checkpoint asked for after adds two to the count instead of one.
    let quiet = Instant::now() + Duration::from_secs(3);
    while Instant::now() < quiet {
        engine.step().await.unwrap();
    }
    assert_eq!(Stats::get(&stats.windows_closed), closed, "no window closed");
    let before = Stats::get(&stats.checkpoints);
    engine.checkpoint(None).await.unwrap();
    assert_eq!(Stats::get(&stats.checkpoints), before + 1, "no periodic checkpoint without a close");

    // Still no close: one comes two windows (20 s) after it was due (a second after that one).
    let asked = Instant::now();
    let taken = Stats::get(&stats.checkpoints);
    step_until(&mut engine, Duration::from_secs(50), |s| Stats::get(&s.checkpoints) > taken).await;
    assert!(asked.elapsed() >= Duration::from_secs(21), "taken {:?} after the last one", asked.elapsed());
    assert_eq!(Stats::get(&stats.windows_closed), closed);

    // Due again a second later; then a close: the checkpoint due follows it at once.
    let due = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < due {
        engine.step().await.unwrap();
    }
    let taken = Stats::get(&stats.checkpoints);
    produce(&kafka, &data[6..8]).await;
    step_until(&mut engine, Duration::from_secs(30), |s| Stats::get(&s.windows_closed) > closed).await;
    let closed_at = Instant::now();
    step_until(&mut engine, Duration::from_secs(30), |s| Stats::get(&s.checkpoints) > taken).await;
    assert!(closed_at.elapsed() < Duration::from_secs(5), "written {:?} after the close", closed_at.elapsed());
}
