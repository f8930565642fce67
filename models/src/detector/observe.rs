//! Scoring one value of a series: the ensemble's parts read it against the series' state,
//! which then learns it.

use super::*;

impl Shard {
    /// Scores and learns one value of a series. Compiled twice, for the baseline x86-64 target
    /// and for AVX2 (chosen at run time): the rings are decoded and searched four values at a
    /// time instead of two. Floating-point operations are not fused or reordered by either, so
    /// both give the same bits.
    pub(super) fn observe(&mut self, cfg: &DetectorConfig, series_id: u64, time_ms: Option<i64>, value: f64) -> Option<Score> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor was just found to support AVX2.
            return unsafe { self.observe_avx2(cfg, series_id, time_ms, value) };
        }
        self.observe_inlined(cfg, series_id, time_ms, value)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    pub(super) fn observe_avx2(&mut self, cfg: &DetectorConfig, series_id: u64, time_ms: Option<i64>, value: f64) -> Option<Score> {
        self.observe_inlined(cfg, series_id, time_ms, value)
    }

    #[inline(always)]
    pub(super) fn observe_inlined(&mut self, cfg: &DetectorConfig, series_id: u64, time_ms: Option<i64>, value: f64) -> Option<Score> {
        if !value.is_finite() {
            return None;
        }
        // A state a checkpoint still holds is copied before it changes.
        let held = self.states.get_or_default(series_id);
        self.copied_on_write += u64::from(!held.is_unique());
        let st = Shared::make_mut(held);
        // The baselines computed ahead for this state, if they are what judging this value
        // would compute (see `baseline.rs`).
        let ahead = st
            .prepared
            .and_then(|slot| self.prepared.get(slot.get() as usize - 1))
            .filter(|p| p.id == series_id && p.seen == st.seen && p.hold_for(st, time_ms, value))
            .map(|p| p.baselines);
        st.seen += 1;
        let band = time_ms.and_then(|t| st.forecast.as_ref()?.at(t));
        let cover = cfg.seasons * cfg.max_period + 1;
        if cfg.max_period >= 4 && st.history.is_none() {
            st.history = Some(Box::default());
        }
        if let Some(t) = time_ms {
            st.fill_gap(cfg, t);
        }

        // Period (re)detection: at 64-127 values (see `first_period_check`), then at twice the
        // count, and so on, then every `seasons` longest periods, over the history at its
        // resolution (a period is a whole number of its slots). Never due for a state prepared
        // ahead.
        if let Some(h) = st.history.as_ref().filter(|_| st.period_check_due(st.seen, series_id)) {
            self.period_checks += 1;
            let every = (cfg.seasons.max(1) * cfg.max_period) as u64;
            st.next_period_check = SeriesState::next_check_after(st.seen, every);
            h.values(&mut self.flat);
            let stride = h.stride();
            let found = detect_period(&self.flat, cfg.max_period / stride).map(|p| p * stride);
            // A short period found earlier stays while the history is too coarse to see it.
            let keep = st.period().is_some_and(|p| p < 4 * stride) && found.is_none();
            if found != st.period() && !keep {
                st.set_period(found);
                if let Some(s) = st.seasonal.as_mut() {
                    s.resid.clear();
                }
            }
        }

        let half_warm = cfg.half_warm();
        let w = cfg.shift_windows;
        self.scored_ahead += u64::from(ahead.is_some());
        let baselines = match ahead {
            Some(b) => b,
            None => {
                self.baselines_at_close += u64::from(st.values.len() >= half_warm);
                Baselines::of(st, cfg, &mut self.held, &mut self.scratch, Some(value))
            }
        };
        let (mut readings, resid) = baselines.readings(value, w);

        // Forecast: the value against the forecast's 95% band.
        if let Some((point, lower, upper)) = band {
            let sigma = ((upper - lower) / (2.0 * 1.959_964)).max(1e-9 * point.abs().max(1.0));
            if sigma.is_finite() && point.is_finite() {
                readings[Part::Forecast.index()] = Some(Reading { z: (value - point) / sigma, expected: point, sigma, support: 0 });
            }
        }

        // Calibrate each part against its own past statistics, then learn them.
        let voters = readings.iter().filter(|r| r.is_some()).count().max(1) as f64;
        let mut best: Option<(f64, Part, Reading)> = None;
        for part in Part::ALL {
            let Some(r) = readings[part.index()] else { continue };
            let Some(tail) = st.tail(part) else { continue };
            // A forecast's errors are learned only while forecasts exist: it votes once it has a
            // real calibration, not after a handful of steps.
            let need = if part == Part::Forecast { 5 * cfg.warmup } else { half_warm };
            if tail.total() as usize >= need && st.seen as usize > cfg.warmup {
                let p = tail.survival(r.z.abs());
                if best.as_ref().is_none_or(|b| p < b.0) {
                    best = Some((p, part, r));
                }
            }
        }
        // The normal band: where the winning part's tail probability stays above the threshold's.
        let band_z = best.as_ref().and_then(|(_, part, _)| st.tail(*part)).map(|t| t.quantile((1.0 - cfg.anomaly_threshold) / voters));
        let cap = cfg.calibration;
        for part in Part::ALL {
            if let Some(r) = readings[part.index()] {
                st.learn_tail(part, r.z.abs(), cap);
            }
        }
        // Learn the value.
        if let Some(r) = resid {
            st.seasonal.get_or_insert_with(Box::default).resid.push(r, cfg.history);
        }
        st.learn(value, cfg.history + w);
        let period = st.period();
        if let Some(h) = st.history.as_mut() {
            h.push(value, cover, period);
        }

        let Some((p, part, r)) = best else {
            // Not scored (no part's calibration is ready): the span's entries still age.
            st.recent_p.expire(st.seen, cfg.refractory);
            return None;
        };
        let p = (p * voters).min(1.0);
        // Refractory span: a value no more surprising than one in the span is the same event.
        let repeat = st.recent_p.check(st.seen, p, cfg.refractory);
        let band_z = band_z.unwrap_or(0.0);
        // Only an anomalous score is explained; only a confirmed period is named.
        let period = match (st.period(), st.history.as_ref()) {
            (Some(per), Some(h)) if !repeat && 1.0 - p >= cfg.anomaly_threshold => {
                h.values(&mut self.scratch);
                let stride = h.stride();
                crate::forecast::confirm_period(&self.scratch, (per + stride / 2) / stride).then_some(per)
            }
            (other, _) => other,
        };
        Some(Score {
            score: if repeat { 0.0 } else { 1.0 - p },
            p,
            repeat,
            part,
            z: r.z,
            expected: r.expected,
            lower: r.expected - band_z * r.sigma,
            upper: r.expected + band_z * r.sigma,
            support: r.support,
            period,
        })
    }
}
