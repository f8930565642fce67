//! Fleet outliers: among the series of one metric in one group (the hosts of a service), the
//! members that behave unlike the others over the recent windows.
//!
//! Series are grouped by their metric name and every label except the member label (`host` or
//! `host.name` by default), so `cpu{host="a",service="api"}` and `cpu{host="b",service="api"}`
//! form the group `cpu{service="api"}`. Each member keeps its last `window` values. After every
//! close, each group whose members all have `window` values ending at the same window is handed
//! to augurs' outlier detectors:
//!
//! - DBSCAN (`Algorithm::Dbscan`) needs a majority cluster, so groups of fewer than three members
//!   are skipped (with two, nobody can say which one is odd);
//! - MAD (`Algorithm::Mad`) fails on data without spread, so flat groups (every member the same
//!   value throughout) are skipped: nobody is odd.
//!
//! A member is reported when it *becomes* outlying at the latest window (edge-triggered); one that
//! has been different since the group was first judged is not news. The reported row carries the
//! group's median as the expectation, the detector's normal band, and a score from the member's
//! robust z against the group at that window (a standard normal tail: 0.999 at |z| = 3.3), so
//! the decision rule's threshold and minimum deviation apply to fleet outliers as to the rest.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use arrow::array::{Array, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array, UInt64Array};
use augurs::outlier::{DbscanDetector, MADDetector, OutlierDetector, OutlierOutput};

use crate::columns::FeatureColumns;
use crate::decision::{anomalies_schema, parse_series_key};
use crate::sql::gaussian_score;
use crate::Result;

/// Which augurs detector judges a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// One-dimensional DBSCAN per window: members outside the majority cluster.
    Dbscan,
    /// Median absolute deviation of each member from the group.
    Mad,
}

/// Fleet outlier settings.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Labels that name a member within its group (the first one a series has is used).
    pub member_labels: Vec<String>,
    /// Recent windows compared.
    pub window: usize,
    /// augurs' sensitivity in (0, 1): higher flags more.
    pub sensitivity: f64,
    /// The detector.
    pub algorithm: Algorithm,
    /// A flagged member must also be at least this many robust standard deviations from the
    /// group's median at the latest window (augurs judges the shape over the whole window; this
    /// keeps a tiny difference in a very quiet fleet from being called an outlier).
    pub min_z: f64,
    /// Most members per group (the rest are ignored).
    pub max_members: usize,
    /// Most groups tracked.
    pub max_groups: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            member_labels: vec!["host".into(), "host.name".into()],
            window: 30,
            sensitivity: 0.5,
            algorithm: Algorithm::Dbscan,
            min_z: 3.0,
            max_members: 1000,
            max_groups: 100_000,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Member {
    id: u64,
    series: String,
    name: String,
    values: VecDeque<f64>,
    /// Window start and end of the newest value.
    last_ms: i64,
    last_end_ms: i64,
    /// Whether it was outlying at the last judgement (`None` before the first).
    outlying: Option<bool>,
}

/// One group's members and their recent values, as a checkpoint holds it.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Group {
    label: String,
    members: BTreeMap<String, Member>,
}

/// Fleet outlier detector. See the module docs.
#[derive(Debug)]
pub struct FleetDetector {
    cfg: FleetConfig,
    groups: FxHashMap<Arc<str>, Group>,
    /// Group and member of every series seen (so keys are parsed once per series).
    places: FxHashMap<u64, Place>,
}

impl FleetDetector {
    /// A detector with no state.
    pub fn new(cfg: FleetConfig) -> Self {
        Self { cfg, groups: FxHashMap::default(), places: FxHashMap::default() }
    }

    /// Every group's state, for a checkpoint. Groups span partitions (the hosts of a service
    /// may be keyed to different ones), so this state is not split by partition.
    pub fn export(&self) -> Vec<(String, Group)> {
        self.groups.iter().map(|(k, g)| (k.to_string(), g.clone())).collect()
    }

    /// Takes group state from a checkpoint (replacing groups of the same key).
    pub fn import(&mut self, groups: Vec<(String, Group)>) {
        for (k, g) in groups {
            if self.groups.len() < self.cfg.max_groups || self.groups.contains_key(k.as_str()) {
                self.groups.insert(k.into(), g);
            }
        }
    }

    /// Groups tracked.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Learns the `feature` column of a `features` batch and returns the members that became
    /// outlying, in the [`anomalies_schema`] (part `fleet`).
    pub fn observe(&mut self, features: &RecordBatch, feature: &str) -> Result<RecordBatch> {
        let c = FeatureColumns::of(features, feature)?;
        let mut touched: BTreeSet<Arc<str>> = BTreeSet::new();
        let mut last_touched: Option<*const str> = None;
        let mut fresh: Place = None;
        for i in 0..features.num_rows() {
            let v = c.value(i);
            if !v.is_finite() {
                continue;
            }
            let id = c.series_id.value(i);
            // A series key is parsed once: its group and member are remembered by series id.
            if !self.places.contains_key(&id) {
                let p = place_of(&self.cfg, c.series.value(i));
                if self.places.len() < self.cfg.max_groups * self.cfg.max_members {
                    self.places.insert(id, p);
                } else {
                    fresh = p;
                }
            }
            let place = match self.places.get(&id) {
                Some(p) => p,
                None => &fresh,
            };
            let Some((group_key, label, member)) = place else { continue };
            if !self.groups.contains_key(group_key) {
                if self.groups.len() >= self.cfg.max_groups {
                    continue;
                }
                self.groups.insert(group_key.clone(), Group { label: label.to_string(), members: BTreeMap::new() });
            }
            let g = self.groups.get_mut(group_key).expect("inserted above");
            if !g.members.contains_key(&**member) && g.members.len() >= self.cfg.max_members {
                continue;
            }
            if !g.members.contains_key(&**member) {
                g.members.insert(member.to_string(), Member {
                id,
                series: c.series.value(i).to_string(),
                name: c.name.value(i).to_string(),
                values: VecDeque::with_capacity(self.cfg.window),
                last_ms: i64::MIN,
                last_end_ms: i64::MIN,
                outlying: None,
                });
            }
            let m = g.members.get_mut(&**member).expect("inserted above");
            let t = c.window_start.value(i);
            if t <= m.last_ms {
                continue; // one value per window, in order
            }
            // A missing window breaks the member's run: its values would no longer line up with
            // the other members'.
            if t != m.last_end_ms {
                m.values.clear();
            }
            if m.values.len() == self.cfg.window {
                m.values.pop_front();
            }
            m.values.push_back(v);
            m.last_ms = t;
            m.last_end_ms = c.window_end.value(i);
            // Rows come grouped by window and often by group: skip re-inserting the same key.
            if last_touched != Some(Arc::as_ptr(group_key)) {
                last_touched = Some(Arc::as_ptr(group_key));
                touched.insert(group_key.clone());
            }
        }

        let mut rows = Rows::default();
        for key in touched {
            let Some(g) = self.groups.get_mut(&key) else { continue };
            judge(&self.cfg, g, feature, &mut rows);
        }
        rows.finish()
    }

}

/// The group key, member label and member of a series key; `None` without a member label.
fn place_of(cfg: &FleetConfig, key: &str) -> Place {
    let (name, mut labels) = parse_series_key(key);
    let label = cfg.member_labels.iter().find(|l| labels.contains_key(*l))?;
    let member = labels.remove(label).unwrap_or_default();
    Some((format!("{name}{labels:?}").into(), label.as_str().into(), member.into()))
}

/// Where a series sits: (group key, member label, member).
type Place = Option<(Arc<str>, Arc<str>, Arc<str>)>;

/// Judges one group at its newest window, appending the members that became outlying.
fn judge(cfg: &FleetConfig, g: &mut Group, feature: &str, rows: &mut Rows) {
    let newest = g.members.values().map(|m| m.last_ms).max().unwrap_or(i64::MIN);
    let ready: Vec<&mut Member> = g.members.values_mut().filter(|m| m.last_ms == newest && m.values.len() == cfg.window).collect();
    let n = ready.len();
    if n < 3 {
        return; // no majority to compare with
    }
    let data: Vec<Vec<f64>> = ready.iter().map(|m| m.values.iter().copied().collect()).collect();
    let slices: Vec<&[f64]> = data.iter().map(|v| v.as_slice()).collect();
    let first = slices[0][0];
    if slices.iter().all(|s| s.iter().all(|v| *v == first)) {
        return; // flat: nobody is odd (and MAD cannot scale it)
    }
    let out = match detect(cfg, &slices) {
        Some(o) => o,
        None => return,
    };
    let last = cfg.window - 1;
    let mut now: Vec<f64> = data.iter().map(|v| v[last]).collect();
    let (med, sigma) = crate::detector::location_scale(&mut now);
    for (k, m) in ready.into_iter().enumerate() {
        let v = data[k][last];
        let z = (v - med) / sigma;
        let flagged = out.series_results.get(k).and_then(|r| r.scores.get(last)).is_some_and(|s| *s > 0.0);
        let outlying = flagged && z.abs() >= cfg.min_z;
        let was = m.outlying.replace(outlying);
        if !(outlying && was == Some(false)) {
            continue;
        }
        let (lo, hi) = out
            .cluster_band
            .as_ref()
            .and_then(|b| Some((*b.min.get(last)?, *b.max.get(last)?)))
            .filter(|(a, b)| a.is_finite() && b.is_finite())
            .unwrap_or((med - 3.0 * sigma, med + 3.0 * sigma));
        let explanation = format!(
            "{} {feature} {} is an outlier among the {n} members of its group (by {}): they are at {} (normal band {} to {}), it is {:.1} robust standard deviations {} [fleet, {}]",
            m.series,
            crate::detector::fmt(v),
            g.label,
            crate::detector::fmt(med),
            crate::detector::fmt(lo),
            crate::detector::fmt(hi),
            z.abs(),
            if z >= 0.0 { "above" } else { "below" },
            match cfg.algorithm {
                Algorithm::Dbscan => "dbscan",
                Algorithm::Mad => "mad",
            }
        );
        rows.push(m, feature, v, med, lo, hi, gaussian_score(z), z, n as u32, explanation);
    }
}

fn detect(cfg: &FleetConfig, data: &[&[f64]]) -> Option<OutlierOutput> {
    // augurs returns errors for data it cannot judge; a panic in it must not stop the engine.
    catch_unwind(AssertUnwindSafe(|| match cfg.algorithm {
        Algorithm::Dbscan => {
            let d = DbscanDetector::with_sensitivity(cfg.sensitivity).ok()?;
            d.detect(&d.preprocess(data).ok()?).ok()
        }
        Algorithm::Mad => {
            let d = MADDetector::with_sensitivity(cfg.sensitivity).ok()?;
            d.detect(&d.preprocess(data).ok()?).ok()
        }
    }))
    .ok()
    .flatten()
}

#[derive(Default)]
struct Rows {
    ws: Vec<i64>,
    id: Vec<u64>,
    series: Vec<String>,
    name: Vec<String>,
    feature: Vec<String>,
    f: [Vec<f64>; 6],
    support: Vec<u32>,
    explanation: Vec<String>,
    we: Vec<i64>,
}

impl Rows {
    #[allow(clippy::too_many_arguments)]
    fn push(&mut self, m: &Member, feature: &str, v: f64, expected: f64, lo: f64, hi: f64, score: f64, z: f64, n: u32, explanation: String) {
        self.ws.push(m.last_ms);
        self.id.push(m.id);
        self.series.push(m.series.clone());
        self.name.push(m.name.clone());
        self.feature.push(feature.to_string());
        for (c, x) in self.f.iter_mut().zip([v, expected, lo, hi, score, z]) {
            c.push(x);
        }
        self.support.push(n);
        self.explanation.push(explanation);
        self.we.push(m.last_end_ms);
    }

    fn finish(self) -> Result<RecordBatch> {
        let schema = anomalies_schema();
        let ts = |v: Vec<i64>| Arc::new(TimestampMillisecondArray::from(v).with_timezone("+00:00")) as Arc<dyn Array>;
        let n = self.ws.len();
        let [value, expected, lower, upper, score, z] = self.f;
        let cols: Vec<Arc<dyn Array>> = vec![
            ts(self.ws),
            ts(self.we),
            Arc::new(UInt64Array::from(self.id)),
            Arc::new(StringArray::from(self.series)),
            Arc::new(StringArray::from(self.name)),
            Arc::new(StringArray::from(self.feature)),
            Arc::new(Float64Array::from(value)),
            Arc::new(Float64Array::from(expected)),
            Arc::new(Float64Array::from(lower)),
            Arc::new(Float64Array::from(upper)),
            Arc::new(Float64Array::from(score)),
            Arc::new(Float64Array::from(z)),
            Arc::new(UInt32Array::from(self.support)),
            Arc::new(StringArray::from(self.explanation)),
            Arc::new(StringArray::from(vec!["fleet"; n])),
        ];
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    fn batch(w: i64, rows: &[(&str, f64)]) -> RecordBatch {
        let rows: Vec<(u64, &str, f64)> = rows.iter().enumerate().map(|(i, (k, v))| (i as u64, *k, *v)).collect();
        crate::columns::test_features(w * 10_000, &rows)
    }

    const HOSTS: [&str; 6] = [
        r#"cpu{host="h0",service="api"}"#,
        r#"cpu{host="h1",service="api"}"#,
        r#"cpu{host="h2",service="api"}"#,
        r#"cpu{host="h3",service="api"}"#,
        r#"cpu{host="h4",service="api"}"#,
        r#"cpu{host="h5",service="api"}"#,
    ];

    fn run(algorithm: Algorithm, hosts: usize, value: impl Fn(usize, i64) -> f64) -> Vec<(i64, String, String)> {
        let mut d = FleetDetector::new(FleetConfig { algorithm, window: 10, ..Default::default() });
        let mut found = Vec::new();
        for w in 0..60i64 {
            let rows: Vec<(&str, f64)> = (0..hosts).map(|h| (HOSTS[h], value(h, w))).collect();
            let out = d.observe(&batch(w, &rows), "mean").unwrap();
            assert_eq!(out.schema(), anomalies_schema());
            let s = out.column(3).as_string::<i32>();
            let e = out.column(13).as_string::<i32>();
            for i in 0..out.num_rows() {
                found.push((w, s.value(i).to_string(), e.value(i).to_string()));
            }
        }
        found
    }

    fn normal(h: usize, w: i64) -> f64 {
        0.5 + 0.01 * (((h as i64 * 7 + w * 13) % 5) as f64 - 2.0)
    }

    #[test]
    fn the_host_that_leaves_its_fleet_is_flagged_once_by_dbscan_and_by_mad() {
        for algorithm in [Algorithm::Dbscan, Algorithm::Mad] {
            let found = run(algorithm, 6, |h, w| if h == 4 && w >= 40 { 0.95 } else { normal(h, w) });
            assert_eq!(found.len(), 1, "{algorithm:?}: {found:#?}");
            let (w, series, why) = &found[0];
            assert!((40..45).contains(w), "{algorithm:?} at {w}");
            assert_eq!(series, HOSTS[4]);
            assert!(why.contains("outlier among the 6 members of its group (by host)") && why.contains("[fleet, "), "{why}");
        }
    }

    #[test]
    fn a_host_that_was_always_different_is_not_news() {
        let found = run(Algorithm::Dbscan, 6, |h, w| if h == 2 { 3.0 + normal(h, w) } else { normal(h, w) });
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn flat_fleets_and_fleets_of_two_are_skipped_without_error() {
        for algorithm in [Algorithm::Dbscan, Algorithm::Mad] {
            assert!(run(algorithm, 6, |_, _| 1.0).is_empty());
            assert!(run(algorithm, 2, |h, w| if h == 1 && w >= 40 { 9.0 } else { 1.0 }).is_empty());
            // Flat, then one member moves: it is the outlier.
            let found = run(algorithm, 5, |h, w| if h == 3 && w >= 40 { 9.0 } else { 1.0 });
            assert!(found.len() <= 1, "{algorithm:?}: {found:#?}");
        }
    }
}
