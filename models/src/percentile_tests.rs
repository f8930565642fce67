use super::*;
use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::Schema;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::execution::FunctionRegistry;
use rand::{Rng, SeedableRng};

/// Random rows in `partitions` partitions: a group key, a value (NULLs, NaNs, ±0, infinities
/// and ties among them) and a flag for FILTER clauses.
fn table(seed: u64, rows: usize, groups: i64, partitions: usize) -> MemTable {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Float64, true),
        Field::new("f", DataType::Boolean, true),
    ]));
    let mut parts = vec![Vec::new(); partitions];
    let per = rows.div_ceil(partitions * 3).max(1);
    let mut left = rows;
    let mut b = 0;
    while left > 0 {
        let n = per.min(left);
        left -= n;
        let k = Int64Array::from_iter_values((0..n).map(|_| rng.random_range(0..groups)));
        let v: Float64Array = (0..n)
            .map(|_| match rng.random_range(0..40) {
                0 => None,
                1 => Some(f64::NAN),
                2 => Some(-0.0),
                3 => Some(0.0),
                4 => Some(f64::INFINITY),
                5 => Some(f64::NEG_INFINITY),
                6..=15 => Some(rng.random_range(0..5) as f64),
                _ => Some(rng.random_range(-1e3..1e3)),
            })
            .collect();
        let f: BooleanArray = (0..n).map(|_| match rng.random_range(0..5) { 0 => None, 1 | 2 => Some(false), _ => Some(true) }).collect();
        parts[b % partitions].push(RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(v), Arc::new(f)]).unwrap());
        b += 1;
    }
    MemTable::try_new(schema, parts).unwrap()
}

async fn run(sql: &str, t: MemTable, partitions: usize, ours: bool) -> Vec<RecordBatch> {
    let mut cfg = SessionConfig::new().with_target_partitions(partitions);
    crate::never_skip_partial_aggregation(&mut cfg);
    let ctx = SessionContext::new_with_config(cfg);
    if ours {
        ctx.register_udaf(percentile_cont());
    }
    ctx.register_table("t", Arc::new(t)).unwrap();
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// The rows of a result as (key, bits of each value), to compare NaNs and signed zeros exactly.
fn rows(batches: &[RecordBatch]) -> Vec<(i64, Vec<Option<u64>>)> {
    let mut out = Vec::new();
    for b in batches {
        let k = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            let vals = (1..b.num_columns())
                .map(|c| {
                    let a = b.column(c).as_primitive::<Float64Type>();
                    a.is_valid(i).then(|| a.value(i).to_bits())
                })
                .collect();
            out.push((k.value(i), vals));
        }
    }
    out.sort();
    out
}

const QUERY: &str = "SELECT k, \
    percentile_cont(v, 0.95), percentile_cont(v, 0.5), percentile_cont(v, 0.0), percentile_cont(v, 1.0), \
    percentile_cont(v, 0.3333), quantile_cont(v, 0.25), \
    percentile_cont(0.9) WITHIN GROUP (ORDER BY v DESC), \
    percentile_cont(v, 0.95) FILTER (WHERE f) \
    FROM t GROUP BY k";

#[tokio::test]
async fn gives_datafusions_percentile_cont_to_the_bit_on_one_and_on_several_partitions() {
    // One partition aggregates in a single step (update, evaluate); several aggregate partially
    // and merge the partial states (update, state, merge, evaluate).
    for (seed, rows_n, groups, partitions) in [(1, 5_000, 300, 1), (2, 20_000, 2_000, 3), (3, 2_000, 5, 2), (4, 30_000, 20_000, 4), (5, 7, 10, 2)] {
        let theirs = rows(&run(QUERY, table(seed, rows_n, groups, partitions), partitions, false).await);
        let ours = rows(&run(QUERY, table(seed, rows_n, groups, partitions), partitions, true).await);
        assert!(!theirs.is_empty());
        assert_eq!(ours, theirs, "seed {seed}: {rows_n} rows, {groups} groups, {partitions} partitions");
    }
}

#[tokio::test]
async fn the_replacement_is_the_one_planned() {
    // Were DataFusion's own accumulator used, the test above would compare it with itself.
    let ctx = SessionContext::new();
    ctx.register_udaf(percentile_cont());
    for name in ["percentile_cont", "quantile_cont"] {
        let f = ctx.udaf(name).unwrap();
        let any: &dyn std::any::Any = f.inner().as_ref();
        assert!(any.downcast_ref::<crate::grouped::WithGroups>().is_some(), "{name}");
    }
}

#[test]
fn emitting_the_first_groups_keeps_the_others_renumbered() {
    let mut acc = FlatGroups::new(0.5);
    let v: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 100.0]));
    acc.update_batch(&[v], &[0, 1, 0, 1, 0, 1, 2], None, 3).unwrap();
    let first = acc.evaluate(EmitTo::First(1)).unwrap();
    assert_eq!(first.as_primitive::<Float64Type>().values().to_vec(), vec![2.0]);
    let v: ArrayRef = Arc::new(Float64Array::from(vec![40.0]));
    acc.update_batch(&[v], &[0], None, 2).unwrap();
    let rest = acc.evaluate(EmitTo::All).unwrap();
    assert_eq!(rest.as_primitive::<Float64Type>().values().to_vec(), vec![25.0, 100.0]);
    assert_eq!(acc.size(), acc.groups.capacity() * 4 + acc.values.capacity() * 8 + acc.counts.capacity() * 4);
}

#[test]
fn a_group_without_values_is_null() {
    let mut acc = FlatGroups::new(0.95);
    let v: ArrayRef = Arc::new(Float64Array::from(vec![Some(1.0), None]));
    acc.update_batch(&[v], &[0, 1], None, 3).unwrap();
    let out = acc.evaluate(EmitTo::All).unwrap();
    let out = out.as_primitive::<Float64Type>();
    assert_eq!((out.len(), out.value(0), out.is_null(1), out.is_null(2)), (3, 1.0, true, true));
}

/// The integer keys order values as `f64::total_cmp` does, and give each value back bit for bit.
#[test]
fn total_order_keys_order_as_total_cmp_and_map_back() {
    let vals = [f64::NEG_INFINITY, -1e300, -1.5, -0.0, 0.0, 5e-324, 1.0, f64::INFINITY, f64::NAN, -f64::NAN, f64::MIN_POSITIVE, -f64::MIN_POSITIVE];
    for a in vals {
        assert_eq!(from_total_order_key(total_order_key(a.to_bits())).to_bits(), a.to_bits());
        for b in vals {
            assert_eq!(total_order_key(a.to_bits()).cmp(&total_order_key(b.to_bits())), a.total_cmp(&b), "{a} against {b}");
        }
    }
}

#[test]
fn order_statistics_at_either_end_are_those_of_a_full_sort() {
    // The one-pass path for the few largest or smallest keys and the selection give the
    // percentile a sort gives, to the bit, for every group size and percentile around them.
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let reference = |values: &[f64], p: f64| -> f64 {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let index = p * ((v.len() - 1) as f64);
        let (lower, upper) = (index.floor() as usize, index.ceil() as usize);
        if lower == upper {
            return v[lower];
        }
        let weight = ((index - lower as f64) * 1_000_000.0) as usize as f64 / 1_000_000.0;
        v[lower] + (v[upper] - v[lower]) * weight
    };
    for n in 2..40 {
        for round in 0..30 {
            let values: Vec<f64> = (0..n)
                .map(|_| match rng.random_range(0..12) {
                    0 => f64::NAN,
                    1 => -0.0,
                    2 => 0.0,
                    3 => f64::NEG_INFINITY,
                    4..=7 => rng.random_range(0..3) as f64,
                    _ => rng.random_range(-50.0..50.0),
                })
                .collect();
            for p in [0.01, 0.05, 0.1, 0.25, 0.3333, 0.5, 0.75, 0.9, 0.95, 0.99] {
                let mut keys: Vec<i64> = values.iter().map(|v| total_order_key(v.to_bits())).collect();
                let got = percentile_of_keys(&mut keys, p).unwrap();
                let want = reference(&values, p);
                assert_eq!(got.to_bits(), want.to_bits(), "n {n}, round {round}, p {p}: {values:?}");
            }
        }
    }
}
