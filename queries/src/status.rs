//! The status page (`GET /`): services with their health and open incidents, recent decisions,
//! and a chart of one series with its expected band and anomalies. Rendered on the server from
//! SQL over the result tables: plain HTML and SVG, no script, no build step.

use std::fmt::Write;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Float64Type;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::SqlService;

/// Services: the newest health row of each.
const HEALTH: &str = "select service, round(score, 1) as score, status, explanation from health \
    where window_end = (select max(window_end) from health) order by score, service";
/// Incidents whose newest row is not resolved.
const OPEN_INCIDENTS: &str = "select key, severity, state, opened_at, names from \
    (select *, row_number() over (partition by id order by time desc) as rn from incidents) \
    where rn = 1 and state <> 'resolved' order by opened_at desc limit 20";
/// The newest decisions.
const DECISIONS: &str = "select time, status, severity, policy, action, target, incident_key from decisions \
    order by time desc limit 15";

/// Renders the page; `series` and `feature` choose the chart (by default the series and
/// feature of the highest-scoring anomaly).
pub async fn page(sql: &SqlService, series: Option<&str>, feature: Option<&str>) -> String {
    let mut h = String::with_capacity(16 << 10);
    h.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>Vigil</title><style>\
        body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin-bottom:1.5em}\
        td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left;font-size:14px;white-space:nowrap}th{background:#f4f4f4}\
        .healthy{color:#1a7f37}.degraded{color:#b58400}.critical{color:#c62828;font-weight:bold}\
        .empty{color:#777}svg{border:1px solid #ddd}</style></head><body><h1>Vigil</h1>");
    section(&mut h, sql, "Services", "services", HEALTH, "No health rows yet.").await;
    section(&mut h, sql, "Open incidents", "incidents", OPEN_INCIDENTS, "No open incident.").await;
    section(&mut h, sql, "Recent decisions", "decisions", DECISIONS, "No decision yet.").await;
    chart(&mut h, sql, series, feature).await;
    h.push_str("</body></html>");
    h
}

async fn section(h: &mut String, sql: &SqlService, title: &str, id: &str, query: &str, empty: &str) {
    let _ = write!(h, "<h2>{title}</h2>");
    match sql.query(query).await {
        Ok(batches) if batches.iter().any(|b| b.num_rows() > 0) => table(h, id, &batches),
        Ok(_) => {
            let _ = write!(h, "<p class=\"empty\" id=\"{id}\">{empty}</p>");
        }
        Err(e) => {
            let _ = write!(h, "<p class=\"empty\" id=\"{id}\">unavailable: {}</p>", escape(&e.to_string()));
        }
    }
}

fn table(h: &mut String, id: &str, batches: &[RecordBatch]) {
    let schema = batches[0].schema();
    let _ = write!(h, "<table id=\"{id}\"><tr>");
    for f in schema.fields() {
        let _ = write!(h, "<th>{}</th>", escape(f.name()));
    }
    h.push_str("</tr>");
    let status_col = schema.index_of("status").ok();
    for b in batches {
        let fmts: Vec<ArrayFormatter> = b.columns().iter().filter_map(|c| ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default().with_null("")).ok()).collect();
        for row in 0..b.num_rows() {
            let class = status_col.map(|c| fmts[c].value(row).to_string()).unwrap_or_default();
            let _ = write!(h, "<tr class=\"{}\">", escape(&class));
            for f in &fmts {
                let _ = write!(h, "<td>{}</td>", escape(&f.value(row).to_string()));
            }
            h.push_str("</tr>");
        }
    }
    h.push_str("</table>");
}

async fn chart(h: &mut String, sql: &SqlService, series: Option<&str>, feature: Option<&str>) {
    let (series, feature) = match (series, feature) {
        (Some(s), Some(f)) => (s.to_string(), f.to_string()),
        _ => {
            let top = sql.query("select series, feature from anomalies order by score desc, window_end desc limit 1").await.ok();
            match top.as_deref().and_then(|b| b.first()).filter(|b| b.num_rows() > 0) {
                Some(b) => (text(b, 0, 0), text(b, 1, 0)),
                None => {
                    h.push_str("<h2>Series</h2><p class=\"empty\" id=\"chart\">No scored series yet.</p>");
                    return;
                }
            }
        }
    };
    let quote = |v: &str| v.replace('\'', "''");
    let _ = write!(h, "<h2>Series {} &middot; {}</h2>", escape(&series), escape(&feature));
    // The line: the feature's value in every window (when `feature` is a column of `features`);
    // the band and marks: the scored windows of `anomalies`, expected lower..upper and the value.
    let mut line: Vec<[f64; 2]> = Vec::new();
    if feature.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        let q = format!("select cast(cast(window_end as bigint) as double) as t, cast(\"{feature}\" as double) as v from features where series = '{}' order by window_end", quote(&series));
        if let Ok(batches) = sql.query(&q).await {
            line = batches.iter().flat_map(|b| (0..b.num_rows()).map(move |r| [number(b, 0, r), number(b, 1, r)])).collect();
        }
    }
    let q = format!(
        "select cast(cast(window_end as bigint) as double) as t, value, expected, lower, upper, score from anomalies \
         where series = '{}' and feature = '{}' order by window_end",
        quote(&series),
        quote(&feature)
    );
    let scored: Vec<[f64; 6]> = match sql.query(&q).await {
        Ok(batches) => batches.iter().flat_map(|b| (0..b.num_rows()).map(move |r| std::array::from_fn(|c| number(b, c, r)))).collect(),
        Err(e) => {
            let _ = write!(h, "<p class=\"empty\" id=\"chart\">unavailable: {}</p>", escape(&e.to_string()));
            return;
        }
    };
    if line.is_empty() {
        line = scored.iter().map(|r| [r[0], r[1]]).collect();
    }
    if line.is_empty() {
        h.push_str("<p class=\"empty\" id=\"chart\">No points for this series.</p>");
        return;
    }
    let (w, ht, pad) = (900.0, 260.0, 30.0);
    let ts = line.iter().map(|p| p[0]).chain(scored.iter().map(|r| r[0]));
    let (t0, t1) = ts.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), t| (a.min(t), b.max(t)));
    let t1 = t1.max(t0 + 1.0);
    let values = line.iter().map(|p| p[1]).chain(scored.iter().flat_map(|r| [r[1], r[3], r[4]])).filter(|v| v.is_finite());
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let hi = hi.max(lo + 1e-9);
    let x = |t: f64| pad + (t - t0) / (t1 - t0) * (w - 2.0 * pad);
    let y = |v: f64| ht - pad - (v - lo) / (hi - lo) * (ht - 2.0 * pad);
    let _ = write!(h, "<svg id=\"chart\" width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\">");
    for r in &scored {
        let _ = write!(
            h,
            "<rect class=\"band\" fill=\"#cfe3ff\" x=\"{:.1}\" y=\"{:.1}\" width=\"6\" height=\"{:.1}\"/><line class=\"expected\" stroke=\"#5b8bd6\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/>",
            x(r[0]) - 3.0,
            y(r[4]),
            (y(r[3]) - y(r[4])).max(1.0),
            x(r[0]) - 4.0,
            x(r[0]) + 4.0,
            y(r[2]),
            y(r[2])
        );
    }
    let points: Vec<String> = line.iter().filter(|p| p[1].is_finite()).map(|p| format!("{:.1},{:.1}", x(p[0]), y(p[1]))).collect();
    let _ = write!(h, "<polyline class=\"value\" fill=\"none\" stroke=\"#1f4e9c\" stroke-width=\"1.2\" points=\"{}\"/>", points.join(" "));
    let anomalies = scored.iter().filter(|r| r[5] >= 0.999).count();
    for r in scored.iter().filter(|r| r[5] >= 0.999) {
        let _ = write!(h, "<circle class=\"anomaly\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#c62828\"/>", x(r[0]), y(r[1]));
    }
    let _ = write!(h, "<text x=\"{pad}\" y=\"16\" font-size=\"12\">max {hi:.3}</text><text x=\"{pad}\" y=\"{}\" font-size=\"12\">min {lo:.3}</text></svg>", ht - 8.0);
    let _ = write!(
        h,
        "<p id=\"chart-summary\">{} windows; {} scored, {anomalies} anomalies (score &ge; 0.999, red), each with its expected value and band (blue).</p>",
        line.len(),
        scored.len()
    );
}

fn text(b: &RecordBatch, col: usize, row: usize) -> String {
    ArrayFormatter::try_new(b.column(col).as_ref(), &FormatOptions::default()).map(|f| f.value(row).to_string()).unwrap_or_default()
}

/// A cell of a Float64 column (the chart's queries cast every column to double); NaN when null.
fn number(b: &RecordBatch, col: usize, row: usize) -> f64 {
    let c = b.column(col).as_primitive_opt::<Float64Type>();
    c.filter(|c| !c.is_null(row)).map_or(f64::NAN, |c| c.value(row))
}

/// HTML-escapes `s`.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
