//! A close: the windows the watermark passed (or every open one), through the feature plan,
//! the detector ensemble and the fleet check, forecasts, cost, SLOs and health, to decisions.

use super::*;

impl Processor {
    /// Closes `closed`: the feature plan's rows for them, scored by the ensemble and the fleet
    /// side by side, forecasts, cost, SLOs and health, signals into incidents and decisions.
    pub(super) async fn close(&mut self, closed: Vec<crate::ClosedWindow>) -> Result<Option<Closed>, EngineError> {
        let metrics_now = closed.last().map(|w| w.end_ms).or_else(|| self.windower.watermark());
        if closed.is_empty() && !self.cost.ready(metrics_now) && self.pending_costs.is_empty() {
            return Ok(None);
        }
        let span = tracing::debug_span!("close", windows = closed.len(), first_start = closed.first().map(|w| w.start_ms));
        let _g = span.enter();
        let (points, logs, features, anomalies) = if closed.is_empty() {
            (
                Vec::new(),
                arrow::array::RecordBatch::new_empty(self.plan.logs_schema()),
                arrow::array::RecordBatch::new_empty(self.plan.output_schema()),
                arrow::array::RecordBatch::new_empty(vigil_models::anomalies_schema()),
            )
        } else {
            let t = std::time::Instant::now();
            let crate::PlanOutput { points, logs, features, streamed_compute } = self.plan.run(&closed).await?;
            self.times.features_streamed += streamed_compute;
            let features = in_window_order(features)?;
            let t1 = std::time::Instant::now();
            self.times.features += t1 - t;
            // The ensemble (itself spread over the cores by series) and the fleet check read
            // the same features and share nothing: they run side by side.
            // So does noting the services the health score reads (its anomaly counts wait for
            // the scores).
            let end_ms = closed.last().map_or(i64::MIN, |w| w.end_ms);
            self.next_window_ms = Some(end_ms);
            let (detector, fleet, feature, health) = (&mut self.detector, &mut self.fleet, &self.feature, &mut self.health_inputs);
            let ((anomalies, ensemble), (outliers, fleet)) = rayon::join(
                || timed(|| detector.score_batch(&features, feature)),
                || {
                    let fleet = timed(|| fleet.as_mut().map(|f| f.observe(&features, feature)).transpose());
                    health.observe_features(&features, feature, end_ms);
                    fleet
                },
            );
            self.times.ensemble += ensemble;
            self.times.fleet += fleet;
            let mut anomalies = anomalies?;
            if let Some(outliers) = outliers?.filter(|o| o.num_rows() > 0) {
                anomalies = arrow::compute::concat_batches(&anomalies.schema(), [&anomalies, &outliers]).map_err(vigil_models::Error::from)?;
            }
            self.times.scoring += t1.elapsed();
            (points, logs, features, anomalies)
        };
        let t_decide = std::time::Instant::now();
        // Signals → incidents → policies → gate.
        let mut signals = self.correlator.anomaly_signals(&anomalies)?;
        signals.append(&mut self.pending_signals);
        if self.forecaster.enabled() && !closed.is_empty() {
            self.forecaster.observe(&features, &self.feature);
            signals.extend(self.forecaster.trend_signals(closed[0].start_ms, self.forecast_cfg.horizon));
        }
        // Cost (its own hourly clock) and SLOs.
        let late_cost_metrics = self.cost.observe_metrics(&features, &self.correlate_by)?;
        if late_cost_metrics > 0 {
            tracing::debug!(points = late_cost_metrics, "cost metrics for hours already closed on the cost clock were not counted");
        }
        let cost = self.cost.close_ready(metrics_now);
        signals.extend(cost.signals.iter().cloned());
        let cost_now = cost.drift.iter().map(|d| d.end_ms).max();
        let now = metrics_now.or(cost_now).unwrap_or(i64::MIN);
        let mut slo_rows = Vec::new();
        if self.slo.enabled() && !closed.is_empty() {
            self.slo.observe(&features)?;
            let (rows, s) = self.slo.evaluate(now);
            signals.extend(s);
            slo_rows = rows;
        }
        signals.sort_by(|a, b| (a.window_start, &a.series).cmp(&(b.window_start, &b.series)));
        let ends: Vec<i64> = closed.iter().map(|w| w.end_ms).collect();
        let decided = self.decide(&signals, &ends, now).await?;
        let incidents = vigil_models::incidents_batch(&decided.incidents)?;
        // Health, every `health.every` of event time.
        let mut health = arrow::array::RecordBatch::new_empty(self.health.schema());
        if !closed.is_empty() {
            self.health_inputs.observe_anomalies(&anomalies);
            if !slo_rows.is_empty() {
                self.health_inputs.observe_slo(&slo_rows);
            }
            if now >= self.next_health_ms {
                let every = self.health_every_ms.max(1);
                let inputs = self.health_inputs.take(now, &self.correlator.open());
                if !inputs.is_empty() {
                    let batch = vigil_models::health_inputs_batch(now - every, now, &inputs)?;
                    health = self.health.run(batch).await?;
                }
                self.next_health_ms = (now.div_euclid(every) + 1) * every;
            }
        }
        if self.forecaster.enabled() && !closed.is_empty() {
            // A change point makes the series' forecast stale: refit at the next chance.
            let parts = anomalies.column_by_name("part").map(|c| arrow::array::AsArray::as_string::<i32>(c).clone());
            let ids = anomalies.column_by_name("series_id").map(|c| arrow::array::AsArray::as_primitive::<arrow::datatypes::UInt64Type>(c).clone());
            if let (Some(parts), Some(ids)) = (parts, ids) {
                for i in 0..anomalies.num_rows() {
                    if parts.value(i) == vigil_models::Part::Shift.name() && self.forecaster.refit_soon(ids.value(i)) {
                        tracing::debug!(series_id = ids.value(i), "change point: forecast refit brought forward");
                    }
                }
            }
            // Refits run on a blocking thread, one at a time, never on this path.
            if self.refit.is_none() {
                if let Some(jobs) = self.forecaster.due(now) {
                    let (cfg, window_ms) = (self.forecast_cfg, self.forecaster.window_ms());
                    self.refit = Some(tokio::task::spawn_blocking(move || {
                        let _span = tracing::debug_span!("refit", series = jobs.len()).entered();
                        vigil_models::run_forecasts(&jobs, &cfg, window_ms)
                    }));
                }
            }
        }
        let starts = closed.iter().map(|w| w.start_ms).collect();
        self.times.decisions += t_decide.elapsed();
        Ok(Some(Closed {
            windows: closed.len(),
            starts,
            points,
            logs,
            features,
            anomalies,
            incidents,
            decisions: decided.publish,
            log: decided.log,
            costs: std::mem::take(&mut self.pending_costs),
            cost_hours: cost.hours,
            cost_drift: vigil_models::cost::cost_drift_batch(&cost.drift)?,
            budgets: vigil_models::cost::budgets_batch(&cost.budgets)?,
            efficiency: vigil_models::cost::efficiency_batch(&cost.efficiency)?,
            slo: vigil_models::slo_batch(&slo_rows)?,
            health,
        }))
    }
}

/// Runs `f`, with the time it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, std::time::Duration) {
    let t = std::time::Instant::now();
    (f(), t.elapsed())
}

/// Feature rows of several windows in window order, a series' rows of one window in the order
/// the SQL gave them: the detector, the forecaster and every other state kept per series read a
/// series' windows oldest first, whatever order the feature SQL returned its rows in (an
/// `ORDER BY` over every row of a close would cost as much as the aggregation itself at
/// 100,000 series). A close of one window is returned as it is.
pub(super) fn in_window_order(features: arrow::array::RecordBatch) -> Result<arrow::array::RecordBatch, EngineError> {
    let Some(col) = features.column_by_name("window_start") else { return Ok(features) };
    let Ok(starts) = arrow::compute::cast(col, &arrow::datatypes::DataType::Int64) else { return Ok(features) };
    let starts = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&starts);
    if arrow::array::Array::null_count(starts) > 0 || starts.values().windows(2).all(|w| w[0] <= w[1]) {
        return Ok(features);
    }
    let mut idx: Vec<u32> = (0..features.num_rows() as u32).collect();
    // Stable: rows of one window keep their order.
    idx.sort_by_key(|&i| starts.value(i as usize));
    let idx = arrow::array::UInt32Array::from(idx);
    Ok(arrow::compute::take_record_batch(&features, &idx).map_err(vigil_models::Error::from)?)
}
