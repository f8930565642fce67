//! Exact medians of a sliding window, found from the previous window's answer.
//!
//! A window that slides by one value moves its median by at most one rank, and its MAD by a
//! few: counting the values below last time's answer and stepping to the neighbouring values
//! finds the new order statistic in two or three vectorisable passes, where a selection
//! reorders the whole window. The answer is the same value a selection returns; when it lies
//! more than [`MAX_STEPS`] distinct values from the hint, a selection finds it.
//!
//! Everything here is inlined into the detector's per-value path, which is compiled for the
//! baseline x86-64 target and for AVX2 (see `Shard::observe`): the passes are exact
//! comparisons, counts and subtractions, so both give the same bits, and AVX2 takes four values
//! at a time where the baseline takes two (measured: the search in half the time).

use super::{median, robust_sigma};

/// Distinct values stepped over from a hint before falling back to a selection.
const MAX_STEPS: usize = 6;

/// Last answers of one window: its upper median and the upper median of its deviations (the
/// values of rank ⌊n/2⌋, which are elements of the windows, so a window that did not move
/// finds its median again in one pass). Not checkpointed: a hint only makes the search faster.
///
/// The deviations' median is kept in single precision, rounded down ([`below`]): from just
/// under it the search takes one more pass (the smallest deviation above the hint) to find it
/// again, unless it is a single precision float itself. So a hint is 12 bytes aligned to 4,
/// and a state's two take 24 bytes where they took 32 (measured: 2-3% more time a point in
/// `vigil eval nab`; one pass finding the counts and the value above together was slower).
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
pub(crate) struct Hint {
    med: f64,
    mad: f32,
}

impl Default for Hint {
    fn default() -> Self {
        Self { med: f64::NAN, mad: f32::NAN }
    }
}

/// The largest single precision float at most `x` (NaN for NaN).
#[inline(always)]
fn below(x: f64) -> f32 {
    let f = x as f32;
    if f64::from(f) > x { f.next_down() } else { f }
}

/// Values of `v` strictly below and at most `h`.
#[inline(always)]
fn counts(v: &[f64], h: f64) -> (usize, usize) {
    v.iter().fold((0, 0), |(lt, le), &x| (lt + usize::from(x < h), le + usize::from(x <= h)))
}

/// Independent lanes for the neighbour searches, so that they vectorise (a plain fold of
/// `f64::max` does not: it is sequential and minds NaN, which a window never holds).
const LANES: usize = 4;

/// The largest value of `v` below `h` (−∞ when none is).
#[inline(always)]
fn max_below(v: &[f64], h: f64) -> f64 {
    let mut m = [f64::NEG_INFINITY; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in m.iter_mut().zip(c) {
            let x = if x < h { x } else { f64::NEG_INFINITY };
            *m = if x > *m { x } else { *m };
        }
    }
    let r = m.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    chunks.remainder().iter().copied().filter(|&x| x < h).fold(r, f64::max)
}

/// The smallest value of `v` above `h` (+∞ when none is).
#[inline(always)]
fn min_above(v: &[f64], h: f64) -> f64 {
    let mut m = [f64::INFINITY; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in m.iter_mut().zip(c) {
            let x = if x > h { x } else { f64::INFINITY };
            *m = if x < *m { x } else { *m };
        }
    }
    let r = m.iter().copied().fold(f64::INFINITY, f64::min);
    chunks.remainder().iter().copied().filter(|&x| x > h).fold(r, f64::min)
}

/// The value of rank `k` (from 0, ascending) of `v` and the number of values below it, when it
/// lies within [`MAX_STEPS`] distinct values of `hint`.
#[inline(always)]
fn kth_near(v: &[f64], k: usize, hint: f64) -> Option<(f64, usize)> {
    if !hint.is_finite() || k >= v.len() {
        return None;
    }
    let (lt, le) = counts(v, hint);
    if lt <= k && k < le {
        return Some((hint, lt));
    }
    if k >= le {
        // Upwards; `le` values are at most `cur`, and nothing lies between it and the next.
        let (mut cur, mut le) = (hint, le);
        for _ in 0..MAX_STEPS {
            let next = min_above(v, cur);
            if k == le {
                return Some((next, le));
            }
            let (_, next_le) = counts(v, next);
            if k < next_le {
                return Some((next, le));
            }
            (cur, le) = (next, next_le);
        }
    } else {
        // Downwards; `lt` values are below `cur`.
        let mut cur = hint;
        for _ in 0..MAX_STEPS {
            let prev = max_below(v, cur);
            let (prev_lt, _) = counts(v, prev);
            if k >= prev_lt {
                return Some((prev, prev_lt));
            }
            cur = prev;
        }
    }
    None
}

/// The median of `v` (the mean of the two middle values when their number is even) and its
/// upper middle value, as [`median`] computes it, searched from `hint`; `v` is reordered only
/// when the search falls back to a selection.
#[inline(always)]
fn median_near(v: &mut [f64], hint: f64) -> (f64, f64) {
    let n = v.len();
    let mid = n / 2;
    let Some((upper, below)) = kth_near(v, mid, hint) else {
        let m = median(v);
        let upper = v[mid];
        return (m, upper);
    };
    if n % 2 == 1 {
        return (upper, upper);
    }
    let lower = if below < mid { upper } else { max_below(v, upper) };
    ((lower + upper) / 2.0, upper)
}

/// [`super::location_scale`], searched from the window's last answers, which it updates. The
/// median and sigma are the same values; `v` (not empty: a window holds at least half the
/// warm-up) is overwritten with the absolute deviations.
#[inline(always)]
pub(crate) fn location_scale_near(v: &mut [f64], hint: &mut Hint) -> (f64, f64) {
    debug_assert!(!v.is_empty(), "an empty window has no median");
    let (med, upper) = median_near(v, hint.med);
    for x in v.iter_mut() {
        *x = (*x - med).abs();
    }
    let (mad, mad_upper) = median_near(v, f64::from(hint.mad));
    *hint = Hint { med: upper, mad: below(mad_upper) };
    (med, robust_sigma(med, mad, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// Slides windows of every length from 1 to 40 and of 240 over series with and without
    /// ties, level steps and outliers: the hinted search returns bit for bit the median and
    /// sigma of a selection, from a good hint, a stale one, or none.
    #[test]
    fn the_hinted_search_finds_what_a_selection_finds() {
        let mut rng = StdRng::seed_from_u64(7);
        let series: Vec<Vec<f64>> = vec![
            (0..2000).map(|_| rng.random_range(-1.0..1.0)).collect(),
            (0..2000).map(|_| f64::from(rng.random_range(0..4u8))).collect(),
            (0..2000).map(|i| if i % 97 == 0 { 1e6 } else if i > 1000 { 50.0 } else { f64::from(i % 7) }).collect(),
            vec![3.0; 500],
        ];
        let mut stepped = 0;
        for xs in &series {
            for len in (1..=40).chain([239, 240]) {
                let mut hint = Hint::default();
                for (i, w) in xs.windows(len).enumerate() {
                    if i % 50 == 0 {
                        // Now and then a stale or absurd hint.
                        hint = Hint { med: [f64::NAN, 1e9, -1e9, 0.5][i / 50 % 4], mad: 0.25 };
                    }
                    let mut a = w.to_vec();
                    let mut b = w.to_vec();
                    let want = crate::detector::location_scale(&mut a);
                    let before = counts(&b, hint.med);
                    let got = location_scale_near(&mut b, &mut hint);
                    assert_eq!(want.0.to_bits(), got.0.to_bits(), "median of {w:?}");
                    assert!((want.1 - got.1).abs() <= 1e-12 * want.1.abs(), "sigma of {w:?}: {} vs {}", want.1, got.1);
                    stepped += usize::from(before.0 == before.1);
                }
            }
        }
        // The search was exercised from hints that are not in the window.
        assert!(stepped > 1000, "{stepped}");
    }

    /// The AVX2 build of the search returns the baseline build's bits, from the same hints.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_search_gives_the_bits_of_the_baseline_one() {
        #[target_feature(enable = "avx2")]
        fn search_avx2(v: &mut [f64], hint: &mut Hint) -> (f64, f64) {
            location_scale_near(v, hint)
        }
        if !crate::detector::tests::has_avx2() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(11);
        let xs: Vec<f64> = (0..5000).map(|i| if i % 211 == 0 { 1e7 } else { f64::from(rng.random_range(0..400u16)) * 0.25 + rng.random_range(0.0..1e-3) * f64::from(i % 3) }).collect();
        let (mut h1, mut h2) = (Hint::default(), Hint::default());
        for len in [7, 24, 239, 240] {
            for w in xs.windows(len) {
                let (mut a, mut b) = (w.to_vec(), w.to_vec());
                let want = location_scale_near(&mut a, &mut h1);
                // SAFETY: AVX2 was detected above.
                let got = unsafe { search_avx2(&mut b, &mut h2) };
                assert_eq!((want.0.to_bits(), want.1.to_bits()), (got.0.to_bits(), got.1.to_bits()), "window {w:?}");
                assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), b.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
            }
        }
    }

    /// The deviations' hint is the largest single precision float at or below the answer, so
    /// the search steps up to it.
    #[test]
    fn a_kept_hint_is_the_largest_single_float_at_or_below_the_answer() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100_000 {
            let x = rng.random_range(0.0..1.0f64) * 10f64.powi(rng.random_range(-8..8));
            let h = below(x);
            assert!(f64::from(h) <= x && f64::from(h.next_up()) > x, "{x}: {h}");
        }
        assert_eq!(below(0.25), 0.25);
        assert!(below(f64::NAN).is_nan());
        assert_eq!(std::mem::size_of::<[Hint; 2]>(), 24);
    }

    #[test]
    fn a_rank_far_from_the_hint_is_left_to_the_selection() {
        let v: Vec<f64> = (0..100).map(f64::from).collect();
        assert_eq!(kth_near(&v, 50, 50.0), Some((50.0, 50)));
        assert_eq!(kth_near(&v, 52, 49.5), Some((52.0, 52)));
        assert_eq!(kth_near(&v, 50, 49.5), Some((50.0, 50)), "from just below (a hint rounded down)");
        assert_eq!(kth_near(&v, 47, 50.0), Some((47.0, 47)));
        assert_eq!(kth_near(&v, 90, 50.0), None);
        assert_eq!(kth_near(&v, 0, f64::NAN), None);
        // Over every rank and hints between, on and around the values (with ties), the search
        // agrees with a sort when it answers.
        let w: Vec<f64> = (0..37).map(|i| f64::from((i * 7) % 11)).collect();
        let mut sorted = w.clone();
        sorted.sort_by(f64::total_cmp);
        for k in 0..w.len() {
            for h in (0..48).map(|i| f64::from(i) * 0.25 - 0.5) {
                let want = (sorted[k], sorted.iter().filter(|x| **x < sorted[k]).count());
                if let Some(got) = kth_near(&w, k, h) {
                    assert_eq!(got, want, "rank {k} from {h}");
                }
            }
        }
    }
}
