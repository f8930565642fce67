//! Checkpoint store tests: every behaviour on a local directory, and again against a real
//! S3-compatible server (moto in server mode, started by the test).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::{ObjectStoreExt, PutPayload};
use serde_json::json;

use super::retention::retention_victims;
use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("vigil-store-{name}-{}-{nanos}", std::process::id()));
        Self(dir)
    }

    fn url(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn local(name: &str, keep: usize) -> (CheckpointStore, TempDir) {
    let dir = TempDir::new(name);
    let store =
        CheckpointStore::open(&dir.url(), &BTreeMap::new(), keep).expect("opens a local store");
    (store, dir)
}

fn section(name: &str, bytes: &[u8]) -> Section {
    Section {
        name: name.to_string(),
        bytes: bytes.to_vec(),
    }
}

async fn write(store: &CheckpointStore, member: &str, sections: &[(&str, &[u8])]) -> Written {
    let sections = sections.iter().map(|(n, b)| section(n, b)).collect();
    store
        .write(member, sections, json!({"member": member}))
        .await
        .expect("writes a checkpoint")
}

async fn raw_get(store: &CheckpointStore, path: &Path) -> Vec<u8> {
    let r = store.store.get(path).await.expect("object exists");
    r.bytes().await.expect("object reads").into()
}

async fn raw_put(store: &CheckpointStore, path: &Path, bytes: Vec<u8>) {
    store
        .store
        .put(path, PutPayload::from(bytes))
        .await
        .expect("object writes");
}

async fn exists(store: &CheckpointStore, path: &Path) -> bool {
    match store.store.head(path).await {
        Ok(_) => true,
        Err(object_store::Error::NotFound { .. }) => false,
        Err(e) => panic!("head {path}: {e}"),
    }
}

async fn newest(store: &CheckpointStore) -> (Loaded, Vec<String>) {
    store
        .load_newest(|_| true)
        .await
        .expect("loads")
        .expect("a checkpoint exists")
}

// ---------------------------------------------------------------------------------------------
// Checks, run on a local directory and on S3. Each takes an empty store.
// ---------------------------------------------------------------------------------------------

async fn check_round_trip(store: &CheckpointStore) {
    assert!(store.manifests().await.expect("lists").is_empty());
    assert!(
        store.load_newest(|_| true).await.expect("loads").is_none(),
        "an empty store has no checkpoint"
    );

    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let first = write(
        store,
        "member-a",
        &[("global", b"one"), ("partition/metrics/0", &big)],
    )
    .await;
    let second = store
        .write(
            "member a/1",
            vec![
                section("global", b"two"),
                section("partition/metrics/0", b""),
                section("partition/metrics/1", b"p1"),
            ],
            json!({"offsets": {"metrics/0": 42}, "note": "second"}),
        )
        .await
        .expect("writes");
    assert!(
        second.id > first.id,
        "ids sort chronologically: {} then {}",
        first.id,
        second.id
    );
    assert!(
        second.id.ends_with("-member_a_1"),
        "member sanitised in the id: {}",
        second.id
    );
    assert_eq!(
        first.bytes as usize,
        3 + big.len() + raw_get(store, &store.manifest_path(&first.id)).await.len()
    );
    assert_eq!(
        store.manifests().await.expect("lists"),
        vec![second.id.clone(), first.id.clone()]
    );

    let (loaded, skipped) = newest(store).await;
    assert!(skipped.is_empty());
    assert_eq!(loaded.manifest.id, second.id);
    assert_eq!(loaded.manifest.member, "member a/1");
    assert_eq!(loaded.manifest.format_version, FORMAT_VERSION);
    assert_eq!(
        loaded.manifest.meta,
        json!({"offsets": {"metrics/0": 42}, "note": "second"})
    );
    assert_eq!(loaded.section("global"), Some(&b"two"[..]));
    assert_eq!(loaded.section("partition/metrics/0"), Some(&b""[..]));
    assert_eq!(loaded.section("partition/metrics/1"), Some(&b"p1"[..]));
    assert_eq!(loaded.section("partition/metrics/2"), None);
    let names: Vec<&str> = loaded.sections().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["global", "partition/metrics/0", "partition/metrics/1"]
    );

    let (older, _) = store
        .load_newest(|m| m.id == first.id)
        .await
        .expect("loads")
        .expect("first exists");
    assert_eq!(older.section("partition/metrics/0"), Some(&big[..]));
    assert_eq!(older.manifest.meta, json!({"member": "member-a"}));
}

async fn check_corrupt_data_falls_back(store: &CheckpointStore) {
    let good = write(store, "m", &[("global", b"good state")]).await;
    let bad = write(store, "m", &[("global", b"newer state")]).await;
    let path = store.data_path(&bad.id);
    let mut data = raw_get(store, &path).await;
    data[3] ^= 0x20;
    raw_put(store, &path, data).await;

    let (loaded, skipped) = newest(store).await;
    assert_eq!(
        loaded.manifest.id, good.id,
        "falls back to the previous checkpoint"
    );
    assert_eq!(loaded.section("global"), Some(&b"good state"[..]));
    assert_eq!(skipped, vec![bad.id.clone()]);

    // A missing data object is skipped the same way.
    let gone = write(store, "m", &[("global", b"newest state")]).await;
    store
        .store
        .delete(&store.data_path(&gone.id))
        .await
        .expect("deletes");
    let (loaded, skipped) = newest(store).await;
    assert_eq!(loaded.manifest.id, good.id);
    assert_eq!(skipped, vec![gone.id, bad.id]);
}

async fn check_truncated_manifest_falls_back(store: &CheckpointStore) {
    let good = write(store, "m", &[("global", b"good state")]).await;
    let bad = write(store, "m", &[("global", b"newer state")]).await;
    let path = store.manifest_path(&bad.id);
    let manifest = raw_get(store, &path).await;
    raw_put(store, &path, manifest[..manifest.len() / 2].to_vec()).await;

    let (loaded, skipped) = newest(store).await;
    assert_eq!(
        loaded.manifest.id, good.id,
        "falls back to the previous checkpoint"
    );
    assert_eq!(skipped, vec![bad.id.clone()]);

    // Once the only checkpoint left is damaged too, there is none, and nothing panics.
    let path = store.manifest_path(&good.id);
    raw_put(store, &path, b"{}\n".to_vec()).await;
    assert!(store.load_newest(|_| true).await.expect("loads").is_none());
}

async fn check_newer_format_is_refused(store: &CheckpointStore) {
    write(store, "m", &[("global", b"old")]).await;
    let newer = write(store, "m", &[("global", b"new")]).await;
    let path = store.manifest_path(&newer.id);
    let (loaded, _) = newest(store).await;
    let mut manifest = loaded.manifest;
    manifest.format_version = FORMAT_VERSION + 1;
    raw_put(
        store,
        &path,
        format::encode_manifest(&manifest).expect("encodes"),
    )
    .await;

    match store.load_newest(|_| true).await {
        Err(err @ StoreError::Incompatible { .. }) => {
            let StoreError::Incompatible {
                ref id,
                found,
                supported,
                ..
            } = err
            else {
                unreachable!()
            };
            assert_eq!(id, &newer.id);
            assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
            let message = err.to_string();
            assert!(
                message.contains(&newer.id),
                "the message names the checkpoint: {message}"
            );
            assert!(
                message.contains("move the checkpoints"),
                "the message says what to do: {message}"
            );
        }
        Err(e) => panic!("expected Incompatible, got {e}"),
        Ok(r) => panic!(
            "expected Incompatible, got {:?}",
            r.map(|(l, s)| (l.manifest.id, s))
        ),
    }
}

/// `store` must keep 2.
async fn check_retention(store: &mut CheckpointStore) {
    assert_eq!(store.keep(), 2);
    let a = write(
        store,
        "dead",
        &[("global", b"a"), ("p/0", b"a0"), ("p/1", b"a1")],
    )
    .await;
    let b = write(store, "live", &[("global", b"b"), ("p/0", b"b0")]).await;
    let c = write(store, "live", &[("global", b"c"), ("p/0", b"c0")]).await;
    let d = write(store, "live", &[("global", b"d"), ("p/0", b"d0")]).await;
    assert_eq!(
        store.manifests().await.expect("lists"),
        vec![d.id.clone(), c.id.clone(), a.id.clone()],
        "the newest 2, plus the only holder of p/1"
    );
    assert!(
        !exists(store, &store.data_path(&b.id)).await,
        "a deleted checkpoint's data goes too"
    );
    assert!(exists(store, &store.data_path(&a.id)).await);
    let (p1, _) = store
        .load_newest(|m| m.has_section("p/1"))
        .await
        .expect("loads")
        .expect("p/1 kept");
    assert_eq!(p1.section("p/1"), Some(&b"a1"[..]));

    // A data object without manifest is left alone while young (a write may be under way) ...
    let stray = store.data_path("000000000000001-0000-crashed");
    raw_put(store, &stray, b"half a checkpoint".to_vec()).await;
    let e = write(store, "live", &[("global", b"e"), ("p/0", b"e0")]).await;
    assert!(
        exists(store, &stray).await,
        "a young stray data object is kept"
    );
    assert_eq!(
        store.manifests().await.expect("lists"),
        vec![e.id.clone(), d.id.clone(), a.id.clone()]
    );
    assert!(!exists(store, &store.data_path(&c.id)).await);
    // ... and deleted once old.
    store.stray_age = Duration::ZERO;
    let f = write(store, "live", &[("global", b"f")]).await;
    assert!(
        !exists(store, &stray).await,
        "an old stray data object is deleted"
    );
    // `f` lacks p/0: d stays as one of the 2 newest holding it, e as well.
    assert_eq!(
        store.manifests().await.expect("lists"),
        vec![f.id, e.id, d.id, a.id]
    );
}

async fn check_want_filter(store: &CheckpointStore) {
    let x = write(store, "x", &[("global", b"x"), ("partition/x/3", b"x3")]).await;
    write(store, "y", &[("global", b"y"), ("partition/x/1", b"y1")]).await;
    let z = write(store, "z", &[("global", b"z")]).await;

    let (loaded, skipped) = store
        .load_newest(|m| m.has_section("partition/x/3"))
        .await
        .expect("loads")
        .expect("x exists");
    assert_eq!(
        loaded.manifest.id, x.id,
        "the newest holding the section, not the newest overall"
    );
    assert_eq!(loaded.section("partition/x/3"), Some(&b"x3"[..]));
    assert!(
        skipped.is_empty(),
        "passing over unwanted checkpoints is not skipping: {skipped:?}"
    );
    assert_eq!(newest(store).await.0.manifest.id, z.id);
    assert!(store
        .load_newest(|m| m.has_section("partition/x/9"))
        .await
        .expect("loads")
        .is_none());
}

// ---------------------------------------------------------------------------------------------
// Local directory
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn local_round_trip_returns_the_newest_with_sections_and_meta() {
    let (store, dir) = local("round-trip", 3);
    assert!(
        store.describe().starts_with("file:///"),
        "{}",
        store.describe()
    );
    check_round_trip(&store).await;
    let names: Vec<String> = std::fs::read_dir(dir.0.join("checkpoints"))
        .expect("checkpoint dir exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.len(),
        4,
        "two checkpoints of two files each, no staging files left: {names:?}"
    );
}

#[tokio::test]
async fn local_corrupt_newest_data_falls_back_to_the_previous_checkpoint() {
    let (store, _dir) = local("corrupt-data", 10);
    check_corrupt_data_falls_back(&store).await;
}

#[tokio::test]
async fn local_truncated_newest_manifest_falls_back_to_the_previous_checkpoint() {
    let (store, _dir) = local("truncated-manifest", 10);
    check_truncated_manifest_falls_back(&store).await;
}

#[tokio::test]
async fn local_newer_format_version_is_refused_with_a_message_naming_the_checkpoint() {
    let (store, _dir) = local("newer-format", 10);
    check_newer_format_is_refused(&store).await;
}

#[tokio::test]
async fn local_retention_keeps_the_newest_and_the_last_holder_of_each_section() {
    let (mut store, _dir) = local("retention", 2);
    check_retention(&mut store).await;
}

#[tokio::test]
async fn local_want_filter_returns_the_newest_checkpoint_holding_a_section() {
    let (store, _dir) = local("want", 10);
    check_want_filter(&store).await;
}

#[tokio::test]
async fn file_url_opens_the_same_directory_as_a_plain_path() {
    let dir = TempDir::new("file-url");
    let by_path = CheckpointStore::open(&dir.url(), &BTreeMap::new(), 1).expect("opens");
    let written = write(&by_path, "m", &[("global", b"g")]).await;
    let url = format!("file://{}", dir.url());
    let by_url = CheckpointStore::open(&url, &BTreeMap::new(), 1).expect("opens");
    assert_eq!(by_url.describe(), by_path.describe());
    assert_eq!(newest(&by_url).await.0.manifest.id, written.id);
}

#[test]
fn open_refuses_bad_locations_options_and_keep() {
    let none = BTreeMap::new();
    let dir = TempDir::new("open-errors");
    let refused =
        |url: &str, options: &BTreeMap<String, String>, keep: usize| match CheckpointStore::open(
            url, options, keep,
        ) {
            Err(StoreError::Config { message, .. }) => message,
            Err(e) => panic!("{url}: expected a configuration error, got {e}"),
            Ok(s) => panic!(
                "{url}: expected a configuration error, opened {}",
                s.describe()
            ),
        };
    assert!(refused(&dir.url(), &none, 0).contains("keep"));
    assert!(refused("gs://bucket/x", &none, 1).contains("unsupported scheme"));
    assert!(refused("file://relative/dir", &none, 1).contains("absolute"));
    assert!(refused("", &none, 1).contains("empty"));
    assert!(refused("s3:///prefix", &none, 1).contains("bucket"));
    let endpoint = BTreeMap::from([("endpoint".to_string(), "http://x".to_string())]);
    assert!(refused(&dir.url(), &endpoint, 1).contains("only apply to s3"));
    let unknown = BTreeMap::from([("no_such_option".to_string(), "1".to_string())]);
    assert!(refused("s3://bucket/x", &unknown, 1).contains("no_such_option"));
    let s3 =
        CheckpointStore::open("s3://bucket/some/prefix/", &endpoint, 1).expect("opens without I/O");
    assert_eq!(s3.describe(), "s3://bucket/some/prefix (endpoint http://x)");
}

#[test]
fn retention_victims_follow_the_overall_and_per_section_rules() {
    let s = |names: &[&str]| Contents::Sections(names.iter().map(|n| n.to_string()).collect());
    let manifests = [
        ("6", s(&["g"])),
        ("5", Contents::Damaged),
        ("4", s(&["g", "p0"])),
        ("3", Contents::Unknown),
        ("2", s(&["g", "p0"])),
        ("1", s(&["g", "p0", "p1"])),
        ("0", Contents::Damaged),
    ];
    // keep 2: 6 and 5 (overall), 4 (g is 2nd), 2 (p0 is 2nd), 3 (unknown), 1 (only p1).
    assert_eq!(retention_victims(&manifests, 2), vec!["0"]);
    // keep 1: 6 (overall and g), 4 (p0), 1 (p1), 3 (unknown).
    assert_eq!(retention_victims(&manifests, 1), vec!["5", "2", "0"]);
}

// ---------------------------------------------------------------------------------------------
// S3, against moto's server mode
// ---------------------------------------------------------------------------------------------

/// A moto S3 server on a free local port, killed on drop.
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Moto {
    /// Finds `moto_server` in `$VIGIL_TOOLS/venv/bin` (where `.ci/run` installs the pinned
    /// version) or on `PATH`.
    fn binary() -> PathBuf {
        let tools = std::env::var_os("VIGIL_TOOLS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_default();
                home.join(".cache/vigil/tools")
            });
        let venv = tools.join("venv/bin/moto_server");
        if venv.is_file() {
            return venv;
        }
        let on_path = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|dir| dir.join("moto_server"))
            .find(|p| p.is_file());
        on_path.unwrap_or_else(|| {
            panic!(
                "moto_server (moto's S3 server, needed by the S3 checkpoint test) is neither in {} nor on PATH. \
                 `.ci/run` installs it; by hand: python3 -m venv {tools}/venv && {tools}/venv/bin/pip install \"moto[server]\"",
                venv.display(),
                tools = tools.display()
            )
        })
    }

    fn start() -> Self {
        let binary = Self::binary();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free local port");
        let log =
            std::env::temp_dir().join(format!("vigil-moto-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("creates the moto log file");
        let stderr = log_file.try_clone().expect("clones the log file handle");
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut moto = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return moto;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!(
                    "{} exited ({status}) before accepting connections:\n{}",
                    binary.display(),
                    moto.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not accept connections on port {port} within 60 s:\n{}",
                    binary.display(),
                    moto.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket with a plain HTTP PUT (object_store cannot create buckets).
    fn create_bucket(&self, bucket: &str) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connects to moto");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("sets a timeout");
        let request = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream
            .write_all(request.as_bytes())
            .expect("sends the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("reads the response");
        let status = response.lines().next().unwrap_or_default();
        assert!(
            status.contains(" 200"),
            "creating bucket {bucket} failed: {response}"
        );
    }

    fn store(&self, bucket: &str, prefix: &str, keep: usize) -> CheckpointStore {
        let options = BTreeMap::from(
            [
                ("endpoint", self.endpoint()),
                ("allow_http", "true".to_string()),
                ("region", "us-east-1".to_string()),
                ("access_key_id", "test".to_string()),
                ("secret_access_key", "test".to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        CheckpointStore::open(&format!("s3://{bucket}/{prefix}"), &options, keep)
            .expect("opens the S3 store")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[tokio::test]
async fn s3_checkpoints_work_against_a_real_s3_server() {
    let started = Instant::now();
    let moto = Moto::start();
    let bucket = "vigil-checkpoints";
    moto.create_bucket(bucket);
    let ready = started.elapsed();

    let store = moto.store(bucket, "round-trip", 3);
    assert_eq!(
        store.describe(),
        format!("s3://{bucket}/round-trip (endpoint {})", moto.endpoint())
    );
    check_round_trip(&store).await;
    check_corrupt_data_falls_back(&moto.store(bucket, "corrupt-data", 10)).await;
    check_truncated_manifest_falls_back(&moto.store(bucket, "truncated-manifest", 10)).await;
    check_newer_format_is_refused(&moto.store(bucket, "newer-format", 10)).await;
    check_retention(&mut moto.store(bucket, "retention", 2)).await;
    check_want_filter(&moto.store(bucket, "deep/want/prefix", 10)).await;

    // The prefixes do not see each other.
    assert_eq!(
        moto.store(bucket, "round-trip", 3)
            .manifests()
            .await
            .expect("lists")
            .len(),
        2
    );
    // A missing bucket is an error naming the store, not an empty store.
    match moto
        .store("no-such-bucket", "x", 1)
        .load_newest(|_| true)
        .await
    {
        Err(e @ StoreError::List { .. }) => {
            assert!(e.to_string().contains("s3://no-such-bucket/x"), "{e}")
        }
        other => panic!(
            "expected a listing error, got {:?}",
            other.map(|o| o.map(|(l, _)| l.manifest.id))
        ),
    }
    eprintln!(
        "S3 checkpoint test: moto ready in {ready:?}, whole test {:?}",
        started.elapsed()
    );
}
