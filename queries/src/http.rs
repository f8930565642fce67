//! The HTTP front end.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::SqlService;

pub use vigil_pipeline::engine::{Metric, MetricKind, MetricsFn};

/// A probe for `GET /healthz` or `GET /readyz`: whether it passes, and a JSON body saying why.
pub type ProbeFn = Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;

/// What the HTTP server reports about the engine besides SQL.
#[derive(Clone)]
pub struct Probes {
    /// `GET /metrics`.
    pub metrics: MetricsFn,
    /// `GET /healthz`: 200 when the engine is stepping and the broker answers, else 503.
    pub health: ProbeFn,
    /// `GET /readyz`: 200 once state is restored and partitions are assigned, else 503.
    pub ready: ProbeFn,
}

impl Probes {
    /// Probes that always pass, with these metrics (for a server without an engine).
    pub fn metrics_only(metrics: MetricsFn) -> Self {
        let ok: ProbeFn = Arc::new(|| (true, serde_json::json!({ "status": "ok" })));
        Self { metrics, health: ok.clone(), ready: ok }
    }
}

#[derive(Clone)]
struct AppState {
    sql: SqlService,
    probes: Probes,
}

/// The HTTP routes (see the crate docs).
pub fn router(sql: SqlService, probes: Probes) -> Router {
    Router::new()
        .route("/sql", post(run_sql))
        .route("/tables", get(tables))
        .route("/healthz", get(|State(st): State<AppState>| async move { probe(&st.probes.health) }))
        .route("/readyz", get(|State(st): State<AppState>| async move { probe(&st.probes.ready) }))
        .route("/metrics", get(metrics))
        .with_state(AppState { sql, probes })
}

fn probe(f: &ProbeFn) -> Response {
    let (ok, body) = f();
    json(if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body.to_string().into_bytes())
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    sql: SqlService,
    probes: Probes,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(sql, probes)).with_graceful_shutdown(shutdown).await
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn run_sql(State(st): State<AppState>, body: Bytes) -> Response {
    let Ok(sql) = std::str::from_utf8(&body) else {
        return json(StatusCode::BAD_REQUEST, br#"{"error":"the request body must be UTF-8 SQL text"}"#.to_vec());
    };
    let span = tracing::info_span!("sql", query = %sql.chars().take(200).collect::<String>());
    let _g = span.enter();
    match st.sql.query_json(sql).await {
        Ok(rows) => json(StatusCode::OK, rows),
        Err(e) => {
            let body = serde_json::json!({ "error": e.to_string() });
            json(StatusCode::BAD_REQUEST, body.to_string().into_bytes())
        }
    }
}

async fn tables(State(st): State<AppState>) -> Response {
    json(StatusCode::OK, serde_json::to_vec(&st.sql.tables()).unwrap_or_default())
}

async fn metrics(State(st): State<AppState>) -> Response {
    let mut out = String::new();
    // Samples of one family (`name{labels}`) come together; HELP and TYPE once per family.
    let mut family = String::new();
    for m in (st.probes.metrics)() {
        let mut fam = m.name.split('{').next().unwrap_or(&m.name);
        if m.kind == MetricKind::Histogram {
            fam = fam.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
        }
        if fam != family {
            family = fam.to_string();
            out.push_str(&format!("# HELP {fam} {}\n# TYPE {fam} {}\n", m.help, m.kind.name()));
        }
        out.push_str(&format!("{} {}\n", m.name, m.value));
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
