//! The decision stage of a close: signals → incidents → policies → gate, one closed window at a
//! time.
//!
//! A close may take many windows at once: a restart replaying its backlog, a consumer catching
//! up after an outage, a partition that was idle. Fed to the correlator in one call with the
//! last window's end as its clock, an incident shorter than the backlog would open and resolve
//! in that same call and never reach the policies: no decision at all. Stepping window by
//! window gives the same incidents, decisions and ids however the windows were grouped into
//! closes, which is what replays after a crash rely on.

use vigil_models::{Decision, Incident, LogEntry, Signal};

use super::processor::Processor;
use super::EngineError;

/// What the decision stage of one close produced.
#[derive(Debug, Default)]
pub(super) struct Decided {
    /// Incidents opened, updated or resolved, in the order the steps changed them.
    pub incidents: Vec<Incident>,
    /// Decisions to publish.
    pub publish: Vec<Decision>,
    /// Audit entries.
    pub log: Vec<LogEntry>,
}

/// Splits `signals` (sorted by window start) into one step per closed window: the signals that
/// start before the window's end, with that end as the step's clock. The last step takes the
/// rest (signals of later windows: forecasts, cost hours) with `now`. Without closed windows
/// there is one step.
pub(super) fn steps(signals: &[Signal], ends: &[i64], now: i64) -> Vec<(std::ops::Range<usize>, i64)> {
    let mut out = Vec::with_capacity(ends.len().max(1));
    let mut from = 0;
    for (k, &end) in ends.iter().enumerate() {
        if k + 1 == ends.len() {
            break;
        }
        let to = from + signals[from..].partition_point(|s| s.window_start < end);
        out.push((from..to, end));
        from = to;
    }
    out.push((from..signals.len(), now));
    out
}

impl Processor {
    /// Runs `signals` through the correlator, the policies and the gate, window by window
    /// (see the module docs). `ends` are the closed windows' ends, oldest first.
    pub(super) async fn decide(&mut self, signals: &[Signal], ends: &[i64], now: i64) -> Result<Decided, EngineError> {
        let mut out = Decided::default();
        let steps = steps(signals, ends, now);
        let last = steps.len() - 1;
        for (k, (range, clock)) in steps.into_iter().enumerate() {
            let changes = self.correlator.observe(&signals[range], clock);
            // The gate only keeps time when nothing changed: the last step does that.
            if changes.incidents.is_empty() && k < last {
                continue;
            }
            let live: Vec<Incident> = changes.incidents.iter().filter(|i| i.state != "resolved").cloned().collect();
            let matches = if live.is_empty() {
                Vec::new()
            } else {
                self.policies.evaluate(&vigil_models::incidents_batch(&live)?).await.map_err(|e| vigil_models::Error::Input(e.to_string()))?
            };
            let gated = self.gate.decide(&changes.incidents, &matches, clock);
            out.incidents.extend(changes.incidents);
            out.publish.extend(gated.publish);
            out.log.extend(gated.log);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(window_start: i64) -> Signal {
        Signal {
            kind: "anomaly.spike".into(),
            series_id: 1,
            series: "x".into(),
            feature: "mean".into(),
            window_start,
            window_end: window_start + 10,
            value: 0.0,
            expected: 0.0,
            band: [0.0, 0.0],
            score: 1.0,
            z: 9.0,
            confidence: 1.0,
            explanation: String::new(),
            capacity: None,
        }
    }

    #[test]
    fn each_closed_window_is_a_step_with_its_own_end_as_the_clock() {
        let s: Vec<Signal> = [0, 0, 20, 40, 100].into_iter().map(at).collect();
        // Windows [0, 10), [10, 20), [20, 30), [30, 40), [40, 50); a signal at 100 (a forecast).
        let got = steps(&s, &[10, 20, 30, 40, 50], 50);
        assert_eq!(got, vec![(0..2, 10), (2..2, 20), (2..3, 30), (3..3, 40), (3..5, 50)]);
        assert_eq!(steps(&s, &[], 7), vec![(0..5, 7)]);
        assert_eq!(steps(&[], &[10], 10), vec![(0..0, 10)]);
    }
}
