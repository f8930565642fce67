//! Efficiency: what a resource uses of what it is allocated, next to what it costs; idle
//! resources and rightsizing with the monthly saving.
//!
//! Per resource and closed hour: CPU utilisation (a utilisation metric, or used / allocated),
//! memory utilisation (used / allocated), and their mean as the resource's efficiency; its cost
//! is the hour's spend on that resource (FOCUS ResourceName or ResourceId matching the metrics'
//! `resource_label`). A scope's cost-weighted efficiency is `sum(cost * efficiency) / sum(cost)`
//! over its rows. A resource below `idle_below` for `idle_for` is idle: terminating it saves its
//! hourly cost × `hours_per_month`. A resource whose peak hourly utilisation over the last day
//! stays under half the target is oversized: resizing it to `peak / target` of its size
//! (rounded up to a quarter, at least a quarter) saves that share of its cost.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{CostOutput, EfficiencyConfig, HOUR_MS};
use crate::Signal;

/// Utilisation sums of one resource in one hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceUse {
    /// Service (from the metrics' labels).
    pub service: Option<String>,
    /// Sum and count of the utilisation metric.
    pub cpu_utilization: (f64, u32),
    /// CPU used.
    pub cpu_used: (f64, u32),
    /// CPU allocated.
    pub cpu_allocated: (f64, u32),
    /// Memory used.
    pub memory_used: (f64, u32),
    /// Memory allocated.
    pub memory_allocated: (f64, u32),
}

fn mean(x: (f64, u32)) -> Option<f64> {
    (x.1 > 0).then(|| x.0 / x.1 as f64)
}

impl ResourceUse {
    /// Adds another's sums.
    pub fn merge(&mut self, o: &ResourceUse) {
        for (a, b) in [
            (&mut self.cpu_utilization, o.cpu_utilization),
            (&mut self.cpu_used, o.cpu_used),
            (&mut self.cpu_allocated, o.cpu_allocated),
            (&mut self.memory_used, o.memory_used),
            (&mut self.memory_allocated, o.memory_allocated),
        ] {
            a.0 += b.0;
            a.1 += b.1;
        }
    }

    /// CPU utilisation: the metric's mean, else used / allocated.
    pub fn cpu(&self) -> Option<f64> {
        mean(self.cpu_utilization).or_else(|| Some(mean(self.cpu_used)? / mean(self.cpu_allocated).filter(|a| *a > 0.0)?))
    }

    /// Memory utilisation: used / allocated.
    pub fn memory(&self) -> Option<f64> {
        Some(mean(self.memory_used)? / mean(self.memory_allocated).filter(|a| *a > 0.0)?)
    }
}

/// What is remembered per resource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceState {
    /// Consecutive closed hours below `idle_below`.
    pub idle_hours: u32,
    /// Utilisation of the last 24 hours with data, newest last.
    pub recent: VecDeque<f64>,
    /// Last hour seen.
    pub last_ms: i64,
}

/// An `efficiency` row.
#[derive(Debug, Clone, PartialEq)]
pub struct EfficiencyRow {
    /// Hour, epoch ms.
    pub start_ms: i64,
    /// Resource.
    pub resource: String,
    /// Service.
    pub service: Option<String>,
    /// Spend in the hour.
    pub cost: f64,
    /// CPU utilisation.
    pub cpu_utilization: Option<f64>,
    /// Memory utilisation.
    pub memory_utilization: Option<f64>,
    /// Mean of the two.
    pub efficiency: Option<f64>,
    /// Consecutive idle hours.
    pub idle_hours: u32,
    /// Idle for `idle_for`.
    pub idle: bool,
    /// `terminate` or `rightsize`.
    pub recommendation: Option<&'static str>,
    /// Recommended size as a share of today's.
    pub recommended_size: Option<f64>,
    /// Estimated monthly saving.
    pub monthly_saving: Option<f64>,
    /// One sentence.
    pub explanation: String,
}

/// The recommendation for a resource: idle → terminate (size 0); peak under half the target →
/// rightsize to `peak / target`, rounded up to a quarter, at least a quarter. Returns
/// (recommendation, size, monthly saving).
pub fn recommend(cfg: &EfficiencyConfig, idle: bool, recent: &VecDeque<f64>, hourly_cost: f64) -> Option<(&'static str, f64, f64)> {
    if idle {
        return Some(("terminate", 0.0, round2(hourly_cost * cfg.hours_per_month)));
    }
    let need = (cfg.rightsize_after.as_millis() as i64 / HOUR_MS).max(1) as usize;
    if recent.len() < need {
        return None;
    }
    let peak = recent.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // Not below half the target, or not comparable (NaN): no recommendation.
    if peak.partial_cmp(&(0.5 * cfg.target_utilization)) != Some(std::cmp::Ordering::Less) {
        return None;
    }
    let size = ((peak / cfg.target_utilization * 4.0).ceil() / 4.0).clamp(0.25, 1.0);
    (size < 1.0).then(|| ("rightsize", size, round2(hourly_cost * (1.0 - size) * cfg.hours_per_month)))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn close_hour(
    cfg: &EfficiencyConfig,
    states: &mut BTreeMap<String, ResourceState>,
    h: i64,
    costs: &BTreeMap<String, (f64, Option<String>)>,
    usage: &BTreeMap<String, ResourceUse>,
    now: i64,
    hold: i64,
    out: &mut CostOutput,
) {
    let idle_need = (cfg.idle_for.as_millis() as i64 / HOUR_MS).max(1) as u32;
    for (res, (cost, cost_service)) in costs {
        let u = usage.get(res);
        let cpu = u.and_then(ResourceUse::cpu);
        let mem = u.and_then(ResourceUse::memory);
        let eff = match (cpu, mem) {
            (Some(c), Some(m)) => Some(0.5 * (c + m)),
            (c, m) => c.or(m),
        };
        let st = states.entry(res.clone()).or_default();
        st.last_ms = h;
        if let Some(e) = eff {
            st.idle_hours = if e < cfg.idle_below { st.idle_hours + 1 } else { 0 };
            st.recent.push_back(e);
            while st.recent.len() > 24 {
                st.recent.pop_front();
            }
        }
        let idle = eff.is_some() && st.idle_hours >= idle_need;
        let service = u.and_then(|u| u.service.clone()).or_else(|| cost_service.clone());
        let rec = if eff.is_some() { recommend(cfg, idle, &st.recent, *cost) } else { None };
        let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |x| format!("{:.1}%", 100.0 * x));
        let mut explanation = format!("{res} cost {cost:.2} this hour at {} CPU and {} memory utilisation", pct(cpu), pct(mem));
        match rec {
            Some(("terminate", _, saving)) => explanation.push_str(&format!("; idle for {} hours: terminating it saves {saving:.2} a month", st.idle_hours)),
            Some((_, size, saving)) => explanation.push_str(&format!("; peak {} of the last day: resizing to {:.0}% saves {saving:.2} a month", pct(st.recent.iter().copied().reduce(f64::max)), 100.0 * size)),
            None => {}
        }
        let row = EfficiencyRow {
            start_ms: h,
            resource: res.clone(),
            service: service.clone(),
            cost: round2(*cost),
            cpu_utilization: cpu.map(round4),
            memory_utilization: mem.map(round4),
            efficiency: eff.map(round4),
            idle_hours: st.idle_hours,
            idle,
            recommendation: rec.map(|r| r.0),
            recommended_size: rec.map(|r| r.1),
            monthly_saving: rec.map(|r| r.2),
            explanation,
        };
        if let Some((what, _, saving)) = rec {
            let mut labels = vec![format!("resource=\"{res}\"")];
            if let Some(s) = &service {
                labels.push(format!("service=\"{s}\""));
            }
            let name = if what == "terminate" { "idle_resource" } else { "oversized_resource" };
            let series = format!("{name}{{{}}}", labels.join(","));
            out.signals.push(Signal {
                kind: if what == "terminate" { "cost.idle_resource" } else { "cost.rightsize" }.into(),
                series_id: xxhash_rust::xxh3::xxh3_64(series.as_bytes()),
                series,
                feature: "utilization".into(),
                window_start: h,
                window_end: now.max(h + HOUR_MS) + hold,
                value: eff.unwrap_or(0.0),
                expected: cfg.target_utilization,
                band: [cfg.idle_below, cfg.target_utilization],
                score: if what == "terminate" { 0.999 } else { 0.99 },
                z: saving,
                confidence: 0.8,
                explanation: row.explanation.clone(),
                capacity: None,
            });
        }
        out.efficiency.push(row);
    }
    // Forget resources not seen for a week.
    states.retain(|_, s| h - s.last_ms <= 7 * 24 * HOUR_MS);
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}
