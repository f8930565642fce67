//! Budgets: spend to date, burn rate, the projection at the period's end with its interval, and
//! the date the budget runs out.
//!
//! The projection adds to the spend to date the forecast of every remaining hour of the period
//! (the scope's hourly forecast, daily and weekly seasonality), shifted by the median of the last
//! three hours' residuals (actual - expected), so that a new level of spend counts at once and
//! not only at the next daily refit. Its interval sums the hours' 80% bounds: errors of a cost
//! forecast move together, so this is the conservative choice. Without a forecast (too little
//! history) the projection is the last 24 hours' burn rate times the hours left, with no
//! interval.

use super::{budget_period, BudgetConfig, BudgetState, ScopeSeries, HOUR_MS};
use crate::Signal;

/// A projection of a period's spend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// Projected spend at the period's end.
    pub projected: f64,
    /// 80% interval, when there is a forecast.
    pub interval: Option<[f64; 2]>,
    /// When the cumulative spend reaches the budget (end of that hour), if within the period.
    pub runs_out_ms: Option<i64>,
}

/// Projects the period's spend: `to_date` plus, for each remaining hour starting at `from_ms`
/// (hourly, `remaining` of them), `point + bias` (with `[lower, upper] + bias` for the
/// interval); `amount` is the budget. Hand-checkable: see the tests.
pub fn project(to_date: f64, from_ms: i64, point: &[f64], bounds: Option<(&[f64], &[f64])>, bias: f64, amount: f64) -> Projection {
    let mut cum = to_date;
    let mut runs_out_ms = None;
    for (k, p) in point.iter().enumerate() {
        cum += (p + bias).max(0.0);
        if runs_out_ms.is_none() && cum >= amount && to_date < amount {
            runs_out_ms = Some(from_ms + (k as i64 + 1) * HOUR_MS);
        }
    }
    let interval = bounds.map(|(lo, hi)| {
        let l: f64 = lo.iter().map(|v| (v + bias).max(0.0)).sum();
        let u: f64 = hi.iter().map(|v| (v + bias).max(0.0)).sum();
        [to_date + l, to_date + u]
    });
    Projection { projected: cum, interval, runs_out_ms }
}

/// A `budgets` row.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRow {
    /// The hour that closed, epoch ms.
    pub at_ms: i64,
    /// Budget name.
    pub budget: String,
    /// Scope and value.
    pub scope: String,
    /// Value.
    pub value: String,
    /// Period [start, end), epoch ms.
    pub period_start_ms: i64,
    /// End.
    pub period_end_ms: i64,
    /// The budget.
    pub amount: f64,
    /// Spend so far in the period.
    pub spend_to_date: f64,
    /// Spend of the last 24 closed hours.
    pub burn_rate_per_day: f64,
    /// Projected spend at the period's end.
    pub projected: f64,
    /// 80% interval.
    pub projected_low: Option<f64>,
    /// 80% interval.
    pub projected_high: Option<f64>,
    /// When the budget runs out (or ran out), if within the period.
    pub runs_out_ms: Option<i64>,
    /// `ok`, `warning`, `at_risk` or `exceeded`.
    pub status: &'static str,
    /// One sentence.
    pub explanation: String,
}

/// The budget's row at the close of hour `h`, and its signal when it is at risk or warned.
pub(super) fn close_budget(b: &BudgetConfig, s: &ScopeSeries, st: &mut BudgetState, h: i64, now: i64, hold: i64, signals: &mut Vec<Signal>) -> Option<BudgetRow> {
    let (start, end) = budget_period(b, h)?;
    if st.period_start != start {
        *st = BudgetState { period_start: start, exhausted_ms: None };
    }
    let next = h + HOUR_MS;
    let to_date = s.spend_between(start, next);
    let burn = s.spend_between(next - 24 * HOUR_MS, next);
    let remaining = ((end - next) / HOUR_MS).max(0) as usize;
    let bias = {
        let mut r: Vec<f64> = s.residuals.iter().rev().take(3).copied().collect();
        r.sort_by(f64::total_cmp);
        if r.is_empty() { 0.0 } else { r[r.len() / 2] }
    };
    let p = match s.model.as_ref().and_then(|m| m.at(next).map(|k| (m, k))) {
        Some((m, k)) if k + remaining <= m.point.len() => {
            let r = k..k + remaining;
            project(to_date, next, &m.point[r.clone()], Some((&m.lower_80[r.clone()], &m.upper_80[r])), bias, b.amount)
        }
        _ => {
            let per_hour = burn / 24.0;
            project(to_date, next, &vec![per_hour; remaining], None, 0.0, b.amount)
        }
    };
    if to_date >= b.amount && st.exhausted_ms.is_none() {
        st.exhausted_ms = Some(next);
    }
    let runs_out = st.exhausted_ms.or(p.runs_out_ms);
    let low = p.interval.map(|i| i[0]);
    let status = if to_date >= b.amount {
        "exceeded"
    } else if low.unwrap_or(p.projected) > b.amount {
        "at_risk"
    } else if p.projected >= b.warn_at * b.amount {
        "warning"
    } else {
        "ok"
    };
    let at = |ms: i64| crate::decision::rfc3339(ms);
    let explanation = format!(
        "budget {} ({}={}): {:.2} of {:.2} spent by {}; projected {:.2}{} at {}{}",
        b.name,
        b.scope,
        if b.scope == "all" { "all" } else { &b.value },
        to_date,
        b.amount,
        at(next),
        p.projected,
        p.interval.map(|i| format!(" (80%: {:.2} to {:.2})", i[0], i[1])).unwrap_or_default(),
        at(end),
        runs_out.map(|r| format!("; runs out at {}", at(r))).unwrap_or_default()
    );
    let row = BudgetRow {
        at_ms: h,
        budget: b.name.clone(),
        scope: b.scope.clone(),
        value: if b.scope == "all" { "all".into() } else { b.value.clone() },
        period_start_ms: start,
        period_end_ms: end,
        amount: b.amount,
        spend_to_date: round2(to_date),
        burn_rate_per_day: round2(burn),
        projected: round2(p.projected),
        projected_low: low.map(round2),
        projected_high: p.interval.map(|i| round2(i[1])),
        runs_out_ms: runs_out,
        status,
        explanation,
    };
    if status != "ok" {
        let series = format!("budget{{budget=\"{}\"}}", b.name);
        let critical = status != "warning";
        signals.push(Signal {
            kind: if critical { "budget.at_risk" } else { "budget.warning" }.into(),
            series_id: xxhash_rust::xxh3::xxh3_64(series.as_bytes()),
            series,
            feature: "projected_spend".into(),
            window_start: h,
            window_end: now.max(next) + hold,
            value: row.projected,
            expected: b.amount,
            band: [low.unwrap_or(row.projected), row.projected_high.unwrap_or(row.projected)],
            score: if critical { 0.9999 } else { 0.995 },
            z: 1.0,
            confidence: if p.interval.is_some() { 0.9 } else { 0.6 },
            explanation: row.explanation.clone(),
            capacity: None,
        });
    }
    Some(row)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
