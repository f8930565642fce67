//! `vigil demo`: the embedded default. An in-process Kafka mock cluster, a load generator with
//! known incidents, and the real engine and SQL server against it.
//!
//! Event time runs faster than the wall clock (`speedup`), so a one-minute demo covers hours of
//! a fleet's metrics: enough for every series to warm up its baseline and for daily seasonality
//! to move the signals, while incidents sit at known times so the summary can say how many were
//! detected and how many decisions were false.
//!
//! Four inputs, four formats: JSON points on `metrics` (five services), OTLP protobuf on
//! `otel-metrics` (the `cart` service, as an OpenTelemetry Collector would write it), JSON logs
//! on `app-logs` (every service), and FOCUS cost rows on `costs` (per service and hour: three
//! weeks of history first, then each hour a few minutes after it ends, as billing exports arrive
//! late). Eight incidents: a latency spike, an error-rate level shift and a slow memory climb in
//! the metrics; an error burst and a never-seen log message in the logs; idle instances that
//! raise checkout's spend by half (a cost anomaly), the checkout budget that the projection then
//! shows will be exceeded, and the checkout latency SLO that the spike burns.

mod hostile;
mod run;
pub use hostile::HostileQueries;
pub use run::{run, DemoOptions};

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
    /// `spike`, `level_shift`, `slow_climb` (metrics), `error_burst` or `new_template` (logs).
    pub kind: &'static str,
    /// The series it affects; for log incidents, the service whose log signals show it.
    pub series: String,
    /// For log incidents: the service. A decision about any of its log signals (`log_*`) detects it.
    pub log_service: Option<&'static str>,
    /// Event time it starts, epoch ms.
    pub start_ms: i64,
    /// Event time it ends, epoch ms (a level shift lasts to the end of the run).
    pub end_ms: i64,
    /// Size of the change in units of the series' noise.
    pub magnitude_sigma: f64,
    /// Other series a decision may name to count for it (e.g. the idle instances).
    pub also: Vec<String>,
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

/// Topics of the demo and their formats.
pub const TOPICS: [(&str, &str, i32); 4] = [("metrics", "json", 6), ("otel-metrics", "otlp_proto", 2), ("app-logs", "json_logs", 3), ("costs", "focus", 2)];

/// Teams owning the services (FOCUS `Tags.team`).
const TEAMS: [&str; 6] = ["commerce", "commerce", "discovery", "identity", "discovery", "commerce"];
/// Days of cost history written before the live part.
pub const COST_HISTORY_DAYS: i64 = 21;
/// The idle instances of the cost incident.
pub const IDLE_INSTANCES: usize = 3;
/// The demo's budget and SLO names.
pub const BUDGET: &str = "checkout-monthly";
/// The checkout latency SLO.
pub const SLO: &str = "checkout-latency";
const HOUR: i64 = 3_600_000;

/// The service whose metrics arrive as OTLP.
pub const OTLP_SERVICE: &str = "cart";

/// Log lines per service per step, and the shares of warnings and errors in normal operation.
const LOG_LINES_PER_STEP: usize = 30;
const WARN_SHARE: f64 = 0.08;
const ERROR_SHARE: f64 = 0.07;

/// The simulated fleet and its incidents.
#[derive(Debug)]
pub struct Simulation {
    /// Settings.
    pub spec: SimSpec,
    /// All series.
    pub series: Vec<SimSeries>,
    /// The incidents, in time order.
    pub incidents: Vec<Incident>,
    /// Per service: price per hour of its autoscaling group (all hosts) and of its storage.
    prices: Vec<(f64, f64)>,
    /// When the idle instances start (an hour boundary), and the price of each.
    pub idle_start_ms: i64,
    idle_price: f64,
    /// The checkout budget for the month the demo runs in: its expected spend / 0.85.
    pub budget_amount: f64,
    /// The checkout latency SLO's threshold (ms): a quarter above the highest normal level.
    pub slo_threshold: f64,
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
                    // OTLP series carry OpenTelemetry's resource attribute names.
                    let labels = if *svc == OTLP_SERVICE {
                        vec![("host.name", host.clone()), ("service.name", svc.to_string())]
                    } else {
                        vec![("host", host.clone()), ("service", svc.to_string())]
                    };
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
        let logs = |svc: &'static str| format!("log_*{{service=\"{svc}\"}}");
        // The latency SLO: good when p99 is at most a quarter above checkout's highest normal
        // level; the spike goes well past it for ten minutes.
        let checkout_latency: Vec<&SimSeries> = series.iter().filter(|s| s.name == "latency_p99_ms" && s.key.contains("service=\"checkout\"")).collect();
        let slo_threshold = (1.25 * checkout_latency.iter().map(|s| s.base * (1.0 + s.amp) + 5.0 * s.sigma).fold(0.0, f64::max)).round();
        let spiked = pick("checkout", 3, "latency_p99_ms");
        let spike_sigma = series.iter().find(|s| s.key == spiked).map_or(40.0, |s| ((1.6 * slo_threshold - (1.0 - s.amp) * s.base) / s.sigma).max(40.0));
        let prices: Vec<(f64, f64)> = (0..SERVICES.len()).map(|_| (spec.hosts_per_service as f64 * (0.25 + 0.35 * rng.random::<f64>()), 0.1 + 0.1 * rng.random::<f64>())).collect();
        let idle_start_ms = (at(0.2) / HOUR) * HOUR;
        let mut sim = Self { spec: spec.clone(), series, incidents: Vec::new(), prices, idle_start_ms, idle_price: 0.0, budget_amount: 0.0, slo_threshold };
        // Idle instances that add half of checkout's usual spend.
        let mean_checkout = (0..24 * 7).map(|h| sim.hourly_cost(0, spec.start_ms - (h + 1) * HOUR)).sum::<f64>() / (24.0 * 7.0);
        sim.idle_price = 0.5 * mean_checkout / IDLE_INSTANCES as f64;
        sim.budget_amount = (sim.month_spend(0) / 0.85).round();
        // A decision counts for the cost incident when it names the idle instances, or the
        // spend of checkout's team, which they raise too.
        let mut idle: Vec<String> = (1..=IDLE_INSTANCES).map(|i| format!("resource=\"checkout-idle-{i:02}\"")).collect();
        idle.push(format!("cost{{team=\"{}\"}}", TEAMS[0]));
        let incidents = vec![
            Incident { kind: "spike", series: spiked.clone(), log_service: None, start_ms: at(0.30), end_ms: at(0.30) + 10 * 60_000, magnitude_sigma: spike_sigma, also: vec![] },
            Incident {
                kind: "cost_anomaly",
                series: "cost{service=\"checkout\"}".into(),
                log_service: None,
                start_ms: idle_start_ms,
                end_ms: end,
                magnitude_sigma: 0.0,
                also: idle,
            },
            Incident { kind: "budget", series: format!("budget{{budget=\"{BUDGET}\"}}"), log_service: None, start_ms: idle_start_ms, end_ms: end, magnitude_sigma: 0.0, also: vec![] },
            Incident {
                kind: "slo_burn",
                series: format!("slo_burn{{service=\"checkout\",slo=\"{SLO}\"}}"),
                log_service: None,
                start_ms: at(0.30),
                end_ms: at(0.30) + 10 * 60_000,
                magnitude_sigma: 0.0,
                also: vec![],
            },
            Incident { kind: "error_burst", series: logs("auth"), log_service: Some("auth"), start_ms: at(0.40), end_ms: at(0.40) + 3 * 60_000, magnitude_sigma: 0.0, also: vec![] },
            Incident { kind: "level_shift", series: pick("payments", 5, "error_rate"), log_service: None, start_ms: at(0.50), end_ms: end, magnitude_sigma: 60.0, also: vec![] },
            Incident { kind: "new_template", series: logs("catalog"), log_service: Some("catalog"), start_ms: at(0.60), end_ms: at(0.60) + 5 * 60_000, magnitude_sigma: 0.0, also: vec![] },
            Incident { kind: "slow_climb", series: pick("search", 2, "memory_used_bytes"), log_service: None, start_ms: at(0.70), end_ms: at(0.70) + 20 * 60_000, magnitude_sigma: 60.0, also: vec![] },
        ];
        let mut incidents = incidents;
        incidents.sort_by_key(|i| i.start_ms);
        sim.incidents = incidents;
        sim
    }

    /// Expected spend of service `svc` in the hour starting at `t` (autoscaling group and
    /// storage; without noise, without the idle instances): a daily cycle and quieter weekends.
    pub fn hourly_cost(&self, svc: usize, t: i64) -> f64 {
        let (asg, data) = self.prices[svc];
        self.asg_factor(svc, t) * asg + data
    }

    fn asg_factor(&self, svc: usize, t: i64) -> f64 {
        use chrono::Datelike;
        let day = 86_400_000.0;
        let daily = 1.0 + 0.12 * (2.0 * std::f64::consts::PI * (t as f64) / day + svc as f64 * 0.7).sin();
        let weekend = chrono::DateTime::from_timestamp_millis(t).is_some_and(|d| d.weekday().number_from_monday() >= 6);
        daily * if weekend { 0.85 } else { 1.0 }
    }

    /// Expected spend of `svc` over the calendar month the demo starts in.
    fn month_spend(&self, svc: usize) -> f64 {
        use chrono::{Datelike, TimeZone};
        let t = chrono::Utc.timestamp_millis_opt(self.spec.start_ms).single().expect("valid start");
        let first = chrono::Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0).single().expect("valid month").timestamp_millis();
        let (y, m) = if t.month() == 12 { (t.year() + 1, 1) } else { (t.year(), t.month() + 1) };
        let next = chrono::Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().expect("valid month").timestamp_millis();
        (0..(next - first) / HOUR).map(|h| self.hourly_cost(svc, first + h * HOUR)).sum()
    }

    /// The FOCUS rows of the hour starting at `t`: per service its autoscaling group and its
    /// storage, and from `idle_start_ms` on the idle instances of checkout.
    fn cost_rows(&self, t: i64, rng: &mut StdRng) -> Vec<String> {
        let iso = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default();
        let row = |cost: f64, name: &str, id: String, cloud: &str, category: &str, svc: &str, team: &str| {
            serde_json::json!({
                "BilledCost": (cost * 10_000.0).round() / 10_000.0,
                "EffectiveCost": (cost * 10_000.0).round() / 10_000.0,
                "ListCost": (cost * 12_500.0).round() / 10_000.0,
                "ChargePeriodStart": iso(t),
                "ChargePeriodEnd": iso(t + HOUR),
                "ServiceName": cloud,
                "ServiceCategory": category,
                "ResourceId": id,
                "ResourceName": name,
                "RegionId": "eu-west-1",
                "SubAccountName": "prod",
                "Tags": { "service": svc, "team": team },
            })
            .to_string()
        };
        let mut out = Vec::new();
        for (i, svc) in SERVICES.iter().enumerate() {
            let (asg, data) = self.prices[i];
            let noise = 1.0 + 0.02 * (rng.random::<f64>() * 2.0 - 1.0);
            out.push(row(self.asg_factor(i, t) * asg * noise, &format!("{svc}-asg"), format!("asg-{svc}"), "Amazon EC2", "Compute", svc, TEAMS[i]));
            out.push(row(data, &format!("{svc}-data"), format!("vol-{svc}"), "Amazon EBS", "Storage", svc, TEAMS[i]));
        }
        if t >= self.idle_start_ms {
            for k in 1..=IDLE_INSTANCES {
                out.push(row(self.idle_price, &format!("checkout-idle-{k:02}"), format!("i-idle{k:02}"), "Amazon EC2", "Compute", "checkout", TEAMS[0]));
            }
        }
        out
    }

    /// Every metric series as one value per `window_ms` over the whole span (the level plus the
    /// series' noise), oldest first: the demo's data for `vigil eval forecast`.
    pub fn window_series(&self, window_ms: i64) -> Vec<(String, Vec<f64>)> {
        let mut rng = StdRng::seed_from_u64(self.spec.seed ^ 0x5eed);
        let windows = (self.spec.span_ms / window_ms.max(1)).max(0) as usize;
        (0..self.series.len())
            .map(|i| {
                let sigma = self.series[i].sigma.max(f64::MIN_POSITIVE);
                let noise = Normal::new(0.0, sigma).expect("sigma is positive and finite");
                let v = (0..windows).map(|k| self.level(i, self.spec.start_ms + k as i64 * window_ms) + noise.sample(&mut rng)).collect();
                (self.series[i].key.clone(), v)
            })
            .collect()
    }

    /// The value of series `i` at event time `t` (without noise), incidents included.
    fn level(&self, i: usize, t: i64) -> f64 {
        let s = &self.series[i];
        let day = 86_400_000.0;
        let mut v = s.base * (1.0 + s.amp * (2.0 * std::f64::consts::PI * (t as f64) / day + s.phase).sin());
        for inc in &self.incidents {
            if inc.log_service.is_some() || inc.series != s.key || t < inc.start_ms {
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

    /// The log lines of `service` in the step starting at `t`: (ts, level, host, message).
    fn log_lines(&self, svc_index: usize, t: i64, rng: &mut StdRng) -> Vec<(i64, &'static str, String, String)> {
        let svc = SERVICES[svc_index];
        let active = |kind: &str| self.incidents.iter().any(|i| i.kind == kind && i.log_service == Some(svc) && t >= i.start_ms && t < i.end_ms);
        let error_share = if active("error_burst") { 0.45 } else { ERROR_SHARE };
        let new_template = active("new_template");
        const USERS: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "frank"];
        const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];
        let mut out = Vec::with_capacity(LOG_LINES_PER_STEP + 4);
        for _ in 0..LOG_LINES_PER_STEP {
            let ts = t + rng.random_range(0..self.spec.step_ms);
            let host = format!("{svc}-{:02}", rng.random_range(0..self.spec.hosts_per_service));
            let r: f64 = rng.random();
            let (level, msg) = if r < error_share {
                ("error", format!("upstream {svc}-db timed out after {} ms", rng.random_range(1000..5000)))
            } else if r < error_share + WARN_SHARE {
                ("warn", format!("slow query on {svc}-db took {} ms", rng.random_range(200..900)))
            } else {
                match rng.random_range(0..3) {
                    0 => ("info", format!("GET /api/{svc}/items/{} 200 in {} ms", rng.random_range(1..99999), rng.random_range(2..80))),
                    1 => ("info", format!("user {} signed in from {}", USERS[rng.random_range(0..USERS.len())], REGIONS[rng.random_range(0..REGIONS.len())])),
                    _ => ("info", format!("cache refresh for {svc} completed in {} ms", rng.random_range(5..50))),
                }
            };
            out.push((ts, level, host, msg));
        }
        if new_template && rng.random::<f64>() < 0.5 {
            let ts = t + rng.random_range(0..self.spec.step_ms);
            let host = format!("{svc}-{:02}", rng.random_range(0..self.spec.hosts_per_service));
            out.push((ts, "error", host, format!("connection pool exhausted: {} waiters, giving up", rng.random_range(10..90))));
        }
        out
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

/// Sends one record, waiting while the producer's queue is full.
fn send(producer: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &str, payload: &[u8], stats: &GenStats) {
    let rec = BaseRecord::<str, [u8]>::to(topic).key(key).payload(payload);
    if let Err(e) = send_waiting(producer, rec, Duration::from_millis(5)) {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "demo producer could not enqueue a record");
    }
    stats.produced.fetch_add(1, Ordering::Relaxed);
}

/// Enqueues `rec`, sleeping `pause` each time the producer's queue is full; any other error is
/// returned.
pub(crate) fn send_waiting<K: rdkafka::message::ToBytes + ?Sized>(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut rec: BaseRecord<'_, K, [u8]>,
    pause: Duration,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                std::thread::sleep(pause);
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// One OTLP `ExportMetricsServiceRequest` with the gauges of one host.
fn otlp_request(host: &str, svc: &str, points: &[(&str, i64, f64)]) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message;
    let kv = |k: &str, v: &str| KeyValue { key: k.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }), ..Default::default() };
    let metrics = points
        .iter()
        .map(|(name, ts, v)| Metric {
            name: name.to_string(),
            data: Some(metric::Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint { time_unix_nano: *ts as u64 * 1_000_000, value: Some(number_data_point::Value::AsDouble(*v)), ..Default::default() }],
            })),
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: vec![kv("service.name", svc), kv("host.name", host)], ..Default::default() }),
            scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Produces the simulation at `speedup` × real time to the [`TOPICS`]. Blocking: run it on its
/// own thread.
pub fn generate(sim: &Simulation, brokers: &str, speedup: f64, stats: &GenStats) -> Result<(), KafkaError> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "10")
        .set("queue.buffering.max.messages", "500000")
        .set("compression.type", "none")
        .create()?;
    let spec = &sim.spec;
    let mut rng = StdRng::seed_from_u64(spec.seed ^ 0x5eed);
    let unit = Normal::new(0.0, 1.0).expect("valid normal");
    // Cost history first: three weeks of hourly FOCUS rows, as a billing export backfill.
    let costs_topic = TOPICS[3].0;
    for h in (1..=COST_HISTORY_DAYS * 24).rev() {
        let hour = spec.start_ms - h * HOUR;
        for row in sim.cost_rows(hour, &mut rng) {
            send(&producer, costs_topic, "history", row.as_bytes(), stats);
        }
    }
    let began = Instant::now();
    let mut t = spec.start_ms;
    let end = spec.start_ms + spec.span_ms;
    let mut buf = String::with_capacity(256);
    // The next hour whose cost rows are due: they arrive 5 minutes after it ends.
    let mut cost_hour = spec.start_ms;
    while t < end {
        let sim_now = spec.start_ms + (began.elapsed().as_secs_f64() * 1000.0 * speedup) as i64;
        if t > sim_now {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        // OTLP: one request per host of the OTLP service, its five gauges together.
        let mut otlp: std::collections::BTreeMap<String, Vec<(&str, i64, f64)>> = Default::default();
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
            if s.labels.iter().any(|(k, v)| *k == "service.name" && v == OTLP_SERVICE) {
                let host = s.labels.iter().find(|(k, _)| *k == "host.name").map(|(_, h)| h.clone()).unwrap_or_default();
                otlp.entry(host).or_default().push((s.name, ts_out, v));
                continue;
            }
            buf.clear();
            use std::fmt::Write;
            let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("\"{k}\":\"{v}\"")).collect();
            let _ = write!(buf, r#"{{"ts":{ts_out},"name":"{}","labels":{{{}}},"value":{v}}}"#, s.name, labels.join(","));
            if rng.random::<f64>() < spec.corrupt_fraction {
                corrupt(&mut buf, rng.random_range(0..4));
                stats.corrupted.fetch_add(1, Ordering::Relaxed);
            }
            send(&producer, TOPICS[0].0, &s.key, buf.as_bytes(), stats);
        }
        for (host, points) in &otlp {
            send(&producer, TOPICS[1].0, host, &otlp_request(host, OTLP_SERVICE, points), stats);
        }
        // The idle instances report their (idle) CPU like every host.
        if t >= sim.idle_start_ms {
            for k in 1..=IDLE_INSTANCES {
                let v = (0.01 + 0.003 * unit.sample(&mut rng)).max(0.0);
                let line = format!(r#"{{"ts":{},"name":"cpu_utilization","labels":{{"host":"checkout-idle-{k:02}","service":"checkout"}},"value":{v}}}"#, t + rng.random_range(0..2_000));
                send(&producer, TOPICS[0].0, &format!("checkout-idle-{k:02}"), line.as_bytes(), stats);
            }
        }
        // Cost rows of the hour that ended 5 minutes ago; and, from the fourth hour on, a
        // correction for an hour that has long closed (it goes to the late topic).
        while t >= cost_hour + HOUR + 5 * 60_000 {
            for mut row in sim.cost_rows(cost_hour, &mut rng) {
                if rng.random::<f64>() < spec.corrupt_fraction * 20.0 {
                    row = row.replacen("\"EffectiveCost\":", "\"EffectiveCost\":\"n/a\",\"x\":", 1);
                    stats.corrupted.fetch_add(1, Ordering::Relaxed);
                }
                send(&producer, costs_topic, "live", row.as_bytes(), stats);
            }
            if cost_hour >= spec.start_ms + 3 * HOUR {
                if let Some(row) = sim.cost_rows(cost_hour - 3 * HOUR, &mut rng).into_iter().next() {
                    send(&producer, costs_topic, "correction", row.as_bytes(), stats);
                    stats.late.fetch_add(1, Ordering::Relaxed);
                }
            }
            cost_hour += HOUR;
        }
        // Logs, one JSON object per line.
        for (svc, name) in SERVICES.iter().enumerate() {
            for (ts, level, host, msg) in sim.log_lines(svc, t, &mut rng) {
                let line = serde_json::json!({ "ts": ts, "level": level, "service": name, "host": host, "message": msg }).to_string();
                let mut line = line.into_bytes();
                if rng.random::<f64>() < spec.corrupt_fraction {
                    line.truncate(line.len() / 2);
                    stats.corrupted.fetch_add(1, Ordering::Relaxed);
                }
                send(&producer, TOPICS[2].0, name, &line, stats);
            }
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
    /// Per incident: its kind, series and the first matching decision (window start of its
    /// first signal, policy and action), if any.
    pub incidents: Vec<(String, String, Option<String>)>,
    /// Firing decisions that match no incident.
    pub false_decisions: Vec<String>,
    /// Firing decisions (resolved events are not decisions).
    pub firing: usize,
    /// Resolved events.
    pub resolved: usize,
    /// Distinct Vigil incidents with a firing decision.
    pub decided_incidents: usize,
}

impl Scorecard {
    /// Matches firing decisions to injected incidents: a decision whose incident has the
    /// injected series among its members (for a log incident: a `log_*` series of its service),
    /// made after the injected incident starts and no later than 10 minutes after it ends.
    pub fn score(sim: &Simulation, decisions: &[vigil_models::Decision]) -> Self {
        let mut card = Scorecard::default();
        let firing: Vec<&vigil_models::Decision> = decisions.iter().filter(|d| d.status == "firing").collect();
        card.firing = firing.len();
        card.resolved = decisions.len() - firing.len();
        card.decided_incidents = firing.iter().map(|d| d.incident.id.as_str()).collect::<std::collections::HashSet<_>>().len();
        let mut matched = vec![false; firing.len()];
        let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis()).unwrap_or(i64::MIN);
        for inc in &sim.incidents {
            let mut first = None;
            for (i, d) in firing.iter().enumerate() {
                let at = parse(&d.time);
                let about = d.incident.members.iter().any(|m| match inc.log_service {
                    Some(svc) => m.starts_with("log_") && m.contains(&format!("service=\"{svc}\"")),
                    None => *m == inc.series || inc.also.iter().any(|a| m.contains(a.as_str())),
                });
                if about && at > inc.start_ms && at <= inc.end_ms + 600_000 {
                    matched[i] = true;
                    first.get_or_insert_with(|| format!("{} {} -> {}", d.evidence.window_start, d.policy, d.action));
                }
            }
            card.incidents.push((inc.kind.to_string(), inc.series.clone(), first));
        }
        for (i, d) in firing.iter().enumerate() {
            if !matched[i] {
                card.false_decisions.push(format!("{} {} {} ({} -> {}) score {}", d.time, d.incident.key, d.incident.origin, d.policy, d.action, d.evidence.score));
            }
        }
        card
    }

    /// Incidents with at least one decision.
    pub fn detected(&self) -> usize {
        self.incidents.iter().filter(|i| i.2.is_some()).count()
    }
}
