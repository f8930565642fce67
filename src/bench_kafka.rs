//! `vigil bench --kafka`: the whole engine reading a topic through rdkafka, against a bare
//! rdkafka consumer reading the same topic, on the same broker (librdkafka's mock cluster in
//! this process, or a real broker such as tansu).
//!
//! The records are produced first (not timed), keyed by series as a metrics pipeline keys them.
//! Then a bare consumer reads every record and touches its payload; then the engine, as a new
//! consumer group, reads, decodes, windows, scores, decides, publishes and commits them. Both
//! figures are events per second of wall time from the first record received to the last one
//! (for the engine: processed, published and committed).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::config::Config;
use vigil_pipeline::engine::{IoTimes, StageTimes};

/// What `vigil bench --kafka` measured.
#[derive(Debug, Clone)]
pub struct KafkaBenchReport {
    /// Where the records were: `mock cluster` or the bootstrap servers.
    pub broker: String,
    /// Records in the topic.
    pub events: u64,
    /// Partitions of the topic.
    pub partitions: i32,
    /// The bench producer's `linger.ms`.
    pub linger_ms: u64,
    /// The bare consumer: seconds (`None` in a live run, which has no backlog to race through).
    pub bare_s: Option<f64>,
    /// A live run's input rate asked for and reached, events per second (the records are
    /// produced while the engine reads them); `None` when the topic is filled first and read
    /// as a backlog.
    pub rate: Option<(f64, f64)>,
    /// The engine: seconds and events/s.
    pub engine_s: f64,
    /// Windows the engine closed, feature rows it scored, decisions it published.
    pub windows: u64,
    /// Feature rows scored (past warm-up).
    pub scored: u64,
    /// Feature rows produced.
    pub feature_rows: u64,
    /// Decisions published.
    pub decisions: u64,
    /// The processing core's stages within the engine's time.
    pub stages: vigil_pipeline::engine::StageTimes,
    /// Polls that returned records.
    pub polls: u64,
    /// The Kafka side of the engine's loop.
    pub io: vigil_pipeline::engine::IoTimes,
    /// Series the engine held state for at the end.
    pub series: usize,
    /// Closes of windows timed from the close to its decisions acknowledged by the broker.
    pub closes: u64,
    /// That latency: p50, p99 and max, milliseconds.
    pub close_to_ack_ms: [f64; 3],
    /// The same over the closes in which most feature rows were scored (past warm-up), and
    /// their number.
    pub scored_close_to_ack_ms: [f64; 3],
    /// Closes in which most feature rows were scored.
    pub scored_closes: u64,
    /// Closes that took more than one window at once.
    pub multi_window_closes: u64,
    /// The three slowest closes: their number (from 1, in order of closing) and milliseconds.
    pub slowest_closes: Vec<(usize, f64)>,
    /// The loop's longest step (poll, decode, windows, closes, checkpoints), milliseconds.
    pub longest_step_ms: f64,
    /// Where that step's time went: when it began (seconds after the first record), then each
    /// part of a millisecond or more.
    pub longest_step_parts: String,
    /// In a live run: the wall clock minus the watermark when each close began, p50, p99 and
    /// max (ms). Above the median it is time the close came late: the loop was not reading, or
    /// the producer fell behind.
    pub behind_ms: Option<[f64; 3]>,
    /// The close that came latest (its number, from 1, in order of closing).
    pub latest_close: usize,
    /// With `--checkpoints`: checkpoints written, the loop's pause for each (p50, p99, max ms)
    /// and each one's whole time to be written (p50, p99, max ms), and its copy of the states
    /// still shared, beside the loop (p50, p99, max ms).
    pub checkpoints: Option<CheckpointTimes>,
}

/// Checkpoints written, then the loop's pause for each, each one's whole time to be written and
/// its copy of the shared states beside the loop (each p50, p99, max in ms).
pub type CheckpointTimes = (u64, [f64; 3], [f64; 3], [f64; 3]);

/// The `k` largest of `us` (microseconds, in order of closing): their number from 1 and
/// milliseconds, slowest first.
fn slowest(us: &[u64], k: usize) -> Vec<(usize, f64)> {
    let mut v: Vec<(u64, usize)> = us.iter().enumerate().map(|(i, x)| (*x, i + 1)).collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v.into_iter().take(k).map(|(x, i)| (i, x as f64 / 1000.0)).collect()
}

/// Where one step of the loop went, from the engine's clocks before and after it: when it began,
/// seconds after `t0`, and each part of a millisecond or more, largest first.
fn step_parts(at_s: f64, before: (&StageTimes, &IoTimes), after: (&StageTimes, &IoTimes), total: Duration) -> String {
    let (s0, i0) = before;
    let (s1, i1) = after;
    let mut parts = vec![
        ("poll", i1.poll - i0.poll),
        ("decode", s1.decode - s0.decode),
        ("windows", s1.windows - s0.windows),
        ("new series", s1.admit - s0.admit),
        ("feature plan", s1.features - s0.features),
        ("scoring", s1.scoring - s0.scoring),
        ("ahead", s1.ahead - s0.ahead),
        ("decisions", s1.decisions - s0.decisions),
        ("publish", i1.publish - i0.publish),
        ("commit", i1.commit - i0.commit),
    ];
    let known: Duration = parts.iter().map(|(_, d)| *d).sum();
    parts.push(("other", total.saturating_sub(known)));
    parts.sort_by_key(|p| std::cmp::Reverse(p.1));
    let shown: Vec<String> = parts.iter().filter(|(_, d)| *d >= Duration::from_millis(1)).map(|(n, d)| format!("{n} {:.1}", d.as_secs_f64() * 1e3)).collect();
    format!("at {at_s:.1} s: {} (ms)", shown.join(", "))
}

/// p50, p99 and max of `us` (microseconds), milliseconds; zeros when empty.
fn quantiles_ms(us: &[u64]) -> [f64; 3] {
    let mut v = us.to_vec();
    v.sort_unstable();
    let at = |q: f64| v.get(((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1).map_or(0.0, |x| *x as f64 / 1000.0);
    [at(0.5), at(0.99), at(1.0)]
}

impl KafkaBenchReport {
    /// Human-readable lines.
    pub fn render(&self) -> String {
        let engine = self.events as f64 / self.engine_s.max(1e-9);
        let input = match (self.rate, self.bare_s) {
            (Some((asked, got)), _) => format!(
                "live input        {got:.0} events/s produced while the engine reads ({asked:.0} asked, producer linger.ms {}; no bare-consumer race in a live run)\n",
                self.linger_ms
            ),
            (None, Some(b)) => {
                let bare = self.events as f64 / b.max(1e-9);
                format!("bare consumer     {b:.2} s -> {bare:.0} events/s (rdkafka BaseConsumer, payloads touched)\n")
            }
            (None, None) => String::new(),
        };
        let ratio = match (self.rate, self.bare_s) {
            (None, Some(b)) => format!("engine / bare     {:.1}%\n", 100.0 * engine / (self.events as f64 / b.max(1e-9)).max(1e-9)),
            _ => String::new(),
        };
        format!(
            "broker            {}\n\
             topic             {} records in {} partitions\n\
             {input}\
             vigil engine      {:.2} s -> {:.0} events/s (decode, windows, feature SQL, scoring, decisions, publish, commit)\n\
             {ratio}\
             windows closed    {} ({} closes took more than one window)\n\
             scored            {} of {} feature rows (series x windows past warm-up); baselines computed ahead for {}, at the close for {}\n\
             decisions         {}\n\
             close to ack      p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms over {} closes with {} active series (window close to its decisions acknowledged by the broker)\n\
             scored closes     p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms over the {} closes in which most feature rows were scored\n\
             slowest closes    {}\n\
             longest step      {:.1} ms (one step of the loop: poll, decode, windows, closes, checkpoints){}\n\
             closes came late  {} (wall clock minus the watermark as each close of a live run began, above its median: time the loop was not reading, or the producer fell behind)\n\
             checkpoints       {}\n\
             polls             {} with records ({:.0} records per poll)\n\
             stages            {}\n",
            self.broker,
            self.events,
            self.partitions,
            self.engine_s,
            engine,
            self.windows,
            self.multi_window_closes,
            self.scored,
            self.feature_rows,
            self.stages.scored_ahead,
            self.stages.baselines_at_close,
            self.decisions,
            self.close_to_ack_ms[0],
            self.close_to_ack_ms[1],
            self.close_to_ack_ms[2],
            self.closes,
            self.series,
            self.scored_close_to_ack_ms[0],
            self.scored_close_to_ack_ms[1],
            self.scored_close_to_ack_ms[2],
            self.scored_closes,
            self.slowest_closes.iter().map(|(i, ms)| format!("#{i} {ms:.1} ms")).collect::<Vec<_>>().join(", "),
            self.longest_step_ms,
            if self.longest_step_parts.is_empty() { String::new() } else { format!("\n                  {}", self.longest_step_parts) },
            match self.behind_ms {
                // The synthetic records' event times start at a fixed instant: only the
                // spread above the median means anything.
                Some([p50, p99, max]) => format!("p99 {:.0} ms  max {:.0} ms (#{})", p99 - p50, max - p50, self.latest_close),
                None => "-".into(),
            },
            match self.checkpoints {
                Some((n, pause, whole, copy)) => format!(
                    "{n} written; the loop paused p50 {:.1} ms, max {:.1} ms for each (taking the state); written in p50 {:.0} ms, max {:.0} ms beside it, of which copying the shared states p50 {:.0} ms, max {:.0} ms; {} series states copied by the loop because a checkpoint still held them",
                    pause[0], pause[2], whole[0], whole[2], copy[0], copy[2], self.stages.copied_on_write
                ),
                None => "off (--checkpoints keeps them on)".into(),
            },
            self.polls,
            self.events as f64 / self.polls.max(1) as f64,
            self.render_stages(),
        )
    }

    fn render_stages(&self) -> String {
        let c = &self.stages;
        let core = c.decode + c.windows + c.admit + c.features + c.scoring + c.decisions;
        let rest = (self.engine_s - core.as_secs_f64()).max(0.0);
        [
            ("decode", c.decode.as_secs_f64()),
            ("windows", c.windows.as_secs_f64()),
            ("new series", c.admit.as_secs_f64()),
            ("feature plan", c.features.as_secs_f64()),
            ("  while open (beside)", c.features_streamed.as_secs_f64()),
            ("scoring", c.scoring.as_secs_f64()),
            ("  ensemble", c.ensemble.as_secs_f64()),
            ("  fleet", c.fleet.as_secs_f64()),
            ("  ahead (after closes)", c.ahead.as_secs_f64()),
            ("decisions", c.decisions.as_secs_f64()),
            ("poll", self.io.poll.as_secs_f64()),
            ("publish", self.io.publish.as_secs_f64()),
            ("commit", self.io.commit.as_secs_f64()),
            ("other", (rest - (self.io.poll + self.io.publish + self.io.commit).as_secs_f64()).max(0.0)),
        ]
        .iter()
        .map(|(name, s)| format!("{name:<22} {s:>6.2} s  {:>5.1}%", 100.0 * s / self.engine_s.max(1e-9)))
        .collect::<Vec<_>>()
        .join("\n                  ")
    }
}

/// Runs the Kafka-path benchmark over `lines` on `brokers` (the mock cluster when `None`).
/// With `rate`, a live run: the engine joins first and the records are produced at `rate`
/// events per second while it reads them (no bare consumer), so that windows close as they
/// would in production, one at a time, instead of several at once as a backlog is read.
pub async fn run(
    cfg: &Config,
    lines: Vec<Vec<u8>>,
    brokers: Option<String>,
    partitions: i32,
    rate: Option<f64>,
    linger_ms: Option<u64>,
    checkpoints: bool,
) -> anyhow::Result<KafkaBenchReport> {
    let linger_ms = linger_ms.unwrap_or(if rate.is_some() { 50 } else { 20 });
    let run_id = std::process::id();
    let topic = format!("vigil-bench-{run_id}");
    let mut cfg = cfg.clone();
    let (cluster, brokers, broker_name) = match brokers {
        Some(b) => (None, b.clone(), b),
        None => {
            let c = MockCluster::new(1).context("starting the Kafka mock cluster")?;
            let b = c.bootstrap_servers();
            (Some(c), b, "librdkafka mock cluster (in process)".to_string())
        }
    };
    cfg.kafka.brokers = brokers.clone();
    cfg.kafka.input_topics = vec![topic.clone()];
    cfg.kafka.input_formats.clear();
    cfg.kafka.group_id = format!("vigil-bench-engine-{run_id}");
    cfg.kafka.decisions_topic = format!("{topic}.decisions");
    cfg.kafka.dlq_topic = format!("{topic}.dlq");
    cfg.kafka.late_topic = format!("{topic}.late");
    cfg.kafka.feedback_topic = format!("{topic}.feedback");
    cfg.checkpoint.enabled = checkpoints;
    let checkpoint_dir = std::env::temp_dir().join(format!("vigil-bench-kafka-checkpoints-{run_id}"));
    cfg.checkpoint.url = checkpoint_dir.display().to_string();
    cfg.validate()?;
    let topics = [(topic.as_str(), partitions), (&cfg.kafka.decisions_topic, 1), (&cfg.kafka.dlq_topic, 1), (&cfg.kafka.late_topic, 1), (&cfg.kafka.feedback_topic, 1)];
    match &cluster {
        Some(c) => {
            for (t, p) in topics {
                c.create_topic(t, p, 1).with_context(|| format!("creating topic {t}"))?;
            }
        }
        None => create_topics(&brokers, &topics).await?,
    }

    let events = lines.len() as u64;
    let (produce_brokers, produce_topic) = (brokers.clone(), topic.clone());
    let mut live_lines = None;
    let bare_s = match rate {
        None => {
            let (b, t) = (produce_brokers.clone(), produce_topic.clone());
            tokio::task::spawn_blocking(move || produce(&b, &t, &lines, None, linger_ms)).await??;
            tracing::info!(events, topic = %topic, "produced");
            let (bare_brokers, bare_topic) = (brokers.clone(), topic.clone());
            // The mock cluster drops what exceeds its retention, and says so in its offsets; a
            // real broker's offsets are taken as they come (tansu's ListOffsets answers are not
            // exact).
            let mock = cluster.is_some();
            Some(tokio::task::spawn_blocking(move || bare_consume(&bare_brokers, &bare_topic, partitions, events, mock)).await??)
        }
        Some(_) => {
            live_lines = Some(lines);
            None
        }
    };

    let tables = Arc::new(vigil_pipeline::ResultTables::new());
    let mut engine = crate::engine::Engine::new(&cfg, tables).await?;
    let stats = engine.stats();
    // A live run starts producing once the engine owns its partitions.
    let mut producing = None;
    if let (Some(r), Some(lines)) = (rate, live_lines) {
        let joined = Instant::now() + Duration::from_secs(60);
        while !stats.ready.load(Ordering::Relaxed) {
            if Instant::now() > joined {
                bail!("the engine was assigned no partition in 60 s");
            }
            engine.step().await?;
        }
        producing = Some(tokio::task::spawn_blocking(move || produce(&produce_brokers, &produce_topic, &lines, Some(r), linger_ms)));
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut decisions = 0u64;
    let mut t0 = None;
    let mut io0 = vigil_pipeline::engine::IoTimes::default();
    let (mut scored_closes, mut multi_window_closes) = (Vec::new(), 0u64);
    let mut produced_s = None;
    let (mut longest_step, mut pauses, mut writes) = (Duration::ZERO, Vec::new(), Vec::new());
    let mut longest_parts = String::new();
    let mut copies = Vec::new();
    let mut behind = Vec::new();
    while stats.records.load(Ordering::Relaxed) < events {
        if Instant::now() > deadline {
            bail!("the engine read {} of {events} records in 10 minutes", stats.records.load(Ordering::Relaxed));
        }
        if producing.as_ref().is_some_and(|p| p.is_finished()) {
            produced_s = Some(producing.take().expect("checked").await??);
        }
        let before = Instant::now();
        let io_before = engine.io_times();
        let (stages_before, scored) = engine.stage_times();
        let (closes, rows, windows) = (stats.close_latency.count(), stats.feature_rows.load(Ordering::Relaxed), stats.windows_closed.load(Ordering::Relaxed));
        let written = stats.checkpoints.load(Ordering::Relaxed);
        decisions += engine.step().await?.len() as u64;
        if let Some(t) = t0 {
            let took = before.elapsed();
            if took > longest_step {
                longest_step = took;
                let at = before.saturating_duration_since(t).as_secs_f64();
                longest_parts = step_parts(at, (&stages_before, &io_before), (&engine.stage_times().0, &engine.io_times()), took);
            }
        }
        if stats.checkpoints.load(Ordering::Relaxed) > written {
            pauses.push(stats.checkpoint_pause_us.load(Ordering::Relaxed));
            writes.push(stats.checkpoint_us.load(Ordering::Relaxed));
            copies.push(stats.checkpoint_copy_us.load(Ordering::Relaxed));
        }
        let new_closes = (stats.close_latency.count() - closes) as usize;
        if new_closes > 0 && produced_s.is_none() && producing.is_some() {
            // Wall clock against the watermark when the close began, while records are produced
            // live (their event time keeps pace with the clock): what it adds above its median
            // is how late the close came (the loop not reading, or the producer behind).
            behind.push((stats.close_latency.count() as usize, stats.close_behind_ms.load(Ordering::Relaxed).max(0) as u64 * 1000));
        }
        if new_closes > 0 {
            if stats.windows_closed.load(Ordering::Relaxed) - windows > new_closes as u64 {
                multi_window_closes += 1;
            }
            let (d_scored, d_rows) = (engine.stage_times().1 - scored, stats.feature_rows.load(Ordering::Relaxed) - rows);
            if d_rows > 0 && 2 * d_scored >= d_rows {
                let samples = stats.close_latency.samples();
                scored_closes.extend_from_slice(&samples[samples.len().saturating_sub(new_closes)..]);
            }
        }
        if t0.is_none() && stats.records.load(Ordering::Relaxed) > 0 {
            // The clock starts when the first records arrived: the waits for the group and the
            // first fetch before them are not the run's (nor are the bare consumer's).
            let waited = engine.io_times().poll - io_before.poll;
            t0 = Some(before + waited);
            io0 = engine.io_times();
        }
    }
    if let Some(p) = producing.take() {
        produced_s = Some(p.await??);
    }
    decisions += engine.drain().await?.len() as u64;
    let engine_s = t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&checkpoint_dir);
    let (stages, scored) = engine.stage_times();
    let close = &stats.close_latency;
    let ms = |q: f64| close.percentile(q).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Ok(KafkaBenchReport {
        series: engine.series(),
        closes: close.count(),
        close_to_ack_ms: [ms(0.5), ms(0.99), ms(1.0)],
        scored_close_to_ack_ms: quantiles_ms(&scored_closes),
        scored_closes: scored_closes.len() as u64,
        slowest_closes: slowest(&stats.close_latency.samples(), 3),
        longest_step_ms: longest_step.as_secs_f64() * 1000.0,
        longest_step_parts: longest_parts,
        behind_ms: (!behind.is_empty()).then(|| quantiles_ms(&behind.iter().map(|b| b.1).collect::<Vec<_>>())),
        latest_close: behind.iter().max_by_key(|b| b.1).map_or(0, |b| b.0),
        checkpoints: checkpoints.then(|| (pauses.len() as u64, quantiles_ms(&pauses), quantiles_ms(&writes), quantiles_ms(&copies))),
        multi_window_closes,
        rate: rate.map(|r| (r, produced_s.map_or(0.0, |s| events as f64 / s.max(1e-9)))),
        broker: broker_name,
        events,
        partitions,
        linger_ms,
        bare_s,
        engine_s,
        windows: stats.windows_closed.load(Ordering::Relaxed),
        scored,
        feature_rows: stats.feature_rows.load(Ordering::Relaxed),
        decisions,
        stages,
        polls: stats.polls.load(Ordering::Relaxed),
        io: {
            let io = engine.io_times();
            vigil_pipeline::engine::IoTimes { poll: io.poll - io0.poll, publish: io.publish - io0.publish, commit: io.commit - io0.commit }
        },
    })
}

async fn create_topics(brokers: &str, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let new: Vec<NewTopic> = topics.iter().map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics(&new, &opts).await.context("creating the bench topics")? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("could not create topic {t}: {e}"),
        }
    }
    Ok(())
}

/// Produces every line, keyed by its series so that a series stays on one partition; at `rate`
/// lines per second when given (paced in steps of 10 ms), else as fast as the broker takes them.
fn produce(brokers: &str, topic: &str, lines: &[Vec<u8>], rate: Option<f64>, linger_ms: u64) -> anyhow::Result<f64> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger_ms.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "none")
        .create()?;
    let start = Instant::now();
    for (i, line) in lines.iter().enumerate() {
        if let Some(r) = rate.filter(|_| i % 1000 == 0) {
            let due = start + Duration::from_secs_f64(i as f64 / r);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let rec = BaseRecord::<[u8], [u8]>::to(topic).key(series_of(line)).payload(line);
        crate::demo::send_waiting(&producer, rec, Duration::from_millis(2)).context("producing the bench records")?;
    }
    producer.flush(Duration::from_secs(120)).context("flushing the bench records")?;
    Ok(start.elapsed().as_secs_f64())
}

/// The bytes that identify a record's series in the benchmark's JSON lines (name and labels),
/// or the whole line.
fn series_of(line: &[u8]) -> &[u8] {
    let find = |pat: &[u8]| line.windows(pat.len()).position(|w| w == pat);
    match (find(b"\"name\""), find(b"\"value\"")) {
        (Some(a), Some(b)) if a < b => &line[a..b],
        _ => line,
    }
}

/// Reads `events` records with a bare consumer from the start of every partition; seconds.
/// It fetches as the engine's consumer does ([`vigil_ingest::FETCH_PROPERTIES`]).
fn bare_consume(brokers: &str, topic: &str, partitions: i32, events: u64, check_held: bool) -> anyhow::Result<f64> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", brokers)
        .set("group.id", format!("vigil-bench-bare-{}", std::process::id()))
        .set("enable.auto.commit", "false");
    for (k, v) in vigil_ingest::FETCH_PROPERTIES {
        cc.set(*k, *v);
    }
    let consumer: BaseConsumer = cc.create()?;
    let mut tpl = TopicPartitionList::new();
    let mut held = 0i64;
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        if check_held {
            let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            held += high - low;
        }
    }
    if check_held && held < events as i64 {
        bail!(
            "the topic holds {held} of the {events} records produced (librdkafka's mock cluster keeps about 5 MB per partition): use fewer --events or more --partitions"
        );
    }
    consumer.assign(&tpl)?;
    let mut t0 = None;
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut last = Instant::now();
    while n < events {
        if last.elapsed() > Duration::from_secs(30) {
            bail!("the bare consumer read {n} of {events} records, then nothing for 30 s: the broker holds fewer than were produced");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                n += 1;
                last = Instant::now();
                t0.get_or_insert(last);
                bytes += m.payload().map_or(0, |p| p.len() as u64);
            }
            Some(Err(e)) => bail!("bare consumer: {e}"),
            None => {}
        }
    }
    std::hint::black_box(bytes);
    Ok(t0.map_or(0.0, |t| t.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_closes_are_named_by_their_number_slowest_first() {
        let us = [5_000, 710_400, 12_000, 143_700, 12_000];
        assert_eq!(slowest(&us, 3), vec![(2, 710.4), (4, 143.7), (5, 12.0)]);
        assert_eq!(slowest(&us[..1], 3), vec![(1, 5.0)]);
        assert!(slowest(&[], 3).is_empty());
    }
}
