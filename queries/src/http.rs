//! The HTTP front end.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::{ErrorKind, Format, SqlService};

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
    token: Option<Arc<str>>,
}

/// The HTTP routes (see the crate docs), open to anyone who can connect.
pub fn router(sql: SqlService, probes: Probes) -> Router {
    router_with_token(sql, probes, None)
}

/// The HTTP routes; with a `token`, every route but the probes needs
/// `Authorization: Bearer <token>`.
pub fn router_with_token(sql: SqlService, probes: Probes, token: Option<String>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/sql", post(run_sql))
        .route("/tables", get(tables))
        .route("/healthz", get(|State(st): State<AppState>| async move { probe(&st.probes.health) }))
        .route("/readyz", get(|State(st): State<AppState>| async move { probe(&st.probes.ready) }))
        .route("/metrics", get(metrics))
        .with_state(AppState { sql, probes, token: token.map(Arc::from) })
}

/// `None` when the request may proceed, else the 401 to answer.
fn refuse(st: &AppState, headers: &HeaderMap) -> Option<Response> {
    let token = st.token.as_deref()?;
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| g.len() == token.len() && g.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0);
    if ok {
        return None;
    }
    let mut r = error_response(ErrorKind::Auth, "missing or wrong bearer token: send Authorization: Bearer <token> (server.token_env)");
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    Some(r)
}

fn error_response(kind: ErrorKind, message: &str) -> Response {
    let status = match kind {
        ErrorKind::Auth => StatusCode::UNAUTHORIZED,
        ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::Resources => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::Parse | ErrorKind::Plan | ErrorKind::Execution => StatusCode::BAD_REQUEST,
    };
    json(status, serde_json::json!({ "error": message, "kind": kind.name() }).to_string().into_bytes())
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
    serve_with_token(listener, sql, probes, None, shutdown).await
}

/// Serves [`router_with_token`] on `listener` until `shutdown` resolves.
pub async fn serve_with_token(
    listener: TcpListener,
    sql: SqlService,
    probes: Probes,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router_with_token(sql, probes, token)).with_graceful_shutdown(shutdown).await
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn run_sql(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = refuse(&st, &headers) {
        return r;
    }
    let Ok(sql) = std::str::from_utf8(&body) else {
        return error_response(ErrorKind::Parse, "the request body must be UTF-8 SQL text");
    };
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let span = tracing::info_span!("sql", query = %sql.chars().take(200).collect::<String>());
    let _g = span.enter();
    let rendered = match st.sql.run(sql).await {
        Ok((schema, batches)) => format.render(&schema, &batches),
        Err(e) => Err(e),
    };
    match rendered {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(e) => {
            tracing::info!(kind = e.kind().name(), error = %e, "query refused");
            error_response(e.kind(), &e.to_string())
        }
    }
}

async fn tables(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse(&st, &headers) {
        return r;
    }
    json(StatusCode::OK, serde_json::to_vec(&st.sql.tables()).unwrap_or_default())
}

async fn status_page(State(st): State<AppState>, headers: HeaderMap, Query(q): Query<std::collections::HashMap<String, String>>) -> Response {
    if let Some(r) = refuse(&st, &headers) {
        return r;
    }
    let page = crate::status::page(&st.sql, q.get("series").map(String::as_str), q.get("feature").map(String::as_str)).await;
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse(&st, &headers) {
        return r;
    }
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
