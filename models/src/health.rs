//! Health: a 0-100 score per service, composed in SQL (`sql/health.sql`, or `health.sql_file`)
//! over the table `health_inputs`, with a status and an explanation naming the top contributors
//! by their share of the lost points.
//!
//! [`HealthInputs`] gathers, between two health rows, what the SQL reads: SLO burn and error
//! budget, open incidents by severity, anomalies by severity, the earliest time to a limit, and
//! the log error ratio. [`HealthPlan`] runs the SQL; every output column named `lost_*` is a
//! contributor.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef, TimeUnit};
use datafusion::prelude::SessionContext;

use crate::decision::parse_series_key;
use crate::prepared::{reusable_plans, Prepared, SwappedTable};
use crate::{Error, Incident, Result, SloRow};

/// The shipped health SQL.
pub const DEFAULT_HEALTH_SQL: &str = include_str!("../../sql/health.sql");

/// The `health_inputs` schema.
pub fn health_inputs_schema() -> SchemaRef {
    static S: OnceLock<SchemaRef> = OnceLock::new();
    S.get_or_init(|| {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()));
        Arc::new(Schema::new(vec![
            Field::new("window_start", ts.clone(), false),
            Field::new("window_end", ts, false),
            Field::new("service", DataType::Utf8, false),
            Field::new("slo_burn_1h", DataType::Float64, true),
            Field::new("slo_alert", DataType::Utf8, true),
            Field::new("budget_remaining", DataType::Float64, true),
            Field::new("open_critical", DataType::Int64, false),
            Field::new("open_warning", DataType::Int64, false),
            Field::new("anomalies_critical", DataType::Int64, false),
            Field::new("anomalies_warning", DataType::Int64, false),
            Field::new("hours_to_limit", DataType::Float64, true),
            Field::new("log_error_ratio", DataType::Float64, true),
        ]))
    })
    .clone()
}

/// One service's inputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthInput {
    /// Service.
    pub service: String,
    /// Highest 1 h burn rate of its SLOs.
    pub slo_burn_1h: Option<f64>,
    /// `page` or `ticket`.
    pub slo_alert: Option<String>,
    /// Lowest error budget remaining.
    pub budget_remaining: Option<f64>,
    /// Open incidents, critical.
    pub open_critical: i64,
    /// Open incidents, warning.
    pub open_warning: i64,
    /// Anomaly rows, critical.
    pub anomalies_critical: i64,
    /// Anomaly rows, warning.
    pub anomalies_warning: i64,
    /// Earliest hours to a limit.
    pub hours_to_limit: Option<f64>,
    /// Log error ratio.
    pub log_error_ratio: Option<f64>,
}

/// `health_inputs` rows.
pub fn health_inputs_batch(start_ms: i64, end_ms: i64, rows: &[HealthInput]) -> Result<RecordBatch> {
    let n = rows.len();
    let f = |v: Vec<Option<f64>>| Arc::new(Float64Array::from(v)) as ArrayRef;
    let i = |v: Vec<i64>| Arc::new(Int64Array::from(v)) as ArrayRef;
    let ts = |v: i64| Arc::new(TimestampMillisecondArray::from(vec![v; n]).with_timezone("+00:00")) as ArrayRef;
    let cols = vec![
        ts(start_ms),
        ts(end_ms),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.service.as_str()))) as ArrayRef,
        f(rows.iter().map(|r| r.slo_burn_1h).collect()),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.slo_alert.as_deref()))),
        f(rows.iter().map(|r| r.budget_remaining).collect()),
        i(rows.iter().map(|r| r.open_critical).collect()),
        i(rows.iter().map(|r| r.open_warning).collect()),
        i(rows.iter().map(|r| r.anomalies_critical).collect()),
        i(rows.iter().map(|r| r.anomalies_warning).collect()),
        f(rows.iter().map(|r| r.hours_to_limit).collect()),
        f(rows.iter().map(|r| r.log_error_ratio).collect()),
    ];
    Ok(RecordBatch::try_new(health_inputs_schema(), cols)?)
}

/// Series keys parsed and remembered at most; past it, the memory is cleared and refilled.
const MAX_KNOWN: usize = 1_000_000;

/// What health reads between two rows, per service.
#[derive(Debug, Default)]
pub struct HealthInputs {
    correlate_by: Vec<String>,
    threshold: f64,
    /// Service → last seen (window end).
    services: BTreeMap<String, i64>,
    /// Service → (critical, warning) anomaly rows since the last row.
    anomalies: BTreeMap<String, (i64, i64)>,
    /// Service → latest log error ratio.
    log_errors: BTreeMap<String, f64>,
    /// Service → its SLOs' latest rows.
    slo: BTreeMap<String, Vec<SloRow>>,
    /// Series id → (is `log_error_ratio`, service's index in `service_names`): a key is parsed
    /// once, not at every close, and a million series hold a few hundred names, not a million.
    known: rustc_hash::FxHashMap<u64, Option<(bool, u32)>>,
    service_names: Vec<String>,
    service_index: std::collections::HashMap<String, u32>,
    /// Per service index: whether a row of this close belongs to it (the services map is
    /// updated once per service and close, not once per row).
    seen: Vec<bool>,
}

impl HealthInputs {
    /// Services are the values of the `correlate_by` labels; anomalies count from `threshold`.
    pub fn new(correlate_by: Vec<String>, threshold: f64) -> Self {
        Self { correlate_by, threshold, ..Default::default() }
    }

    fn service_of(&self, series: &str) -> Option<(String, String)> {
        let (name, labels) = parse_series_key(series);
        self.correlate_by.iter().find_map(|l| labels.get(l).cloned()).map(|s| (name, s))
    }

    /// Parses a series key seen for the first time: its service, and whether it is a log error
    /// ratio.
    fn learn_series(&mut self, id: u64, series: &str) -> Option<(bool, u32)> {
        let parsed = self.service_of(series).map(|(name, svc)| {
            let ix = match self.service_index.get(&svc) {
                Some(&ix) => ix,
                None => {
                    let ix = self.service_names.len() as u32;
                    self.service_names.push(svc.clone());
                    self.service_index.insert(svc, ix);
                    ix
                }
            };
            (name == "log_error_ratio", ix)
        });
        self.known.insert(id, parsed);
        parsed
    }

    /// Parses the key of a series before its first close, if it is new (the engine calls it as
    /// a series' first points arrive, so that a close does not parse every new key).
    pub fn admit(&mut self, id: u64, series: &str) {
        if self.known.len() < MAX_KNOWN && !self.known.contains_key(&id) {
            self.learn_series(id, series);
        }
    }

    /// Notes a close: the services of its features, the log error ratio, its anomaly rows.
    pub fn observe(&mut self, features: &RecordBatch, feature: &str, anomalies: &RecordBatch, end_ms: i64) {
        self.observe_features(features, feature, end_ms);
        self.observe_anomalies(anomalies);
    }

    /// Notes the services of a close's features and the log error ratio (the part of
    /// [`Self::observe`] that needs no scores: the engine runs it beside the scoring).
    pub fn observe_features(&mut self, features: &RecordBatch, feature: &str, end_ms: i64) {
        if let (Some(ids), Some(series), Some(value)) = (features.column_by_name("series_id"), features.column_by_name("series"), features.column_by_name(feature)) {
            let (ids, series, value) = (ids.as_primitive::<arrow::datatypes::UInt64Type>(), series.as_string::<i32>(), value.as_primitive::<Float64Type>());
            if self.known.len() > MAX_KNOWN {
                self.known.clear();
                self.service_names.clear();
                self.service_index.clear();
                self.seen.clear();
            }
            for i in 0..features.num_rows() {
                let id = ids.value(i);
                // One lookup for a known series (all but the first close of each).
                let known = match self.known.get(&id) {
                    Some(k) => *k,
                    None => self.learn_series(id, series.value(i)),
                };
                let Some((is_log_errors, ix)) = known else { continue };
                if self.seen.len() < self.service_names.len() {
                    self.seen.resize(self.service_names.len(), false);
                }
                self.seen[ix as usize] = true;
                if is_log_errors && !value.is_null(i) {
                    self.log_errors.insert(self.service_names[ix as usize].clone(), value.value(i));
                }
            }
            for (ix, seen) in self.seen.iter_mut().enumerate().filter(|(_, s)| **s) {
                let svc = &self.service_names[ix];
                match self.services.get_mut(svc) {
                    Some(t) => *t = end_ms,
                    None => {
                        self.services.insert(svc.clone(), end_ms);
                    }
                }
                *seen = false;
            }
        }
    }

    /// Notes a close's anomaly rows (the part of [`Self::observe`] that needs the scores).
    pub fn observe_anomalies(&mut self, anomalies: &RecordBatch) {
        if let (Some(series), Some(score)) = (anomalies.column_by_name("series"), anomalies.column_by_name("score")) {
            let (series, score) = (series.as_string::<i32>(), score.as_primitive::<Float64Type>());
            for i in 0..anomalies.num_rows() {
                let s = score.value(i);
                if s < self.threshold {
                    continue;
                }
                if let Some((_, svc)) = self.service_of(series.value(i)) {
                    let e = self.anomalies.entry(svc).or_default();
                    if s >= 0.9999 {
                        e.0 += 1;
                    } else {
                        e.1 += 1;
                    }
                }
            }
        }
    }

    /// Notes the SLO rows of an evaluation.
    pub fn observe_slo(&mut self, rows: &[SloRow]) {
        self.slo.clear();
        for r in rows {
            self.services.entry(r.service.clone()).or_insert(r.at_ms);
            self.slo.entry(r.service.clone()).or_default().push(r.clone());
        }
    }

    /// The inputs at `now_ms`, from what was noted and the open incidents; the anomaly counts
    /// start again. Services not seen for a day are dropped.
    pub fn take(&mut self, now_ms: i64, open: &[&Incident]) -> Vec<HealthInput> {
        self.services.retain(|_, t| now_ms - *t <= 86_400_000);
        let mut out = Vec::with_capacity(self.services.len());
        for svc in self.services.keys() {
            let slo = self.slo.get(svc);
            let mut input = HealthInput {
                service: svc.clone(),
                slo_burn_1h: slo.and_then(|r| r.iter().filter_map(|r| r.burn[2]).reduce(f64::max)),
                slo_alert: slo.and_then(|r| r.iter().filter_map(|r| r.alert).min_by_key(|a| if *a == "page" { 0 } else { 1 })).map(str::to_string),
                budget_remaining: slo.and_then(|r| r.iter().filter_map(|r| r.budget_remaining).reduce(f64::min)),
                log_error_ratio: self.log_errors.get(svc).copied(),
                ..Default::default()
            };
            let (c, w) = self.anomalies.get(svc).copied().unwrap_or_default();
            input.anomalies_critical = c;
            input.anomalies_warning = w;
            for inc in open.iter().filter(|i| &i.key == svc && !is_cost(i)) {
                if inc.severity == "critical" {
                    input.open_critical += 1;
                } else {
                    input.open_warning += 1;
                }
                if let Some((_, c)) = &inc.capacity {
                    let h = ((c.earliest_ms - now_ms) as f64 / 3_600_000.0).max(0.0);
                    input.hours_to_limit = Some(input.hours_to_limit.map_or(h, |x: f64| x.min(h)));
                }
            }
            out.push(input);
        }
        self.anomalies.clear();
        out
    }
}

/// Cost incidents (spend, budgets, idle resources) do not count against operational health.
fn is_cost(i: &Incident) -> bool {
    crate::incident::domain(&i.first.kind).is_some()
}

/// The health SQL, planned.
pub struct HealthPlan {
    /// The SQL, planned once over `table`.
    query: Prepared,
    /// The `health_inputs` table the query reads.
    table: SwappedTable,
    ctx: SessionContext,
    schema: SchemaRef,
    /// One run at a time: a run fills the table the query reads.
    running: futures::lock::Mutex<()>,
}

impl std::fmt::Debug for HealthPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthPlan").field("schema", &self.schema).finish()
    }
}

impl HealthPlan {
    /// Plans `sql` against an empty `health_inputs`; it must give `window_start`, `window_end`,
    /// `service`, `score` (double) and `status` (string).
    pub async fn new(sql: &str) -> Result<Self> {
        let mut config = crate::session_config(1);
        reusable_plans(&mut config);
        let ctx = SessionContext::new_with_config(config);
        let table = SwappedTable::new(health_inputs_schema(), 1, None);
        ctx.register_table("health_inputs", Arc::new(table.clone()))?;
        let df = ctx.sql(sql).await.map_err(|e| Error::Input(format!("health SQL: {}", e.find_root())))?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        for (name, ty) in [("window_start", None), ("window_end", None), ("service", Some(DataType::Utf8)), ("score", Some(DataType::Float64)), ("status", Some(DataType::Utf8))] {
            let f = schema.field_with_name(name).map_err(|_| Error::Input(format!("health SQL: the result needs a `{name}` column")))?;
            if let Some(t) = ty {
                if f.data_type() != &t {
                    return Err(Error::Input(format!("health SQL: `{name}` is {}, expected {t}", f.data_type())));
                }
            }
        }
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
        fields.push(Field::new("explanation", DataType::Utf8, false));
        let query = Prepared::new(&ctx, sql).await.map_err(|e| Error::Input(format!("health SQL: {}", e.find_root())))?;
        Ok(Self { query, table, ctx, schema: Arc::new(Schema::new(fields)), running: futures::lock::Mutex::new(()) })
    }

    /// The `health` schema: the SQL's columns and `explanation`.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Scores `inputs` (a `health_inputs` batch).
    pub async fn run(&self, inputs: RecordBatch) -> Result<RecordBatch> {
        if inputs.num_rows() == 0 {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        if inputs.schema() != health_inputs_schema() {
            return Err(Error::Input("HealthPlan::run() takes a batch in the health_inputs schema".into()));
        }
        let batches = {
            let _one = self.running.lock().await;
            self.table.set(vec![vec![inputs]]);
            let out = self.query.execute(&self.ctx).await;
            self.table.clear();
            out?.0
        };
        let out = arrow::compute::concat_batches(&Arc::new(self.schema.project(&(0..self.schema.fields().len() - 1).collect::<Vec<_>>())?), &batches)?;
        let explanation = explain(&out);
        let mut cols: Vec<ArrayRef> = out.columns().to_vec();
        cols.push(Arc::new(StringArray::from(explanation)));
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

/// One sentence per row: the score, the status, and the `lost_*` contributors by share.
pub fn explain(b: &RecordBatch) -> Vec<String> {
    let score = b.column_by_name("score").map(|c| c.as_primitive::<Float64Type>().clone());
    let status = b.column_by_name("status").map(|c| c.as_string::<i32>().clone());
    let service = b.column_by_name("service").map(|c| c.as_string::<i32>().clone());
    let lost: Vec<(String, arrow::array::Float64Array)> = b
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name().starts_with("lost_") && f.data_type() == &DataType::Float64)
        .map(|(i, f)| (f.name().trim_start_matches("lost_").replace('_', " "), b.column(i).as_primitive::<Float64Type>().clone()))
        .collect();
    (0..b.num_rows())
        .map(|i| {
            let svc = service.as_ref().map_or("", |s| s.value(i));
            let sc = score.as_ref().map_or(f64::NAN, |s| s.value(i));
            let st = status.as_ref().map_or("", |s| s.value(i));
            let mut parts: Vec<(&str, f64)> = lost.iter().filter(|(_, a)| !a.is_null(i) && a.value(i) > 0.0).map(|(n, a)| (n.as_str(), a.value(i))).collect();
            parts.sort_by(|a, b| b.1.total_cmp(&a.1));
            let total: f64 = parts.iter().map(|p| p.1).sum();
            if parts.is_empty() {
                return format!("{svc}: {sc:.0}/100, {st}: nothing takes points away");
            }
            let top: Vec<String> = parts.iter().take(3).map(|(n, v)| format!("{n} {v:.1} ({:.0}%)", 100.0 * v / total)).collect();
            format!("{svc}: {sc:.0}/100, {st}: lost {total:.1} points to {}", top.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The composition, worked by hand: burn 7.2x (15 points), 40% of the budget spent (6),
    /// one critical incident (20), two warning anomalies (4), a limit 3 h away (10), 10% log
    /// errors (3.75): 100 - 58.75 = 41.25, critical.
    #[tokio::test]
    async fn health_is_100_minus_the_documented_points_with_the_top_contributors_named() {
        let plan = HealthPlan::new(DEFAULT_HEALTH_SQL).await.unwrap();
        let rows = vec![
            HealthInput {
                service: "checkout".into(),
                slo_burn_1h: Some(7.2),
                slo_alert: None,
                budget_remaining: Some(0.6),
                open_critical: 1,
                open_warning: 0,
                anomalies_critical: 0,
                anomalies_warning: 2,
                hours_to_limit: Some(3.0),
                log_error_ratio: Some(0.10),
            },
            HealthInput { service: "search".into(), ..Default::default() },
            HealthInput { service: "auth".into(), open_warning: 1, anomalies_critical: 1, ..Default::default() },
        ];
        let out = plan.run(health_inputs_batch(0, 60_000, &rows).unwrap()).await.unwrap();
        let svc = out.column_by_name("service").unwrap().as_string::<i32>();
        let score = out.column_by_name("score").unwrap().as_primitive::<Float64Type>();
        let status = out.column_by_name("status").unwrap().as_string::<i32>();
        let why = out.column_by_name("explanation").unwrap().as_string::<i32>();
        let at = |s: &str| (0..out.num_rows()).find(|i| svc.value(*i) == s).unwrap();
        let c = at("checkout");
        assert!((score.value(c) - 41.25).abs() < 1e-9, "{}", score.value(c));
        assert_eq!(status.value(c), "critical");
        assert_eq!(why.value(c), "checkout: 41/100, critical: lost 58.8 points to incidents 20.0 (34%), slo burn 15.0 (26%), saturation 10.0 (17%)");
        let s = at("search");
        assert_eq!((score.value(s), status.value(s)), (100.0, "healthy"));
        assert!(why.value(s).contains("nothing takes points away"));
        // 8 (incident) + 5 (anomaly) = 13: 87, healthy.
        let a = at("auth");
        assert_eq!((score.value(a), status.value(a)), (87.0, "healthy"));
        assert!(plan.query.plan().is_some(), "planned once");
        // The same plan, run again over other rows, sees only those.
        let again = plan.run(health_inputs_batch(60_000, 120_000, &[HealthInput { service: "auth".into(), ..Default::default() }]).unwrap()).await.unwrap();
        assert_eq!(again.num_rows(), 1);
        assert_eq!(again.column_by_name("score").unwrap().as_primitive::<Float64Type>().value(0), 100.0);
    }

    #[test]
    fn inputs_note_each_service_seen_its_log_error_ratio_and_its_anomalies() {
        let features = |rows: &[(u64, &str, f64)]| crate::columns::test_features(0, rows);
        let anomalies = |rows: &[(&str, f64)]| {
            let schema = Arc::new(Schema::new(vec![Field::new("series", DataType::Utf8, false), Field::new("score", DataType::Float64, false)]));
            RecordBatch::try_new(schema, vec![Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))), Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1)))]).unwrap()
        };
        let (cpu_a, cpu_b, errors_a, lone) =
            (r#"cpu{host="1",service="a"}"#, r#"cpu{host="2",service="b"}"#, r#"log_error_ratio{service="a"}"#, r#"cpu{host="3"}"#);
        let mut h = HealthInputs::new(vec!["service".into()], 0.99);
        h.observe(&features(&[(1, cpu_a, 0.5), (2, cpu_b, 0.4), (3, errors_a, 0.2), (4, lone, 1.0)]), "mean", &anomalies(&[(cpu_a, 0.99995), (cpu_b, 0.995), (cpu_b, 0.5)]), 10_000);
        // The next close sees only service a, its error ratio lower.
        h.observe(&features(&[(1, cpu_a, 0.6), (3, errors_a, 0.1)]), "mean", &anomalies(&[]), 20_000);
        let got = h.take(20_000, &[]);
        let by = |s: &str| got.iter().find(|i| i.service == s).unwrap_or_else(|| panic!("{s} missing: {got:?}"));
        assert_eq!(got.len(), 2, "a series without a service label belongs to none: {got:?}");
        assert_eq!((by("a").anomalies_critical, by("a").anomalies_warning, by("a").log_error_ratio), (1, 0, Some(0.1)));
        assert_eq!((by("b").anomalies_critical, by("b").anomalies_warning, by("b").log_error_ratio), (0, 1, None));
        // A service unseen for a day is dropped; one seen at the last close is kept.
        let later = h.take(20_000 + 86_400_000 - 5_000, &[]);
        assert_eq!(later.iter().map(|i| i.service.as_str()).collect::<Vec<_>>(), vec!["a"], "b was last seen at 10 s, a at 20 s");
    }

    #[tokio::test]
    async fn health_sql_without_a_score_is_refused_by_name() {
        let e = HealthPlan::new("SELECT window_start, window_end, service, 'ok' AS status FROM health_inputs").await.unwrap_err();
        assert!(e.to_string().contains("`score`"), "{e}");
    }
}
