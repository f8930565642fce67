//! A feature batch scored at a close: each shard's rows on a core of their own, and the rows
//! that score as anomalies built into the `anomalies` batch, each with a sentence a person on
//! call can read.

use std::sync::Arc;

use rayon::prelude::*;

use arrow::array::{BooleanArray, BooleanBufferBuilder, Float64Builder, RecordBatch, StringBuilder};
use arrow::compute::filter_record_batch;

use super::{Detector, Part, Score, AHEAD, PARALLEL_MIN_ROWS};
use crate::columns::FeatureColumns;
use crate::decision::anomalies_schema;
use crate::Result;

impl Detector {
    /// Scores every row of `c` in row order, each shard on a core of its own when the batch is
    /// large enough; the rows scoring at or above the anomaly threshold, with their scores, in
    /// row order. Only those are kept: a score per row (80 bytes, eight megabytes per close of
    /// 100,000 series) was allocated, faulted in and dropped on every close.
    fn score_rows(&mut self, c: &FeatureColumns<'_>, n: usize) -> Vec<(u32, Score)> {
        let cfg = &self.cfg;
        let anomalous = |s: &Score| s.score >= cfg.anomaly_threshold;
        if self.shards.len() == 1 || n < PARALLEL_MIN_ROWS {
            let mut out = Vec::new();
            for i in 0..n {
                let id = c.series_id.value(i);
                let k = self.shard_of(id);
                let sh = &mut self.shards[k];
                let s = sh.observe(cfg, id, Some(c.window_start.value(i)), c.value(i));
                sh.scored += u64::from(s.is_some());
                out.extend(s.filter(anomalous).map(|s| (i as u32, s)));
            }
            return out;
        }
        let mut rows: Vec<Vec<u32>> = vec![Vec::with_capacity(n / self.shards.len() + 16); self.shards.len()];
        for i in 0..n {
            rows[self.shard_of(c.series_id.value(i))].push(i as u32);
        }
        let scored: Vec<Vec<(u32, Score)>> = self
            .shards
            .par_iter_mut()
            .zip(rows.par_iter())
            .map(|(sh, rows)| {
                let mut out = Vec::new();
                let mut order = std::mem::take(&mut sh.ahead);
                sh.plan_ahead(rows, c, &mut order);
                for (k, row) in order.iter().enumerate() {
                    if let Some(next) = order.get(k + AHEAD) {
                        next.fetch();
                    }
                    if let Some(s) = sh.observe(cfg, row.id, Some(row.time_ms), row.value) {
                        sh.scored += 1;
                        if anomalous(&s) {
                            out.push((row.row, s));
                        }
                    }
                }
                sh.ahead = order;
                out
            })
            .collect();
        let mut out: Vec<(u32, Score)> = scored.into_iter().flatten().collect();
        out.sort_unstable_by_key(|(i, _)| *i);
        out
    }

    /// Scores every row of a `features` batch (in row order) on the column `feature` and returns
    /// the rows scoring at or above the anomaly threshold, in the [`anomalies_schema`].
    pub fn score_batch(&mut self, features: &RecordBatch, feature: &str) -> Result<RecordBatch> {
        let c = FeatureColumns::of(features, feature)?;
        let n = features.num_rows();
        let found = self.score_rows(&c, n);
        let mut keep = BooleanBufferBuilder::new(n);
        keep.append_n(n, false);
        // Sized to the anomalies, not to the rows scored: the columns' buffers keep their
        // capacity inside the `anomalies` table, and a million rows' worth per close, kept for
        // a handful of anomalies, was hundreds of megabytes held over a run.
        let k = found.len();
        let (mut value, mut expected, mut lower, mut upper, mut score, mut z, mut support) = (
            Float64Builder::with_capacity(k),
            Float64Builder::with_capacity(k),
            Float64Builder::with_capacity(k),
            Float64Builder::with_capacity(k),
            Float64Builder::with_capacity(k),
            Float64Builder::with_capacity(k),
            Vec::with_capacity(k),
        );
        let mut explanation = StringBuilder::new();
        let mut part = StringBuilder::new();
        for (i, s) in found {
            let i = i as usize;
            let v = c.value(i);
            keep.set_bit(i, true);
            value.append_value(v);
            expected.append_value(s.expected);
            lower.append_value(s.lower);
            upper.append_value(s.upper);
            score.append_value(s.score);
            z.append_value(s.z);
            support.push(s.support as u32);
            part.append_value(s.part.name());
            explanation.append_value(explain(c.series.value(i), feature, v, &s));
        }
        let kept = filter_record_batch(
            &RecordBatch::try_new(
                Arc::new(arrow::datatypes::Schema::new(vec![
                    features.schema().field_with_name("window_start")?.clone(),
                    features.schema().field_with_name("window_end")?.clone(),
                    features.schema().field_with_name("series_id")?.clone(),
                    features.schema().field_with_name("series")?.clone(),
                    features.schema().field_with_name("name")?.clone(),
                ])),
                vec![
                    Arc::new(c.window_start.clone()),
                    Arc::new(c.window_end.clone()),
                    Arc::new(c.series_id.clone()),
                    Arc::new(c.series.clone()),
                    Arc::new(c.name.clone()),
                ],
            )?,
            &BooleanArray::new(keep.finish(), None),
        )?;
        let m = kept.num_rows();
        let mut cols = kept.columns().to_vec();
        cols.push(Arc::new(arrow::array::StringArray::from(vec![feature; m])));
        cols.push(Arc::new(value.finish()));
        cols.push(Arc::new(expected.finish()));
        cols.push(Arc::new(lower.finish()));
        cols.push(Arc::new(upper.finish()));
        cols.push(Arc::new(score.finish()));
        cols.push(Arc::new(z.finish()));
        cols.push(Arc::new(arrow::array::UInt32Array::from(support)));
        cols.push(Arc::new(explanation.finish()));
        cols.push(Arc::new(part.finish()));
        Ok(RecordBatch::try_new(anomalies_schema(), cols)?)
    }
}

/// One sentence a person on call can read, naming the part that fired.
pub(crate) fn explain(series: &str, feature: &str, value: f64, s: &Score) -> String {
    let dir = if s.z >= 0.0 { "above" } else { "below" };
    let odds = if s.p > 0.0 { format!("p = {:.1e}", s.p) } else { "never seen before".to_string() };
    // A flat baseline has (almost) no spread: a z-score would be a meaningless huge number.
    if s.upper - s.lower <= 1e-6 * s.expected.abs().max(1.0) && s.part != Part::Forecast {
        return format!(
            "{series} {feature} {} departs from a flat baseline: it was {} in each of its last {} windows [{}, {odds}]",
            fmt(value),
            fmt(s.expected),
            s.support,
            s.part.name()
        );
    }
    let band = format!("normal band {} to {}", fmt(s.lower), fmt(s.upper));
    let what = match (s.part, s.period) {
        (Part::Level, _) => format!("its recent level {} ({band}, learned from its last {} windows)", fmt(s.expected), s.support),
        (Part::Seasonal, Some(p)) => format!(
            "what the same time of its {}-window cycle predicts, {} ({band}, from its last {} cycles)",
            p,
            fmt(s.expected),
            s.support / p.max(1)
        ),
        (Part::Seasonal, None) => format!("its seasonal expectation {} ({band})", fmt(s.expected)),
        (Part::Shift, _) => format!("its level before a recent shift, {}: the median of its last few windows moved ({band})", fmt(s.expected)),
        (Part::Forecast, _) => format!("its forecast {} ({band})", fmt(s.expected)),
    };
    format!("{series} {feature} {} is {:.1} robust standard deviations {dir} {what} [{}, {odds}]", fmt(value), s.z.abs(), s.part.name())
}

pub(crate) fn fmt(x: f64) -> String {
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) { format!("{x:.3e}") } else { format!("{x:.4}").trim_end_matches('0').trim_end_matches('.').to_string() }
}
