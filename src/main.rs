//! The `vigil` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use vigil::config::Config;
use vigil::engine::Engine;
use vigil::serve::{log_decision, probes, serve_sql, stop_signal};
use vigil_pipeline::ResultTables;

mod allocator;

/// Vigil: streaming anomaly detection and decisions for operations metrics on Kafka, with SQL
/// over every result.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the pipeline against real Kafka brokers.
    ///
    /// Reads JSON metric points from `kafka.input_topics` as consumer group `kafka.group_id`,
    /// cuts them into `window.size` event-time windows (closing each once the watermark, the
    /// newest event time minus `window.allowed_lag`, passes its end), computes features with the
    /// SQL in `features.sql_file`, scores every series, publishes decisions to
    /// `kafka.decisions_topic` and undecodable records to `kafka.dlq_topic`, and serves SQL on
    /// `server.listen` (POST /sql). Every key can be overridden by an environment variable
    /// VIGIL_<SECTION>_<KEY>, e.g. VIGIL_KAFKA_BROKERS=host:9092 or VIGIL_WINDOW_SIZE=30s.
    ///
    /// State (every series' model, windows' progress, log templates) is checkpointed to
    /// `checkpoint.url` every `checkpoint.interval` and restored at start, so a restart or a
    /// crash resumes warm. Several instances with the same group id share the input partitions
    /// (cooperative-sticky); a partition's state moves with it through the checkpoint store.
    /// SIGTERM or SIGINT: stop polling, checkpoint, commit, flush, exit 0 within
    /// `shutdown.grace`.
    Run {
        /// TOML configuration file (see `vigil config` for every key and its default).
        #[arg(long, short, env = "VIGIL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Deliver decisions to HTTP receivers: Alertmanager-compatible webhooks, PagerDuty and
    /// generic JSON webhooks.
    ///
    /// Reads the decisions topic (`forward.topic`, default vigil.decisions) from
    /// `kafka.brokers` as consumer group `forward.group_id` and POSTs every decision to each
    /// `[[forward.targets]]`: kind "alertmanager" sends Alertmanager's webhook payload
    /// (version 4, as Keep, Grafana OnCall and other Alertmanager receivers accept it),
    /// "pagerduty" an Events API v2 trigger or resolve (dedup_key = the decision's
    /// fingerprint), "webhook" the decision JSON unchanged with the configured headers.
    ///
    /// A record's offset is committed only once every target has accepted it (2xx). Connection
    /// errors, timeouts, 429 and 5xx are retried with exponential backoff (up to
    /// `forward.max_backoff`, honouring Retry-After) for as long as it takes; order per
    /// partition is kept. A record that is not a decision, or that a receiver refuses with
    /// another 4xx, goes to `forward.dlq_topic` with the reason in the `vigil.error` header.
    /// Delivery is at least once: receivers deduplicate on the fingerprint. SIGTERM or
    /// SIGINT: stop, commit what was delivered, exit 0. See docs/FORWARDING.md.
    Forward {
        /// TOML configuration file with a `[forward]` section (see `vigil config`).
        #[arg(long, short, env = "VIGIL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the embedded demo: an in-process Kafka mock cluster, a simulated fleet with injected
    /// incidents, and the real pipeline and SQL server against it.
    ///
    /// While it runs, try: curl -s -X POST 127.0.0.1:7878/sql -d 'select count(*) from anomalies'
    Demo {
        /// How long to run (wall clock), e.g. 60s or 2m.
        #[arg(long = "for", default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Event time simulated per second of wall clock.
        #[arg(long, default_value_t = 360.0)]
        speedup: f64,
        /// Hosts per service (6 services, 5 metrics per host).
        #[arg(long, default_value_t = 10)]
        hosts: usize,
        /// SQL/HTTP listen address (status page at /, POST /sql).
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: SocketAddr,
        /// Postgres wire listen address (psql -h 127.0.0.1 -p 5433).
        #[arg(long, default_value = "127.0.0.1:5433")]
        pg_listen: SocketAddr,
        /// Seed of the simulation.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// After the summary, keep serving SQL (HTTP and Postgres) and the status page until
        /// Ctrl-C.
        #[arg(long)]
        stay: bool,
        /// Send hostile queries (cross joins, huge sorts) over HTTP in a loop while the demo
        /// runs, to show that the limits stop them and window closes keep their latency.
        #[arg(long)]
        hostile_queries: bool,
    },
    /// Measure the processing core (decode, windows, feature SQL, detector, decisions) without
    /// Kafka: events/s per core, batch latency percentiles, state per series.
    ///
    /// Input is a JSON-lines file of metric points (one per line), or, without --input, a
    /// synthetic set of --events points.
    Bench {
        /// JSON-lines file of metric points.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Points to synthesise when no --input is given (one point per series per second,
        /// with one incident from 80% of the run: latency_ms of one host in 500 eight times its
        /// level for 3 s).
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
        /// Hosts in the synthetic set (5 metrics each).
        #[arg(long, default_value_t = 2_000)]
        hosts: usize,
        /// Records per batch (as one Kafka poll).
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
        /// Input format of the records: json, influx or mapped (synthetic input only for the
        /// last two).
        #[arg(long, default_value = "json")]
        format: String,
        /// TOML configuration file (window, features and detector sections apply).
        #[arg(long, short, env = "VIGIL_CONFIG")]
        config: Option<PathBuf>,
        /// Measure the Kafka path instead: produce the records to a topic, read them with a
        /// bare rdkafka consumer, then with the whole engine, and compare. Uses librdkafka's
        /// mock cluster unless --brokers is given (it keeps about 5 MB per partition: use
        /// fewer events or more partitions).
        #[arg(long)]
        kafka: bool,
        /// With --kafka: a real broker's bootstrap servers (the topics are created).
        #[arg(long, requires = "kafka")]
        brokers: Option<String>,
        /// With --kafka: partitions of the input topic.
        #[arg(long, default_value_t = 8, requires = "kafka")]
        partitions: i32,
        /// With --kafka: a live run. The engine joins first and the records are produced at
        /// this many events per second while it reads them, so windows close one at a time as
        /// in production (the synthetic input keeps pace with the clock at hosts x 5). Without
        /// it the topic is filled first and read as a backlog, against a bare consumer.
        #[arg(long, requires = "kafka")]
        rate: Option<f64>,
        /// With --kafka: how long the bench's producer gathers records per partition before
        /// sending them (librdkafka's `linger.ms`; default 50 in a live run, 20 otherwise). The
        /// mock cluster finds a fetch's offset by scanning a partition's record batches one by
        /// one: small batches make it take a large share of the cores the engine runs on.
        #[arg(long, requires = "kafka")]
        linger_ms: Option<u64>,
        /// With --kafka: keep checkpoints on, as in production (to a temporary directory, every
        /// `checkpoint.interval`), and report what they cost the loop. Off by default.
        #[arg(long, requires = "kafka")]
        checkpoints: bool,
        /// Measure memory instead: the synthetic records are made a batch at a time (the
        /// process holds one poll of input, as with Kafka), and the resident set is read after
        /// every window close and at the end, per series. For a million series at 1 s windows:
        /// `VIGIL_WINDOW_SIZE=1s vigil bench --memory --hosts 200000 --events 30000000`.
        #[arg(long, conflicts_with_all = ["input", "kafka"])]
        memory: bool,
    },
    /// Measure SQL query latency over a day of results: `anomalies` rows for --series series
    /// at one minute for --hours hours, in hourly Parquet files plus memory, queried through the
    /// SQL service and its limits (p50, p99, max per query).
    BenchSql {
        /// Series.
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        /// Hours of rows.
        #[arg(long, default_value_t = 24)]
        hours: usize,
        /// Timed runs per query (after one warm-up).
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Query threads (server.limits.threads).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Evaluate the detector (NAB scoring) and the forecaster (rolling origin) on labelled data.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Backtest the live detector and forecaster on your own history, and write a report with
    /// one chart per series.
    ///
    /// Each series is cut into `window.size` windows (mean per window); windows without data
    /// between its first and last point are filled with the previous value and counted. The
    /// windows with data go through the detector of `[detector]` one at a time, as on the live
    /// stream, and each series is forecast from its end with `[forecast]` horizon, history and
    /// max_period. The report folder gets report.md (inputs, a table per series: points, gaps
    /// filled, period found, anomalies, forecast method; the top anomalies of each series) and
    /// one PNG per series (the series, the detector's normal band, anomalies in red, the
    /// forecast with its 80% and 95% intervals).
    ///
    /// Match the window to the data's interval, e.g. VIGIL_WINDOW_SIZE=5m for 5-minute data.
    Backtest {
        /// A CSV or Parquet file, or a folder: every .csv and .parquet file in it. Columns:
        /// `timestamp`, `series` (or `name`) and `value`, several series per file; or
        /// `timestamp` and `value`, one series named after the file. Timestamps: date-time
        /// strings (e.g. 2014-04-01 00:05:00, RFC 3339), epoch milliseconds or datetimes (UTC).
        #[arg(long)]
        input: PathBuf,
        /// Folder for report.md and the charts (created if missing; files of the same name are
        /// replaced).
        #[arg(long)]
        out: PathBuf,
        /// TOML configuration file: `[window] size`, `[detector]` and `[forecast]` apply
        /// (defaults without it).
        #[arg(long, short, env = "VIGIL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check the decision policies (`decisions.policies_file`, or the built-in
    /// sql/policies.toml) and list them in the order they are tried.
    ///
    /// Every policy's SQL is planned against the `incidents` table: a policy that does not
    /// parse or names an unknown column is reported with its name and the column, and the exit
    /// status is 1.
    Policies {
        /// TOML configuration file.
        #[arg(long, short, env = "VIGIL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the effective configuration (defaults, file, environment) as TOML, or the error.
    Config {
        /// TOML configuration file.
        #[arg(long, short, env = "VIGIL_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum EvalCommand {
    /// Stream every NAB file through the live detector, one point at a time (no look-ahead),
    /// and score it with NAB's rules for the three profiles.
    Nab {
        /// The NAB corpus folder (with data/ and labels/).
        #[arg(long, default_value = "../shared/data/nab")]
        data: PathBuf,
        /// Write per-row scores here as CSV (file,row,score,label).
        #[arg(long)]
        scores: Option<PathBuf>,
        /// TOML configuration file (the detector section applies).
        #[arg(long, short, env = "VIGIL_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Rolling-origin evaluation of the live forecaster on every NAB series, then on the demo's
    /// generated fleet (14 days at 5-minute windows, incidents included): origins at 50-90% of
    /// each series, MASE and sMAPE against seasonal naive, and how often the 80% and 95%
    /// intervals hold the actual values.
    Forecast {
        /// The NAB corpus folder (with data/ and labels/).
        #[arg(long, default_value = "../shared/data/nab")]
        data: PathBuf,
        /// Steps ahead (NAB's series are mostly at 5-minute intervals: 12 = one hour).
        #[arg(long, default_value_t = 12)]
        horizon: usize,
        /// Most values fitted on before each origin (2016 = a week of 5-minute points).
        #[arg(long, default_value_t = 2016)]
        history: usize,
        /// Longest period looked for, in steps (288 = a day of 5-minute points).
        #[arg(long, default_value_t = 288)]
        max_period: usize,
    },
}

fn main() -> ExitCode {
    let tuned = allocator::tune();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    if let Err(e) = tuned {
        tracing::debug!(error = %e, "transparent huge pages stay on");
    }
    let cli = Cli::parse();
    let res = match cli.command {
        // Synchronous, and outside the tokio runtime: polars runs its own.
        Command::Backtest { input, out, config } => backtest(&input, &out, config.as_deref()),
        command => run_async(command),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn backtest(input: &std::path::Path, out: &std::path::Path, config: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let summary = vigil::backtest::run(input, out, &cfg)?;
    print!("{}", summary.render());
    Ok(ExitCode::SUCCESS)
}

fn run_async(command: Command) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async {
        match command {
            Command::Run { config } => run(config).await,
            Command::Forward { config } => forward(config).await,
            Command::Demo { duration, speedup, hosts, listen, pg_listen, seed, stay, hostile_queries } => {
                let o = vigil::demo::DemoOptions { duration, speedup, hosts, listen, pg_listen, seed, stay, hostile: hostile_queries };
                Ok(if vigil::demo::run(o).await? { ExitCode::SUCCESS } else { ExitCode::from(2) })
            }
            Command::BenchSql { series, hours, runs, threads } => {
                if series == 0 || hours == 0 || runs == 0 || threads == 0 {
                    bail!("--series, --hours, --runs and --threads must be at least 1");
                }
                let report = vigil::bench_sql::run(series, hours, runs, threads).await?;
                print!("{}", report.render());
                Ok(ExitCode::SUCCESS)
            }
            Command::Bench { input, events, hosts, batch: _, format, config, kafka: true, brokers, partitions, rate, linger_ms, checkpoints, memory: _ } => {
                if format != "json" {
                    bail!("--kafka measures JSON points (--format json)");
                }
                if partitions < 1 {
                    bail!("--partitions must be at least 1");
                }
                let cfg = Config::load(config.as_deref())?;
                let lines = match &input {
                    Some(p) => vigil::bench::read_lines(p).with_context(|| format!("reading {}", p.display()))?,
                    None => vigil::bench::synthesize(events, hosts.max(1)),
                };
                if rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
                    bail!("--rate must be a positive number of events per second");
                }
                let report = vigil::bench_kafka::run(&cfg, lines, brokers, partitions, rate, linger_ms, checkpoints).await?;
                print!("{}", report.render());
                Ok(ExitCode::SUCCESS)
            }
            Command::Bench { input, events, hosts, batch, format, config, memory, .. } => {
                let mut cfg = Config::load(config.as_deref())?;
                if batch == 0 {
                    bail!("--batch must be at least 1");
                }
                if !matches!(format.as_str(), "json" | "influx" | "mapped") {
                    bail!("--format must be json, influx or mapped");
                }
                // The bench feeds records as topic `bench`.
                cfg.kafka.input_topics = vec!["bench".into()];
                cfg.kafka.input_formats.insert("bench".into(), format.clone());
                if format == "mapped" {
                    cfg.kafka.mappings.insert("bench".into(), vigil::bench::bench_mapping());
                }
                cfg.validate()?;
                if memory {
                    let synth = vigil::bench::Synth::new(events, hosts, &format);
                    print!("{}", vigil::bench_memory::run(&cfg, synth, batch).await?.render());
                    return Ok(ExitCode::SUCCESS);
                }
                let lines = match &input {
                    Some(p) => vigil::bench::read_lines(p).with_context(|| format!("reading {}", p.display()))?,
                    None => vigil::bench::synthesize_as(events, hosts.max(1), &format),
                };
                let report = vigil::bench::run(&cfg, lines, batch).await?;
                print!("{}", report.render());
                Ok(ExitCode::SUCCESS)
            }
            Command::Eval(EvalCommand::Forecast { data, horizon, history, max_period }) => {
                if horizon == 0 || history < 16 || max_period < 4 {
                    bail!("--horizon must be at least 1, --history at least 16 and --max-period at least 4");
                }
                let files = vigil::eval::read_nab(&data)?;
                let nab: Vec<(String, Vec<f64>)> = files.into_iter().map(|f| (f.name, f.values)).collect();
                // The demo's generated fleet: 14 days at 5-minute windows, two hosts per service,
                // its incidents included (so the same settings apply as for NAB's 5-minute files).
                let sim = vigil::demo::Simulation::new(vigil::demo::SimSpec {
                    start_ms: 1_767_225_600_000,
                    span_ms: 14 * 86_400_000,
                    step_ms: 300_000,
                    hosts_per_service: 2,
                    seed: 7,
                    corrupt_fraction: 0.0,
                    late_fraction: 0.0,
                });
                let demo = sim.window_series(300_000);
                for (corpus, series) in [("NAB", nab), ("demo", demo)] {
                let r = vigil::eval::eval_forecasts(&series, horizon, history, max_period);
                println!("{corpus}: series {} origins {} horizon {horizon}", r.series, r.origins);
                println!("{:<15} {:>7} {:>7} {:>7} {:>8} {:>8}", "model", "MASE", "median", "sMAPE", "cover80", "cover95");
                let pct = |x: f64| if x.is_nan() { "-".to_string() } else { format!("{:.1}%", 100.0 * x) };
                for (name, s) in [("vigil", &r.vigil), ("seasonal_naive", &r.seasonal_naive)] {
                    println!("{name:<15} {:>7.3} {:>7.3} {:>6.1}% {:>8} {:>8}", s.mase, s.mase_median, s.smape, pct(s.cover_80), pct(s.cover_95));
                }
                for (method, (n, m, b)) in &r.methods {
                    println!("  answered by {method:<15} {n:>4} origins, MASE {m:.3} (seasonal naive {b:.3} on the same origins)");
                }
                println!("milliseconds per fit {:.2}", r.ms_per_fit);
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Eval(EvalCommand::Nab { data, scores, config }) => {
                let cfg = Config::load(config.as_deref())?;
                let (files, us) = vigil::eval::run_nab(&data, &cfg.detector)?;
                if let Some(path) = scores {
                    let mut out = String::from("file,row,score,label\n");
                    for f in &files {
                        for (i, s) in f.scores.iter().enumerate() {
                            let label = f.windows.iter().any(|(l, r)| (*l..=*r).contains(&i)) as u8;
                            out.push_str(&format!("{},{i},{s},{label}\n", f.name));
                        }
                    }
                    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
                }
                let points: usize = files.iter().map(|f| f.scores.len()).sum();
                let windows: usize = files.iter().map(|f| f.windows.len()).sum();
                println!("files {} points {points} windows {windows}", files.len());
                for r in vigil::eval::score_corpus(&files) {
                    println!("{} {:.1}   (threshold {:.4})", r.profile, r.score, r.threshold);
                }
                println!("microseconds per point {us:.2}");
                Ok(ExitCode::SUCCESS)
            }
            Command::Backtest { .. } => unreachable!("run before the runtime is built"),
            Command::Policies { config } => {
                let cfg = Config::load(config.as_deref())?;
                let (text, source) = cfg.policies_text()?;
                let set = vigil_models::PolicySet::new(&text, &source).await?;
                println!("{source}: {} policies, tried in this order", set.specs().len());
                for p in set.specs() {
                    println!(
                        "  {:<20} {:<14} risk {:<6} mode {:<8} cooldown {:<6} max/h {:<4} when {}",
                        p.name,
                        p.action,
                        p.risk.name(),
                        p.mode.name(),
                        humantime::format_duration(p.cooldown).to_string(),
                        p.max_per_hour,
                        p.when
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Config { config } => {
                let cfg = Config::load(config.as_deref())?;
                print!("{}", cfg.to_toml());
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// Starts the SQL surface of `cfg.server` (HTTP and Postgres, on threads of their own).
async fn run(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config.as_deref())?;
    let tables = Arc::new(ResultTables::new());
    let mut engine = Engine::new(&cfg, tables.clone()).await?;
    let server = serve_sql(&cfg, tables, probes(&engine, &cfg))?;
    tracing::info!(brokers = %cfg.kafka.brokers, topics = ?cfg.kafka.input_topics, group = %cfg.kafka.group_id, "running");
    engine.run(stop_signal(), log_decision).await?;
    server.stop();
    Ok(ExitCode::SUCCESS)
}

async fn forward(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config.as_deref())?;
    cfg.validate_forward()?;
    let kafka = vigil_sinks::KafkaSinkConfig {
        brokers: cfg.kafka.brokers.clone(),
        delivery_timeout: cfg.kafka.delivery_timeout,
        properties: cfg.kafka.producer.clone(),
    };
    let forwarder = vigil_sinks::Forwarder::new(&cfg.forward, &kafka, &cfg.kafka.consumer)?;
    tracing::info!(brokers = %cfg.kafka.brokers, topic = %cfg.forward.topic, group = %cfg.forward.group_id, "forwarding");
    forwarder.run(stop_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

