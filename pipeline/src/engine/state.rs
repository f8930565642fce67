//! The snapshot/restore contract every stateful stage goes through, and how the processor's
//! state is cut into checkpoint sections: one per input partition (the state of the series
//! whose points come from it, and where reading resumes) and one global section (state that
//! spans partitions: fleet groups, log templates, OTLP cumulative streams, derived log-signal
//! series, open incidents, the policies' gate (cooldowns, pending approvals, suppressions), the
//! feedback topic's positions, the ids of decisions already published).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::UInt64Type;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use vigil_ingest::SourcePos;
use vigil_models::{Correlator, Detector, FleetDetector, Forecaster, Gate};

use super::processor::{Processor, TopicDecoder};
use crate::PartitionPosition;

/// A stage whose state goes into checkpoints.
///
/// State keyed by series is cut by the `keep` predicate (the series of one partition); state
/// that spans partitions ignores it and is written to the global section only. `restore`
/// merges: it replaces the keys the state holds and leaves the others.
pub trait Stateful {
    /// The state as written (serde, encoded with postcard, possibly on another thread).
    type State: Serialize + DeserializeOwned + Send + 'static;
    /// Version of `State`'s encoding. A checkpoint holding another version (and none of
    /// [`Self::ALSO_READS`]) is refused with an error naming the stage, rather than misread.
    const VERSION: u32;
    /// Earlier versions whose encoding `State` still reads as written.
    const ALSO_READS: &'static [u32] = &[];
    /// The state of the series `keep` selects (all of it for state that is not per series).
    fn snapshot(&self, keep: &dyn Fn(u64) -> bool) -> Self::State;
    /// The state split over `n` sections by `part_of` (series it places nowhere are left
    /// out). The default takes each section with its own [`Self::snapshot`]; a stage with many
    /// series splits them in one pass.
    fn snapshot_split(&self, part_of: &(dyn Fn(u64) -> Option<usize> + Sync), n: usize) -> Vec<Self::State> {
        (0..n).map(|i| self.snapshot(&|id| part_of(id) == Some(i))).collect()
    }
    /// Makes a state taken by [`Self::snapshot`] independent of the stage, for a stage whose
    /// snapshot shares what it holds rather than copying it (copy on write): the checkpoint's
    /// writer calls it beside the loop, before encoding, so that the stage rarely has to copy
    /// on its next change. Nothing to do for a snapshot that is a copy.
    fn detach(_state: &mut Self::State) {}
    /// Takes state from a checkpoint.
    fn restore(&mut self, state: Self::State);
    /// Forgets the series `drop` selects (their partition went to another member).
    fn forget(&mut self, _drop: &dyn Fn(u64) -> bool) {}
}

/// The per-series stages: `export(keep)`, `import`, `forget(drop)` of their own; with
/// `shared`, a snapshot shares the stage's states until detached.
macro_rules! per_series {
    ($stage:ty, $state:ty, $version:literal reads [$($old:literal),*], shared) => {
        per_series!($stage, $state, $version, [$($old),*], |state: &mut $state| {
            for (_, s) in state.iter_mut() {
                s.detach();
            }
        });
    };
    ($stage:ty, $state:ty, $version:literal) => {
        per_series!($stage, $state, $version, [], |_: &mut $state| {});
    };
    ($stage:ty, $state:ty, $version:literal, [$($old:literal),*], $detach:expr) => {
        impl Stateful for $stage {
            type State = $state;
            const VERSION: u32 = $version;
            const ALSO_READS: &'static [u32] = &[$($old),*];
            fn snapshot(&self, keep: &dyn Fn(u64) -> bool) -> Self::State {
                self.export(keep)
            }
            fn snapshot_split(&self, part_of: &(dyn Fn(u64) -> Option<usize> + Sync), n: usize) -> Vec<Self::State> {
                self.export_split(part_of, n)
            }
            fn detach(state: &mut Self::State) {
                ($detach)(state)
            }
            fn restore(&mut self, state: Self::State) {
                self.import(state)
            }
            fn forget(&mut self, drop: &dyn Fn(u64) -> bool) {
                <$stage>::forget(self, drop)
            }
        }
    };
}

// Version 6: the detector's values in single precision, as multiples of a unit where that is
// exact (version 3 held them all as floats): a power of ten, or, new in version 6, 5, 2.5, 2 or
// 1.25 times one (a build that reads only version 5 would misread those: it refuses version 6);
// the seasonal residuals in half precision about their median (boxed with the seasonal part's
// calibration, from a series' first residual on), a reduced-resolution seasonal history in 8-bit
// codes (16-bit in version 4), 16-bit calibration counts. Version 7 encodes the same types: the
// refractory queue's value numbers are taken modulo 2^16 and the next period check modulo 2^32
// (an older build would misread them: it refuses version 7), a series' smallest spacing is at
// most 2^32 - 1 ms. Versions 6 and 5 are read as
// written (5's units are the powers of ten; their 32-bit value numbers are the same modulo
// 2^16); an older checkpoint is refused, naming the stage. (A snapshot shares the detector's
// states; it is encoded as the states themselves.)
per_series!(Detector, Vec<(u64, vigil_models::SeriesSnapshot)>, 7 reads [6, 5], shared);
per_series!(Forecaster, Vec<(u64, vigil_models::ForecastHistory)>, 1);

/// Open incidents span partitions (a service's series come from several): global.
impl Stateful for Correlator {
    type State = Vec<vigil_models::Incident>;
    const VERSION: u32 = 1;
    fn snapshot(&self, _keep: &dyn Fn(u64) -> bool) -> Self::State {
        self.export()
    }
    fn restore(&mut self, state: Self::State) {
        self.import(state)
    }
}

/// Cost hours, scope histories and forecasts, budgets and resources span partitions: global.
impl Stateful for vigil_models::CostEngine {
    type State = vigil_models::CostState;
    const VERSION: u32 = 1;
    fn snapshot(&self, _keep: &dyn Fn(u64) -> bool) -> Self::State {
        self.export()
    }
    fn restore(&mut self, state: Self::State) {
        self.import(state)
    }
}

/// SLO event sums span the service's series: global.
impl Stateful for vigil_models::SloTracker {
    type State = std::collections::BTreeMap<String, vigil_models::SloState>;
    const VERSION: u32 = 1;
    fn snapshot(&self, _keep: &dyn Fn(u64) -> bool) -> Self::State {
        self.export()
    }
    fn restore(&mut self, state: Self::State) {
        self.import(state)
    }
}

/// Cooldowns, hourly counts, decisions per incident, pending approvals, suppressions: global.
impl Stateful for Gate {
    type State = vigil_models::GateState;
    const VERSION: u32 = 1;
    fn snapshot(&self, _keep: &dyn Fn(u64) -> bool) -> Self::State {
        self.export()
    }
    fn restore(&mut self, state: Self::State) {
        self.import(state)
    }
}

/// Fleet groups span partitions: global. A snapshot shares the members until detached; it is
/// encoded as the list of (key, group) it was before.
impl Stateful for FleetDetector {
    type State = vigil_models::FleetSnapshot;
    const VERSION: u32 = 1;
    fn snapshot(&self, _keep: &dyn Fn(u64) -> bool) -> Self::State {
        self.export()
    }
    fn detach(state: &mut Self::State) {
        state.detach()
    }
    fn restore(&mut self, state: Self::State) {
        self.import(state)
    }
}

/// Log templates are mined per topic across partitions: global.
impl Stateful for vigil_ingest::Drain {
    type State = vigil_ingest::DrainState;
    const VERSION: u32 = 1;
    fn snapshot(&self, _keep: &dyn Fn(u64) -> bool) -> Self::State {
        self.export()
    }
    fn restore(&mut self, state: Self::State) {
        self.import(state)
    }
}

/// OTLP cumulative streams (the last point of each, to turn the next into a rate): global.
impl Stateful for vigil_ingest::OtlpMetricsDecoder {
    type State = (Vec<(u64, vigil_ingest::OtlpStream)>, u64);
    const VERSION: u32 = 1;
    fn snapshot(&self, _keep: &dyn Fn(u64) -> bool) -> Self::State {
        self.export()
    }
    fn restore(&mut self, state: Self::State) {
        self.import(state.0, state.1)
    }
}

/// Decision ids a checkpoint carries at most.
pub const CHECKPOINTED_IDS: usize = 1000;

/// Ids of the decisions published lately, newest last, at most `cap`: a replay after a crash
/// skips them. Global.
#[derive(Debug)]
pub struct PublishedIds {
    order: VecDeque<String>,
    set: HashSet<String>,
    cap: usize,
}

impl PublishedIds {
    /// An empty set keeping at most `cap` ids.
    pub fn new(cap: usize) -> Self {
        Self { order: VecDeque::new(), set: HashSet::new(), cap: cap.max(1) }
    }
    /// Whether `id` was published.
    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
    /// Notes that `id` was published.
    pub fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
    /// Ids held.
    pub fn len(&self) -> usize {
        self.order.len()
    }
    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl Stateful for PublishedIds {
    type State = Vec<String>;
    const VERSION: u32 = 1;
    /// The newest [`CHECKPOINTED_IDS`]: the decisions a replay can repeat are those made after
    /// the checkpoint, which the decisions topic's tail holds; these cover a tail that cannot be
    /// read at start.
    fn snapshot(&self, _keep: &dyn Fn(u64) -> bool) -> Self::State {
        self.order.iter().rev().take(CHECKPOINTED_IDS).rev().cloned().collect()
    }
    fn restore(&mut self, state: Self::State) {
        for id in state {
            self.insert(id);
        }
    }
}

/// A problem with a checkpoint's contents.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The bytes do not decode (damaged, or written by an incompatible build).
    #[error("checkpoint section `{section}`, state `{name}`: {problem}")]
    Decode {
        /// The section.
        section: String,
        /// The stage.
        name: String,
        /// What failed.
        problem: String,
    },
    /// The stage's state was written in another version of its encoding.
    #[error(
        "checkpoint section `{section}` holds state `{name}` in version {found}; this Vigil reads version {supported}{}: \
         run the Vigil version that wrote it, or move the checkpoints aside to rebuild state from the input",
        also.iter().map(|v| format!(" or {v}")).collect::<String>()
    )]
    Version {
        /// The section.
        section: String,
        /// The stage.
        name: String,
        /// Version found.
        found: u32,
        /// Version this build writes and reads.
        supported: u32,
        /// Earlier versions it reads too.
        also: Vec<u32>,
    },
}

#[derive(Serialize, Deserialize)]
struct Entry {
    name: String,
    version: u32,
    bytes: Vec<u8>,
}

/// Builds one checkpoint section: named, versioned entries, one per stage.
///
/// [`Self::put`] takes the stage's state at once (its [`Stateful::snapshot`], a copy) and
/// encodes it in [`Self::finish`]: a checkpoint's consistent cut is taken between two steps of
/// the loop, and its encoding and writing can then run beside the loop (see
/// `Engine::checkpoint`).
#[derive(Default)]
pub struct SectionWriter {
    entries: Vec<Pending>,
}

/// An entry of a section, encoded or still to be.
enum Pending {
    Encoded(Entry),
    Taken { name: String, version: u32, state: Box<dyn TakenState> },
}

/// A stage's state taken and not yet encoded.
trait TakenState: Send {
    fn detach(&mut self);
    fn encode(&self) -> Result<Vec<u8>, postcard::Error>;
}

struct Typed<T: Stateful>(T::State);

impl<T: Stateful> TakenState for Typed<T> {
    fn detach(&mut self) {
        T::detach(&mut self.0)
    }
    fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(&self.0)
    }
}

impl SectionWriter {
    /// Takes `stage`'s state for the series `keep` selects, under `name`; it is encoded by
    /// [`Self::finish`].
    pub fn put<T: Stateful + 'static>(&mut self, name: &str, stage: &T, keep: &dyn Fn(u64) -> bool) -> Result<(), StateError> {
        self.put_taken::<T>(name, stage.snapshot(keep));
        Ok(())
    }
    /// Adds a state already taken from a `T` (one part of [`Stateful::snapshot_split`]).
    pub fn put_taken<T: Stateful + 'static>(&mut self, name: &str, state: T::State) {
        self.entries.push(Pending::Taken { name: name.into(), version: T::VERSION, state: Box::new(Typed::<T>(state)) });
    }
    /// Writes a plain serde value (not a [`Stateful`] stage) under `name`, encoded at once.
    pub fn put_value<S: Serialize>(&mut self, name: &str, version: u32, value: &S) -> Result<(), StateError> {
        let bytes = postcard::to_stdvec(value).map_err(|e| encode_error(name, &e))?;
        self.entries.push(Pending::Encoded(Entry { name: name.into(), version, bytes }));
        Ok(())
    }
    /// Makes the states taken independent of the stages they were taken from (see
    /// [`Stateful::detach`]): for the checkpoint's writer, beside the loop, before it encodes.
    pub fn detach(&mut self) {
        for p in &mut self.entries {
            if let Pending::Taken { state, .. } = p {
                state.detach();
            }
        }
    }
    /// The encoded section.
    pub fn finish(self) -> Result<Vec<u8>, StateError> {
        let entries = self
            .entries
            .into_iter()
            .map(|p| match p {
                Pending::Encoded(e) => Ok(e),
                Pending::Taken { name, version, state } => match state.encode() {
                    Ok(bytes) => Ok(Entry { name, version, bytes }),
                    Err(e) => Err(encode_error(&name, &e)),
                },
            })
            .collect::<Result<Vec<Entry>, StateError>>()?;
        postcard::to_stdvec(&entries).map_err(|e| encode_error("section", &e))
    }
}

fn encode_error(name: &str, e: &postcard::Error) -> StateError {
    StateError::Decode { section: String::new(), name: name.into(), problem: e.to_string() }
}

/// Reads one checkpoint section.
pub struct SectionReader {
    section: String,
    entries: Vec<Entry>,
}

impl SectionReader {
    /// Decodes a section's bytes; `section` names it in errors.
    pub fn new(section: &str, bytes: &[u8]) -> Result<Self, StateError> {
        let entries = postcard::from_bytes(bytes).map_err(|e| StateError::Decode { section: section.into(), name: "section".into(), problem: e.to_string() })?;
        Ok(Self { section: section.into(), entries })
    }
    /// Restores `stage` from the entry `name`, if the section has it. Returns whether it did.
    pub fn get<T: Stateful>(&self, name: &str, stage: &mut T) -> Result<bool, StateError> {
        match self.value_of::<T::State>(name, T::VERSION, T::ALSO_READS)? {
            Some(v) => {
                stage.restore(v);
                Ok(true)
            }
            None => Ok(false),
        }
    }
    /// Reads a plain serde value written by [`SectionWriter::put_value`]; `None` when absent.
    pub fn value<S: DeserializeOwned>(&self, name: &str, supported: u32) -> Result<Option<S>, StateError> {
        self.value_of(name, supported, &[])
    }
    /// [`Self::value`], also reading the versions of `also`.
    fn value_of<S: DeserializeOwned>(&self, name: &str, supported: u32, also: &[u32]) -> Result<Option<S>, StateError> {
        let Some(e) = self.entries.iter().find(|e| e.name == name) else { return Ok(None) };
        if e.version != supported && !also.contains(&e.version) {
            return Err(StateError::Version { section: self.section.clone(), name: name.into(), found: e.version, supported, also: also.to_vec() });
        }
        postcard::from_bytes(&e.bytes).map(Some).map_err(|err| StateError::Decode { section: self.section.clone(), name: name.into(), problem: err.to_string() })
    }
}

type PartKey = (Arc<str>, i32);

mod owners;
pub use owners::Owners;

/// Section name of a partition's state.
pub fn partition_section(topic: &str, partition: i32) -> String {
    format!("partition/{topic}/{partition}")
}

/// Section name of the result history's file list.
pub const HISTORY_SECTION: &str = "history";

/// Section name of the state that spans partitions.
pub const GLOBAL_SECTION: &str = "global";

impl Processor {
    /// The state of each of `positions` (its series and where reading resumes) as a section,
    /// taken now and encoded by [`SectionWriter::finish`], with its number of series; in one
    /// pass over the series (a pass per partition would scan every series once per partition:
    /// 256 partitions of 100,000 series took seconds).
    pub fn snapshot_partitions(&self, positions: &[PartitionPosition]) -> Result<Vec<(SectionWriter, usize)>, StateError> {
        let n = positions.len();
        // The owners' index of each position's partition → the position's place.
        let place: HashMap<u32, usize> = positions
            .iter()
            .enumerate()
            .filter_map(|(i, p)| self.owner.index.get(&(Arc::from(p.topic.as_str()), p.partition)).map(|k| (*k, i)))
            .collect();
        let owner = &self.owner;
        let part_of = |id: u64| owner.of.get(&id).and_then(|k| place.get(k)).copied();
        let mut series: Vec<Vec<u64>> = vec![Vec::new(); n];
        for (id, k) in &self.owner.of {
            if let Some(&i) = place.get(k) {
                series[i].push(*id);
            }
        }
        let detector = self.detector.snapshot_split(&part_of, n);
        let forecaster = self.forecaster.snapshot_split(&part_of, n);
        let mut out = Vec::with_capacity(n);
        for (((pos, series), d), f) in positions.iter().zip(series).zip(detector).zip(forecaster) {
            let mut w = SectionWriter::default();
            // Version 2: with the highest event time before the resume point (replays are judged exactly).
            w.put_value("position", 2, pos)?;
            w.put_value("series", 1, &series)?;
            w.put_taken::<Detector>("detector", d);
            w.put_taken::<Forecaster>("forecaster", f);
            out.push((w, series.len()));
        }
        Ok(out)
    }

    /// The state that spans partitions, and that of series no partition owns, as a section
    /// (taken now, encoded by [`SectionWriter::finish`]).
    pub fn snapshot_global(&self, published: &PublishedIds) -> Result<SectionWriter, StateError> {
        let unowned = self.owner.unowned();
        let mut w = SectionWriter::default();
        w.put("detector", &self.detector, &unowned)?;
        w.put("forecaster", &self.forecaster, &unowned)?;
        w.put("incidents", &self.correlator, &|_| true)?;
        w.put("gate", &self.gate, &|_| true)?;
        w.put("cost", &self.cost, &|_| true)?;
        w.put("slo", &self.slo, &|_| true)?;
        w.put_value("feedback.positions", 1, &self.feedback_positions)?;
        w.put_value("capacity.pending", 1, &self.pending_signals)?;
        w.put_value("forecaster.next_refit", 1, &self.forecaster.next_refit())?;
        if let Some(f) = &self.fleet {
            w.put("fleet", f, &|_| true)?;
        }
        for (topic, d) in &self.others {
            match d {
                TopicDecoder::Otlp(d) => w.put(&format!("otlp/{topic}"), d.as_ref(), &|_| true)?,
                TopicDecoder::OtlpLogs(d) => w.put(&format!("drain/{topic}"), d.drain(), &|_| true)?,
                TopicDecoder::JsonLogs(d) => w.put(&format!("drain/{topic}"), d.drain(), &|_| true)?,
                TopicDecoder::Influx(_) | TopicDecoder::Mapped(_) | TopicDecoder::Focus(_) => {}
            }
        }
        w.put("published", published, &|_| true)?;
        Ok(w)
    }

    /// Restores a partition's section; returns where its reading resumes. Its position joins
    /// the windower (replay fence, event-time progress).
    pub fn restore_partition(&mut self, section: &str, bytes: &[u8]) -> Result<PartitionPosition, StateError> {
        let r = SectionReader::new(section, bytes)?;
        let pos: PartitionPosition =
            r.value("position", 2)?.ok_or_else(|| StateError::Decode { section: section.into(), name: "position".into(), problem: "missing".into() })?;
        let series: Vec<u64> = r.value("series", 1)?.unwrap_or_default();
        r.get("detector", &mut self.detector)?;
        r.get("forecaster", &mut self.forecaster)?;
        self.owner.assign(&(Arc::from(pos.topic.as_str()), pos.partition), &series);
        self.windower.restore(&pos);
        Ok(pos)
    }

    /// Restores the global section.
    pub fn restore_global(&mut self, bytes: &[u8], published: &mut PublishedIds) -> Result<(), StateError> {
        let r = SectionReader::new(GLOBAL_SECTION, bytes)?;
        r.get("detector", &mut self.detector)?;
        r.get("forecaster", &mut self.forecaster)?;
        r.get("incidents", &mut self.correlator)?;
        r.get("gate", &mut self.gate)?;
        r.get("cost", &mut self.cost)?;
        r.get("slo", &mut self.slo)?;
        if let Some(p) = r.value("feedback.positions", 1)? {
            self.feedback_positions = p;
        }
        if let Some(p) = r.value("capacity.pending", 1)? {
            self.pending_signals = p;
        }
        let next: Option<Option<i64>> = r.value("forecaster.next_refit", 1)?;
        self.forecaster.set_next_refit(next.flatten());
        if let Some(f) = self.fleet.as_mut() {
            r.get("fleet", f)?;
        }
        for (topic, d) in self.others.iter_mut() {
            match d {
                TopicDecoder::Otlp(d) => {
                    r.get(&format!("otlp/{topic}"), d.as_mut())?;
                }
                TopicDecoder::OtlpLogs(d) => {
                    r.get(&format!("drain/{topic}"), d.drain_mut())?;
                }
                TopicDecoder::JsonLogs(d) => {
                    r.get(&format!("drain/{topic}"), d.drain_mut())?;
                }
                TopicDecoder::Influx(_) | TopicDecoder::Mapped(_) | TopicDecoder::Focus(_) => {}
            }
        }
        r.get("published", published)?;
        Ok(())
    }

    /// Forgets everything about `parts` (revoked): their series' state, their rows in open
    /// windows, their offsets. The next owner restores them from the checkpoint.
    pub fn forget_partitions(&mut self, parts: &[PartKey]) -> Result<usize, crate::Error> {
        let removed = {
            let drop = self.owner.of_parts(parts);
            Stateful::forget(&mut self.detector, &drop);
            Stateful::forget(&mut self.forecaster, &drop);
            self.windower.drop_series(&drop)?
        };
        // The open windows' runs of the feature plan saw the removed rows.
        self.plan.forget_streams();
        self.windower.revoke(parts);
        self.owner.forget(parts);
        Ok(removed)
    }

    /// Series whose state is held, per partition section and global.
    pub fn owned_series(&self, k: &PartKey) -> usize {
        self.owner.series_of(k).len()
    }
}

#[cfg(test)]
mod tests;
