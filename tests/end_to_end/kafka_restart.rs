//! A crash loses nothing: an engine stopped without warning (dropped mid-stream, no final commit)
//! and a new member of the same group started after it together close every window, because
//! offsets were committed only up to what was durable.



use std::collections::BTreeSet;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::TimestampMillisecondType;
use crate::common::*;
use vigil::Stats;

const T0: i64 = 1_767_571_200_000;

async fn window_starts(tables: &vigil_pipeline::ResultTables) -> BTreeSet<i64> {
    let snap = tables.snapshot("features").unwrap();
    let mut out = BTreeSet::new();
    for b in &snap.batches {
        let ws = b.column_by_name("window_start").unwrap().as_primitive::<TimestampMillisecondType>();
        out.extend(ws.values().iter().copied());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_member_and_its_successor_close_every_window_between_them() {
    let kafka = Kafka::start(2);
    let mut input = Vec::new();
    for w in 0..40i64 {
        for s in 0..10 {
            input.push(point(T0 + w * 10_000 + s * 100, "cpu_utilization", &format!("h{s}"), "checkout", 0.5 + 0.001 * (w % 5) as f64));
        }
    }
    // The first half now; the second half after the first member has crashed.
    let second_half = input.split_off(200);
    kafka.produce(&input).await;

    let mut cfg = kafka.config("vigil-restart");
    // A partition that has delivered everything it had is released after this long.
    cfg.window.idle_timeout = Duration::from_millis(500);
    // The crashed member never leaves the group: the coordinator waits out its session first.
    cfg.kafka.consumer.insert("session.timeout.ms".into(), "6000".into());
    cfg.kafka.consumer.insert("heartbeat.interval.ms".into(), "500".into());
    let first_tables = tables();
    let mut first = vigil::Engine::new(&cfg, first_tables.clone()).await.unwrap();
    step_until(&mut first, Duration::from_secs(60), |s| Stats::get(&s.windows_closed) >= 15).await;
    let committed = first.committed().unwrap();
    drop(first); // crash: no shutdown, no final commit
    kafka.produce(&second_half).await;

    let second_tables = tables();
    let mut second = vigil::Engine::new(&cfg, second_tables.clone()).await.unwrap();
    step_until(&mut second, Duration::from_secs(60), |s| Stats::get(&s.records) > 0 && second_done(s)).await;

    let a = window_starts(&first_tables).await;
    let b = window_starts(&second_tables).await;
    assert!(!a.is_empty() && !b.is_empty(), "both members closed windows: {committed:?}");
    let all: BTreeSet<i64> = a.union(&b).copied().collect();
    // Newest point T0 + 390.9 s, lag 5 s: windows up to [370 s, 380 s) close, 38 and 39 stay open.
    let expected: BTreeSet<i64> = (0..38).map(|w| T0 + w * 10_000).collect();
    assert_eq!(all, expected, "no window is lost across the crash");
    // The successor re-read only from the committed offsets: it did not redo the first member's
    // early windows.
    assert!(b.first().unwrap() > a.first().unwrap(), "successor started from the committed point, not the beginning: committed {committed:?}, first run {:?}..{:?}, second {:?}..{:?}", a.first(), a.last(), b.first(), b.last());
}

fn second_done(s: &vigil::Stats) -> bool {
    s.watermark_ms.load(std::sync::atomic::Ordering::Relaxed) >= T0 + 385_000 && Stats::get(&s.windows_closed) > 0
}
