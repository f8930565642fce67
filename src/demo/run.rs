//! `vigil demo`: the engine against an in-process Kafka mock cluster fed by the generated fleet.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::ClientConfig;
use vigil_models::Decision;
use vigil_pipeline::ResultTables;

use super::{GenStats, Scorecard, SimSpec, Simulation};
use crate::serve::{log_decision, probes, serve_sql, sql_service, stop_signal};
use crate::{Config, Engine, Stats};

/// `vigil demo`'s options (see its `--help`).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Wall-clock time the demo runs for.
    pub duration: Duration,
    /// Event time per wall-clock time.
    pub speedup: f64,
    /// Hosts per service.
    pub hosts: usize,
    /// The HTTP server's address.
    pub listen: SocketAddr,
    /// The Postgres wire server's address.
    pub pg_listen: SocketAddr,
    /// The generator's seed.
    pub seed: u64,
    /// Keep serving the results after the summary, until a stop signal.
    pub stay: bool,
    /// Run hostile SQL queries against the server while the demo runs.
    pub hostile: bool,
}

/// Runs the embedded default end to end: a Kafka mock cluster in the process, the generated
/// fleet produced to it, the engine reading it with the SQL server up, then a summary on
/// standard output. Returns whether every planned incident was detected.
pub async fn run(o: DemoOptions) -> anyhow::Result<bool> {
    let DemoOptions { duration, speedup, hosts, listen, pg_listen, seed, stay, hostile } = o;
    if !(speedup > 0.0 && speedup.is_finite()) {
        bail!("--speedup must be a positive number, e.g. 360");
    }
    if hosts == 0 {
        bail!("--hosts must be at least 1");
    }
    let cluster = MockCluster::new(1).context("starting the Kafka mock cluster")?;
    let brokers = cluster.bootstrap_servers();
    for (topic, _, partitions) in super::TOPICS {
        cluster.create_topic(topic, partitions, 1).with_context(|| format!("creating topic {topic}"))?;
    }
    cluster.create_topic("vigil.dlq", 1, 1).context("creating topic vigil.dlq")?;
    cluster.create_topic("vigil.late", 1, 1).context("creating topic vigil.late")?;
    cluster.create_topic("vigil.decisions", 3, 1).context("creating topic vigil.decisions")?;

    let mut cfg = Config::default();
    cfg.kafka.brokers = brokers.clone();
    cfg.kafka.group_id = "vigil-demo".into();
    cfg.kafka.input_topics = super::TOPICS.iter().map(|(t, _, _)| t.to_string()).collect();
    for (topic, format, _) in super::TOPICS {
        cfg.kafka.input_formats.insert(topic.into(), format.into());
    }
    // Memory is forecast half an hour ahead against the hosts' 8 GB, refitted every ten minutes
    // of event time (every 1.7 s of the demo), in the background: a forecast that reaches the
    // limit is a capacity decision.
    cfg.forecast.metrics = vec!["memory_used_bytes".into()];
    cfg.forecast.limits.insert("memory_used_bytes".into(), 8.0e9);
    cfg.forecast.refit_every = Duration::from_secs(600);
    cfg.forecast.history = Duration::from_secs(6 * 3600);
    // Cost rows arrive a few minutes after their hour: an hour closes once the next hour's rows
    // are in (30 minutes of lateness). Idle instances: below 5% CPU for an hour.
    cfg.cost.allowed_lag = Duration::from_secs(1800);
    // The demo's services spend a few dollars an hour: an anomaly is at least 1 and 20% over.
    cfg.cost.anomaly_min_impact = 1.0;
    cfg.cost.efficiency.cpu_utilization = Some("cpu_utilization".into());
    cfg.cost.efficiency.idle_for = Duration::from_secs(3600);
    let log_mapping = crate::config::LogMappingConfig { attribute_fields: vec!["host".into()], ..Default::default() };
    cfg.kafka.log_mappings.insert("app-logs".into(), log_mapping);
    cfg.server.listen = listen;
    cfg.server.pg_listen = Some(pg_listen);
    // The demo's state lives as long as the demo: checkpoints go to a temporary directory.
    let state_dir = std::env::temp_dir().join(format!("vigil-demo-{}", std::process::id()));
    cfg.checkpoint.url = state_dir.display().to_string();

    let window_ms = cfg.window.size.as_millis() as i64;
    let start_ms = 1_767_571_200_000; // 2026-01-05T00:00:00Z, a Monday
    let span_ms = ((duration.as_secs_f64() * speedup * 1000.0) as i64 / window_ms) * window_ms;
    let sim = Arc::new(Simulation::new(SimSpec {
        start_ms,
        span_ms,
        step_ms: 5_000,
        hosts_per_service: hosts,
        seed,
        corrupt_fraction: 0.0005,
        late_fraction: 0.0002,
    }));
    // The checkout budget (its expected spend for the month / 0.85: on track until the idle
    // instances) and its latency SLO.
    cfg.cost.budgets.push(vigil_models::cost::BudgetConfig {
        name: super::BUDGET.into(),
        scope: "service".into(),
        value: "checkout".into(),
        amount: sim.budget_amount,
        period: "month".into(),
        start: None,
        end: None,
        warn_at: 0.95,
    });
    cfg.slo.push(vigil_models::SloConfig {
        name: super::SLO.into(),
        service: "checkout".into(),
        objective: 99.9,
        period: Duration::from_secs(30 * 86_400),
        metric: Some("latency_p99_ms".into()),
        threshold: Some(sim.slo_threshold),
        ratio: None,
        good: None,
        bad: None,
        total: None,
    });
    cfg.validate()?;
    println!(
        "vigil demo: {} series over {} of event time at {}x ({} wall), mock Kafka at {brokers}",
        sim.series.len(),
        humantime::format_duration(Duration::from_millis(span_ms as u64)),
        speedup,
        humantime::format_duration(duration)
    );
    for (topic, format, _) in super::TOPICS {
        println!("  input topic {topic:<13} format {format}");
    }
    for inc in &sim.incidents {
        println!("  incident planned: {:<12} {} at +{}", inc.kind, inc.series, humantime::format_duration(Duration::from_secs(((inc.start_ms - start_ms) / 1000) as u64)));
    }
    println!(
        "  cost: {} days of FOCUS history, budget {} = {:.0}, SLO {} = 99.9% of windows with p99 <= {} ms",
        super::COST_HISTORY_DAYS,
        super::BUDGET,
        sim.budget_amount,
        super::SLO,
        sim.slo_threshold
    );
    println!("  SQL: curl -s -X POST {listen}/sql -d 'select count(*) from anomalies'");
    println!("       psql -h {} -p {} -c 'select service, score, status from health order by window_end desc limit 6'", pg_listen.ip(), pg_listen.port());
    println!("  status page: http://{listen}/");

    let tables = Arc::new(ResultTables::new());
    let mut engine = Engine::new(&cfg, tables.clone()).await?;
    let stats = engine.stats();
    let server = serve_sql(&cfg, tables.clone(), probes(&engine, &cfg))?;
    let hostile = hostile.then(|| super::HostileQueries::start(listen));

    let gen_stats = Arc::new(GenStats::default());
    let gen = {
        let (sim, brokers, gs) = (sim.clone(), brokers.clone(), gen_stats.clone());
        std::thread::spawn(move || super::generate(&sim, &brokers, speedup, &gs))
    };

    let began = Instant::now();
    let progress = {
        let (stats, gs) = (stats.clone(), gen_stats.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let wm = stats.watermark_ms.load(Ordering::Relaxed);
                let wm = chrono::DateTime::from_timestamp_millis(wm).map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_default();
                tracing::info!(
                    "progress: produced {} consumed {} windows {} anomalies {} decisions {} dlq {} late {} watermark {wm}",
                    gs.produced.load(Ordering::Relaxed),
                    Stats::get(&stats.records),
                    Stats::get(&stats.windows_closed),
                    Stats::get(&stats.anomalies),
                    Stats::get(&stats.decisions),
                    Stats::get(&stats.dead_lettered),
                    Stats::get(&stats.late),
                );
            }
        })
    };

    // Stop once the generator is done and everything it produced has been consumed (or 20 s after).
    let shutdown = {
        let (stats, gs) = (stats.clone(), gen_stats.clone());
        async move {
            let mut done_at: Option<Instant> = None;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if gs.done.load(Ordering::Acquire) {
                    let at = *done_at.get_or_insert_with(Instant::now);
                    if Stats::get(&stats.records) >= gs.produced.load(Ordering::Relaxed) || at.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                }
            }
        }
    };
    let mut decisions: Vec<Decision> = Vec::new();
    let res = engine
        .run(shutdown, |d| {
            log_decision(d);
            decisions.push(d.clone());
        })
        .await;
    progress.abort();
    let gen_res = gen.join().map_err(|_| anyhow::anyhow!("the demo generator thread panicked"))?;
    res?;
    gen_res.context("demo generator")?;
    let wall = began.elapsed();

    let on_topic = count_topic(&brokers, "vigil.decisions");
    let dlq_on_topic = count_topic(&brokers, "vigil.dlq");
    let sql = sql_service(tables.clone());
    let anomalies_sql = sql.query_json("select count(*) as n from anomalies").await.map(|b| String::from_utf8_lossy(&b).to_string()).unwrap_or_default();
    let logs_sql = sql
        .query_json("select count(*) as rows, count(distinct template_id) as templates, sum(case when level = 'error' then 1 else 0 end) as errors from logs")
        .await
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default();
    let formats_sql = engine.format_counters();
    let forecasts_sql = sql
        .query_json(
            "select count(distinct series) as series, count(distinct made_at) as refits, \
             count(distinct case when crosses_earliest is not null then series end) as series_that_may_reach_8gb \
             from forecasts",
        )
        .await
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default();
    let q = |text: &'static str| {
        let sql_service = &sql;
        async move { sql_service.query_json(text).await.map(|b| String::from_utf8_lossy(&b).to_string()).unwrap_or_else(|e| format!("({e})")) }
    };
    let cost_sql = q("select count(*) as hours, sum(case when anomaly then 1 else 0 end) as anomalies from cost_drift where granularity = 'hour'").await;
    let cost_top = q("select cast(window_start as varchar) as hour, value, actual, expected, impact_percent, root_causes from cost_drift \
         where anomaly and granularity = 'hour' and scope = 'service' order by window_start limit 2").await;
    let budget_sql = q("select cast(window_start as varchar) as hour, budget, status, spend_to_date, projected, projected_low, projected_high, cast(runs_out_at as varchar) as runs_out_at \
         from budgets order by window_start desc limit 1").await;
    let idle_sql = q("select resource, max(idle_hours) as idle_hours, max(monthly_saving) as monthly_saving from efficiency where idle group by resource order by resource").await;
    let slo_sql = q("select slo, max(burn_5m) as max_burn_5m, max(burn_1h) as max_burn_1h, min(budget_remaining) as budget_remaining, \
         sum(case when alert = 'page' then 1 else 0 end) as page_evaluations from slo group by slo").await;
    let health_sql = q("select service, min(score) as lowest, round(avg(score), 1) as mean, max(case when status <> 'healthy' then 1 else 0 end) as ever_unhealthy \
         from health group by service order by lowest limit 3").await;
    let card = Scorecard::score(&sim, &decisions);
    let hostile_summary = hostile.map(|h| h.stop());

    let produced = gen_stats.produced.load(Ordering::Relaxed);
    println!();
    println!("== vigil demo summary ==");
    println!("records produced        {produced} ({} corrupted, {} sent late)", gen_stats.corrupted.load(Ordering::Relaxed), gen_stats.late.load(Ordering::Relaxed));
    println!("records consumed        {} in {:.1}s ({:.0} records/s)", Stats::get(&stats.records), wall.as_secs_f64(), Stats::get(&stats.records) as f64 / wall.as_secs_f64());
    println!("dead-lettered           {} (on topic vigil.dlq: {dlq_on_topic})", Stats::get(&stats.dead_lettered));
    println!("late (to vigil.late)    {} (on topic: {})", Stats::get(&stats.late), count_topic(&brokers, "vigil.late"));
    println!("windows closed          {}", Stats::get(&stats.windows_closed));
    let ms = |q: f64| stats.close_latency.percentile(q).map_or("-".to_string(), |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0));
    println!("window close latency    p50 {} p99 {} max {} over {} closes", ms(0.5), ms(0.99), ms(1.0), stats.close_latency.count());
    if let Some(h) = &hostile_summary {
        println!("hostile queries         {h}");
    }
    println!("feature rows            {}", Stats::get(&stats.feature_rows));
    for (format, c) in formats_sql.iter() {
        println!(
            "  format {format:<11} records {} points/rows {} rejected {}",
            c.records.load(Ordering::Relaxed),
            c.points.load(Ordering::Relaxed),
            c.rejected.load(Ordering::Relaxed)
        );
    }
    println!("logs kept               {logs_sql}");
    println!("forecasts               {forecasts_sql}");
    let reaching = sql
        .query_json(
            "select series, method, min(made_at) as first_seen_at, min(crosses_earliest) as earliest, min(crosses_expected) as expected \
             from forecasts where crosses_earliest is not null group by series, method order by 3 limit 3",
        )
        .await
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default();
    println!("  may reach the 8 GB limit: {reaching}");
    println!("anomalies               {} (SQL: {anomalies_sql})", Stats::get(&stats.anomalies));
    let threshold = cfg.decisions.threshold;
    let high = sql
        .query_json(&format!("select count(*) as n from anomalies where score >= {threshold}"))
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v[0]["n"].as_u64())
        .unwrap_or(0);
    let incidents_sql = sql
        .query_json("select count(distinct id) as incidents, sum(case when state = 'resolved' then 1 else 0 end) as resolved from incidents")
        .await
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default();
    let log_sql = sql
        .query_json("select outcome, count(*) as n from decision_log group by outcome order by n desc")
        .await
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default();
    println!("cost hours (drift rows)  {cost_sql} (cost hours closed: {})", Stats::get(&stats.cost_hours));
    println!("  cost anomalies        {cost_top}");
    println!("  budget                {budget_sql}");
    println!("  idle resources        {idle_sql}");
    println!("slo                     {slo_sql}");
    println!("health (worst 3)        {health_sql}");
    println!("incidents               {incidents_sql}");
    println!("decision log            {log_sql}");
    println!(
        "decisions               {} firing + {} resolved (on topic vigil.decisions: {on_topic}), about {} incidents: {:.2} per incident",
        card.firing,
        card.resolved,
        card.decided_incidents,
        card.firing as f64 / card.decided_incidents.max(1) as f64
    );
    println!(
        "alert compression       {:.1}% (1 - {} firing decisions / {high} anomaly rows scoring >= {threshold})",
        100.0 * (1.0 - card.firing as f64 / high.max(1) as f64),
        card.firing
    );
    for (kind, series, first) in &card.incidents {
        match first {
            Some(at) => println!("  detected  {kind:<12} {series} (window {at})"),
            None => println!("  MISSED    {kind:<12} {series}"),
        }
    }
    println!("incidents detected: {}/{}", card.detected(), card.incidents.len());
    println!("false decisions: {}", card.false_decisions.len());
    for f in card.false_decisions.iter().take(10) {
        println!("  false: {f}");
    }
    if stay {
        println!();
        println!("serving the results until Ctrl-C: http://{listen}/ and psql -h {} -p {}", pg_listen.ip(), pg_listen.port());
        stop_signal().await;
    }
    server.stop();
    // Clients first, then the cluster they talk to.
    drop(engine);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&state_dir);
    Ok(card.detected() == card.incidents.len())
}

/// Counts the records on `topic` (all partitions) by reading it from the start.
fn count_topic(brokers: &str, topic: &str) -> u64 {
    let Ok(c) = ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", "vigil-demo-audit").create::<BaseConsumer>() else {
        return 0;
    };
    let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) else { return 0 };
    let mut n = 0;
    for t in md.topics() {
        for p in t.partitions() {
            if let Ok((lo, hi)) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(5)) {
                n += (hi - lo).max(0) as u64;
            }
        }
    }
    n
}
