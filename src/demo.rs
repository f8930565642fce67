//! `vigil demo`: the embedded default. An in-process Kafka mock cluster, a load generator with
//! known incidents, and the real engine and SQL server against it.
//!
//! Event time runs faster than the wall clock (`speedup`), so a one-minute demo covers hours of
//! a fleet's metrics: enough for every series to warm up its baseline and for daily seasonality
//! to move the signals, while incidents sit at known times so the summary can say how many were
//! detected and how many decisions were false.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer, DefaultProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::error::KafkaError;

/// One simulated series.
#[derive(Debug, Clone)]
pub struct SimSeries {
    /// Metric name.
    pub name: &'static str,
    /// Labels.
    pub labels: Vec<(&'static str, String)>,
    /// Canonical series key.
    pub key: String,
    base: f64,
    amp: f64,
    sigma: f64,
    phase: f64,
}

/// An injected incident.
#[derive(Debug, Clone)]
pub struct Incident {
    /// `spike`, `level_shift` or `slow_climb`.
    pub kind: &'static str,
    /// The series it affects.
    pub series: String,
    /// Event time it starts, epoch ms.
    pub start_ms: i64,
    /// Event time it ends, epoch ms (a level shift lasts to the end of the run).
    pub end_ms: i64,
    /// Size of the change in units of the series' noise.
    pub magnitude_sigma: f64,
}

/// What the generator simulates.
#[derive(Debug, Clone)]
pub struct SimSpec {
    /// Event time of the first point, epoch ms.
    pub start_ms: i64,
    /// Event-time span simulated, ms.
    pub span_ms: i64,
    /// Event-time spacing of points within a series, ms.
    pub step_ms: i64,
    /// Hosts per service (5 metrics per host).
    pub hosts_per_service: usize,
    /// RNG seed.
    pub seed: u64,
    /// Fraction of records corrupted (to exercise the dead-letter topic).
    pub corrupt_fraction: f64,
    /// Fraction of points sent a minute late (beyond the allowed lag).
    pub late_fraction: f64,
}

const SERVICES: [&str; 6] = ["checkout", "payments", "search", "auth", "catalog", "cart"];
/// (name, base low, base high, daily amplitude, noise as a fraction of base)
const METRICS: [(&str, f64, f64, f64, f64); 5] = [
    ("cpu_utilization", 0.25, 0.55, 0.30, 0.03),
    ("latency_p99_ms", 80.0, 220.0, 0.20, 0.04),
    ("requests_per_s", 100.0, 600.0, 0.40, 0.03),
    ("error_rate", 0.004, 0.02, 0.10, 0.10),
    ("memory_used_bytes", 2.0e9, 6.0e9, 0.02, 0.01),
];

/// The simulated fleet and its incidents.
#[derive(Debug)]
pub struct Simulation {
    /// Settings.
    pub spec: SimSpec,
    /// All series.
    pub series: Vec<SimSeries>,
    /// The incidents, in time order.
    pub incidents: Vec<Incident>,
}

impl Simulation {
    /// Builds the fleet: `SERVICES × hosts_per_service × 5` series, and three incidents at 30%,
    /// 50% and 70% of the span.
    pub fn new(spec: SimSpec) -> Self {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let mut series = Vec::new();
        for (si, svc) in SERVICES.iter().enumerate() {
            let phase = si as f64 * 0.7;
            for h in 0..spec.hosts_per_service {
                let host = format!("{svc}-{h:02}");
                for (name, lo, hi, amp, rel) in METRICS {
                    let base = lo + (hi - lo) * rng.random::<f64>();
                    let labels = vec![("host", host.clone()), ("service", svc.to_string())];
                    let key = vigil_ingest::series_key(name, labels.iter().map(|(k, v)| (*k, v.as_str())));
                    series.push(SimSeries { name, labels, key, base, amp, sigma: base * rel, phase });
                }
            }
        }
        let at = |f: f64| spec.start_ms + ((spec.span_ms as f64 * f) as i64 / spec.step_ms) * spec.step_ms;
        let pick = |svc: &str, host: usize, name: &str| {
            let host = format!("{svc}-{:02}", host % spec.hosts_per_service);
            vigil_ingest::series_key(name, [("host", host.as_str()), ("service", svc)])
        };
        let end = spec.start_ms + spec.span_ms;
        let incidents = vec![
            Incident { kind: "spike", series: pick("checkout", 3, "latency_p99_ms"), start_ms: at(0.30), end_ms: at(0.30) + 20_000, magnitude_sigma: 40.0 },
            Incident { kind: "level_shift", series: pick("payments", 5, "error_rate"), start_ms: at(0.50), end_ms: end, magnitude_sigma: 60.0 },
            Incident { kind: "slow_climb", series: pick("search", 2, "memory_used_bytes"), start_ms: at(0.70), end_ms: at(0.70) + 20 * 60_000, magnitude_sigma: 60.0 },
        ];
        Self { spec, series, incidents }
    }

    /// The value of series `i` at event time `t` (without noise), incidents included.
    fn level(&self, i: usize, t: i64) -> f64 {
        let s = &self.series[i];
        let day = 86_400_000.0;
        let mut v = s.base * (1.0 + s.amp * (2.0 * std::f64::consts::PI * (t as f64) / day + s.phase).sin());
        for inc in &self.incidents {
            if inc.series != s.key || t < inc.start_ms {
                continue;
            }
            let m = inc.magnitude_sigma * s.sigma;
            match inc.kind {
                "spike" if t < inc.end_ms => v += m,
                "level_shift" => v += m,
                "slow_climb" => {
                    let f = ((t - inc.start_ms) as f64 / (inc.end_ms - inc.start_ms) as f64).min(1.0);
                    v += m * f;
                }
                _ => {}
            }
        }
        v
    }
}

/// Counters of the generator.
#[derive(Debug, Default)]
pub struct GenStats {
    /// Records handed to the producer.
    pub produced: AtomicU64,
    /// Of which deliberately corrupted.
    pub corrupted: AtomicU64,
    /// Of which deliberately late.
    pub late: AtomicU64,
    /// Delivery failures reported by the producer.
    pub failed: AtomicU64,
    /// Event time reached, epoch ms.
    pub event_time_ms: std::sync::atomic::AtomicI64,
    /// Set when the generator has produced everything and flushed.
    pub done: AtomicBool,
}

/// Produces the simulation to `topic` at `speedup` × real time. Blocking: run it on its own thread.
pub fn generate(sim: &Simulation, brokers: &str, topic: &str, speedup: f64, stats: &GenStats) -> Result<(), KafkaError> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "10")
        .set("queue.buffering.max.messages", "500000")
        .set("compression.type", "none")
        .create()?;
    let spec = &sim.spec;
    let mut rng = StdRng::seed_from_u64(spec.seed ^ 0x5eed);
    let unit = Normal::new(0.0, 1.0).expect("valid normal");
    let began = Instant::now();
    let mut t = spec.start_ms;
    let end = spec.start_ms + spec.span_ms;
    let mut buf = String::with_capacity(256);
    while t < end {
        let sim_now = spec.start_ms + (began.elapsed().as_secs_f64() * 1000.0 * speedup) as i64;
        if t > sim_now {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        for i in 0..sim.series.len() {
            let s = &sim.series[i];
            let ts = t + rng.random_range(0..2_000);
            let v = sim.level(i, ts) + s.sigma * unit.sample(&mut rng);
            let v = if s.name == "error_rate" || s.name == "cpu_utilization" { v.max(0.0) } else { v };
            let mut ts_out = ts;
            if rng.random::<f64>() < spec.late_fraction {
                ts_out -= 60_000;
                stats.late.fetch_add(1, Ordering::Relaxed);
            }
            buf.clear();
            use std::fmt::Write;
            let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("\"{k}\":\"{v}\"")).collect();
            let _ = write!(buf, r#"{{"ts":{ts_out},"name":"{}","labels":{{{}}},"value":{v}}}"#, s.name, labels.join(","));
            if rng.random::<f64>() < spec.corrupt_fraction {
                corrupt(&mut buf, rng.random_range(0..4));
                stats.corrupted.fetch_add(1, Ordering::Relaxed);
            }
            let mut rec = BaseRecord::<str, str>::to(topic).key(s.key.as_str()).payload(buf.as_str());
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        rec = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "demo producer could not enqueue a record");
                        break;
                    }
                }
            }
            stats.produced.fetch_add(1, Ordering::Relaxed);
        }
        stats.event_time_ms.store(t, Ordering::Relaxed);
        t += spec.step_ms;
    }
    producer.flush(Duration::from_secs(30))?;
    stats.done.store(true, Ordering::Release);
    Ok(())
}

fn corrupt(buf: &mut String, how: u32) {
    match how {
        0 => buf.truncate(buf.len() / 2),                                    // truncated
        1 => *buf = buf.replacen("\"value\":", "\"value\":\"n/a\",\"x\":", 1), // wrong type
        2 => *buf = buf.replacen("\"name\"", "\"metric\"", 1),                // missing field
        _ => *buf = format!("#{buf}"),                                        // not JSON
    }
}

/// How the decisions of a run compare to the injected incidents.
#[derive(Debug, Default)]
pub struct Scorecard {
    /// Per incident: its kind, series and the first matching decision's window start, if any.
    pub incidents: Vec<(String, String, Option<String>)>,
    /// Decisions that match no incident.
    pub false_decisions: Vec<String>,
}

impl Scorecard {
    /// Matches decisions to incidents: a decision about the incident's series whose window ends
    /// after the incident starts and starts no later than 10 minutes after it ends.
    pub fn score(sim: &Simulation, decisions: &[vigil_models::Decision]) -> Self {
        let mut card = Scorecard::default();
        let mut matched = vec![false; decisions.len()];
        let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis()).unwrap_or(i64::MIN);
        for inc in &sim.incidents {
            let mut first = None;
            for (i, d) in decisions.iter().enumerate() {
                let ws = parse(&d.evidence.window_start);
                let we = parse(&d.evidence.window_end);
                if d.series.key == inc.series && we > inc.start_ms && ws <= inc.end_ms + 600_000 {
                    matched[i] = true;
                    first.get_or_insert_with(|| d.evidence.window_start.clone());
                }
            }
            card.incidents.push((inc.kind.to_string(), inc.series.clone(), first));
        }
        for (i, d) in decisions.iter().enumerate() {
            if !matched[i] {
                card.false_decisions.push(format!("{} {} score {}", d.evidence.window_start, d.series.key, d.evidence.score));
            }
        }
        card
    }

    /// Incidents with at least one decision.
    pub fn detected(&self) -> usize {
        self.incidents.iter().filter(|i| i.2.is_some()).count()
    }
}
