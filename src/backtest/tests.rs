use super::*;
use polars::df;
use polars::prelude::ParquetWriter;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh, empty folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let p = std::env::temp_dir().join(format!("vigil-backtest-{tag}-{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const START_MS: i64 = 1_767_571_200_000; // 2026-01-05T00:00:00Z
const STEP_MS: i64 = 10_000; // the default window.size
const N: i64 = 300;
const GAP: std::ops::Range<i64> = 100..106; // six windows of `cpu` without data
const GAP_LEN: usize = (GAP.end - GAP.start) as usize;
const SPIKE: i64 = 200; // `cpu`'s spike

/// Two series at the default window size: `cpu` (a noisy level with a six-window gap and one
/// spike) and `mem` (a noisy cycle), one row each per window.
fn rows() -> Vec<(i64, &'static str, f64)> {
    let mut rows = Vec::new();
    for i in 0..N {
        let t = START_MS + i * STEP_MS;
        // Irregular noise: a repeating pattern would be learned as a season, exactly.
        let noise = (((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 1000) as f64 / 1000.0 - 0.5;
        if !GAP.contains(&i) {
            rows.push((t, "cpu", if i == SPIKE { 95.0 } else { 40.0 + 2.0 * noise }));
        }
        rows.push((t, "mem", 1000.0 + 50.0 * (i as f64 * std::f64::consts::TAU / 30.0).sin() + 5.0 * noise));
    }
    rows
}

fn check_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.starts_with(&[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]), "{} is not a PNG", path.display());
    assert!(bytes.len() > 20_000, "{} is only {} bytes", path.display(), bytes.len());
}

fn series<'a>(s: &'a BacktestSummary, name: &str) -> &'a SeriesSummary {
    s.series.iter().find(|x| x.name == name).unwrap_or_else(|| panic!("no series {name} in {:?}", s.series.iter().map(|x| &x.name).collect::<Vec<_>>()))
}

#[test]
fn backtest_of_a_long_csv_fills_the_gap_finds_the_spike_and_writes_the_report() {
    let dir = TempDir::new("csv");
    let mut csv = String::from("timestamp,series,value\n");
    for (t, s, v) in rows() {
        // String timestamps, as most exports have them.
        csv.push_str(&format!("{},{s},{v}\n", fmt_time(t)));
    }
    let input = dir.0.join("history.csv");
    std::fs::write(&input, csv).unwrap();
    let out = dir.0.join("report");
    let s = run(&input, &out, &Config::default()).unwrap();

    assert_eq!(s.series.len(), 2);
    assert_eq!(s.window, Duration::from_secs(10));
    let cpu = series(&s, "cpu");
    let mem = series(&s, "mem");
    assert_eq!(cpu.windows, N as usize);
    assert_eq!(cpu.points, N as usize - GAP_LEN);
    assert_eq!(cpu.gaps_filled, GAP_LEN, "the six empty windows are filled");
    assert_eq!(mem.gaps_filled, 0);
    assert_eq!(mem.points, N as usize);
    // Filled windows are not scored; the warm-up is not either.
    let warmup = Config::default().detector.warmup_windows;
    assert_eq!(cpu.scored, N as usize - GAP_LEN - warmup);
    let spike_ms = START_MS + SPIKE * STEP_MS;
    let top = cpu.top_anomalies(TOP_ANOMALIES);
    assert_eq!(top.first().map(|a| a.time_ms), Some(spike_ms), "the spike is the top anomaly: {top:?}");
    assert_eq!(top[0].value, 95.0);
    assert!(top[0].expected > 35.0 && top[0].expected < 45.0, "{top:?}");
    assert!(!mem.anomalies.iter().any(|a| a.time_ms == spike_ms));
    // A forecast of the configured horizon (30m of 10s windows) from the end of each series.
    for x in [cpu, mem] {
        assert_eq!(x.forecast.point.len(), 180, "{}", x.name);
        assert_eq!(x.last_window_ms, START_MS + (N - 1) * STEP_MS);
    }

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("history.csv"), "{md}");
    assert!(md.contains("| cpu | 294 | 300 | 6 |"), "{md}");
    assert!(md.contains("| mem | 300 | 300 | 0 |"), "{md}");
    assert!(md.contains(&fmt_time(spike_ms)), "the spike's time is listed: {md}");
    assert!(md.contains("](cpu.png)") && md.contains("](mem.png)"), "{md}");
    check_png(&out.join("cpu.png"));
    check_png(&out.join("mem.png"));
}

#[test]
fn backtest_reads_parquet_with_datetimes_and_a_folder_of_two_column_files() {
    let dir = TempDir::new("parquet");
    let rows = rows();
    // A polars datetime column (microseconds, as many writers use) and `name` for the series.
    let mut df = df!(
        "timestamp" => rows.iter().map(|r| r.0 * 1_000).collect::<Vec<_>>(),
        "name" => rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        "value" => rows.iter().map(|r| r.2).collect::<Vec<_>>(),
    )
    .unwrap()
    .lazy()
    .with_column(col("timestamp").cast(DataType::Datetime(TimeUnit::Microseconds, None)))
    .collect()
    .unwrap();
    assert!(matches!(df.column("timestamp").unwrap().dtype(), DataType::Datetime(TimeUnit::Microseconds, None)));
    let file = std::fs::File::create(dir.0.join("long.parquet")).unwrap();
    ParquetWriter::new(file).finish(&mut df).unwrap();
    // A two-column file in the same folder: its series is named after the file.
    let mut nab = String::from("timestamp,value\n");
    for i in 0..60 {
        nab.push_str(&format!("{},{}\n", fmt_time(START_MS + i * STEP_MS), 5.0 + (i % 3) as f64));
    }
    std::fs::write(dir.0.join("disk_io.csv"), nab).unwrap();
    std::fs::write(dir.0.join("notes.txt"), "not an input").unwrap();

    let out = dir.0.join("out");
    let s = run(&dir.0, &out, &Config::default()).unwrap();
    assert_eq!(s.inputs.len(), 2, "{:?}", s.inputs);
    assert_eq!(s.series.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["cpu", "disk_io", "mem"]);
    let cpu = series(&s, "cpu");
    assert_eq!(cpu.gaps_filled, GAP_LEN);
    assert!(cpu.anomalies.iter().any(|a| a.time_ms == START_MS + SPIKE * STEP_MS));
    assert_eq!(series(&s, "disk_io").points, 60);
    check_png(&out.join("disk_io.png"));
}

#[test]
fn points_within_a_window_are_averaged() {
    let dir = TempDir::new("mean");
    // Two points per 10 s window (at +0 s and +5 s): each window holds their mean.
    let mut csv = String::from("timestamp,value\n");
    for i in 0..40 {
        csv.push_str(&format!("{},{}\n", START_MS + i * STEP_MS, 10.0));
        csv.push_str(&format!("{},{}\n", START_MS + i * STEP_MS + 5_000, 20.0));
    }
    let input = dir.0.join("pairs.csv");
    std::fs::write(&input, csv).unwrap();
    let r = resample(vec![read_file(&input).unwrap()], Duration::from_secs(10)).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].name, "pairs");
    assert_eq!(r[0].points, 80);
    assert_eq!(r[0].ts.len(), 40);
    assert!(r[0].values.iter().all(|v| (*v - 15.0).abs() < 1e-12), "{:?}", r[0].values);
    assert_eq!(r[0].ts[1] - r[0].ts[0], STEP_MS);
}

#[test]
fn a_missing_value_column_is_an_error_naming_the_file_and_the_column() {
    let dir = TempDir::new("missing");
    let input = dir.0.join("metrics.csv");
    std::fs::write(&input, "timestamp,series,reading\n2026-01-05 00:00:00,cpu,1\n").unwrap();
    let err = run(&input, &dir.0.join("out"), &Config::default()).unwrap_err();
    assert!(matches!(err, BacktestError::MissingColumn { column: "value", .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("metrics.csv") && msg.contains("`value`") && msg.contains("reading"), "{msg}");
    assert!(!dir.0.join("out").join("report.md").exists());
}

#[test]
fn an_unparsable_timestamp_is_an_error_naming_the_row_and_the_value() {
    let dir = TempDir::new("badts");
    let input = dir.0.join("bad.csv");
    std::fs::write(&input, "timestamp,value\n2026-01-05 00:00:00,1\n2026-01-05 00:00:10,2\nyesterday,3\n").unwrap();
    let err = run(&input, &dir.0.join("out"), &Config::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BacktestError::Unparsable { row: 3, .. }), "{msg}");
    assert!(msg.contains("bad.csv") && msg.contains("`timestamp`") && msg.contains("yesterday"), "{msg}");
}

#[test]
fn timestamps_with_a_utc_offset_are_converted_to_utc() {
    let dir = TempDir::new("offsets");
    let input = dir.0.join("rfc.csv");
    // The same three instants, written three ways.
    std::fs::write(&input, "timestamp,value\n2026-01-05T00:00:00Z,1\n2026-01-05T01:00:10+01:00,2\n2026-01-04 19:00:20.000-05:00,3\n").unwrap();
    let df = read_file(&input).unwrap();
    let ts = df.column("ts").unwrap().cast(&DataType::Int64).unwrap();
    let ts: Vec<Option<i64>> = ts.i64().unwrap().iter().collect();
    assert_eq!(ts, [Some(START_MS), Some(START_MS + 10_000), Some(START_MS + 20_000)]);
    assert_eq!(parse_with_offset("2026-01-05 00:00:00"), None, "a naive time has no offset");
    let input = dir.0.join("bad_offset.csv");
    std::fs::write(&input, "timestamp,value\n2026-01-05T00:00:00Z,1\nsoon,2\n").unwrap();
    let err = read_file(&input).unwrap_err();
    assert!(matches!(err, BacktestError::Unparsable { row: 2, .. }), "{err}");
}

#[test]
fn chart_names_are_safe_and_unique() {
    let mut taken = BTreeMap::new();
    assert_eq!(unique_file_name("host-1/cpu user", &mut taken), "host-1_cpu_user.png");
    assert_eq!(unique_file_name("host-1 cpu/user", &mut taken), "host-1_cpu_user-2.png");
    assert_eq!(unique_file_name("..", &mut taken), "s...png");
}
