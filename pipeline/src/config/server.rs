//! `[server]` (the SQL surface: HTTP, Postgres wire, credentials, limits) and `[history]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address of the HTTP server (SQL, status page, probes, metrics).
    pub listen: SocketAddr,
    /// Listen address of the Postgres wire protocol (psql, Grafana, any Postgres driver); unset
    /// to turn it off.
    pub pg_listen: Option<SocketAddr>,
    /// The database name clients connect to (Grafana's data source needs one).
    pub database: String,
    /// Postgres users, authenticated with SCRAM-SHA-256. Required when `pg_listen` is not a
    /// loopback address.
    pub users: Vec<UserConfig>,
    /// The environment variable holding the HTTP bearer token (`Authorization: Bearer ...`).
    /// Required when `listen` is not a loopback address.
    pub token_env: Option<String>,
    /// TLS certificate chain (PEM) for the Postgres listener; with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, PKCS#8) for the Postgres listener.
    pub tls_key: Option<PathBuf>,
    /// Limits on every query, over HTTP and Postgres alike.
    pub limits: SqlLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 7878).into(),
            pg_listen: Some(([127, 0, 0, 1], 5433).into()),
            database: "vigil".into(),
            users: Vec::new(),
            token_env: None,
            tls_cert: None,
            tls_key: None,
            limits: SqlLimits::default(),
        }
    }
}

/// `[[server.users]]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name.
    pub name: String,
    /// The environment variable holding the password (never the password itself).
    pub password_env: String,
}

/// `[server.limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlLimits {
    /// Memory one query may use for sorts, joins and aggregations, in MiB (DataFusion's memory
    /// pool); past it the query fails with a `resources` error.
    pub memory_mb: usize,
    /// Longest a query may run, from its arrival to its last row.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Queries running at once; more wait (at most `timeout`) for a slot.
    pub max_concurrent: usize,
    /// Rows a result may have; a larger result fails and says so (add a LIMIT or aggregate).
    pub max_rows: usize,
    /// Threads that run queries: kept apart from the engine's, so queries cannot delay a
    /// window close by more than the CPU they share.
    pub threads: usize,
    /// Row pairs a join without an equality condition (a cross join, a join on `<`) may
    /// compare; larger ones are refused when planned, since such a join cannot be interrupted
    /// once it runs.
    pub max_join_pairs: u64,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self { memory_mb: 256, timeout: Duration::from_secs(30), max_concurrent: 4, max_rows: 1_000_000, threads: 1, max_join_pairs: 100_000_000 }
    }
}

/// The resolved credentials of the SQL surface.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Postgres users and their passwords.
    pub users: Vec<(String, String)>,
    /// The HTTP bearer token.
    pub token: Option<String>,
}

impl ServerConfig {
    /// Checks the section and reads the secrets from the environment: listening beyond
    /// loopback needs credentials, and every named variable must be set.
    pub fn credentials(&self) -> Result<Credentials, ConfigError> {
        let l = &self.limits;
        if l.memory_mb == 0 || l.max_concurrent == 0 || l.max_rows == 0 || l.threads == 0 || l.max_join_pairs == 0 || l.timeout.is_zero() {
            return Err(invalid("server.limits", "a limit is zero", "give memory_mb, timeout, max_concurrent, max_rows, threads and max_join_pairs positive values"));
        }
        if self.database.trim().is_empty() {
            return Err(invalid("server.database", "is empty", "name the database, e.g. \"vigil\""));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid("server.tls_cert", "TLS needs both tls_cert and tls_key", "set both (PEM files) or neither"));
        }
        let mut users = Vec::new();
        for u in &self.users {
            if u.name.trim().is_empty() {
                return Err(invalid("server.users", "a user has an empty name", "name every user"));
            }
            let password = std::env::var(&u.password_env).ok().filter(|p| !p.is_empty()).ok_or_else(|| {
                invalid("server.users", format!("the password of user `{}` is read from ${}, which is not set", u.name, u.password_env), format!("export {}", u.password_env))
            })?;
            users.push((u.name.clone(), password));
        }
        let token = match &self.token_env {
            Some(var) => Some(std::env::var(var).ok().filter(|t| !t.is_empty()).ok_or_else(|| {
                invalid("server.token_env", format!("the HTTP token is read from ${var}, which is not set"), format!("export {var}"))
            })?),
            None => None,
        };
        if let Some(pg) = self.pg_listen {
            if !pg.ip().is_loopback() && users.is_empty() {
                return Err(invalid(
                    "server.users",
                    format!("server.pg_listen is {pg}, beyond loopback, and no Postgres user is configured"),
                    "add [[server.users]] with name and password_env, or listen on 127.0.0.1",
                ));
            }
        }
        if !self.listen.ip().is_loopback() && token.is_none() {
            return Err(invalid(
                "server.token_env",
                format!("server.listen is {}, beyond loopback, and no HTTP token is configured", self.listen),
                "set token_env to an environment variable holding the token, or listen on 127.0.0.1",
            ));
        }
        Ok(Credentials { users, token })
    }
}

/// `[history]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Write every result table to hourly Parquet files in the checkpoints' store (needs
    /// checkpoints on), so results survive restarts and queries reach past memory.
    pub enabled: bool,
    /// How long files are kept, by the event-time hour they hold.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Per-table settings, e.g. `[history.tables.points] retention = "1d"`.
    pub tables: BTreeMap<String, TableHistoryConfig>,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self { enabled: true, retention: Duration::from_secs(7 * 86_400), tables: BTreeMap::new() }
    }
}

/// `[history.tables.<name>]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableHistoryConfig {
    /// How long this table's files are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl HistoryConfig {
    /// Checks the per-table names against `tables`.
    pub fn validate(&self, tables: &[&str]) -> Result<(), ConfigError> {
        for name in self.tables.keys() {
            if !tables.contains(&name.as_str()) {
                return Err(invalid("history.tables", format!("table `{name}` does not exist"), format!("use one of {}", tables.join(", "))));
            }
        }
        Ok(())
    }
}
