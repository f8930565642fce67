//! Shared helpers for the end-to-end tests: a librdkafka mock cluster reached over TCP.


use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use vigil::Config;

pub struct Kafka {
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub brokers: String,
    /// The checkpoint directories of the configurations handed out, removed with the cluster.
    scratch: std::sync::Mutex<Vec<Scratch>>,
}

/// A directory of its own under the system's temporary directory, removed when the test
/// passes and kept, with its logs and checkpoints, when it fails.
#[derive(Debug)]
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    /// Creates `<temp>/vigil-<name>-<unique>`.
    pub fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("vigil-{name}-{}", crate::process::unique()));
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        Self(d)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Kafka {
    pub fn start(input_partitions: i32) -> Self {
        arm_watchdog();
        let cluster = MockCluster::new(1).expect("mock cluster");
        let brokers = cluster.bootstrap_servers();
        cluster.create_topic("metrics", input_partitions, 1).unwrap();
        cluster.create_topic("vigil.dlq", 1, 1).unwrap();
        cluster.create_topic("vigil.decisions", 2, 1).unwrap();
        cluster.create_topic("vigil.late", 1, 1).unwrap();
        cluster.create_topic("vigil.feedback", 1, 1).unwrap();
        Self { cluster, brokers, scratch: Default::default() }
    }

    pub fn config(&self, group: &str) -> Config {
        let mut c = Config::default();
        c.kafka.brokers = self.brokers.clone();
        c.kafka.group_id = group.into();
        c.kafka.poll_timeout = Duration::from_millis(100);
        // A member that went away is noticed within seconds, not librdkafka's default 45.
        c.kafka.consumer.insert("session.timeout.ms".into(), "6000".into());
        c.kafka.consumer.insert("heartbeat.interval.ms".into(), "500".into());
        // Each test's checkpoints in a directory of its own.
        let dir = Scratch::new(&format!("e2e-{group}"));
        c.checkpoint.url = dir.display().to_string();
        self.scratch.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
        c.validate().unwrap();
        c
    }

    /// Produces `(key, payload)` records (payload `None` is a tombstone) and waits for every ack.
    pub async fn produce(&self, records: &[(String, Option<Vec<u8>>)]) {
        let p: FutureProducer = ClientConfig::new().set("bootstrap.servers", &self.brokers).set("linger.ms", "5").create().unwrap();
        let futs = records.iter().map(|(k, v)| {
            let mut r = FutureRecord::<str, [u8]>::to("metrics").key(k.as_str());
            if let Some(v) = v {
                r = r.payload(v.as_slice());
            }
            p.send(r, Duration::from_secs(10))
        });
        for r in futures::future::join_all(futs).await {
            r.expect("produce acked");
        }
    }

    /// Reads every record of `topic` from the beginning (all partitions).
    pub fn read_all(&self, topic: &str, expect_at_least: usize, timeout: Duration) -> Vec<Record> {
        let c = reader(&self.brokers, &format!("reader-{topic}-{}", rand_id()), &[("enable.auto.commit", "false")]);
        let md = c.fetch_metadata(Some(topic), Duration::from_secs(5)).unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline {
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let mut headers = Vec::new();
                    if let Some(h) = m.headers() {
                        for i in 0..h.count() {
                            let hh = h.get(i);
                            headers.push((hh.key.to_string(), String::from_utf8_lossy(hh.value.unwrap_or_default()).to_string()));
                        }
                    }
                    if topic == "vigil.decisions" {
                        validate_decision(m.payload().unwrap_or_default());
                    }
                    out.push(Record {
                        key: m.key().map(|k| String::from_utf8_lossy(k).to_string()),
                        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                        headers,
                    });
                    quiet_since = Instant::now();
                }
                _ => {
                    if out.len() >= expect_at_least && quiet_since.elapsed() > Duration::from_millis(500) {
                        break;
                    }
                }
            }
        }
        out
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u64) << 20
}

#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str())
    }
}

pub fn point(ts: i64, name: &str, host: &str, service: &str, value: f64) -> (String, Option<Vec<u8>>) {
    let key = vigil_ingest::series_key(name, [("host", host), ("service", service)]);
    let body = format!(r#"{{"ts":{ts},"name":"{name}","labels":{{"service":"{service}","host":"{host}"}},"value":{value}}}"#);
    (key, Some(body.into_bytes()))
}

/// Steps `engine` until `done` holds or `timeout` passes; returns the decisions it published.
pub async fn step_until(
    engine: &mut vigil::Engine,
    timeout: Duration,
    mut done: impl FnMut(&vigil::Stats) -> bool,
) -> Vec<vigil_models::Decision> {
    let stats = engine.stats();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&stats) {
        assert!(Instant::now() < deadline, "timed out; stats {stats:?}");
        out.extend(engine.step().await.expect("engine step"));
    }
    out
}

/// A minimal HTTP/1.1 client over TCP: `POST path` with `body`; returns (status, body).
pub async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    (status, body)
}

/// Checks a decision record against `docs/schemas/decision.schema.json`; panics naming every
/// violation. Every decision the end-to-end tests read from the topic goes through it.
pub fn validate_decision(payload: &[u8]) -> serde_json::Value {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let v = SCHEMA.get_or_init(|| {
        let schema: serde_json::Value = serde_json::from_str(include_str!("../../docs/schemas/decision.schema.json")).expect("schema is JSON");
        jsonschema::options().should_validate_formats(true).build(&schema).expect("schema compiles")
    });
    let value: serde_json::Value = serde_json::from_slice(payload).expect("decision is JSON");
    let errors: Vec<String> = v.iter_errors(&value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "decision does not match docs/schemas/decision.schema.json: {errors:#?}\n{value:#}");
    VALIDATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    value
}

/// Decision records validated so far in this test binary.
pub static VALIDATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The rows of a result table, as JSON objects.
pub fn rows(tables: &vigil_pipeline::ResultTables, table: &str) -> Vec<serde_json::Value> {
    let snap = tables.snapshot(table).unwrap();
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::ArrayWriter::new(&mut buf);
        for b in &snap.batches {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
    }
    if buf.is_empty() {
        return Vec::new();
    }
    serde_json::from_slice(&buf).unwrap()
}

pub fn tables() -> Arc<vigil_pipeline::ResultTables> {
    Arc::new(vigil_pipeline::ResultTables::new())
}

/// A consumer of `group` that reads offsets or records for a test, `settings` on top. It is
/// dropped within a bound: a group close that hangs must not hang the test.
pub fn reader(brokers: &str, group: &str, settings: &[(&str, &str)]) -> vigil_ingest::ClosedWithin<BaseConsumer> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", brokers).set("group.id", group);
    for (k, v) in settings {
        cc.set(*k, *v);
    }
    vigil_ingest::ClosedWithin::new("test reader", cc.create().expect("a test consumer"), vigil_ingest::CLOSE_TIMEOUT)
}

/// Logs of the engine in the test's output (shown when it fails), filtered by `RUST_LOG`.
pub fn init_tracing() {
    arm_watchdog();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// Turns a hang of this test binary into a failure that says where it hangs. The whole binary
/// normally finishes in minutes; once it has run for `VIGIL_TEST_WATCHDOG_SECS` (default 15
/// minutes), every thread's stack is printed (through gdb, where the machine has it) and the
/// process aborts, instead of a hung test holding the run until an outer time limit cuts it
/// off without a word. Armed by the first test that starts a broker or tracing.
pub fn arm_watchdog() {
    static ARMED: std::sync::Once = std::sync::Once::new();
    ARMED.call_once(|| {
        let secs = std::env::var("VIGIL_TEST_WATCHDOG_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(900);
        let spawned = std::thread::Builder::new().name("watchdog".into()).spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            eprintln!("the end-to-end tests are still running after {secs} s: a test hangs; the threads' stacks follow");
            let pid = std::process::id().to_string();
            match std::process::Command::new("gdb").args(["-p", &pid, "-batch", "-ex", "thread apply all bt"]).status() {
                Ok(s) => eprintln!("gdb: {s}"),
                Err(e) => eprintln!("no stacks: gdb could not run ({e})"),
            }
            std::process::abort();
        });
        spawned.expect("start the watchdog thread");
    });
}
