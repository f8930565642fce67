//! OTLP histograms as the decoder holds them: explicit or exponential buckets, the difference of
//! two cumulative points, and the quantiles of an interval.

use super::*;

/// A histogram's buckets as sent: explicit bounds, or an exponential layout.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub(super) enum Layout {
    /// `(lower, upper]` bounds and counts.
    Explicit(Buckets),
    /// Exponential buckets.
    Exp(ExpBuckets),
}

impl Layout {
    /// This (cumulative) layout minus an earlier one: the buckets of the interval between them.
    /// Exponential histograms may have been rescaled in between; both sides are brought to the
    /// coarser scale first. Explicit bounds that changed give no buckets.
    pub(super) fn minus(&self, prev: &Layout) -> Option<Layout> {
        match (self, prev) {
            (Layout::Explicit(a), Layout::Explicit(b)) if a.bounds == b.bounds && a.counts.len() == b.counts.len() => {
                let counts = a.counts.iter().zip(&b.counts).map(|(x, y)| x.saturating_sub(*y)).collect();
                Some(Layout::Explicit(Buckets { bounds: a.bounds.clone(), counts }))
            }
            (Layout::Exp(a), Layout::Exp(b)) => {
                let scale = a.scale.min(b.scale);
                let (a, b) = (a.downscale(scale), b.downscale(scale));
                Some(Layout::Exp(ExpBuckets {
                    scale,
                    zero_threshold: a.zero_threshold,
                    zero: a.zero.saturating_sub(b.zero),
                    pos: sub_sparse(&a.pos, &b.pos),
                    neg: sub_sparse(&a.neg, &b.neg),
                }))
            }
            _ => None,
        }
    }

    pub(super) fn buckets(&self) -> Buckets {
        match self {
            Layout::Explicit(b) => b.clone(),
            Layout::Exp(e) => e.buckets(),
        }
    }
}

/// Exponential histogram buckets by absolute index: index `i` covers `(base^i, base^(i+1)]`,
/// `base = 2^(2^-scale)`; negative values mirror that.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub(super) struct ExpBuckets {
    pub(super) scale: i32,
    pub(super) zero_threshold: f64,
    pub(super) zero: u64,
    /// (index, count), ascending index.
    pub(super) pos: Vec<(i64, u64)>,
    pub(super) neg: Vec<(i64, u64)>,
}

pub(super) fn sub_sparse(a: &[(i64, u64)], b: &[(i64, u64)]) -> Vec<(i64, u64)> {
    let earlier: HashMap<i64, u64> = b.iter().copied().collect();
    a.iter().map(|(i, c)| (*i, c.saturating_sub(earlier.get(i).copied().unwrap_or(0)))).collect()
}

impl ExpBuckets {
    /// The same counts at a coarser (or equal) scale: index `i` becomes `i >> (scale - to)`.
    pub(super) fn downscale(&self, to: i32) -> ExpBuckets {
        let shift = (self.scale - to).clamp(0, 63) as u32;
        let merge = |v: &[(i64, u64)]| {
            let mut out: Vec<(i64, u64)> = Vec::with_capacity(v.len());
            for &(i, c) in v {
                let j = i >> shift;
                match out.last_mut() {
                    Some(last) if last.0 == j => last.1 += c,
                    _ => out.push((j, c)),
                }
            }
            out
        };
        ExpBuckets { scale: to, zero_threshold: self.zero_threshold, zero: self.zero, pos: merge(&self.pos), neg: merge(&self.neg) }
    }

    pub(super) fn buckets(&self) -> Buckets {
        let base = 2f64.powf(2f64.powi(-self.scale));
        let mut bounds = Vec::with_capacity(self.pos.len() + self.neg.len() + 1);
        let mut counts = Vec::with_capacity(bounds.capacity());
        for &(i, c) in self.neg.iter().rev() {
            bounds.push((-base.powf(i as f64 + 1.0), -base.powf(i as f64)));
            counts.push(c);
        }
        let zt = self.zero_threshold.abs();
        bounds.push((-zt, zt));
        counts.push(self.zero);
        for &(i, c) in &self.pos {
            bounds.push((base.powf(i as f64), base.powf(i as f64 + 1.0)));
            counts.push(c);
        }
        Buckets { bounds, counts }
    }
}

/// Histogram buckets in one interval: `(lower, upper]` bounds and counts.
#[derive(serde::Serialize, serde::Deserialize, Debug, Default, Clone, PartialEq)]
pub(super) struct Buckets {
    pub(super) bounds: Vec<(f64, f64)>,
    pub(super) counts: Vec<u64>,
}

impl Buckets {
    /// The `q` quantile, interpolating linearly inside the bucket that holds it.
    pub(super) fn quantile(&self, counts: &[u64], q: f64) -> Option<f64> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut seen = 0u64;
        for (i, &c) in counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let (lo, hi) = self.bounds[i];
                let within = ((rank - seen as f64) / c as f64).clamp(0.0, 1.0);
                let v = lo + (hi - lo) * within;
                return v.is_finite().then_some(v);
            }
            seen += c;
        }
        self.bounds.last().map(|b| b.1).filter(|v| v.is_finite())
    }
}

/// The parts of a histogram point the decoder needs, in one shape for both histogram kinds.
pub(super) struct HistParts {
    pub(super) start: u64,
    pub(super) time: u64,
    pub(super) count: u64,
    pub(super) sum: f64,
    pub(super) layout: Layout,
}

pub(super) fn hist_parts(p: &HistogramDataPoint) -> Option<HistParts> {
    if p.time_unix_nano == 0 || p.flags & NO_RECORDED_VALUE != 0 {
        return None;
    }
    let n = p.explicit_bounds.len();
    if p.bucket_counts.len() != n + 1 && !(n == 0 && p.bucket_counts.is_empty()) {
        return None;
    }
    if p.explicit_bounds.windows(2).any(|w| w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less)) || p.explicit_bounds.iter().any(|b| !b.is_finite()) {
        return None;
    }
    let mut bounds = Vec::with_capacity(n + 1);
    for i in 0..p.bucket_counts.len() {
        let lo = if i == 0 { p.min.unwrap_or(if n > 0 && p.explicit_bounds[0] > 0.0 { 0.0 } else { f64::NEG_INFINITY }) } else { p.explicit_bounds[i - 1] };
        let hi = if i == n { p.max.unwrap_or(if n > 0 { p.explicit_bounds[n - 1] } else { f64::INFINITY }) } else { p.explicit_bounds[i] };
        // Bounds from min/max must not cross the explicit ones.
        let lo = if i == 0 && n > 0 { lo.min(p.explicit_bounds[0]) } else { lo };
        let hi = if i == n && n > 0 { hi.max(p.explicit_bounds[n - 1]) } else { hi };
        bounds.push((lo, hi));
    }
    Some(HistParts { start: p.start_time_unix_nano, time: p.time_unix_nano, count: p.count, sum: p.sum.unwrap_or(f64::NAN), layout: Layout::Explicit(Buckets { bounds, counts: p.bucket_counts.clone() }) })
}

/// The buckets of an exponential histogram point, by absolute index.
pub(super) fn exp_hist_parts(p: &ExponentialHistogramDataPoint) -> Option<HistParts> {
    if p.time_unix_nano == 0 || p.flags & NO_RECORDED_VALUE != 0 || !(-10..=20).contains(&p.scale) {
        return None;
    }
    let empty = exponential_histogram_data_point::Buckets::default();
    let neg = p.negative.as_ref().unwrap_or(&empty);
    let pos = p.positive.as_ref().unwrap_or(&empty);
    // Bucket counts are bounded by the record's size, but cap the work per point anyway.
    if neg.bucket_counts.len() + pos.bucket_counts.len() > 16_384 {
        return None;
    }
    let sparse = |b: &exponential_histogram_data_point::Buckets| -> Vec<(i64, u64)> {
        b.bucket_counts.iter().enumerate().map(|(k, c)| (b.offset as i64 + k as i64, *c)).collect()
    };
    let e = ExpBuckets { scale: p.scale, zero_threshold: p.zero_threshold, zero: p.zero_count, pos: sparse(pos), neg: sparse(neg) };
    Some(HistParts { start: p.start_time_unix_nano, time: p.time_unix_nano, count: p.count, sum: p.sum.unwrap_or(f64::NAN), layout: Layout::Exp(e) })
}
