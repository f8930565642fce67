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

use std::collections::{BTreeMap, VecDeque};
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

/// A group as the detector works on it: members in slots a series reaches by index, and
/// their names in order (the order in which they are judged and reported). Members are
/// shared (copy on write) with the checkpoints that take them (see [`FleetSnapshot`]).
#[derive(Debug)]
struct Slots {
    key: Arc<str>,
    label: String,
    members: Vec<Arc<Member>>,
    by_name: BTreeMap<Arc<str>, u32>,
    /// The slots in the order of their names (`by_name`'s values), rebuilt when a member joins.
    ordered: Vec<u32>,
}

/// Fleet outlier detector. See the module docs.
#[derive(Debug)]
pub struct FleetDetector {
    cfg: FleetConfig,
    groups: Vec<Slots>,
    by_key: FxHashMap<Arc<str>, u32>,
    /// Group and member slots of every series seen (so keys are parsed once per series);
    /// `None` for a series with no member label, or none left in its group.
    places: FxHashMap<u64, Option<(u32, u32)>>,
    /// A close's rows by slot: (group, member, row), reused between closes.
    placed: Vec<(u32, u32, u32)>,
}

impl FleetDetector {
    /// A detector with no state.
    pub fn new(cfg: FleetConfig) -> Self {
        Self { cfg, groups: Vec::new(), by_key: FxHashMap::default(), places: FxHashMap::default(), placed: Vec::new() }
    }

    /// Every group's state, for a checkpoint: shared, not copied (see [`FleetSnapshot`]).
    /// Groups span partitions (the hosts of a service may be keyed to different ones), so this
    /// state is not split by partition.
    pub fn export(&self) -> FleetSnapshot {
        FleetSnapshot(
            self.groups
                .iter()
                .map(|g| SnapshotGroup {
                    key: g.key.clone(),
                    label: g.label.clone(),
                    members: g.by_name.iter().map(|(name, &i)| (name.clone(), g.members[i as usize].clone())).collect(),
                })
                .collect(),
        )
    }

    /// Takes group state from a checkpoint (replacing groups of the same key).
    pub fn import(&mut self, groups: FleetSnapshot) {
        for g in groups.0 {
            let key = g.key;
            let slots = Slots {
                key: key.clone(),
                label: g.label,
                by_name: g.members.iter().enumerate().map(|(i, (name, _))| (name.clone(), i as u32)).collect(),
                members: g.members.into_iter().map(|(_, m)| m).collect(),
                ordered: Vec::new(),
            };
            match self.by_key.get(&key) {
                Some(&i) => self.groups[i as usize] = slots,
                None if self.groups.len() < self.cfg.max_groups => {
                    self.by_key.insert(key, self.groups.len() as u32);
                    self.groups.push(slots);
                }
                None => {}
            }
        }
        // Slots were renumbered: series find their places again.
        self.places.clear();
    }

    /// Groups tracked.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// The group and member slots of a series, creating them while there is room.
    fn place(&mut self, id: u64, key: &str, name: &str) -> Option<(u32, u32)> {
        let (group_key, label, member) = place_of(&self.cfg, key)?;
        let g = match self.by_key.get(&group_key) {
            Some(&g) => g,
            None if self.groups.len() < self.cfg.max_groups => {
                let g = self.groups.len() as u32;
                self.by_key.insert(group_key.clone(), g);
                self.groups.push(Slots { key: group_key, label: label.to_string(), members: Vec::new(), by_name: BTreeMap::new(), ordered: Vec::new() });
                g
            }
            None => return None,
        };
        let slots = &mut self.groups[g as usize];
        let m = match slots.by_name.get(&*member) {
            Some(&m) => m,
            None if slots.members.len() < self.cfg.max_members => {
                let m = slots.members.len() as u32;
                slots.by_name.insert(member, m);
                slots.members.push(Arc::new(Member {
                    id,
                    series: key.to_string(),
                    name: name.to_string(),
                    values: VecDeque::with_capacity(self.cfg.window),
                    last_ms: i64::MIN,
                    last_end_ms: i64::MIN,
                    outlying: None,
                }));
                m
            }
            None => return None,
        };
        Some((g, m))
    }

    /// The slots of a series seen for the first time. Its key is parsed once: the slots are
    /// remembered by series id (while there is room for as many series as the groups may hold).
    fn place_once(&mut self, id: u64, key: &str, name: &str) -> Option<(u32, u32)> {
        let p = self.place(id, key, name);
        if self.places.len() < self.cfg.max_groups * self.cfg.max_members {
            self.places.insert(id, p);
        }
        p
    }

    /// Gives a series its group and member slots (its ring allocated) before its first feature
    /// row, as that row would, if it has none: the engine calls it as a series' first points
    /// arrive, while their window is open, so that a close does not parse the keys of and
    /// allocate for every series it sees first. Verdicts are the same with or without while
    /// the groups have room; at `max_members` or `max_groups`, members take the slots left in
    /// the order they are admitted (rather than in the order of the first close's rows).
    pub fn admit(&mut self, id: u64, key: &str, name: &str) {
        if !self.places.contains_key(&id) {
            self.place_once(id, key, name);
        }
    }

    /// Learns the `feature` column of a `features` batch and returns the members that became
    /// outlying, in the [`anomalies_schema`] (part `fleet`).
    ///
    /// The rows are placed first, in row order (a new series takes its slot in the order of its
    /// first row), then learned member by member, each member's rows in row order: members lie
    /// in their groups' slots in the order they were created, so the rings are walked through
    /// memory in order instead of in the feature plan's hash order. Each member's values, and
    /// so every verdict, are those of learning the rows in row order.
    pub fn observe(&mut self, features: &RecordBatch, feature: &str) -> Result<RecordBatch> {
        let c = FeatureColumns::of(features, feature)?;
        // Kept between closes: a buffer of a megabyte allocated per close is faulted in again.
        let mut placed = std::mem::take(&mut self.placed);
        placed.clear();
        placed.reserve(features.num_rows());
        for i in 0..features.num_rows() {
            if !c.value(i).is_finite() {
                continue;
            }
            let id = c.series_id.value(i);
            let place = match self.places.get(&id) {
                Some(p) => *p,
                None => self.place_once(id, c.series.value(i), c.name.value(i)),
            };
            if let Some((g, m)) = place {
                placed.push((g, m, i as u32));
            }
        }
        placed.sort_unstable();
        let mut touched = vec![false; self.groups.len()];
        for &(g, m, i) in &placed {
            let i = i as usize;
            // A member a checkpoint still holds is copied before it changes.
            let m = Arc::make_mut(&mut self.groups[g as usize].members[m as usize]);
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
            m.values.push_back(c.value(i));
            m.last_ms = t;
            m.last_end_ms = c.window_end.value(i);
            touched[g as usize] = true;
        }

        // Groups are judged in the order of their keys.
        self.placed = placed;
        let mut order: Vec<u32> = (0..touched.len() as u32).filter(|&g| touched[g as usize]).collect();
        order.sort_by(|a, b| self.groups[*a as usize].key.cmp(&self.groups[*b as usize].key));
        let mut rows = Rows::default();
        for g in order {
            judge(&self.cfg, &mut self.groups[g as usize], feature, &mut rows);
        }
        rows.finish()
    }
}

/// The fleet's groups as a checkpoint takes them: each member shared with the detector, which
/// copies a member it changes while a snapshot still holds it; the checkpoint's writer calls
/// [`Self::detach`] first, beside the loop. Encoded as the groups themselves, a list of
/// (key, [`Group`]).
#[derive(Debug, Clone)]
pub struct FleetSnapshot(Vec<SnapshotGroup>);

#[derive(Debug, Clone)]
struct SnapshotGroup {
    key: Arc<str>,
    label: String,
    /// In the order of their names.
    members: Vec<(Arc<str>, Arc<Member>)>,
}

impl FleetSnapshot {
    /// Makes this snapshot's members its own, where the detector still shares them.
    pub fn detach(&mut self) {
        for g in &mut self.0 {
            for (_, m) in &mut g.members {
                Arc::make_mut(m);
            }
        }
    }
}

impl serde::Serialize for FleetSnapshot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct Members<'a>(&'a [(Arc<str>, Arc<Member>)]);
        impl serde::Serialize for Members<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(self.0.len()))?;
                for (name, m) in self.0 {
                    map.serialize_entry(&**name, &**m)?;
                }
                map.end()
            }
        }
        /// [`Group`]'s shape.
        #[derive(serde::Serialize)]
        struct AsGroup<'a> {
            label: &'a str,
            members: Members<'a>,
        }
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for g in &self.0 {
            seq.serialize_element(&(&*g.key, AsGroup { label: &g.label, members: Members(&g.members) }))?;
        }
        seq.end()
    }
}

impl<'de> serde::Deserialize<'de> for FleetSnapshot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let groups: Vec<(String, Group)> = serde::Deserialize::deserialize(d)?;
        Ok(Self(
            groups
                .into_iter()
                .map(|(key, g)| SnapshotGroup {
                    key: key.into(),
                    label: g.label,
                    members: g.members.into_iter().map(|(name, m)| (Arc::from(name), Arc::new(m))).collect(),
                })
                .collect(),
        ))
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
fn judge(cfg: &FleetConfig, g: &mut Slots, feature: &str, rows: &mut Rows) {
    let newest = g.members.iter().map(|m| m.last_ms).max().unwrap_or(i64::MIN);
    if g.ordered.len() != g.members.len() {
        g.ordered = g.by_name.values().copied().collect();
    }
    // The members that line up, in the order of their names.
    let ready: Vec<usize> = g.ordered.iter().map(|&i| i as usize).filter(|&i| g.members[i].last_ms == newest && g.members[i].values.len() == cfg.window).collect();
    let n = ready.len();
    if n < 3 {
        return; // no majority to compare with
    }
    let windows: Vec<&VecDeque<f64>> = ready.iter().map(|&i| &g.members[i].values).collect();
    let first = windows[0][0];
    if windows.iter().all(|s| s.iter().all(|v| *v == first)) {
        return; // flat: nobody is odd (and MAD cannot scale it)
    }
    let Some(verdict) = detect(cfg, &windows) else { return };
    let last = cfg.window - 1;
    let mut now: Vec<f64> = windows.iter().map(|v| v[last]).collect();
    let (med, sigma) = crate::detector::location_scale(&mut now);
    for (k, i) in ready.into_iter().enumerate() {
        let m = Arc::make_mut(&mut g.members[i]);
        let v = m.values[last];
        let z = (v - med) / sigma;
        let flagged = verdict.flagged.get(k).copied().unwrap_or(false);
        let outlying = flagged && z.abs() >= cfg.min_z;
        let was = m.outlying.replace(outlying);
        if !(outlying && was == Some(false)) {
            continue;
        }
        let (lo, hi) = verdict.band.unwrap_or((med - 3.0 * sigma, med + 3.0 * sigma));
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

/// augurs' verdict on a group at its newest window: which members it flags, and the normal
/// band when it found a cluster there.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    flagged: Vec<bool>,
    band: Option<(f64, f64)>,
}

fn detect(cfg: &FleetConfig, windows: &[&VecDeque<f64>]) -> Option<Verdict> {
    let last = windows.first()?.len().checked_sub(1)?;
    // augurs returns errors for data it cannot judge; a panic in it must not stop the engine.
    catch_unwind(AssertUnwindSafe(|| match cfg.algorithm {
        Algorithm::Dbscan => {
            // DBSCAN judges each window on its own, with an epsilon from the span of the
            // whole data: so only the newest window is handed over, with that epsilon (a
            // group's 30 windows cost 30 sorts per close otherwise, for one verdict).
            DbscanDetector::with_sensitivity(cfg.sensitivity).ok()?; // refuses one outside (0, 1)
            let d = DbscanDetector::with_epsilon(dbscan_epsilon(cfg.sensitivity, windows));
            let now: Vec<[f64; 1]> = windows.iter().map(|w| [w[last]]).collect();
            let rows: Vec<&[f64]> = now.iter().map(|v| v.as_slice()).collect();
            let out = d.detect(&d.preprocess(&rows).ok()?).ok()?;
            Some(verdict_at(&out, 0, windows.len()))
        }
        Algorithm::Mad => {
            let data: Vec<Vec<f64>> = windows.iter().map(|w| w.iter().copied().collect()).collect();
            let rows: Vec<&[f64]> = data.iter().map(|v| v.as_slice()).collect();
            let d = MADDetector::with_sensitivity(cfg.sensitivity).ok()?;
            let out = d.detect(&d.preprocess(&rows).ok()?).ok()?;
            Some(verdict_at(&out, last, windows.len()))
        }
    }))
    .ok()
    .flatten()
}

fn verdict_at(out: &OutlierOutput, t: usize, n: usize) -> Verdict {
    Verdict {
        flagged: (0..n).map(|k| out.series_results.get(k).and_then(|r| r.scores.get(t)).is_some_and(|s| *s > 0.0)).collect(),
        band: out.cluster_band.as_ref().and_then(|b| Some((*b.min.get(t)?, *b.max.get(t)?))).filter(|(a, b)| a.is_finite() && b.is_finite()),
    }
}

/// The epsilon augurs' DBSCAN derives from a sensitivity: the span of all the values (at least
/// 0.1) × (1 − sensitivity) × 1.1. A test holds it to augurs' own on whole windows.
fn dbscan_epsilon(sensitivity: f64, windows: &[&VecDeque<f64>]) -> f64 {
    // Each ring's two halves in plain loops the compiler vectorises (the values are finite).
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for w in windows {
        let (a, b) = w.as_slices();
        for half in [a, b] {
            for &x in half {
                lo = if x < lo { x } else { lo };
                hi = if x > hi { x } else { hi };
            }
        }
    }
    let span = (hi - lo).abs().max(0.1);
    ((1.0 - sensitivity.min(1.0 - 1e-3)) * span * 1.1).max(1.175_494_350_822_287_5e-38)
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
mod tests;
