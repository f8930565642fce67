//! The backtest's Markdown report: per series its anomalies and forecast, with its chart.

use super::*;

/// A file name for the series' chart: its name with anything but letters, digits, `-`, `_` and
/// `.` replaced by `_`, made unique.
pub(super) fn unique_file_name(name: &str, taken: &mut BTreeMap<String, usize>) -> String {
    let mut stem: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    if stem.is_empty() || stem.starts_with('.') {
        stem.insert(0, 's');
    }
    let n = taken.entry(stem.clone()).or_insert(0);
    *n += 1;
    if *n == 1 { format!("{stem}.png") } else { format!("{stem}-{n}.png") }
}

/// `2014-04-01 00:05:00` (UTC).
pub(super) fn fmt_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| ms.to_string())
}

/// A number with about five significant digits.
pub(super) fn fmt_num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if (1e-3..1e6).contains(&a) {
        let decimals = (4 - a.log10().floor() as i32).clamp(0, 6) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.4e}")
    }
}

pub(super) fn render_report(s: &BacktestSummary) -> String {
    let w = s.window;
    let windows_as_time = |n: usize| humantime::format_duration(w * n as u32).to_string();
    let mut md = String::from("# Vigil backtest\n\n");
    let _ = writeln!(
        md,
        "The live detector and forecaster, run on this history as the engine would run them on the stream: \
         each series resampled to windows of **{}** (mean per window), the windows with data scored one at a \
         time in time order, and a forecast from the end of each series.\n",
        humantime::format_duration(w)
    );
    md.push_str("## Inputs\n\n");
    for f in &s.inputs {
        let _ = writeln!(md, "- `{}`", f.display());
    }
    let _ = writeln!(
        md,
        "\n## Settings\n\n\
         - window: {}\n\
         - anomaly threshold: {} (a window is an anomaly when its score reaches it)\n\
         - forecast: {} windows ahead ({}), fitted on at most the last {} windows ({}), periods up to {} windows ({})\n\
         - gaps: windows without data between a series' first and last point carry the previous window's value \
           (as the live forecaster's history does); they are drawn and forecast from, but not scored\n",
        humantime::format_duration(w),
        s.threshold,
        s.forecast.horizon,
        windows_as_time(s.forecast.horizon),
        s.forecast_history,
        windows_as_time(s.forecast_history),
        s.forecast.max_period,
        windows_as_time(s.forecast.max_period),
    );
    md.push_str("## Series\n\n");
    md.push_str("| series | points | windows | gaps filled | scored | anomalies | period found | forecast method | chart |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---|---|---|\n");
    for x in &s.series {
        let period = x.period.map_or("none".to_string(), |p| format!("{p} windows ({})", windows_as_time(p)));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | [{}]({}) |",
            escape_md(&x.name),
            x.points,
            x.windows,
            x.gaps_filled,
            x.scored,
            x.anomalies.len(),
            period,
            x.forecast.method.name(),
            escape_md(&x.chart),
            x.chart
        );
    }
    for x in &s.series {
        let _ = writeln!(md, "\n## {}\n", escape_md(&x.name));
        let _ = writeln!(md, "![{}]({})\n", escape_md(&x.name), x.chart);
        if x.anomalies.is_empty() {
            let _ = writeln!(md, "No anomalies at threshold {}.", s.threshold);
        } else {
            let top = x.top_anomalies(TOP_ANOMALIES);
            let _ = writeln!(md, "Top {} of {} anomalies, by score:\n", top.len(), x.anomalies.len());
            md.push_str("| time (UTC) | value | expected | normal band | score | z | part |\n|---|---:|---:|---|---:|---:|---|\n");
            for a in top {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} .. {} | {:.5} | {:.1} | {} |",
                    fmt_time(a.time_ms),
                    fmt_num(a.value),
                    fmt_num(a.expected),
                    fmt_num(a.lower),
                    fmt_num(a.upper),
                    a.score,
                    a.z,
                    a.part
                );
            }
        }
        let f = &x.forecast;
        if let (Some(p), Some(l), Some(u)) = (f.point.last(), f.lower_95.last(), f.upper_95.last()) {
            let _ = writeln!(
                md,
                "\nForecast ({}{}): {} windows after {}, ending at {} (95% interval {} .. {}).",
                f.method.name(),
                f.period.map_or(String::new(), |p| format!(", period {p}")),
                f.point.len(),
                fmt_time(x.last_window_ms),
                fmt_num(*p),
                fmt_num(*l),
                fmt_num(*u)
            );
        }
    }
    md
}

pub(super) fn escape_md(s: &str) -> String {
    s.replace('|', "\\|").replace('[', "\\[").replace(']', "\\]")
}
