//! What the long-running commands (`run`, `forward`, `demo`) share: the SQL server with the
//! model functions registered, the probes it reports, the decision log line and the stop
//! signal.

use std::sync::Arc;
use std::time::Duration;

use vigil_models::Decision;
use vigil_pipeline::ResultTables;
use vigil_queries::SqlService;

use crate::engine::metrics_fn;
use crate::{Config, Engine};

/// Starts the HTTP and Postgres SQL server over `tables`, with the model functions registered.
pub fn serve_sql(cfg: &Config, tables: Arc<ResultTables>, probes: vigil_queries::Probes) -> anyhow::Result<vigil_queries::ServerHandle> {
    let f = vigil_models::sql_functions();
    Ok(vigil_queries::start(&cfg.server, tables, (f.scalar, f.aggregate), probes)?)
}

/// The SQL service, with the model functions registered.
pub fn sql_service(tables: Arc<ResultTables>) -> SqlService {
    let f = vigil_models::sql_functions();
    SqlService::with_functions(tables, f.scalar, f.aggregate)
}

/// Logs a decision as it is published.
pub fn log_decision(d: &Decision) {
    tracing::info!(
        id = %d.id, kind = %d.kind, status = %d.status, severity = %d.severity, policy = %d.policy, action = %d.action, target = %d.target.name,
        incident = %d.incident.id, "decision: {}", d.annotations.get("summary").map_or("", String::as_str)
    );
}

/// The probes and metrics the HTTP server reports for `engine`.
pub fn probes(engine: &Engine, cfg: &Config) -> vigil_queries::Probes {
    let stats = engine.stats();
    // A step waits at most one poll timeout; allow for a slow window close on top.
    let max_age = cfg.kafka.poll_timeout * 10 + Duration::from_secs(30);
    let (h, r) = (stats.clone(), stats.clone());
    vigil_queries::Probes {
        metrics: metrics_fn(stats, engine.format_counters()),
        health: Arc::new(move || h.health(max_age)),
        ready: Arc::new(move || r.readiness()),
    }
}

/// Resolves on SIGTERM (what Kubernetes and systemd send) or SIGINT (Ctrl-C).
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops Vigil cleanly");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
