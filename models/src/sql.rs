//! The model functions as DataFusion functions, so that feature SQL and ad-hoc queries can use
//! the same code as the live pipeline:
//!
//! | function | what |
//! |---|---|
//! | `robust_sigma(x)` (aggregate, also over a window) | 1.4826 × the median absolute deviation of `x`: the robust standard deviation the detector uses. With `median(x) OVER w` it scores a series against its fleet: `(x - median(x) OVER w) / robust_sigma(x) OVER w`. |
//! | `anomaly_score(z)` | the score of a z-score if it were standard normal: one minus its two-sided tail probability (0.9973 at z = 3). The live detector calibrates against each series' own history instead; `vigil_scores` runs it. |
//! | `vigil_forecast(values, steps)` | point forecasts `steps` ahead of a list of values, oldest first, by the live forecaster: `vigil_forecast(array_agg(mean ORDER BY window_start), 6)`. |
//! | `vigil_period(values)` | the dominant period of a list of values, or NULL. |
//! | `vigil_scores(values)` | the live detector ensemble run over a list of values, oldest first: one anomaly score per value (NULL during warm-up), e.g. `vigil_scores(array_agg(mean ORDER BY window_start))` per series. |
//!
//! NULL and non-finite inputs are ignored by `robust_sigma`; an empty input gives NULL.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Float64Builder, Int64Array, ListBuilder};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::{create_udaf, create_udf, Accumulator, AggregateUDF, ColumnarValue, ScalarUDF, Volatility};

use crate::detector::{Detector, DetectorConfig};
use crate::forecast::{detect_period, forecast, ForecastConfig};

/// The score of a z under a standard normal: one minus its two-sided tail probability,
/// `erf(|z| / √2)` (Abramowitz and Stegun 7.1.26, error below 1.5e-7).
pub(crate) fn gaussian_score(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    if x.is_infinite() {
        return 1.0;
    }
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    (1.0 - poly * (-x * x).exp()).clamp(0.0, 1.0)
}

/// The functions to register with a DataFusion context.
#[derive(Debug, Clone)]
pub struct SqlFunctions {
    /// Scalar functions.
    pub scalar: Vec<ScalarUDF>,
    /// Aggregate functions.
    pub aggregate: Vec<AggregateUDF>,
}

/// Longest history `vigil_forecast` fits on, and its longest period, in values.
const MAX_VALUES: usize = 20_000;
const MAX_STEPS: i64 = 10_000;

fn list_of_f64() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)))
}

#[derive(Debug, Default)]
struct RobustSigma {
    values: Vec<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Accumulator for RobustSigma {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::common::Result<()> {
        let a = values[0].as_primitive::<Float64Type>();
        self.values.extend(a.iter().flatten().filter(|v| v.is_finite()));
        Ok(())
    }

    fn evaluate(&mut self) -> datafusion::common::Result<ScalarValue> {
        if self.values.is_empty() {
            return Ok(ScalarValue::Float64(None));
        }
        let mut v = self.values.clone();
        let m = median(&mut v);
        for x in v.iter_mut() {
            *x = (*x - m).abs();
        }
        Ok(ScalarValue::Float64(Some(1.4826 * median(&mut v))))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.values.capacity() * 8
    }

    fn state(&mut self) -> datafusion::common::Result<Vec<ScalarValue>> {
        let list = ScalarValue::new_list_nullable(&self.values.iter().map(|v| ScalarValue::Float64(Some(*v))).collect::<Vec<_>>(), &DataType::Float64);
        Ok(vec![ScalarValue::List(list)])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::common::Result<()> {
        let lists = states[0].as_list::<i32>();
        for i in 0..lists.len() {
            if lists.is_valid(i) {
                let inner = lists.value(i);
                self.values.extend(inner.as_primitive::<Float64Type>().iter().flatten());
            }
        }
        Ok(())
    }
}

fn lists_arg(args: &[ColumnarValue], rows: usize) -> datafusion::common::Result<ArrayRef> {
    args[0].clone().into_array(rows)
}

fn values_of(list: &arrow::array::ListArray, i: usize) -> Option<Vec<f64>> {
    if list.is_null(i) {
        return None;
    }
    let inner = list.value(i);
    let v = inner.as_primitive::<Float64Type>();
    let n = v.len();
    Some(v.iter().skip(n.saturating_sub(MAX_VALUES)).map(|x| x.unwrap_or(f64::NAN)).collect())
}

fn rows_of(args: &[ColumnarValue]) -> usize {
    args.iter()
        .find_map(|a| match a {
            ColumnarValue::Array(a) => Some(a.len()),
            ColumnarValue::Scalar(_) => None,
        })
        .unwrap_or(1)
}

/// Builds the functions; see the module docs.
pub fn sql_functions() -> SqlFunctions {
    let robust_sigma = create_udaf(
        "robust_sigma",
        vec![DataType::Float64],
        Arc::new(DataType::Float64),
        Volatility::Immutable,
        Arc::new(|_| Ok(Box::new(RobustSigma::default()))),
        Arc::new(vec![list_of_f64()]),
    );

    let anomaly_score = create_udf(
        "anomaly_score",
        vec![DataType::Float64],
        DataType::Float64,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let rows = rows_of(args);
            let z = args[0].clone().into_array(rows)?;
            let z = z.as_primitive::<Float64Type>();
            let out: Float64Array = z
                .iter()
                .map(|z| z.filter(|z| !z.is_nan()).map(gaussian_score))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    );

    let vigil_forecast = create_udf(
        "vigil_forecast",
        vec![list_of_f64(), DataType::Int64],
        list_of_f64(),
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let rows = rows_of(args);
            let lists = lists_arg(args, rows)?;
            let lists = lists.as_list::<i32>();
            let steps = args[1].clone().into_array(rows)?;
            let steps: &Int64Array = steps.as_primitive::<Int64Type>();
            let mut out = ListBuilder::new(Float64Builder::new());
            for i in 0..rows {
                let Some(values) = values_of(lists, i) else {
                    out.append_null();
                    continue;
                };
                if steps.is_null(i) || !(1..=MAX_STEPS).contains(&steps.value(i)) {
                    return Err(DataFusionError::Execution(format!("vigil_forecast: steps must be 1 to {MAX_STEPS}")));
                }
                let f = forecast(&values, &ForecastConfig { horizon: steps.value(i) as usize, max_period: MAX_VALUES / 2 });
                out.values().append_slice(&f.point);
                out.append(true);
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    );

    let vigil_period = create_udf(
        "vigil_period",
        vec![list_of_f64()],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let rows = rows_of(args);
            let lists = lists_arg(args, rows)?;
            let lists = lists.as_list::<i32>();
            let out: Int64Array = (0..rows)
                .map(|i| values_of(lists, i).and_then(|v| {
                    let v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
                    detect_period(&v, MAX_VALUES / 2).map(|p| p as i64)
                }))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    );

    let vigil_scores = create_udf(
        "vigil_scores",
        vec![list_of_f64()],
        list_of_f64(),
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let rows = rows_of(args);
            let lists = lists_arg(args, rows)?;
            let lists = lists.as_list::<i32>();
            let mut out = ListBuilder::new(Float64Builder::new());
            for i in 0..rows {
                let Some(values) = values_of(lists, i) else {
                    out.append_null();
                    continue;
                };
                // The live detector with its default settings, seasons up to half the list.
                let cfg = DetectorConfig { max_period: (values.len() / 3).min(MAX_VALUES / 2), ..DetectorConfig::default() };
                let mut det = Detector::new(cfg);
                for v in values {
                    out.values().append_option(det.observe(0, v).map(|s| s.score));
                }
                out.append(true);
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    );

    SqlFunctions { scalar: vec![anomaly_score, vigil_forecast, vigil_period, vigil_scores], aggregate: vec![robust_sigma, crate::percentile::percentile_cont(), crate::any_value::any_value()] }
}

/// DataFusion settings for Vigil's plans over `partitions` partitions.
///
/// Partial aggregation is never skipped. DataFusion skips it when a partition's first 100,000
/// rows hold nearly as many groups (a window with as many series as points), and then asks each
/// aggregate to turn rows straight into partial state; its exact `percentile_cont` (the default
/// feature SQL's p95) cannot do that with its percentile argument and panics (DataFusion 55.2).
pub fn session_config(partitions: usize) -> datafusion::prelude::SessionConfig {
    let mut c = datafusion::prelude::SessionConfig::new().with_target_partitions(partitions.max(1));
    never_skip_partial_aggregation(&mut c);
    c
}

/// Turns off DataFusion's skipping of partial aggregation in `c` (see [`session_config`]).
pub fn never_skip_partial_aggregation(c: &mut datafusion::prelude::SessionConfig) {
    // The ratio is groups over rows, at most 1: above it, never.
    c.options_mut().execution.skip_partial_aggregation_probe_ratio_threshold = 2.0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn percentile_cont_over_one_row_per_group_past_the_probe_does_not_panic() {
        // Two partitions of 15 batches of 8,192 rows, every row its own group: past DataFusion's
        // probe (100,000 rows, groups/rows above 0.8) it would skip partial aggregation and
        // `percentile_cont` would panic turning rows into state.
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Float64, false)]));
        let batch = |lo: i64| {
            let k = Int64Array::from_iter_values(lo..lo + 8192);
            let v = Float64Array::from_iter_values((lo..lo + 8192).map(|x| x as f64));
            arrow::array::RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(v)]).unwrap()
        };
        let part = |p: i64| (0..15).map(|b| batch((p * 15 + b) * 8192)).collect::<Vec<_>>();
        let table = datafusion::datasource::MemTable::try_new(schema.clone(), vec![part(0), part(1)]).unwrap();
        let ctx = SessionContext::new_with_config(session_config(2));
        ctx.register_table("t", Arc::new(table)).unwrap();
        let out = ctx.sql("SELECT k, percentile_cont(v, 0.95) AS p FROM t GROUP BY k").await.unwrap().collect().await.unwrap();
        assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 2 * 15 * 8192);
    }

    async fn query(sql: &str) -> Vec<arrow::array::RecordBatch> {
        let ctx = SessionContext::new();
        let f = sql_functions();
        for u in f.scalar {
            ctx.register_udf(u);
        }
        for u in f.aggregate {
            ctx.register_udaf(u);
        }
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    }

    #[tokio::test]
    async fn robust_sigma_finds_the_fleet_outlier_over_a_window() {
        let b = query(
            "WITH hosts(host, v) AS (VALUES ('a', 1.0), ('b', 1.1), ('c', 0.9), ('d', 1.05), ('e', 9.0)) \
             SELECT host, (v - median(v) OVER ()) / robust_sigma(v) OVER () AS fleet_z FROM hosts ORDER BY host",
        )
        .await;
        let z = b[0].column(1).as_primitive::<Float64Type>();
        assert!(z.value(4) > 50.0, "{z:?}");
        assert!((0..4).all(|i| z.value(i).abs() < 3.0), "{z:?}");
    }

    #[tokio::test]
    async fn forecast_period_and_score_are_callable_from_sql() {
        let b = query(
            "SELECT vigil_forecast(array_agg(CAST(v AS DOUBLE) ORDER BY t), 3) AS f, vigil_period(array_agg(CAST(v AS DOUBLE) ORDER BY t)) AS p, \
             anomaly_score(3.0) AS s, \
             vigil_scores(array_agg(CAST(CASE WHEN t = 200 THEN 100 ELSE v END AS DOUBLE) ORDER BY t)) AS scores \
             FROM (SELECT t, 10 + (t % 12) AS v FROM generate_series(1, 240) AS g(t))",
        )
        .await;
        let f = b[0].column(0).as_list::<i32>().value(0);
        assert_eq!(f.len(), 3);
        assert_eq!(b[0].column(1).as_primitive::<Int64Type>().value(0), 12);
        assert!((b[0].column(2).as_primitive::<Float64Type>().value(0) - 0.9973).abs() < 1e-4);
        let scores = b[0].column(3).as_list::<i32>().value(0);
        let scores = scores.as_primitive::<Float64Type>();
        assert_eq!(scores.len(), 240);
        assert!(scores.is_null(0), "warm-up values have no score");
        // The saw tooth is learned; the value of 100 at t = 200 (index 199) is the one anomaly.
        let top = (0..240).filter(|i| !scores.is_null(*i)).max_by(|a, b| scores.value(*a).total_cmp(&scores.value(*b))).unwrap();
        assert_eq!(top, 199);
        assert!(scores.value(199) > 0.999);
    }
}
