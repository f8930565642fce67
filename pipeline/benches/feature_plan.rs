//! The feature plan at one close: the default feature SQL over a closed 10 s window of 10,000
//! series with 10 points each (100,000 rows in 10 polls' batches), on every core. Two ways:
//!
//! - `prepared`: [`FeaturePlan::run`], the SQL planned once, its physical plan re-executed over
//!   rows dealt out to the cores by series, with Vigil's SQL functions registered as the engine
//!   has them (its `percentile_cont` keeps every group's values in flat vectors);
//! - `prepared_datafusion_percentile`: the same with DataFusion's own `percentile_cont` (a
//!   vector per group);
//! - `planned_each_close`: what the engine did before, the same SQL parsed, optimised and planned
//!   at every close over an in-memory table whose batches are dealt out to the cores evenly.
//!
//! Run with `cargo bench -p vigil-pipeline --bench feature_plan`.

use std::sync::Arc;

use arrow::array::RecordBatch;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use vigil_ingest::{JsonPointDecoder, RawRecord, SourcePos};
use vigil_pipeline::{ClosedWindow, FeaturePlan, WindowConfig, Windower, DEFAULT_FEATURES_SQL};

const SERIES: usize = 10_000;
const POINTS: usize = 10;

fn window() -> Vec<ClosedWindow> {
    let topic: Arc<str> = "bench".into();
    let mut w = Windower::new(WindowConfig { size_ms: 10_000, allowed_lag_ms: 0, idle_timeout: std::time::Duration::from_secs(60) });
    for s in 0..POINTS {
        let recs: Vec<RawRecord> = (0..SERIES)
            .map(|h| RawRecord {
                payload: Some(
                    format!(r#"{{"ts": {}, "name": "cpu_usage", "labels": {{"host": "host-{h:05}", "region": "eu-west-1"}}, "value": {}}}"#, 1_000 + s * 900, (h * 7 + s) % 100)
                        .into_bytes(),
                ),
                key: None,
                pos: SourcePos { topic: topic.clone(), partition: 0, offset: (s * SERIES + h) as i64 },
            })
            .collect();
        let out = JsonPointDecoder::default().decode(&recs).expect("decodes");
        w.push(&out.points, &out.positions).expect("windows");
    }
    let wins = w.take_all();
    assert_eq!(wins.len(), 1);
    assert_eq!(wins[0].rows(), SERIES * POINTS);
    wins
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let wins = window();
    let functions = vigil_models::sql_functions();
    let plan = rt
        .block_on(FeaturePlan::with_functions(DEFAULT_FEATURES_SQL, vigil_pipeline::DEFAULT_LOG_SIGNALS_SQL, "mean", functions.scalar, functions.aggregate))
        .expect("plans");
    let builtin = rt.block_on(FeaturePlan::new(DEFAULT_FEATURES_SQL, "mean")).expect("plans");
    let a = rt.block_on(plan.run(&wins)).expect("runs").features;
    let b = rt.block_on(builtin.run(&wins)).expect("runs").features;
    assert_eq!(a, b, "both percentile_cont give the same features");
    let rows = plan.points_rows(&wins).expect("rows");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut g = c.benchmark_group("feature_plan_10k_series_x10");
    g.throughput(Throughput::Elements((SERIES * POINTS) as u64));
    g.sample_size(30);
    g.bench_function("prepared", |b| b.iter(|| rt.block_on(plan.run(&wins)).expect("runs").features.num_rows()));
    g.bench_function("prepared_datafusion_percentile", |b| b.iter(|| rt.block_on(builtin.run(&wins)).expect("runs").features.num_rows()));
    g.bench_function("planned_each_close", |b| {
        b.iter(|| {
            rt.block_on(async {
                let ctx = SessionContext::new_with_config(vigil_models::session_config(cores));
                let mut parts = vec![Vec::new(); cores];
                let mut filled = vec![0usize; cores];
                for r in &rows {
                    let i = (0..cores).min_by_key(|i| filled[*i]).expect("one core");
                    filled[i] += r.num_rows();
                    parts[i].push(r.clone());
                }
                ctx.register_table("points", Arc::new(MemTable::try_new(plan.points_schema(), parts).expect("table"))).expect("registers");
                let out = ctx.sql(DEFAULT_FEATURES_SQL).await.expect("plans").collect().await.expect("runs");
                out.iter().map(RecordBatch::num_rows).sum::<usize>()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
