//! Decision policies: SQL over the `incidents` table decides which incidents become decisions
//! and what they ask executors to do.
//!
//! A policy file (TOML, `sql/policies.toml` is the default shipped with Vigil) lists policies in
//! priority order. For each incident opened or updated, the first policy whose `when` holds
//! decides it: its `action`, `target`, `severity` and `parameters` (SQL expressions over the
//! incident's row) form the decision, and the [`Gate`] applies the policy's cooldown, hourly
//! limit, mode and approval rule, and the suppressions asked for on the feedback topic. Every
//! policy is planned against the `incidents` schema at start, so a typo is refused then, naming
//! the policy and the column, not at the first incident.

mod feedback;
mod gate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

pub use feedback::{Feedback, FeedbackError};
pub use gate::{Gate, GateOutput, GateState};

use crate::decision::{Mode, Risk};
use crate::incident::incidents_schema;
use crate::prepared::{reusable_plans, Prepared, SwappedTable};

/// The policies shipped with Vigil (`sql/policies.toml`).
pub const DEFAULT_POLICIES: &str = include_str!("../../../sql/policies.toml");

/// A policy file that cannot be used, naming the policy and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file is not valid TOML or a key is unknown or mistyped.
    #[error("policy file {source_name}: {message}")]
    File {
        /// Where the policies came from.
        source_name: String,
        /// The parser's message.
        message: String,
    },
    /// A policy's SQL does not parse or does not plan.
    #[error("policy `{policy}`, {part}: {problem}")]
    Sql {
        /// The policy's name.
        policy: String,
        /// `when`, `target.name`, `severity`, `parameters.<key>`, ...
        part: String,
        /// What is wrong: the unknown column, or the parser's message.
        problem: String,
    },
    /// A value is not acceptable.
    #[error("policy `{policy}`: {problem}")]
    Invalid {
        /// The policy's name.
        policy: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// Evaluating the policies failed.
    #[error("evaluating policy `{policy}`: {problem}")]
    Eval {
        /// The policy's name.
        policy: String,
        /// What failed.
        problem: String,
    },
}

/// What to act on: a literal kind and a SQL expression for the name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// `service`, `host`, `resource` or `series`.
    pub kind: String,
    /// SQL expression over the incident row, e.g. `key` or `coalesce(origin_host, key)`.
    pub name: String,
}

impl Default for TargetSpec {
    fn default() -> Self {
        Self { kind: "service".into(), name: "key".into() }
    }
}

/// When a decision waits for a person.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    /// Require approval when the policy's risk is at least this.
    pub risk_at_least: Option<Risk>,
    /// Require approval when the decision's confidence is below this.
    pub confidence_below: Option<f64>,
}

fn default_severity() -> String {
    "severity".into()
}
fn default_cooldown() -> Duration {
    Duration::from_secs(900)
}
fn default_per_hour() -> u32 {
    20
}

/// One policy, as written in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Unique name; the decisions' `policy` and their Alertmanager `alertname`.
    pub name: String,
    /// SQL condition over the `incidents` row.
    pub when: String,
    /// The decision kind while firing (default `incident.opened` / `incident.updated`).
    #[serde(default)]
    pub kind: Option<String>,
    /// The action executors are asked to take.
    pub action: String,
    /// Parameters of the action: SQL expressions over the incident row.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// What to act on.
    #[serde(default)]
    pub target: TargetSpec,
    /// SQL expression for the severity (default: the incident's).
    #[serde(default = "default_severity")]
    pub severity: String,
    /// How much harm a wrong action can do.
    #[serde(default)]
    pub risk: Risk,
    /// No second decision of this policy for the same target within this (event time).
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
    /// At most this many decisions of this policy per hour (event time).
    #[serde(default = "default_per_hour")]
    pub max_per_hour: u32,
    /// `auto`, `approval` or `dry_run`.
    #[serde(default)]
    pub mode: Mode,
    /// When an `auto` decision still waits for approval.
    #[serde(default)]
    pub approval: ApprovalSpec,
    /// SQL expression for the one-line summary (annotation `summary`).
    #[serde(default)]
    pub summary: Option<String>,
    /// SQL expression for the runbook link (annotation `runbook_url`).
    #[serde(default)]
    pub runbook_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(rename = "policy", default)]
    policies: Vec<PolicySpec>,
}

/// A policy's decision about one incident, before the gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    /// The incident's id.
    pub incident: String,
    /// Index of the policy in the set.
    pub policy: usize,
    /// The target's name.
    pub target: String,
    /// The severity.
    pub severity: String,
    /// Parameters, typed from their SQL values.
    pub parameters: BTreeMap<String, serde_json::Value>,
    /// Annotation `summary`, if the policy sets one.
    pub summary: Option<String>,
    /// Annotation `runbook_url`, if the policy sets one.
    pub runbook_url: Option<String>,
}

/// The policies, planned and ready to evaluate.
pub struct PolicySet {
    specs: Vec<PolicySpec>,
    /// One query per policy, planned once over `table`.
    queries: Vec<Prepared>,
    /// The `incidents` table the queries read: the incidents being evaluated.
    table: SwappedTable,
    ctx: SessionContext,
    /// One evaluation at a time: an evaluation fills the table the queries read.
    running: futures::lock::Mutex<()>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet").field("policies", &self.specs.iter().map(|p| &p.name).collect::<Vec<_>>()).finish()
    }
}

/// The message of a planning error: the unknown column named plainly.
fn plan_problem(e: &DataFusionError) -> String {
    if let DataFusionError::SchemaError(se, _) = e.find_root() {
        if let datafusion::common::SchemaError::FieldNotFound { field, .. } = se.as_ref() {
            return format!(
                "unknown column `{}`; the incidents table has {}",
                field.name,
                incidents_schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let root = e.find_root().to_string();
    root.lines().next().unwrap_or_default().to_string()
}

impl PolicySet {
    /// Parses `text` (from `source_name`, for messages) and plans every policy against the
    /// `incidents` schema.
    pub async fn new(text: &str, source_name: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::File { source_name: source_name.into(), message: e.to_string() })?;
        if file.policies.is_empty() {
            return Err(PolicyError::File { source_name: source_name.into(), message: "no [[policy]] in it; every incident would go undecided".into() });
        }
        let mut config = crate::session_config(1);
        reusable_plans(&mut config);
        let ctx = SessionContext::new_with_config(config);
        let table = SwappedTable::new(incidents_schema(), 1, None);
        ctx.register_table("incidents", Arc::new(table.clone())).map_err(|e| PolicyError::File { source_name: source_name.into(), message: e.to_string() })?;
        let mut names = std::collections::HashSet::new();
        let mut queries = Vec::new();
        for p in &file.policies {
            let invalid = |problem: String| PolicyError::Invalid { policy: p.name.clone(), problem };
            if p.name.trim().is_empty() || !names.insert(p.name.clone()) {
                return Err(invalid("every policy needs a unique, non-empty `name`".into()));
            }
            if p.action.trim().is_empty() {
                return Err(invalid("`action` is empty; name what executors should do, e.g. scale_out".into()));
            }
            if !matches!(p.target.kind.as_str(), "service" | "host" | "resource" | "series") {
                return Err(invalid(format!("`target.kind` is `{}`; use service, host, resource or series", p.target.kind)));
            }
            if p.max_per_hour == 0 {
                return Err(invalid("`max_per_hour` is 0; it would never decide (use mode = \"dry_run\" to only log)".into()));
            }
            if let Some(c) = p.approval.confidence_below {
                if !(0.0..=1.0).contains(&c) {
                    return Err(invalid(format!("`approval.confidence_below` is {c}; use a number in [0, 1]")));
                }
            }
            // Each expression alone first, so an error names the part it is in.
            let mut parts: Vec<(String, String)> = vec![("target.name".into(), p.target.name.clone()), ("severity".into(), p.severity.clone())];
            parts.extend(p.parameters.iter().map(|(k, v)| (format!("parameters.{k}"), v.clone())));
            parts.extend(p.summary.iter().map(|s| ("summary".to_string(), s.clone())));
            parts.extend(p.runbook_url.iter().map(|s| ("runbook_url".to_string(), s.clone())));
            let check = |part: String, sql: String| {
                let ctx = &ctx;
                let policy = p.name.clone();
                async move { ctx.sql(&sql).await.map(|_| ()).map_err(|e| PolicyError::Sql { policy, part, problem: plan_problem(&e) }) }
            };
            check("when".into(), format!("SELECT id FROM incidents WHERE ({})", p.when)).await?;
            for (part, expr) in parts {
                check(part, format!("SELECT ({expr}) FROM incidents")).await?;
            }
            let q = Self::query(p);
            check("the whole policy".into(), q.clone()).await?;
            let planned = Prepared::new(&ctx, &q).await.map_err(|e| PolicyError::Sql { policy: p.name.clone(), part: "the whole policy".into(), problem: plan_problem(&e) })?;
            queries.push(planned);
        }
        Ok(Self { specs: file.policies, queries, table, ctx, running: futures::lock::Mutex::new(()) })
    }

    /// The shipped defaults.
    pub async fn defaults() -> Result<Self, PolicyError> {
        Self::new(DEFAULT_POLICIES, "sql/policies.toml (built in)").await
    }

    fn query(p: &PolicySpec) -> String {
        let mut cols = vec![
            "id AS __incident".to_string(),
            format!("CAST(({}) AS VARCHAR) AS __target", p.target.name),
            format!("CAST(({}) AS VARCHAR) AS __severity", p.severity),
            format!("CAST(({}) AS VARCHAR) AS __summary", p.summary.as_deref().unwrap_or("NULL")),
            format!("CAST(({}) AS VARCHAR) AS __runbook", p.runbook_url.as_deref().unwrap_or("NULL")),
        ];
        cols.extend(p.parameters.values().enumerate().map(|(i, e)| format!("({e}) AS __p{i}")));
        format!("SELECT {} FROM incidents WHERE ({})", cols.join(", "), p.when)
    }

    /// The policies, in priority order.
    pub fn specs(&self) -> &[PolicySpec] {
        &self.specs
    }

    /// Evaluates every policy over `incidents` (rows of the `incidents` table: the incidents
    /// opened or updated); the first policy that holds decides each incident.
    pub async fn evaluate(&self, incidents: &RecordBatch) -> Result<Vec<Match>, PolicyError> {
        let fail = |policy: &str, e: &dyn std::fmt::Display| PolicyError::Eval { policy: policy.into(), problem: e.to_string() };
        if incidents.num_rows() == 0 {
            return Ok(Vec::new());
        }
        if incidents.schema() != incidents_schema() {
            return Err(fail("*", &"evaluate() takes a batch in the incidents schema"));
        }
        let _one = self.running.lock().await;
        self.table.set(vec![vec![incidents.clone()]]);
        let out = self.matches().await;
        self.table.clear();
        out
    }

    /// Runs every policy's query over the incidents the table holds.
    async fn matches(&self) -> Result<Vec<Match>, PolicyError> {
        let fail = |policy: &str, e: &dyn std::fmt::Display| PolicyError::Eval { policy: policy.into(), problem: e.to_string() };
        let mut out: Vec<Match> = Vec::new();
        for (i, (p, q)) in self.specs.iter().zip(&self.queries).enumerate() {
            let (batches, _) = q.execute(&self.ctx).await.map_err(|e| fail(&p.name, &e))?;
            for b in batches {
                let text = |c: usize, r: usize| -> Option<String> {
                    // One cell: planning may have chosen Utf8View for the VARCHAR casts.
                    let cell = b.column(c).slice(r, 1);
                    if cell.is_null(0) {
                        return None;
                    }
                    let s = arrow::compute::cast(&cell, &DataType::Utf8).ok()?;
                    Some(s.as_string::<i32>().value(0).to_string())
                };
                for r in 0..b.num_rows() {
                    let Some(incident) = text(0, r) else { continue };
                    if out.iter().any(|m| m.incident == incident) {
                        continue;
                    }
                    let parameters = p.parameters.keys().enumerate().map(|(k, name)| (name.clone(), json_value(b.column(5 + k), r))).collect();
                    out.push(Match {
                        incident,
                        policy: i,
                        target: text(1, r).unwrap_or_default(),
                        severity: text(2, r).filter(|s| !s.is_empty()).unwrap_or_else(|| "warning".into()),
                        parameters,
                        summary: text(3, r),
                        runbook_url: text(4, r).filter(|s| !s.is_empty()),
                    });
                }
            }
        }
        Ok(out)
    }
}

/// A SQL value as JSON: numbers stay numbers, booleans booleans, NULL null.
fn json_value(col: &arrow::array::ArrayRef, row: usize) -> serde_json::Value {
    use serde_json::Value;
    // Cast one cell, not the column.
    let col = &col.slice(row, 1);
    let row = 0;
    if col.is_null(row) {
        return Value::Null;
    }
    match col.data_type() {
        DataType::Boolean => Value::Bool(col.as_boolean().value(row)),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 | DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            arrow::compute::cast(col, &DataType::Int64).map(|c| Value::from(c.as_primitive::<arrow::datatypes::Int64Type>().value(row))).unwrap_or(Value::Null)
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(_, _) => arrow::compute::cast(col, &DataType::Float64)
            .map(|c| serde_json::Number::from_f64(c.as_primitive::<arrow::datatypes::Float64Type>().value(row)).map(Value::Number).unwrap_or(Value::Null))
            .unwrap_or(Value::Null),
        _ => arrow::compute::cast(col, &DataType::Utf8).map(|c| Value::String(c.as_string::<i32>().value(row).to_string())).unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests;
