//! The per-series chart (plotters, bitmap backend, text in the embedded DejaVu Sans): the whole
//! history on top, and below it the last windows and the forecast, zoomed in so the forecast and
//! its intervals can be read.

use super::*;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

/// DejaVu Sans (Bitstream Vera licence, `assets/fonts/LICENSE-DejaVu.txt`), so charts need no
/// system fonts.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register_font() -> Result<(), String> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if ok { Ok(()) } else { Err("the embedded font could not be loaded".into()) }
}

const SERIES: RGBColor = RGBColor(31, 119, 180);
const FORECAST: RGBColor = RGBColor(230, 110, 0);
const ANOMALY: RGBColor = RGBColor(214, 39, 40);
const WIDTH: u32 = 1600;
const HEIGHT: u32 = 1040;

/// Everything a panel draws, in chart coordinates (x = epoch ms as f64).
struct Data<'a> {
    r: &'a Resampled,
    band: &'a [Option<(f64, f64)>],
    s: &'a SeriesSummary,
    /// Forecast step times.
    fts: Vec<f64>,
}

/// The band over windows `from..` as polygons (upper edge forward, lower edge back). Filled
/// windows are skipped (the band bridges them); a window with data but no score (warm-up)
/// ends a polygon.
fn band_polygons(d: &Data, from: usize, clamp: &dyn Fn(f64) -> f64) -> Vec<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    let mut run: Vec<(f64, f64, f64)> = Vec::new();
    let mut flush = |run: &mut Vec<(f64, f64, f64)>| {
        if run.len() >= 2 {
            let mut poly: Vec<(f64, f64)> = run.iter().map(|(x, _, u)| (*x, clamp(*u))).collect();
            poly.extend(run.iter().rev().map(|(x, l, _)| (*x, clamp(*l))));
            out.push(poly);
        }
        run.clear();
    };
    for i in from..d.r.ts.len() {
        match d.band[i] {
            _ if d.r.filled[i] => {}
            Some((l, u)) if l.is_finite() && u.is_finite() => run.push((d.r.ts[i] as f64, l, u)),
            _ => flush(&mut run),
        }
    }
    flush(&mut run);
    out
}

/// Time (epoch ms as f64) on a linear axis, with ticks at round steps of time.
struct TimeAxis {
    inner: RangedCoordf64,
    bold: Vec<f64>,
    light: Vec<f64>,
}

impl Ranged for TimeAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() { self.light.clone() } else { self.bold.clone() }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

/// Tick steps on the time axis, ms: round seconds, minutes, hours and days.
const STEPS_MS: [i64; 25] = {
    const S: i64 = 1_000;
    const M: i64 = 60 * S;
    const H: i64 = 60 * M;
    const D: i64 = 24 * H;
    [S, 2 * S, 5 * S, 10 * S, 15 * S, 30 * S, M, 2 * M, 5 * M, 10 * M, 15 * M, 30 * M, H, 2 * H, 3 * H, 6 * H, 12 * H, D, 2 * D, 7 * D, 14 * D, 28 * D, 91 * D, 182 * D, 364 * D]
};

/// Bold ticks (at most `max`) at multiples of a round step of time (UTC), light ticks at
/// the next smaller step, and the step.
fn time_ticks(x0: f64, x1: f64, max: usize) -> (Vec<f64>, Vec<f64>, i64) {
    let span = (x1 - x0).max(1.0);
    let k = STEPS_MS.iter().position(|s| span / *s as f64 <= max as f64).unwrap_or(STEPS_MS.len() - 1);
    let at = |step: i64| {
        let first = (x0 / step as f64).ceil() as i64;
        let last = (x1 / step as f64).floor() as i64;
        (first..=last).take(2_000).map(|i| (i * step) as f64).collect::<Vec<f64>>()
    };
    (at(STEPS_MS[k]), if k > 0 { at(STEPS_MS[k - 1]) } else { Vec::new() }, STEPS_MS[k])
}

fn time_label(ms: f64, step_ms: i64, span_ms: f64) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms as i64) else { return String::new() };
    let fmt = if step_ms >= 86_400_000 {
        "%Y-%m-%d"
    } else if span_ms > 86_400_000.0 || ms as i64 % 86_400_000 == 0 && step_ms >= 3_600_000 {
        "%m-%d %H:%M"
    } else if step_ms >= 60_000 {
        "%H:%M"
    } else {
        "%H:%M:%S"
    };
    t.format(fmt).to_string()
}

/// A value-axis label with as many decimals as ticks about `step` apart need.
fn y_label(v: f64, step: f64) -> String {
    let a = v.abs().max(step.abs());
    if a >= 1e7 || (a < 1e-3 && v != 0.0) {
        return format!("{v:.2e}");
    }
    let decimals = (-step.abs().max(1e-12).log10().floor()).clamp(0.0, 6.0) as usize;
    format!("{v:.decimals$}")
}

/// One panel: windows `from..` and the forecast.
fn panel(area: &DrawingArea<BitMapBackend, Shift>, d: &Data, from: usize, caption: &str) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let (r, s) = (d.r, d.s);
    let f = &s.forecast;
    let x0 = r.ts.get(from).copied().unwrap_or(0) as f64;
    let x1 = d.fts.last().copied().unwrap_or(s.last_window_ms as f64).max(x0 + 1.0);

    // The y range holds the data, the normal band and the point forecast; the forecast's
    // intervals may widen it by at most half the data's range on each side (they are clipped).
    let finite = |v: &f64| v.is_finite();
    let data = r.values[from..].iter().copied().filter(finite);
    let bands = d.band[from..].iter().flatten().flat_map(|(l, u)| [*l, *u]).filter(finite);
    let (mut lo, mut hi) =
        data.chain(bands).chain(f.point.iter().copied().filter(finite)).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let range = (hi - lo).max(hi.abs() * 1e-3).max(1e-9);
    let ilo = f.lower_95.iter().copied().filter(finite).fold(lo, f64::min).max(lo - range / 2.0);
    let ihi = f.upper_95.iter().copied().filter(finite).fold(hi, f64::max).min(hi + range / 2.0);
    let pad = (ihi - ilo).max(1e-9) * 0.05;
    let (y0, y1) = (ilo - pad, ihi + pad);
    let clamp = move |v: f64| v.clamp(y0, y1);

    let (bold, light, step) = time_ticks(x0, x1, 9);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(TimeAxis { inner: (x0..x1).into(), bold, light }, y0..y1)
        .map_err(|x| e(&x))?;
    let span = x1 - x0;
    chart
        .configure_mesh()
        .y_labels(8)
        .x_label_formatter(&|x| time_label(*x, step, span))
        .y_label_formatter(&|y| y_label(*y, (y1 - y0) / 8.0))
        .x_desc("time (UTC)")
        .y_desc("value (window mean)")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(|x| e(&x))?;

    let band_style = SERIES.mix(0.2).filled();
    chart
        .draw_series(band_polygons(d, from, &clamp).into_iter().map(|p| Polygon::new(p, band_style)))
        .map_err(|x| e(&x))?;

    let last = (s.last_window_ms as f64, r.values.last().copied().unwrap_or(0.0));
    if !f.point.is_empty() {
        // Both bands start at the last window's value, so the forecast hangs off the series.
        let poly = |lower: &[f64], upper: &[f64]| {
            let mut p: Vec<(f64, f64)> = vec![(last.0, clamp(last.1))];
            p.extend(d.fts.iter().zip(upper).map(|(x, u)| (*x, clamp(*u))));
            p.extend(d.fts.iter().zip(lower).rev().map(|(x, l)| (*x, clamp(*l))));
            p
        };
        let s95 = FORECAST.mix(0.16).filled();
        let s80 = FORECAST.mix(0.34).filled();
        chart
            .draw_series(std::iter::once(Polygon::new(poly(&f.lower_95, &f.upper_95), s95)))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(std::iter::once(Polygon::new(poly(&f.lower_80, &f.upper_80), s80)))
            .map_err(|x| e(&x))?;
    }

    chart
        .draw_series(LineSeries::new(r.ts[from..].iter().zip(&r.values[from..]).map(|(t, v)| (*t as f64, clamp(*v))), SERIES.stroke_width(1)))
        .map_err(|x| e(&x))?;

    if !f.point.is_empty() {
        let line = std::iter::once((last.0, clamp(last.1))).chain(d.fts.iter().zip(&f.point).map(|(x, p)| (*x, clamp(*p))));
        chart
            .draw_series(LineSeries::new(line, FORECAST.stroke_width(2)))
            .map_err(|x| e(&x))?;
    }

    let first_ms = r.ts.get(from).copied().unwrap_or(i64::MIN);
    chart
        .draw_series(s.anomalies.iter().filter(|a| a.time_ms >= first_ms).map(|a| Circle::new((a.time_ms as f64, clamp(a.value)), 4, ANOMALY.filled())))
        .map_err(|x| e(&x))?;
    Ok(())
}

const LEGEND_HEIGHT: u32 = 40;

/// The legend, one row under both panels.
fn legend(area: &DrawingArea<BitMapBackend, Shift>, method: &str) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let font = ("sans-serif", 17).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    let y = area.dim_in_pixel().1 as i32 / 2;
    let forecast = format!("forecast ({method})");
    let items: [(u8, &str); 6] = [
        (0, "series (window mean)"),
        (1, "normal band of the detector"),
        (2, "anomaly (score >= threshold)"),
        (3, forecast.as_str()),
        (4, "80% interval"),
        (5, "95% interval"),
    ];
    let widths: Vec<i32> = items.iter().map(|(_, l)| area.estimate_text_size(l, &font).map(|(w, _)| w as i32).unwrap_or(8 * l.len() as i32)).collect();
    let total: i32 = widths.iter().map(|w| 24 + 8 + w + 36).sum::<i32>() - 36;
    let mut x = ((area.dim_in_pixel().0 as i32 - total) / 2).max(8);
    for ((kind, label), w) in items.iter().zip(widths) {
        let r = match kind {
            0 => area.draw(&PathElement::new(vec![(x, y), (x + 24, y)], SERIES.stroke_width(2))),
            1 => area.draw(&Rectangle::new([(x, y - 7), (x + 24, y + 7)], SERIES.mix(0.2).filled())),
            2 => area.draw(&Circle::new((x + 12, y), 5, ANOMALY.filled())),
            3 => area.draw(&PathElement::new(vec![(x, y), (x + 24, y)], FORECAST.stroke_width(3))),
            4 => area.draw(&Rectangle::new([(x, y - 7), (x + 24, y + 7)], FORECAST.mix(0.34).filled())),
            _ => area.draw(&Rectangle::new([(x, y - 7), (x + 24, y + 7)], FORECAST.mix(0.16).filled())),
        };
        r.map_err(|x| e(&x))?;
        area.draw(&Text::new(label.to_string(), (x + 32, y), font.clone())).map_err(|x| e(&x))?;
        x += 24 + 8 + w + 36;
    }
    Ok(())
}

/// Windows shown in the lower panel: four horizons, at least 120, at most all.
fn zoom_windows(windows: usize, horizon: usize) -> usize {
    (4 * horizon).max(120).min(windows)
}

pub(super) fn draw(path: &Path, r: &Resampled, band: &[Option<(f64, f64)>], s: &SeriesSummary, window_ms: i64) -> Result<(), String> {
    register_font()?;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let fts = (1..=s.forecast.point.len()).map(|k| (s.last_window_ms + k as i64 * window_ms) as f64).collect();
    let d = Data { r, band, s, fts };
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let window = humantime::format_duration(Duration::from_millis(window_ms as u64));
    let title = format!("{}: {} windows of {window}, {} anomalies, forecast {}", s.name, s.windows, s.anomalies.len(), s.forecast.method.name());
    let root = root.titled(&title, ("sans-serif", 26)).map_err(|x| e(&x))?;
    let (body, strip) = root.split_vertically(root.dim_in_pixel().1 - LEGEND_HEIGHT);
    legend(&strip, s.forecast.method.name())?;
    let (top, bottom) = body.split_vertically(body.dim_in_pixel().1 * 55 / 100);
    panel(&top, &d, 0, "whole history")?;
    let zoom = zoom_windows(r.ts.len(), s.forecast.point.len());
    let caption = format!("last {zoom} windows and the forecast, {} windows ahead", s.forecast.point.len());
    panel(&bottom, &d, r.ts.len() - zoom, &caption)?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
