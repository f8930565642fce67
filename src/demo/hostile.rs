//! Hostile queries for `vigil demo --hostile-queries`: clients that keep sending the queries
//! the SQL limits exist for (cross joins, sorts of everything), counting how each ended.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The queries, in turn: each one would take minutes or gigabytes without the limits, from
/// the first second of the demo (they do not need its tables to be large): a scan that never
/// ends, a sort of a billion rows, and a cross join of the features with themselves.
const QUERIES: [&str; 3] = [
    "select count(*) from generate_series(1, 1000000000000) t(x) where x % 7 = 3",
    "select x from generate_series(1, 1000000000) t(x) order by x desc",
    "select count(*) from features a cross join features b where a.mean + b.mean < 0",
];

/// Clients sending the hostile queries (`QUERIES`) over HTTP until stopped.
#[derive(Debug)]
pub struct HostileQueries {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<BTreeMap<String, u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl HostileQueries {
    /// Starts two clients against the HTTP server at `addr`.
    pub fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(BTreeMap::new()));
        let threads = (0..2)
            .map(|i| {
                let (stop, outcomes) = (stop.clone(), outcomes.clone());
                std::thread::spawn(move || {
                    let mut n = i;
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = post(addr, QUERIES[n % QUERIES.len()]);
                        *outcomes.lock().unwrap_or_else(|e| e.into_inner()).entry(outcome).or_default() += 1;
                        n += 1;
                    }
                })
            })
            .collect();
        Self { stop, outcomes, threads }
    }

    /// Stops the clients; returns how their queries ended, e.g. `12 queries: timeout 8, resources 4`.
    pub fn stop(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let o = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        let total: u64 = o.values().sum();
        let parts: Vec<String> = o.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!("{total} queries: {}", parts.join(", "))
    }
}

/// Sends one query; returns its error kind, `ok`, or `unreachable`.
fn post(addr: SocketAddr, sql: &str) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        std::thread::sleep(Duration::from_millis(200));
        return "unreachable".into();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    let req = format!("POST /sql HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{sql}", sql.len());
    if s.write_all(req.as_bytes()).is_err() {
        return "unreachable".into();
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1);
    if text.starts_with("HTTP/1.1 200") {
        return "ok".into();
    }
    serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v["kind"].as_str().map(str::to_string)).unwrap_or_else(|| "other".into())
}
