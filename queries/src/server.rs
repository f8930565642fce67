//! Starting the SQL surface from `[server]`: HTTP and Postgres listeners on threads of their
//! own, so queries never run on the engine's threads.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use vigil_pipeline::config::ServerConfig;
use vigil_pipeline::ResultTables;

use crate::{load_tls, Limits, PgError, PgServer, Probes, SqlService};

/// Errors of [`start`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Occurs when the configuration is unusable (credentials, limits).
    #[error(transparent)]
    Config(#[from] vigil_pipeline::config::ConfigError),
    /// Occurs when an address cannot be listened on.
    #[error("config key `{key}`: cannot listen on {addr}: {source}; choose a free address")]
    Listen {
        /// The key.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Occurs when TLS does not load.
    #[error(transparent)]
    Tls(#[from] PgError),
    /// Occurs when the query threads cannot start.
    #[error("starting the query threads: {0}")]
    Runtime(std::io::Error),
}

/// The running servers; dropping it (or [`ServerHandle::stop`]) stops them.
#[derive(Debug)]
pub struct ServerHandle {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The HTTP address listened on.
    pub http: SocketAddr,
    /// The Postgres address listened on, if any.
    pub pg: Option<SocketAddr>,
}

impl ServerHandle {
    /// Stops both listeners and waits for their thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Nice value of the query threads: when queries and the engine want the same core, the
/// engine gets it (window closes keep their latency; queries take longer).
const QUERY_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to [`QUERY_NICE`] (Linux sets it per
/// thread; elsewhere it applies to the process, so it is left alone).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory effects; `who` 0 is the calling thread on Linux.
    unsafe {
        let _ = libc::setpriority(libc::PRIO_PROCESS, 0, QUERY_NICE);
    }
}

/// The limits of `[server.limits]`.
pub fn limits(cfg: &ServerConfig) -> Limits {
    let l = &cfg.limits;
    Limits {
        memory: l.memory_mb << 20,
        timeout: l.timeout,
        max_concurrent: l.max_concurrent,
        max_rows: l.max_rows,
        threads: l.threads,
        max_join_pairs: l.max_join_pairs,
    }
}

/// Checks credentials and TLS, binds the HTTP and Postgres addresses, and serves them on
/// `limits.threads` threads of their own until the handle is stopped.
pub fn start(
    cfg: &ServerConfig,
    tables: Arc<ResultTables>,
    functions: (Vec<datafusion::logical_expr::ScalarUDF>, Vec<datafusion::logical_expr::AggregateUDF>),
    probes: Probes,
) -> Result<ServerHandle, StartError> {
    let creds = cfg.credentials()?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => Some(load_tls(c, k)?),
        _ => None,
    };
    let bind = |key: &'static str, addr: SocketAddr| {
        let l = std::net::TcpListener::bind(addr).map_err(|source| StartError::Listen { key, addr, source })?;
        l.set_nonblocking(true).map_err(|source| StartError::Listen { key, addr, source })?;
        Ok::<_, StartError>(l)
    };
    let http = bind("server.listen", cfg.listen)?;
    let pg = cfg.pg_listen.map(|a| bind("server.pg_listen", a)).transpose()?;
    let (http_addr, pg_addr) = (http.local_addr().map_err(StartError::Runtime)?, pg.as_ref().and_then(|l| l.local_addr().ok()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.limits.threads.max(1))
        .thread_name("vigil-sql")
        .on_thread_start(lower_priority)
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let sql = SqlService::build(tables, functions.0, functions.1, limits(cfg), &cfg.database);
    let (stop, stopped) = watch::channel(false);
    let token = creds.token.clone();
    let users = creds.users.clone();
    let thread = std::thread::Builder::new()
        .name("vigil-sql".into())
        .spawn(move || {
            lower_priority();
            rt.block_on(async move {
                let wait = |mut rx: watch::Receiver<bool>| async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                let http = match tokio::net::TcpListener::from_std(http) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!(error = %e, "HTTP listener"),
                };
                let pg_task = pg.and_then(|l| tokio::net::TcpListener::from_std(l).ok()).map(|l| {
                    let server = PgServer::new(sql.clone(), &users);
                    tokio::spawn(server.serve(l, tls, wait(stopped.clone())))
                });
                if let Err(e) = crate::serve_with_token(http, sql, probes, token, wait(stopped.clone())).await {
                    tracing::error!(error = %e, "HTTP server stopped");
                }
                if let Some(t) = pg_task {
                    let _ = t.await;
                }
            });
            // A query past its deadline is cancelled at its next yield; one still inside a long
            // call is left behind rather than holding up the stop.
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        })
        .map_err(StartError::Runtime)?;
    tracing::info!(
        http = %http_addr,
        pg = %pg_addr.map_or("off".to_string(), |a| a.to_string()),
        auth_pg = if creds.users.is_empty() { "off (loopback)" } else { "scram-sha-256" },
        auth_http = if creds.token.is_some() { "bearer token" } else { "off (loopback)" },
        tls = cfg.tls_cert.is_some(),
        "SQL surface listening: HTTP (GET /, POST /sql, /metrics) and Postgres wire"
    );
    Ok(ServerHandle { stop, thread: Some(thread), http: http_addr, pg: pg_addr })
}
