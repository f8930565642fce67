//! `vigil run` as a separate process (the binary under test), and what the tests read back:
//! the decisions topic, the windows each run closed, the checkpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub const T0: i64 = 1_767_571_200_000;
pub const WINDOW_MS: i64 = 10_000;

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A name no other test of any run has: process id, clock nanoseconds, a counter.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn temp_dir(name: &str) -> crate::common::Scratch {
    crate::common::Scratch::new(name)
}

/// A configuration file for `vigil run`: brokers, group, checkpoints every second in
/// `state`, one input topic, fleet outliers off (only the injected spikes should decide).
pub fn write_config(dir: &Path, brokers: &str, group: &str, state: &str, listen_port: u16, extra_consumer: &[(&str, &str)]) -> PathBuf {
    let mut consumer = String::new();
    for (k, v) in [("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "500")] {
        if !extra_consumer.iter().any(|(ek, _)| *ek == k) {
            consumer.push_str(&format!("\"{k}\" = \"{v}\"\n"));
        }
    }
    for (k, v) in extra_consumer {
        consumer.push_str(&format!("\"{k}\" = \"{v}\"\n"));
    }
    let toml = format!(
        r#"[kafka]
brokers = "{brokers}"
group_id = "{group}"
input_topics = ["metrics"]
poll_timeout = "100ms"
delivery_timeout = "10s"

[kafka.consumer]
{consumer}
[window]
size = "10s"
allowed_lag = "5s"
idle_timeout = "10s"

[fleet]
enabled = false

# Every host its own incident: the tests inject one spike per host and count its decision.
[incidents]
correlate_by = ["host"]

[checkpoint]
url = "{state}"
interval = "1s"
keep = 3

[shutdown]
grace = "15s"

[server]
listen = "127.0.0.1:{listen_port}"
# Several members run on one host: each its own Postgres port.
pg_listen = "127.0.0.1:0"
"#
    );
    let p = dir.join(format!("{group}-{listen_port}.toml"));
    std::fs::write(&p, toml).unwrap();
    p
}

/// One `vigil run` process, its output appended to `log`.
pub struct Vigil {
    pub child: Child,
    pub port: u16,
}

impl Vigil {
    pub fn start(config: &Path, port: u16, log: &Path) -> Vigil {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["run", "--config"])
            .arg(config)
            // The windows each run closes are logged at debug; the tests take their union.
            .env("RUST_LOG", "info,vigil_pipeline::engine=debug")
            .env_remove("VIGIL_CONFIG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start vigil");
        Vigil { child, port }
    }

    /// GET `path` on the process's HTTP port: the status, or None when nothing answers.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_millis(300)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let status = buf.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, buf.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default()))
    }

    /// A sample of `/metrics` (0 when absent or unreachable).
    pub fn metric(&self, name: &str) -> f64 {
        let Some((200, body)) = self.get("/metrics") else { return 0.0 };
        body.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    }

    /// Waits until `/readyz` answers 200 (state restored, partitions assigned).
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("vigil exited before it was ready: {status}");
            }
            if matches!(self.get("/readyz"), Some((200, _))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL on unix
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// An incident: a spike on one series in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Incident {
    pub series: usize,
    pub window: i64,
}

/// A stream of `series` series of cpu_utilization (2 points per window, noise 0.01 around 0.5)
/// over `windows` windows, with a spike to 0.97 at each incident; series `s` goes to
/// partition `s % partitions`. Returns one batch of (partition, key, payload) per window.
pub fn stream(series: usize, windows: i64, partitions: i32, incidents: &[Incident], seed: u64) -> Vec<Vec<(i32, String, Vec<u8>)>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let noise = Normal::new(0.0, 0.01).unwrap();
    (0..windows)
        .map(|w| {
            let mut out = Vec::new();
            for half in 0..2 {
                for s in 0..series {
                    let ts = T0 + w * WINDOW_MS + half * 5_000 + (s as i64 * 37) % 4_000;
                    let mut v = 0.5 + noise.sample(&mut rng);
                    if incidents.iter().any(|i| i.series == s && i.window == w) {
                        v = 0.97;
                    }
                    let (key, body) = crate::common::point(ts, "cpu_utilization", &host(s), "checkout", v);
                    out.push(((s as i32) % partitions, key, body.unwrap()));
                }
            }
            out
        })
        .collect()
}

pub fn host(s: usize) -> String {
    format!("h{s:02}")
}

pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").set("acks", "all").create().unwrap()
}

/// Produces one window's records to `metrics` and waits for their acknowledgement.
pub async fn produce_window(p: &FutureProducer, records: &[(i32, String, Vec<u8>)]) {
    let futs = records.iter().map(|(part, k, v)| p.send(FutureRecord::to("metrics").partition(*part).key(k.as_str()).payload(v.as_slice()), Duration::from_secs(10)));
    for r in futures::future::join_all(futs).await {
        r.expect("produce acked");
    }
}

/// A decision as read back from the topic.
#[derive(Debug, Clone)]
pub struct TopicDecision {
    pub id: String,
    /// The series of the incident's first signal.
    pub series: String,
    pub window_start_ms: i64,
    /// `firing` or `resolved`.
    pub status: String,
}

/// Calls `each` with every record of `topic`, from the beginning to the end each partition
/// reports while fetching (tansu's answer to a watermark request is not the true end).
fn read_to_end(brokers: &str, topic: &str, mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>)) {
    let c = crate::common::reader(brokers, &format!("audit-{}", unique()), &[("enable.auto.commit", "false"), ("enable.partition.eof", "true")]);
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut open = BTreeSet::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
        open.insert(p.id());
    }
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !open.is_empty() {
        assert!(Instant::now() < deadline, "could not read {topic} to its end");
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => each(&m),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            _ => {}
        }
    }
}

/// Every decision on `topic`, read from the beginning.
pub fn read_decisions(brokers: &str, topic: &str) -> Vec<TopicDecision> {
    let mut out = Vec::new();
    read_to_end(brokers, topic, |m| {
        let id = m.headers().and_then(|h| h.iter().find(|x| x.key == "ce_id").and_then(|x| x.value.map(|v| String::from_utf8_lossy(v).to_string()))).unwrap_or_default();
        let v = crate::common::validate_decision(m.payload().unwrap_or_default());
        let ws = v["evidence"]["window_start"].as_str().unwrap_or_default();
        let ws = chrono::DateTime::parse_from_rfc3339(ws).map(|t| t.timestamp_millis()).unwrap_or(i64::MIN);
        out.push(TopicDecision {
            id,
            series: v["evidence"]["series"].as_str().unwrap_or_default().to_string(),
            window_start_ms: ws,
            status: v["status"].as_str().unwrap_or_default().to_string(),
        });
    });
    out
}

/// How many records `topic` holds.
pub fn count_records(brokers: &str, topic: &str) -> usize {
    let mut n = 0;
    read_to_end(brokers, topic, |_| n += 1);
    n
}

/// The window starts the runs logged as closed ("windows closed starts=[...]").
pub fn closed_windows(log: &Path) -> BTreeSet<i64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| l.contains("windows closed")) {
        let Some(rest) = line.split("starts=[").nth(1) else { continue };
        let Some(list) = rest.split(']').next() else { continue };
        if !rest.contains(']') {
            continue; // cut short by a kill
        }
        out.extend(list.split(',').filter_map(|x| x.trim().parse::<i64>().ok()));
    }
    out
}

/// Checks the decisions on the topic against the incidents: each decided exactly once (one
/// firing decision, from the incident's window), no other firing decision, at most one
/// resolved event per incident, no id twice.
pub fn check_decisions(all: &[TopicDecision], incidents: &[Incident]) -> Result<(), String> {
    let mut ids = BTreeMap::new();
    for d in all {
        *ids.entry(d.id.clone()).or_insert(0) += 1;
    }
    let dup: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    if !dup.is_empty() {
        return Err(format!("duplicate decision ids: {dup:?}"));
    }
    let decisions: Vec<&TopicDecision> = all.iter().filter(|d| d.status == "firing").collect();
    let resolved = all.iter().filter(|d| d.status == "resolved").count();
    if resolved > incidents.len() {
        return Err(format!("{resolved} resolved events for {} incidents: {all:?}", incidents.len()));
    }
    for i in incidents {
        let key = vigil_ingest::series_key("cpu_utilization", [("host", host(i.series).as_str()), ("service", "checkout")]);
        let n = decisions.iter().filter(|d| d.series == key && d.window_start_ms == T0 + i.window * WINDOW_MS).count();
        if n != 1 {
            return Err(format!("incident {i:?} has {n} decisions; all: {decisions:?}"));
        }
    }
    if decisions.len() != incidents.len() {
        return Err(format!("{} decisions for {} incidents: {decisions:?}", decisions.len(), incidents.len()));
    }
    Ok(())
}
