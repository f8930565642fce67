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

/// Produces the engine's counters as `(metric name, help, value)` for `GET /metrics`.
pub type CountersFn = Arc<dyn Fn() -> Vec<(String, String, u64)> + Send + Sync>;

#[derive(Clone)]
struct AppState {
    sql: SqlService,
    counters: CountersFn,
}

/// The HTTP routes (see the crate docs).
pub fn router(sql: SqlService, counters: CountersFn) -> Router {
    Router::new()
        .route("/sql", post(run_sql))
        .route("/tables", get(tables))
        .route("/healthz", get(|| async { json(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()) }))
        .route("/metrics", get(metrics))
        .with_state(AppState { sql, counters })
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    sql: SqlService,
    counters: CountersFn,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(sql, counters)).with_graceful_shutdown(shutdown).await
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
    for (name, help, value) in (st.counters)() {
        let fam = name.split('{').next().unwrap_or(&name);
        if fam != family {
            family = fam.to_string();
            out.push_str(&format!("# HELP {fam} {help}\n# TYPE {fam} counter\n"));
        }
        out.push_str(&format!("{name} {value}\n"));
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
