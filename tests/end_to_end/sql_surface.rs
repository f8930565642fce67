//! The SQL surface as clients see it: psql and tokio-postgres over the Postgres wire protocol,
//! Grafana's catalog queries and every query of the shipped dashboard, credentials refused and
//! accepted (SCRAM, bearer token, TLS that must load), HTTP formats and error kinds, a hostile
//! query stopped, the Parquet history across a restart with no row counted twice, and the
//! status page in headless Chromium.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::process::{stream, Incident};
use vigil::Stats;
use vigil_pipeline::config::{ServerConfig, UserConfig};

fn functions() -> (Vec<datafusion::logical_expr::ScalarUDF>, Vec<datafusion::logical_expr::AggregateUDF>) {
    let f = vigil_models::sql_functions();
    (f.scalar, f.aggregate)
}

fn probes() -> vigil_queries::Probes {
    vigil_queries::Probes::metrics_only(Arc::new(Vec::new))
}

fn server_config() -> ServerConfig {
    ServerConfig { listen: ([127, 0, 0, 1], 0).into(), pg_listen: Some(([127, 0, 0, 1], 0).into()), ..ServerConfig::default() }
}

/// Runs an engine over 60 windows of 12 series with two spikes, checkpointing (so the history
/// has files) after 50; returns the tables and the config.
async fn engine_with_results(group: &str) -> (Arc<vigil_pipeline::ResultTables>, vigil::config::Config, crate::common::Kafka) {
    let kafka = Kafka::start(2);
    let incidents = [Incident { series: 3, window: 40 }, Incident { series: 8, window: 55 }];
    let data = stream(12, 64, 2, &incidents, 7);
    let mut cfg = kafka.config(group);
    cfg.window.idle_timeout = Duration::from_millis(500);
    let p = crate::process::producer(&kafka.brokers);
    for w in &data {
        crate::process::produce_window(&p, w).await;
    }
    let tables = tables();
    let mut engine = vigil::Engine::new(&cfg, tables.clone()).await.unwrap();
    step_until(&mut engine, Duration::from_secs(90), |s| Stats::get(&s.windows_closed) >= 50).await;
    engine.checkpoint(None).await.unwrap();
    step_until(&mut engine, Duration::from_secs(60), |s| Stats::get(&s.windows_closed) >= 62).await;
    engine.checkpoint(None).await.unwrap();
    (tables, cfg, kafka)
}

fn psql(addr: SocketAddr, extra: &[&str], args: &[&str], password: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new("psql");
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-d", "vigil", "-X", "-v", "ON_ERROR_STOP=1"]);
    cmd.args(extra).args(args);
    cmd.env("PGCONNECT_TIMEOUT", "10");
    match password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.env_remove("PGPASSWORD"),
    };
    let out = cmd.output().expect("psql is installed (.ci/run installs postgresql-client)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl").args(["-s", "-o", "-", "-w", "\n%{http_code}"]).args(args).output().expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

async fn pg_client(addr: SocketAddr, user: &str, password: Option<&str>) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut c = tokio_postgres::Config::new();
    c.host(addr.ip().to_string()).port(addr.port()).dbname("vigil").user(user).connect_timeout(Duration::from_secs(10));
    if let Some(p) = password {
        c.password(p);
    }
    let (client, conn) = c.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

fn simple_rows(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Vec<&tokio_postgres::SimpleQueryRow> {
    msgs.iter().filter_map(|m| if let tokio_postgres::SimpleQueryMessage::Row(r) = m { Some(r) } else { None }).collect()
}

/// Grafana's Postgres data source: its table and column pickers.
const GRAFANA_CATALOG: [&str; 2] = [
    r#"SELECT CASE WHEN quote_ident(table_schema) IN (SELECT CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
        FROM generate_series(array_lower(string_to_array(current_setting('search_path'),','),1),
                             array_upper(string_to_array(current_setting('search_path'),','),1)) as i,
             string_to_array(current_setting('search_path'),',') s)
        THEN quote_ident(table_name) ELSE quote_ident(table_schema) || '.' || quote_ident(table_name) END AS "table"
        FROM information_schema.tables
        WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog', '_timescaledb_cache')
        ORDER BY 1"#,
    r#"SELECT quote_ident(column_name) AS "column", data_type AS "type" FROM information_schema.columns
        WHERE CASE WHEN array_length(parse_ident('public.anomalies'),1) = 2
          THEN quote_ident(table_schema) = (parse_ident('public.anomalies'))[1] AND quote_ident(table_name) = (parse_ident('public.anomalies'))[2]
          ELSE quote_ident(table_name) = 'public.anomalies' END"#,
];

/// The dashboard's queries with Grafana's macros expanded as its Postgres data source does,
/// over `from..to`, and template variables set to their first value.
async fn dashboard_queries(client: &tokio_postgres::Client, from: &str, to: &str) -> Vec<(String, String)> {
    let dash: serde_json::Value = serde_json::from_str(include_str!("../../docs/grafana/vigil.json")).expect("dashboard is JSON");
    let expand = |sql: &str, vars: &[(String, String)]| {
        let mut out = sql.replace("$__timeFrom()", &format!("'{from}'")).replace("$__timeTo()", &format!("'{to}'"));
        while let Some(i) = out.find("$__timeFilter(") {
            let end = out[i..].find(')').map(|j| i + j).expect("closed macro");
            let col = out[i + "$__timeFilter(".len()..end].to_string();
            out.replace_range(i..=end, &format!("{col} BETWEEN '{from}' AND '{to}'"));
        }
        for (k, v) in vars {
            out = out.replace(&format!("${k}"), v);
        }
        out
    };
    let mut vars = Vec::new();
    for v in dash["templating"]["list"].as_array().cloned().unwrap_or_default() {
        let q = v["query"].as_str().or_else(|| v["definition"].as_str()).expect("variable query");
        let rows = client.simple_query(&expand(q, &[])).await.unwrap_or_else(|e| panic!("variable {}: {q}: {e}", v["name"]));
        let first = simple_rows(&rows).first().and_then(|r| r.get(0)).unwrap_or("").to_string();
        vars.push((v["name"].as_str().unwrap().to_string(), first));
    }
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().cloned().unwrap_or_default() {
            if let Some(sql) = t["rawSql"].as_str() {
                out.push((panel["title"].as_str().unwrap_or("").to_string(), expand(sql, &vars)));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_tokio_postgres_grafana_and_the_status_page_read_the_results() {
    init_tracing();
    let (tables, _cfg, _kafka) = engine_with_results("vigil-sql-surface").await;
    let server = vigil_queries::start(&server_config(), tables.clone(), functions(), probes()).unwrap();
    let (http, pg) = (server.http, server.pg.unwrap());

    // psql: \d lists the tables, \d anomalies its columns, and a query answers.
    let (ok, out) = psql(pg, &[], &["-c", "\\d"], None);
    assert!(ok && out.contains("anomalies") && out.contains("decisions") && out.contains("health"), "{out}");
    let (ok, out) = psql(pg, &[], &["-c", "\\d anomalies"], None);
    assert!(ok && out.contains("window_end") && out.contains("score"), "{out}");
    let (ok, out) = psql(pg, &[], &["-A", "-t", "-c", "select count(*) from features"], None);
    let features: i64 = out.trim().parse().unwrap_or_else(|_| panic!("{ok} {out}"));
    assert!(features > 500, "{features}");

    // tokio-postgres: simple and extended queries, with a parameter and a model function.
    let client = pg_client(pg, "grafana", None).await.unwrap();
    let rows = client.query("select series, count(*) as n from anomalies where score >= $1 group by series order by n desc", &[&0.0f64]).await.unwrap();
    assert!(!rows.is_empty());
    let n: i64 = rows[0].get("n");
    assert!(n > 0);
    let simple = client.simple_query("SET TIMEZONE TO 'UTC'; select count(*) as n from decisions").await.unwrap();
    assert_eq!(simple_rows(&simple).len(), 1);
    let sigma = client.query_one("select robust_sigma(mean) as s from features", &[]).await;
    assert!(sigma.is_ok(), "model functions are callable: {sigma:?}");
    let e = client.simple_query("select nope from anomalies").await.unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("42P01"), "{e}");

    // Grafana: its catalog queries and every query of docs/grafana/vigil.json.
    for q in GRAFANA_CATALOG {
        let rows = client.simple_query(q).await.unwrap_or_else(|e| panic!("{q}: {e}"));
        assert!(!simple_rows(&rows).is_empty(), "{q}");
    }
    let queries = dashboard_queries(&client, "2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z").await;
    assert!(queries.len() >= 5, "{queries:?}");
    for (title, sql) in &queries {
        let rows = client.simple_query(sql).await.unwrap_or_else(|e| panic!("panel {title}: {sql}: {e:?}"));
        if ["Decisions", "Anomalies per service", "Incidents"].contains(&title.as_str()) {
            assert!(!simple_rows(&rows).is_empty(), "panel {title} shows nothing: {sql}");
        }
    }

    // HTTP: JSON, CSV and Arrow by Accept; EXPLAIN; errors as JSON with their kind.
    let url = format!("http://{http}/sql");
    let (code, body) = curl(&["-X", "POST", &url, "-d", "select count(*) as n from decisions"]);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("[{\"n\":"), "{body}");
    let (code, body) = curl(&["-X", "POST", &url, "-H", "Accept: text/csv", "-d", "select feature, count(*) as n from anomalies group by feature order by feature"]);
    assert_eq!(code, 200);
    assert!(body.starts_with("feature,n\n"), "{body}");
    let out = Command::new("curl").args(["-s", "-X", "POST", &url, "-H", "Accept: application/vnd.apache.arrow.stream", "-d", "select * from features limit 5"]).output().unwrap();
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(out.stdout), None).expect("an Arrow IPC stream");
    assert_eq!(reader.schema().field(0).name(), "window_start");
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 5);
    let (code, body) = curl(&["-X", "POST", &url, "-d", "explain select * from anomalies where score > 0.9"]);
    assert_eq!(code, 200);
    assert!(body.contains("physical_plan"), "{body}");
    for (sql, kind, status) in [("selec 1", "parse", 400), ("select * from nope", "plan", 400)] {
        let (code, body) = curl(&["-X", "POST", &url, "-d", sql]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((code, v["kind"].as_str().unwrap()), (status, kind), "{body}");
    }

    // Hostile queries against tight limits: stopped with a clear error, over both protocols.
    let mut tight = server_config();
    tight.limits.timeout = Duration::from_secs(1);
    tight.limits.memory_mb = 4;
    let limited = vigil_queries::start(&tight, tables.clone(), functions(), probes()).unwrap();
    let cross = "select count(*) from features a cross join features b cross join features c where a.mean + b.mean + c.mean < 0";
    let long = "select count(*) from generate_series(1, 100000000000) t(x) where x % 7 = 3";
    let sort = "select * from features a cross join (select * from features limit 200) b order by a.mean, b.mean";
    let post = |sql: &str| {
        let (code, body) = curl(&["-X", "POST", &format!("http://{}/sql", limited.http), "-d", sql]);
        let kind = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["kind"].as_str().map(str::to_string));
        (code, kind, body)
    };
    let t0 = std::time::Instant::now();
    let (code, kind, body) = post(long);
    assert!(t0.elapsed() < Duration::from_secs(10), "stopped after {:?}", t0.elapsed());
    assert_eq!((code, kind.as_deref()), (408, Some("timeout")), "{body}");
    let (code, kind, body) = post(cross);
    assert_eq!((code, kind.as_deref()), (429, Some("resources")), "{body}");
    assert!(body.contains("max_join_pairs"), "{body}");
    let (code, kind, body) = post(sort);
    assert_eq!((code, kind.as_deref()), (429, Some("resources")), "{}", &body[..body.len().min(500)]);
    let (ok, out) = psql(limited.pg.unwrap(), &[], &["-c", long], None);
    assert!(!ok && out.contains("time limit"), "{out}");
    let limited_client = pg_client(limited.pg.unwrap(), "grafana", None).await.unwrap();
    let e = limited_client.simple_query(sort).await.unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("53000"), "{e:?}");
    limited.stop();

    // The status page in headless Chromium: services' health, open incidents, decisions and
    // a chart with its band and anomalies, as a browser renders them.
    let chromium = crate::brokers::chromium();
    let dom = Command::new(&chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom", &format!("http://{http}/")])
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(dom.contains("<h1>Vigil</h1>"), "{dom}");
    assert!(dom.contains("id=\"decisions\"") && dom.contains("<table id=\"decisions\""), "decisions are listed: {dom}");
    assert!(dom.contains("<svg id=\"chart\"") && dom.contains("class=\"band\"") && dom.contains("class=\"anomaly\""), "the chart has a band and anomalies: {dom}");
    if let Ok(path) = std::env::var("VIGIL_TEST_SCREENSHOT") {
        let _ = Command::new(&chromium).args(["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1100,1400", &format!("--screenshot={path}"), &format!("http://{http}/")]).output();
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_refused_and_accepted_and_a_bad_certificate_stops_the_start() {
    init_tracing();
    let tables = tables();
    // The secrets come from the environment; these variable names are used by this test only.
    std::env::set_var("SQLSURFACE_TEST_PG_PASSWORD", "s3cret-pw");
    std::env::set_var("SQLSURFACE_TEST_TOKEN", "tok-123");
    let mut cfg = server_config();
    cfg.users = vec![UserConfig { name: "grafana".into(), password_env: "SQLSURFACE_TEST_PG_PASSWORD".into() }];
    cfg.token_env = Some("SQLSURFACE_TEST_TOKEN".into());
    let server = vigil_queries::start(&cfg, tables.clone(), functions(), probes()).unwrap();
    let (http, pg) = (server.http, server.pg.unwrap());

    // SCRAM-SHA-256: a wrong password and an unknown user are refused, the right one accepted.
    let e = pg_client(pg, "grafana", Some("wrong")).await.expect_err("a wrong password is refused");
    assert!(e.to_string().contains("password") || e.as_db_error().is_some_and(|d| d.code().code() == "28P01"), "{e}");
    assert!(pg_client(pg, "mallory", Some("s3cret-pw")).await.is_err());
    let client = pg_client(pg, "grafana", Some("s3cret-pw")).await.expect("the right password is accepted");
    assert_eq!(client.simple_query("select 1").await.map(|m| simple_rows(&m).len()).unwrap(), 1);
    let (ok, out) = psql(pg, &["-U", "grafana"], &["-c", "select 1"], Some("s3cret-pw"));
    assert!(ok, "{out}");
    let (ok, out) = psql(pg, &["-U", "grafana", "-w"], &["-c", "select 1"], Some("nope"));
    assert!(!ok && out.to_lowercase().contains("password authentication failed"), "{out}");

    // HTTP: no token or a wrong one is 401 with kind auth; the probes stay open.
    let url = format!("http://{http}/sql");
    let (code, body) = curl(&["-X", "POST", &url, "-d", "select 1"]);
    assert_eq!(code, 401);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["kind"], "auth");
    assert_eq!(curl(&["-X", "POST", &url, "-H", "Authorization: Bearer tok-12", "-d", "select 1"]).0, 401);
    assert_eq!(curl(&["-X", "POST", &url, "-H", "Authorization: Bearer tok-123", "-d", "select 1"]).0, 200);
    assert_eq!(curl(&[&format!("http://{http}/")]).0, 401);
    assert_eq!(curl(&[&format!("http://{http}/healthz")]).0, 200);
    server.stop();

    // Beyond loopback without credentials: refused at start, naming the key.
    let open = ServerConfig { pg_listen: Some(([0, 0, 0, 0], 0).into()), ..server_config() };
    let e = vigil_queries::start(&open, tables.clone(), functions(), probes()).unwrap_err().to_string();
    assert!(e.contains("server.users"), "{e}");
    let open = ServerConfig { listen: ([0, 0, 0, 0], 0).into(), pg_listen: None, ..server_config() };
    let e = vigil_queries::start(&open, tables.clone(), functions(), probes()).unwrap_err().to_string();
    assert!(e.contains("server.token_env"), "{e}");
    let missing = ServerConfig { users: vec![UserConfig { name: "x".into(), password_env: "SQLSURFACE_TEST_UNSET".into() }], ..server_config() };
    let e = vigil_queries::start(&missing, tables.clone(), functions(), probes()).unwrap_err().to_string();
    assert!(e.contains("SQLSURFACE_TEST_UNSET"), "{e}");

    // TLS: a certificate that does not load stops the start; a good one serves TLS.
    let dir = crate::common::Scratch::new("tls");
    std::fs::write(dir.join("bad.pem"), "not a certificate").unwrap();
    let bad = ServerConfig { tls_cert: Some(dir.join("bad.pem")), tls_key: Some(dir.join("bad.pem")), ..server_config() };
    let e = vigil_queries::start(&bad, tables.clone(), functions(), probes()).unwrap_err().to_string();
    assert!(e.contains("server.tls_cert"), "{e}");
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl is installed");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let tls = ServerConfig { tls_cert: Some(dir.join("cert.pem")), tls_key: Some(dir.join("key.pem")), ..server_config() };
    let server = vigil_queries::start(&tls, tables.clone(), functions(), probes()).unwrap();
    let pg = server.pg.unwrap();
    let (ok, out) = psql(pg, &[], &["-A", "-t", "-c", "select 42"], None);
    assert!(ok, "{out}");
    let conn = format!("host={} port={} dbname=vigil sslmode=require", pg.ip(), pg.port());
    let out = Command::new("psql").args([&conn, "-X", "-A", "-t", "-c", "select 42"]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("42"), "TLS: {}", String::from_utf8_lossy(&out.stderr));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parquet_history_survives_a_restart_without_counting_a_row_twice() {
    history_round_trip("vigil-history", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parquet_history_in_object_storage_is_queried_after_a_restart() {
    let moto = crate::brokers::Moto::start();
    moto.create_bucket("vigil-history");
    history_round_trip("vigil-history-s3", Some(&moto)).await;
}

async fn history_round_trip(group: &str, s3: Option<&crate::brokers::Moto>) {
    init_tracing();
    let kafka = Kafka::start(2);
    let data = stream(12, 64, 2, &[Incident { series: 3, window: 40 }], 11);
    let mut cfg = kafka.config(group);
    if let Some(moto) = s3 {
        cfg.checkpoint.url = format!("s3://vigil-history/{group}");
        for (k, v) in [("endpoint", moto.endpoint().as_str()), ("allow_http", "true"), ("region", "us-east-1"), ("access_key_id", "test"), ("secret_access_key", "test")] {
            cfg.checkpoint.options.insert(k.into(), v.into());
        }
    }
    cfg.window.idle_timeout = Duration::from_millis(500);
    // Memory keeps only a few rows: what a query sees beyond them comes from Parquet.
    cfg.retention.max_rows = 50;
    let p = crate::process::producer(&kafka.brokers);
    for w in &data[..30] {
        crate::process::produce_window(&p, w).await;
    }
    let count = |sql: vigil_queries::SqlService, q: &'static str| async move {
        let b = sql.query(q).await.unwrap();
        arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(b[0].column(0)).value(0)
    };
    let features_q = "select count(*) from features";
    let distinct_q = "select count(*) from (select distinct series, window_end from features)";

    let first_tables = tables();
    let mut first = vigil::Engine::new(&cfg, first_tables.clone()).await.unwrap();
    step_until(&mut first, Duration::from_secs(90), |s| Stats::get(&s.windows_closed) >= 25).await;
    first.checkpoint(None).await.unwrap();
    let sql = vigil_queries::SqlService::new(first_tables.clone());
    let at_checkpoint = count(sql.clone(), features_q).await;
    assert!(at_checkpoint > 250, "{at_checkpoint} rows: far more than the 50 held in memory");
    assert_eq!(at_checkpoint, count(sql.clone(), distinct_q).await);
    // More windows close after the checkpoint; then the engine dies without another one.
    for w in &data[30..40] {
        crate::process::produce_window(&p, w).await;
    }
    step_until(&mut first, Duration::from_secs(60), |s| Stats::get(&s.windows_closed) >= 36).await;
    let before_crash = count(sql.clone(), features_q).await;
    assert!(before_crash > at_checkpoint, "{before_crash} <= {at_checkpoint}");
    drop(first);

    // A new engine on the same store: the history is queryable before any new input, and the
    // replay of the windows after the checkpoint does not add their rows a second time.
    let second_tables = tables();
    let mut second = vigil::Engine::new(&cfg, second_tables.clone()).await.unwrap();
    let sql = vigil_queries::SqlService::new(second_tables.clone());
    assert_eq!(count(sql.clone(), features_q).await, at_checkpoint, "the restored history");
    for w in &data[40..] {
        crate::process::produce_window(&p, w).await;
    }
    step_until(&mut second, Duration::from_secs(90), |s| Stats::get(&s.windows_closed) >= 30).await;
    second.checkpoint(None).await.unwrap();
    let after = count(sql.clone(), features_q).await;
    assert!(after >= before_crash, "{after} < {before_crash}");
    assert_eq!(after, count(sql.clone(), distinct_q).await, "no row twice");
    let files = second_tables.history_files();
    assert!(files["features"].len() >= 2, "{files:?}");
}
