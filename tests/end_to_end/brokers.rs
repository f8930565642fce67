//! Real servers for the end-to-end tests, started by the tests themselves as child processes:
//! [`Tansu`], a Kafka-protocol broker (in-memory storage), and [`Moto`], moto's S3 server.
//!
//! `.ci/run` installs both into `$VIGIL_TOOLS` (default `$HOME/.cache/vigil/tools`). A test
//! that needs one and cannot find it panics saying how to install it: these tests are never
//! skipped, because a skipped broker test reads like a passing one.
//!
//! Each child's stdout and stderr go to a log file under `<temp>/vigil-e2e/`; a child that does not
//! come up in time fails the test with the tail of that log, and a failing test keeps the log. Ports are picked free by the OS, so tests
//! can run in parallel, each with its own servers; a child is killed when its handle drops.

// Not every test uses every helper.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// The versions `.ci/run` installs; keep the two in step (only the panic message uses them).
pub const TANSU_VERSION: &str = "0.6.0";
pub const MOTO_VERSION: &str = "5.2.5";

/// How long a server gets to come up, and a topic to appear in metadata.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The tool cache `.ci/run` installs into: `$VIGIL_TOOLS`, else `$HOME/.cache/vigil/tools`.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("VIGIL_TOOLS").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
            home.join(".cache/vigil/tools")
        }
    }
}

/// Path of a tool installed by `.ci/run`: looks in `$VIGIL_TOOLS/bin`, `$VIGIL_TOOLS/venv/bin`,
/// then `PATH`. Panics when it is absent, naming the tool and the command that installs it.
pub fn tool(name: &str) -> PathBuf {
    let tools = tools_dir();
    let mut candidates = vec![tools.join("bin").join(name), tools.join("venv/bin").join(name)];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join(name)));
    }
    if let Some(found) = candidates.into_iter().find(|p| is_executable(p)) {
        return found;
    }
    let install = match name {
        "tansu" => format!(
            "cargo install tansu --version {TANSU_VERSION} --locked --features dynostore --root \"$VIGIL_TOOLS\""
        ),
        "moto_server" => format!(
            "python3 -m venv \"$VIGIL_TOOLS/venv\" && \"$VIGIL_TOOLS/venv/bin/pip\" install \"moto[server]=={MOTO_VERSION}\""
        ),
        "chromium" | "psql" | "openssl" | "curl" => "apt-get install chromium postgresql-client openssl curl (.ci/run does)".to_string(),
        _ => "see .ci/run".to_string(),
    };
    panic!(
        "`{name}` not found in {tools}/bin, {tools}/venv/bin or PATH. The end-to-end tests start it \
         themselves and are not skipped without it: `bash .ci/run` installs it (VIGIL_TOOLS={tools}), \
         or by hand: {install}",
        tools = tools.display()
    );
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Headless Chromium (Debian's `chromium` package), for the status page test.
pub fn chromium() -> PathBuf {
    tool("chromium")
}

/// A port that was free a moment ago: bind 127.0.0.1:0 and let the listener go. Another process
/// can still take it before the child binds it; `start` retries with a new port when that happens.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().unwrap().port()
}

/// A log file for one child under `<temp>/vigil-e2e/`; returns (path, stdout, stderr).
fn log_file(what: &str, port: u16) -> (PathBuf, File, File) {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join("vigil-e2e");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{what}-{}-{n}-port{port}.log", std::process::id()));
    let out = File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let err = out.try_clone().unwrap();
    (path, out, err)
}

/// The last `max` bytes of a log, for panic messages.
fn log_tail(path: &Path, max: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    format!("--- {} (last {} bytes) ---\n{}", path.display(), text.len() - start, String::from_utf8_lossy(&text[start..]))
}

/// Whether a child that exited early failed to bind its port (so a retry on another port helps).
fn lost_port_race(log: &Path) -> bool {
    let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).to_lowercase();
    text.contains("address already in use") || text.contains("addrinuse")
}

/// After a server is stopped: a passing test's log is removed (set VIGIL_KEEP_LOGS to keep it); a
/// failing test's is kept and its path printed.
fn finish_log(what: &str, log: &Path) {
    if std::thread::panicking() {
        eprintln!("{what} log kept: {}", log.display());
    } else if std::env::var_os("VIGIL_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_file(log);
    }
}

fn kill(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// A tansu broker on 127.0.0.1 with in-memory storage (nothing survives a stop); one node,
/// replication factor 1. Killed on drop.
pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
    /// stdout and stderr of the broker.
    pub log: PathBuf,
}

impl Tansu {
    /// Starts a broker on a free port and waits until an rdkafka client gets metadata from it.
    /// `VIGIL_TANSU_LOG` sets the broker's `RUST_LOG` (default `warn`; `debug` logs every request
    /// and response).
    pub fn start() -> Tansu {
        crate::common::arm_watchdog();
        let tansu = tool("tansu");
        for attempt in 1..=3 {
            let port = free_port();
            let (log, out, err) = log_file("tansu", port);
            let url = format!("tcp://127.0.0.1:{port}");
            let child = Command::new(&tansu)
                .arg("broker")
                .args(["--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/", "--cluster-id", "vigil-e2e"])
                // tansu reads a `.env` from its working directory and ancestors (dotenv), and some
                // settings from the environment: keep the repository's and the caller's out.
                .current_dir(std::env::temp_dir())
                .env_remove("SCHEMA_REGISTRY")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .env("RUST_LOG", std::env::var("VIGIL_TANSU_LOG").unwrap_or_else(|_| "warn".into()))
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", tansu.display()));
            let mut broker = Tansu { child: Some(child), port, log };
            match broker.wait_ready() {
                Ok(()) => return broker,
                Err(exited) if exited && attempt < 3 && lost_port_race(&broker.log) => continue,
                Err(exited) => panic!(
                    "tansu {} on 127.0.0.1:{port}\n{}",
                    if exited { "exited before accepting Kafka clients".to_string() } else { format!("did not accept Kafka clients within {START_TIMEOUT:?}") },
                    log_tail(&broker.log, 8000)
                ),
            }
        }
        unreachable!()
    }

    /// Ok once a metadata request lists the broker; Err(true) if the process exited, Err(false)
    /// on time-out.
    fn wait_ready(&mut self) -> Result<(), bool> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        // A plain TCP connect first: rdkafka logs every refused connection.
        loop {
            if self.exited() {
                return Err(true);
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let client = self.metadata_client();
        while Instant::now() < deadline {
            if self.exited() {
                return Err(true);
            }
            if let Ok(md) = client.fetch_metadata(None, Duration::from_secs(1)) {
                if md.brokers().iter().any(|b| b.port() as u16 == self.port) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(self.exited())
    }

    fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    fn metadata_client(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("socket.timeout.ms", "5000")
            .create()
            .expect("rdkafka metadata client")
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `name` with `partitions` partitions through `tansu topic create` (tansu does not
    /// create topics on first use) and waits until metadata shows every partition with a leader.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let out = Command::new(tool("tansu"))
            .args(["topic", "create", "--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(["--partitions", &partitions.to_string(), name])
            .current_dir(std::env::temp_dir())
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {name} --partitions {partitions} failed ({}):\n{}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log_tail(&self.log, 4000)
        );
        self.wait_topic(name, partitions);
    }

    /// Waits until metadata shows `name` with `partitions` partitions, each with a leader.
    pub fn wait_topic(&self, name: &str, partitions: i32) {
        let client = self.metadata_client();
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match client.fetch_metadata(Some(name), Duration::from_secs(2)) {
                Ok(md) => {
                    if let Some(t) = md.topics().iter().find(|t| t.name() == name) {
                        let ready = t.error().is_none()
                            && t.partitions().len() == partitions as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0 && p.error().is_none());
                        if ready {
                            return;
                        }
                        last = format!("error {:?}, {} partitions", t.error(), t.partitions().len());
                    }
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("topic {name} with {partitions} partitions not in metadata after {START_TIMEOUT:?} (last: {last})\n{}", log_tail(&self.log, 4000));
    }

    /// Kills the broker (SIGKILL) and waits for it; its in-memory data is gone. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
        finish_log("tansu", &self.log);
    }
}

/// moto's S3 server on 127.0.0.1 (in memory, any credentials accepted). Killed on drop.
/// Clients use path-style requests against [`Moto::endpoint`], over plain HTTP.
pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    /// stdout and stderr of the server.
    pub log: PathBuf,
}

impl Moto {
    /// Starts moto_server on a free port and waits until it answers HTTP.
    pub fn start() -> Moto {
        let moto = tool("moto_server");
        for attempt in 1..=3 {
            let port = free_port();
            let (log, out, err) = log_file("moto", port);
            let child = Command::new(&moto)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .current_dir(std::env::temp_dir())
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", moto.display()));
            let mut server = Moto { child: Some(child), port, log };
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Some(Ok(Some(status))) = server.child.as_mut().map(|c| c.try_wait()) {
                    if attempt < 3 && lost_port_race(&server.log) {
                        break;
                    }
                    panic!("moto_server exited ({status}) on port {port}\n{}", log_tail(&server.log, 8000));
                }
                if let Ok((status, _)) = server.try_request("GET", "/", &[]) {
                    if status > 0 {
                        return server;
                    }
                }
                if Instant::now() > deadline {
                    panic!("moto_server did not answer on 127.0.0.1:{port} within {START_TIMEOUT:?}\n{}", log_tail(&server.log, 8000));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        unreachable!()
    }

    /// `http://127.0.0.1:PORT`: the S3 endpoint (path style, `allow_http`; region `us-east-1`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (`PUT /name`); panics unless moto answers 200.
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = self.request("PUT", &format!("/{name}"), &[]);
        assert_eq!(status, 200, "create bucket {name}: HTTP {status}: {}", String::from_utf8_lossy(&body));
    }

    /// One HTTP/1.1 request with a dummy `Authorization` (moto checks no signature); returns
    /// (status, body). E.g. `request("PUT", "/bucket/key", b"data")`, `request("GET", "/bucket/key", b"")`.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        self.try_request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path} to moto on port {}: {e}\n{}", self.port, log_tail(&self.log, 4000)))
    }

    fn try_request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        // moto checks no signature, but treats a request without `Authorization` as anonymous:
        // reading an existing object then fails with 403 (its ACL is private). The credential scope
        // also routes the request to S3 in us-east-1.
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: {AUTH}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let split = resp.windows(4).position(|w| w == b"\r\n\r\n");
        let (head, body) = match split {
            Some(i) => (&resp[..i], resp[i + 4..].to_vec()),
            None => (&resp[..], Vec::new()),
        };
        let head = String::from_utf8_lossy(head);
        let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        // moto (werkzeug) answers with Content-Length, or chunked for streamed bodies.
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        Ok((status, if chunked { dechunk(&body) } else { body }))
    }

    /// Kills the server and waits for it; its buckets are gone. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
        finish_log("moto_server", &self.log);
    }
}

/// A well-formed SigV4 `Authorization` with a dummy signature, for [`Moto::request`].
const AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size_line = String::from_utf8_lossy(&b[..i]);
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        b = &b[i + 2..];
        if size == 0 || b.len() < size {
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
    out
}
