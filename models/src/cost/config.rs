//! The `[cost]` configuration section: what is analysed, at what lateness, with which
//! thresholds, budgets and efficiency rules.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[cost]`: cost drift, budgets and efficiency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CostConfig {
    /// The FOCUS column analysed: `EffectiveCost` (amortised, discounts applied; the default),
    /// `BilledCost`, `ListCost` or `ContractedCost`.
    pub column: String,
    /// Scopes whose spend is tracked, each a dimension: `service`, `team` (tags), `account`
    /// (SubAccountName), `resource` (ResourceName, else ResourceId), `region`, `cloud_service`
    /// (ServiceName), `category` (ServiceCategory), `all`, or any other tag name.
    pub scopes: Vec<String>,
    /// Dimensions searched for the root causes of a scope's drift.
    pub root_cause_dimensions: Vec<String>,
    /// How late cost rows may arrive: an hour closes once rows whose charge period ends this
    /// long after it have been seen.
    #[serde(with = "humantime_serde")]
    pub allowed_lag: Duration,
    /// An hour also closes once the metrics' event time is this far past it, when the cost
    /// stream has stopped. An hour closing later than this behind the metrics is backfill: it
    /// gets its rows but makes no signals.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// A `cost.anomaly` needs an impact (actual - expected) of at least this, in the cost's
    /// currency...
    pub anomaly_min_impact: f64,
    /// ...and at least this percentage of the expected spend.
    pub anomaly_min_impact_percent: f64,
    /// History a scope needs before it has an expectation (15 days: two weekly cycles and a
    /// day, so that weekends are expected).
    #[serde(with = "humantime_serde")]
    pub min_history: Duration,
    /// Metrics that are costs per hour (OpenCost's), turned into spend per window and analysed
    /// with the FOCUS rows. Their labels give the dimensions (`node` or `instance` is the
    /// resource).
    pub metrics: Vec<String>,
    /// Scope values tracked at most (the least recently seen are dropped beyond it).
    pub max_series: usize,
    /// Budgets.
    pub budgets: Vec<BudgetConfig>,
    /// Idle and oversized resources.
    pub efficiency: EfficiencyConfig,
}

impl Default for CostConfig {
    fn default() -> Self {
        Self {
            column: "EffectiveCost".into(),
            scopes: vec!["service".into(), "team".into(), "account".into()],
            root_cause_dimensions: vec!["cloud_service".into(), "resource".into(), "region".into(), "category".into()],
            allowed_lag: Duration::from_secs(2 * 3600),
            max_delay: Duration::from_secs(24 * 3600),
            anomaly_min_impact: 10.0,
            anomaly_min_impact_percent: 20.0,
            min_history: Duration::from_secs(15 * 86_400),
            metrics: vec!["node_total_hourly_cost".into(), "pv_hourly_cost".into()],
            max_series: 10_000,
            budgets: Vec::new(),
            efficiency: EfficiencyConfig::default(),
        }
    }
}

/// `[[cost.budgets]]`: a budget for one scope value and period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Name (the `budget` column and the signal's series).
    pub name: String,
    /// Scope (a dimension, as in `cost.scopes`; `all` for all spend).
    #[serde(default = "all")]
    pub scope: String,
    /// The scope's value (e.g. `checkout`); ignored for `all`.
    #[serde(default)]
    pub value: String,
    /// The budget for the period, in the cost's currency.
    pub amount: f64,
    /// `month` (calendar month, UTC) or `custom` (with `start` and `end`).
    #[serde(default = "month")]
    pub period: String,
    /// Start of a custom period (RFC 3339).
    #[serde(default)]
    pub start: Option<String>,
    /// End of a custom period (RFC 3339, exclusive).
    #[serde(default)]
    pub end: Option<String>,
    /// A warning when the projected spend reaches this share of the budget.
    #[serde(default = "warn_at")]
    pub warn_at: f64,
}

fn all() -> String {
    "all".into()
}
fn month() -> String {
    "month".into()
}
fn warn_at() -> f64 {
    0.8
}

/// `[cost.efficiency]`: utilisation of what resources are allocated, idle resources and
/// rightsizing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EfficiencyConfig {
    /// The metric label naming a resource; matched against the cost rows' ResourceName (else
    /// ResourceId).
    pub resource_label: String,
    /// A CPU utilisation metric, as a fraction of the allocation (1.0 = all of it)...
    pub cpu_utilization: Option<String>,
    /// ...or CPU used and allocated (e.g. cores and OpenCost's `container_cpu_allocation`).
    pub cpu_used: Option<String>,
    /// Allocated CPU.
    pub cpu_allocated: Option<String>,
    /// Memory used and allocated (e.g. bytes and `container_memory_allocation_bytes`).
    pub memory_used: Option<String>,
    /// Allocated memory.
    pub memory_allocated: Option<String>,
    /// A resource is idle below this utilisation (fraction)...
    pub idle_below: f64,
    /// ...for at least this long.
    #[serde(with = "humantime_serde")]
    pub idle_for: Duration,
    /// Rightsizing aims at this utilisation of the peak (fraction).
    pub target_utilization: f64,
    /// Rightsizing needs this much utilisation history.
    #[serde(with = "humantime_serde")]
    pub rightsize_after: Duration,
    /// Hours per month, for monthly savings.
    pub hours_per_month: f64,
}

impl Default for EfficiencyConfig {
    fn default() -> Self {
        Self {
            resource_label: "host".into(),
            cpu_utilization: None,
            cpu_used: None,
            cpu_allocated: None,
            memory_used: None,
            memory_allocated: None,
            idle_below: 0.05,
            idle_for: Duration::from_secs(6 * 3600),
            target_utilization: 0.6,
            rightsize_after: Duration::from_secs(24 * 3600),
            hours_per_month: 730.0,
        }
    }
}

impl CostConfig {
    /// Checks the section; the error names the key and the fix.
    pub fn validate(&self) -> Result<(), (&'static str, String, String)> {
        let bad = |key: &'static str, problem: String, fix: &str| Err((key, problem, fix.to_string()));
        if !vigil_cost_columns().contains(&self.column.as_str()) {
            return bad("cost.column", format!("`{}` is not a FOCUS cost column", self.column), "use EffectiveCost, BilledCost, ListCost or ContractedCost");
        }
        if self.scopes.is_empty() {
            return bad("cost.scopes", "no scope".into(), "list at least one, e.g. [\"service\"]");
        }
        if !(self.anomaly_min_impact >= 0.0 && self.anomaly_min_impact_percent >= 0.0) {
            return bad("cost.anomaly_min_impact", "thresholds must be at least 0".into(), "set a non-negative amount and percentage");
        }
        if self.allowed_lag.as_millis() == 0 {
            return bad("cost.allowed_lag", "0 closes an hour at its first row".into(), "allow some lateness, e.g. \"2h\"");
        }
        for (i, b) in self.budgets.iter().enumerate() {
            if !(b.amount > 0.0 && b.amount.is_finite()) {
                return bad("cost.budgets", format!("budget {i} (`{}`) has amount {}", b.name, b.amount), "set a positive amount");
            }
            if !(b.warn_at > 0.0 && b.warn_at.is_finite()) {
                return bad("cost.budgets", format!("budget {i} (`{}`): warn_at {} is not a positive share", b.name, b.warn_at), "e.g. 0.8 for 80%");
            }
            match b.period.as_str() {
                "month" => {}
                "custom" => {
                    let parse = |s: &Option<String>| s.as_deref().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
                    match (parse(&b.start), parse(&b.end)) {
                        (Some(s), Some(e)) if e > s => {}
                        _ => return bad("cost.budgets", format!("budget {i} (`{}`) has a custom period without a valid start and end", b.name), "set start and end as RFC 3339 times, end after start"),
                    }
                }
                other => return bad("cost.budgets", format!("budget {i} (`{}`): period `{other}` is not a period", b.name), "use \"month\" or \"custom\""),
            }
            if b.scope != "all" && b.value.is_empty() {
                return bad("cost.budgets", format!("budget {i} (`{}`) has scope `{}` but no value", b.name, b.scope), "name the scope's value, e.g. value = \"checkout\"");
            }
        }
        let e = &self.efficiency;
        if e.cpu_used.is_some() != e.cpu_allocated.is_some() {
            return bad("cost.efficiency.cpu_used", "cpu_used and cpu_allocated go together".into(), "set both, or cpu_utilization instead");
        }
        if e.memory_used.is_some() != e.memory_allocated.is_some() {
            return bad("cost.efficiency.memory_used", "memory_used and memory_allocated go together".into(), "set both");
        }
        if !(e.target_utilization > 0.0 && e.target_utilization <= 1.0) {
            return bad("cost.efficiency.target_utilization", format!("{} is not in (0, 1]", e.target_utilization), "e.g. 0.6");
        }
        Ok(())
    }
}

fn vigil_cost_columns() -> [&'static str; 4] {
    ["EffectiveCost", "BilledCost", "ListCost", "ContractedCost"]
}

/// The period of `b` that contains `t_ms`: [start, end), epoch ms. `None` outside a custom
/// period.
pub fn budget_period(b: &BudgetConfig, t_ms: i64) -> Option<(i64, i64)> {
    use chrono::{Datelike, TimeZone};
    if b.period == "custom" {
        let p = |s: &Option<String>| s.as_deref().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()).map(|t| t.timestamp_millis());
        let (s, e) = (p(&b.start)?, p(&b.end)?);
        return (t_ms >= s && t_ms < e).then_some((s, e));
    }
    let t = chrono::Utc.timestamp_millis_opt(t_ms).single()?;
    let start = chrono::Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0).single()?;
    let (y, m) = if t.month() == 12 { (t.year() + 1, 1) } else { (t.year(), t.month() + 1) };
    let end = chrono::Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()?;
    Some((start.timestamp_millis(), end.timestamp_millis()))
}
