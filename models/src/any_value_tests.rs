use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Field, Int64Type, Schema};
use datafusion::datasource::MemTable;
use datafusion::execution::FunctionRegistry;
use datafusion::prelude::{SessionConfig, SessionContext};
use rand::{Rng, SeedableRng};

use super::*;

/// Random rows in `partitions` partitions: a group key, a string (NULL in one row of four, and
/// in every row of the groups divisible by 7), an integer and a flag for FILTER clauses.
fn table(seed: u64, rows: usize, groups: i64, partitions: usize) -> (MemTable, Vec<RecordBatch>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("s", DataType::Utf8, true),
        Field::new("i", DataType::Int64, true),
        Field::new("f", DataType::Boolean, true),
    ]));
    let mut parts = vec![Vec::new(); partitions];
    let mut all = Vec::new();
    let per = rows.div_ceil(partitions * 3).max(1);
    let mut left = rows;
    let mut b = 0;
    while left > 0 {
        let n = per.min(left);
        left -= n;
        let k: Vec<i64> = (0..n).map(|_| rng.random_range(0..groups)).collect();
        let s: StringArray = k.iter().map(|k| (k % 7 != 0 && rng.random_range(0..4) != 0).then(|| format!("g{k}-{}", rng.random_range(0..3)))).collect();
        let i: Int64Array = k.iter().map(|k| (rng.random_range(0..4) != 0).then(|| k * 100 + rng.random_range(0..3))).collect();
        let f: BooleanArray = (0..n).map(|_| match rng.random_range(0..5) { 0 => None, 1 | 2 => Some(false), _ => Some(true) }).collect();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(k)), Arc::new(s), Arc::new(i), Arc::new(f)]).unwrap();
        all.push(batch.clone());
        parts[b % partitions].push(batch);
        b += 1;
    }
    (MemTable::try_new(schema, parts).unwrap(), all)
}

const QUERY: &str = "SELECT k, any_value(s), any_value(i), any_value(s) FILTER (WHERE f) FROM t GROUP BY k";

/// How a plan may aggregate: in one step, partially with partial states merged, or partially
/// with every row turned into its own state (skipping partial aggregation).
#[derive(Clone, Copy, Debug)]
enum Mode {
    Merged,
    Skipped,
}

async fn run(t: MemTable, partitions: usize, mode: Mode, ours: bool) -> Vec<RecordBatch> {
    let mut cfg = SessionConfig::new().with_target_partitions(partitions);
    match mode {
        Mode::Merged => crate::never_skip_partial_aggregation(&mut cfg),
        Mode::Skipped => {
            cfg.options_mut().execution.skip_partial_aggregation_probe_ratio_threshold = 0.0;
            cfg.options_mut().execution.skip_partial_aggregation_probe_rows_threshold = 1;
        }
    }
    let ctx = SessionContext::new_with_config(cfg);
    if ours {
        ctx.register_udaf(any_value());
    }
    ctx.register_table("t", Arc::new(t)).unwrap();
    let plan = ctx.sql(QUERY).await.unwrap().create_physical_plan().await.unwrap();
    let out = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx()).await.unwrap();
    if matches!(mode, Mode::Skipped) && partitions > 1 {
        assert!(skipped_rows(&plan) > 0, "partial aggregation was skipped (rows went through convert_to_state)");
    }
    out
}

/// Rows for which any aggregation in `plan` skipped its partial step.
fn skipped_rows(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> usize {
    let own = plan.metrics().and_then(|m| m.sum_by_name("skipped_aggregation_rows")).map_or(0, |v| v.as_usize());
    own + plan.children().into_iter().map(skipped_rows).sum::<usize>()
}

type Row = (Option<String>, Option<i64>, Option<String>);

fn rows(batches: &[RecordBatch]) -> BTreeMap<i64, Row> {
    let mut out = BTreeMap::new();
    for b in batches {
        let k = b.column(0).as_primitive::<Int64Type>();
        let s = b.column(1).as_string::<i32>();
        let i = b.column(2).as_primitive::<Int64Type>();
        let f = b.column(3).as_string::<i32>();
        for r in 0..b.num_rows() {
            let row = (s.is_valid(r).then(|| s.value(r).to_string()), i.is_valid(r).then(|| i.value(r)), f.is_valid(r).then(|| f.value(r).to_string()));
            assert!(out.insert(k.value(r), row).is_none(), "one row per group");
        }
    }
    out
}

/// A group's non-NULL values of `s`, of `i`, and of `s` where `f` holds.
type Candidates = (BTreeSet<String>, BTreeSet<i64>, BTreeSet<String>);

/// Each group's non-NULL values of each column, from the input itself.
fn candidates(input: &[RecordBatch]) -> BTreeMap<i64, Candidates> {
    let mut out: BTreeMap<i64, Candidates> = BTreeMap::new();
    for b in input {
        let k = b.column(0).as_primitive::<Int64Type>();
        let s = b.column(1).as_string::<i32>();
        let i = b.column(2).as_primitive::<Int64Type>();
        let f = b.column(3).as_boolean();
        for r in 0..b.num_rows() {
            let e = out.entry(k.value(r)).or_default();
            if s.is_valid(r) {
                e.0.insert(s.value(r).to_string());
                if f.is_valid(r) && f.value(r) {
                    e.2.insert(s.value(r).to_string());
                }
            }
            if i.is_valid(r) {
                e.1.insert(i.value(r));
            }
        }
    }
    out
}

#[tokio::test]
async fn gives_datafusions_own_answer_on_one_partition() {
    // In one step both take each group's first non-NULL value in arrival order.
    for (seed, n, groups) in [(1, 5_000, 300), (2, 20_000, 5_000), (3, 9, 20)] {
        let theirs = rows(&run(table(seed, n, groups, 1).0, 1, Mode::Merged, false).await);
        let ours = rows(&run(table(seed, n, groups, 1).0, 1, Mode::Merged, true).await);
        assert!(!theirs.is_empty());
        assert_eq!(ours, theirs, "seed {seed}");
    }
}

#[tokio::test]
async fn gives_each_group_one_of_its_own_values_when_partial_states_are_merged_or_skipped() {
    for mode in [Mode::Merged, Mode::Skipped] {
        for (seed, n, groups, partitions) in [(4, 30_000, 3_000, 4), (5, 2_000, 5, 2), (6, 7, 10, 3)] {
            let (t, input) = table(seed, n, groups, partitions);
            let got = rows(&run(t, partitions, mode, true).await);
            let want = candidates(&input);
            assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{mode:?} seed {seed}: the groups");
            for (k, (s, i, f)) in &got {
                let (cs, ci, cf) = &want[k];
                let ok = |v: &Option<String>, c: &BTreeSet<String>| match v {
                    Some(v) => c.contains(v),
                    None => c.is_empty(),
                };
                assert!(ok(s, cs), "{mode:?} seed {seed} group {k}: {s:?} not one of {cs:?}");
                assert!(ok(f, cf), "{mode:?} seed {seed} group {k}: filtered {f:?} not one of {cf:?}");
                assert!(i.map_or(ci.is_empty(), |i| ci.contains(&i)), "{mode:?} seed {seed} group {k}: {i:?} not one of {ci:?}");
            }
        }
    }
}

#[tokio::test]
async fn the_replacement_is_the_one_planned() {
    // Were DataFusion's own accumulator used, the tests above would check it, not this one.
    let ctx = SessionContext::new();
    ctx.register_udaf(any_value());
    let f = ctx.udaf("any_value").unwrap();
    let any: &dyn std::any::Any = f.inner().as_ref();
    assert!(any.downcast_ref::<crate::grouped::WithGroups>().is_some());
}

#[test]
fn emitting_the_first_groups_keeps_the_others_renumbered_and_releases_everything_at_the_end() {
    let mut acc = FirstSeen::new(DataType::Utf8);
    let v: ArrayRef = Arc::new(StringArray::from(vec![None, Some("b0"), Some("a0"), Some("b1"), Some("c0")]));
    acc.update_batch(&[v], &[0, 1, 0, 1, 2], None, 4).unwrap();
    assert_eq!(acc.arrays.len(), 1);
    let v: ArrayRef = Arc::new(StringArray::from(vec![Some("a1"), Some("d0")]));
    acc.update_batch(&[v], &[0, 3], None, 4).unwrap();
    assert_eq!(acc.arrays.len(), 2, "the second array gave group 3 its value");
    let held = acc.size();
    let first = acc.evaluate(EmitTo::First(2)).unwrap();
    assert_eq!(first.as_string::<i32>().iter().collect::<Vec<_>>(), vec![Some("a0"), Some("b0")]);
    assert!(acc.size() <= held);
    let v: ArrayRef = Arc::new(StringArray::from(vec![Some("c1"), Some("e0")]));
    acc.update_batch(&[v], &[0, 2], None, 3).unwrap();
    let rest = acc.evaluate(EmitTo::All).unwrap();
    assert_eq!(rest.as_string::<i32>().iter().collect::<Vec<_>>(), vec![Some("c0"), Some("d0"), Some("e0")]);
    assert!(acc.arrays.is_empty() && acc.held == 0, "nothing held once every group is emitted");
}

#[test]
fn a_group_of_nulls_only_is_null_and_unset_in_its_state() {
    let mut acc = FirstSeen::new(DataType::Int64);
    let v: ArrayRef = Arc::new(Int64Array::from(vec![None, Some(5), None]));
    acc.update_batch(&[v], &[0, 1, 0], None, 3).unwrap();
    let state = acc.state(EmitTo::All).unwrap();
    let values = state[0].as_primitive::<Int64Type>();
    assert_eq!(values.iter().collect::<Vec<_>>(), vec![None, Some(5), None]);
    assert_eq!(state[1].as_boolean().iter().collect::<Vec<_>>(), vec![Some(false), Some(true), Some(false)]);
}

#[test]
fn past_the_most_arrays_held_the_values_are_copied_into_one() {
    // Each batch gives one new group its value: held whole, the arrays would grow with the input.
    let mut acc = FirstSeen::new(DataType::Utf8);
    let rows = 1000;
    for b in 0..(3 * MAX_ARRAYS) {
        let v: ArrayRef = Arc::new(StringArray::from((0..rows).map(|r| format!("batch {b} row {r}")).collect::<Vec<_>>()));
        // Row 0 is the new group's; the others belong to group 0, which has its value.
        let groups: Vec<usize> = (0..rows).map(|r| if r == 0 { b } else { 0 }).collect();
        acc.update_batch(&[v], &groups, None, b + 1).unwrap();
        assert!(acc.arrays.len() <= MAX_ARRAYS, "batch {b}: {} arrays held", acc.arrays.len());
    }
    let one_batch = StringArray::from((0..rows).map(|r| format!("batch 0 row {r}")).collect::<Vec<_>>()).get_array_memory_size();
    assert!(acc.size() < (MAX_ARRAYS + 1) * one_batch + 4096, "{} bytes held", acc.size());
    let out = acc.evaluate(EmitTo::All).unwrap();
    let want: Vec<String> = (0..3 * MAX_ARRAYS).map(|b| format!("batch {b} row 0")).collect();
    assert_eq!(out.as_string::<i32>().iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>(), want);
}

#[test]
fn values_keep_the_type_they_came_with() {
    // A string view planned as a string (or a nested field named otherwise) must not stop the
    // emit: the values are gathered in their own type.
    let mut acc = FirstSeen::new(DataType::Utf8);
    let v: ArrayRef = Arc::new(arrow::array::StringViewArray::from(vec![Some("x"), Some("y")]));
    acc.update_batch(&[v], &[0, 1], None, 2).unwrap();
    let out = acc.evaluate(EmitTo::All).unwrap();
    assert_eq!(out.as_string_view().iter().collect::<Vec<_>>(), vec![Some("x"), Some("y")]);
}
