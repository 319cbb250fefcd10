//! Exact selection on host memory.

/// |x| as bits: for non-negative floats the bit pattern orders exactly like the value.
#[inline]
pub(crate) fn abs_bits(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// Histogram buckets are the top bits of |x| (sign dropped): 8 exponent bits and 7 mantissa
/// bits, so one bucket spans a relative width of 1/128 and holds few entries.
const BUCKET_SHIFT: u32 = 16;
const BUCKETS: usize = 1 << (31 - BUCKET_SHIFT);
/// Below this many entries a plain selection on a copy is faster than two passes.
pub(crate) const SMALL: usize = 1 << 14;

/// The `k`-th largest |x| over all `parts` (1-based `k`, counting duplicates), in O(n).
///
/// NaN is treated as larger than infinity (its bits are); callers reject non-finite
/// gradients before selecting.
///
/// # Panics
/// If `k` is 0 or larger than the number of entries: the caller computes `k` from the size.
///
/// ```
/// use gmt_core::masking::kth_largest_abs;
/// let x = [0.5f32, -3.0, 2.0, -2.0, 1.0];
/// assert_eq!(kth_largest_abs(&[&x], 1), 3.0);
/// assert_eq!(kth_largest_abs(&[&x], 3), 2.0); // ties count separately
/// assert_eq!(kth_largest_abs(&[&x[..2], &x[2..]], 5), 0.5);
/// ```
pub fn kth_largest_abs(parts: &[&[f32]], k: usize) -> f32 {
    let n: usize = parts.iter().map(|p| p.len()).sum();
    assert!(k >= 1 && k <= n, "k = {k} outside 1..={n}");
    if n <= SMALL {
        let mut bits: Vec<u32> = parts
            .iter()
            .flat_map(|p| p.iter().map(|&x| abs_bits(x)))
            .collect();
        return f32::from_bits(select_kth_largest(&mut bits, k));
    }
    BoundaryBucket::find(parts, k).select_from(parts)
}

/// The histogram bucket that holds the `k`-th largest |x| of a group: found in one counting
/// pass, it decides every entry outside it (above: kept; below: dropped), so only the
/// entries inside it — its candidates — need looking at again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BoundaryBucket {
    /// The smallest |x| bit pattern in the bucket.
    pub lo: u32,
    /// The smallest |x| bit pattern above the bucket.
    pub hi: u32,
    /// Entries above the bucket.
    pub above: usize,
    /// Entries in the bucket.
    pub size: usize,
    /// The rank sought, over the whole group (1-based).
    k: usize,
}

impl BoundaryBucket {
    /// Counts `parts` into the histogram and walks it from the top to the bucket holding the
    /// `k`-th largest entry (`1 <= k <= n`).
    pub(crate) fn find(parts: &[&[f32]], k: usize) -> Self {
        let mut counts = vec![0usize; BUCKETS];
        for part in parts {
            for &x in *part {
                counts[(abs_bits(x) >> BUCKET_SHIFT) as usize] += 1;
            }
        }
        let mut above = 0;
        let mut bucket = BUCKETS - 1;
        while above + counts[bucket] < k {
            above += counts[bucket];
            bucket -= 1;
        }
        Self {
            lo: (bucket as u32) << BUCKET_SHIFT,
            hi: (bucket as u32 + 1) << BUCKET_SHIFT,
            above,
            size: counts[bucket],
            k,
        }
    }

    /// Whether an |x| bit pattern lies in the bucket.
    #[inline(always)]
    pub(crate) fn contains(&self, bits: u32) -> bool {
        bits >= self.lo && bits < self.hi
    }

    /// The `k`-th largest |x| of the group `parts` (the one counted), collecting the bucket's
    /// entries in a pass of their own.
    pub(crate) fn select_from(&self, parts: &[&[f32]]) -> f32 {
        let mut candidates = Vec::with_capacity(self.size);
        for part in parts {
            candidates.extend(
                part.iter()
                    .map(|&x| abs_bits(x))
                    .filter(|&b| self.contains(b)),
            );
        }
        self.select(&mut candidates)
    }

    /// The `k`-th largest |x| of the group, from the bit patterns of every entry in the
    /// bucket (in any order; reordered here).
    pub(crate) fn select(&self, candidates: &mut [u32]) -> f32 {
        debug_assert_eq!(candidates.len(), self.size, "every entry of the bucket");
        f32::from_bits(select_kth_largest(candidates, self.k - self.above))
    }
}

fn select_kth_largest(bits: &mut [u32], k: usize) -> u32 {
    let index = bits.len() - k;
    *bits.select_nth_unstable(index).1
}

/// Reference for [`kth_largest_abs`]: sort all |x| descending and index. O(n log n).
pub fn kth_largest_abs_by_sort(parts: &[&[f32]], k: usize) -> f32 {
    let mut all: Vec<f32> = parts
        .iter()
        .flat_map(|p| p.iter().map(|x| x.abs()))
        .collect();
    all.sort_by(|a, b| b.total_cmp(a));
    all[k - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values() -> impl Strategy<Value = Vec<f32>> {
        // Mix continuous values, heavy ties, zeros, signed zeros and subnormals.
        let entry = prop_oneof![
            4 => -1.0e3f32..1.0e3,
            2 => (-4i32..4).prop_map(|i| i as f32 * 0.25),
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => Just(f32::MIN_POSITIVE / 8.0),
            1 => -1.0e-30f32..1.0e-30,
        ];
        prop::collection::vec(entry, 1..400)
    }

    proptest! {
        #[test]
        fn equals_sort_reference(v in values(), k_frac in 0.0f64..1.0, split in 0usize..400) {
            let k = 1 + ((v.len() - 1) as f64 * k_frac) as usize;
            let split = split.min(v.len());
            let parts = [&v[..split], &v[split..]];
            prop_assert_eq!(
                kth_largest_abs(&parts, k).to_bits(),
                kth_largest_abs_by_sort(&parts, k).to_bits()
            );
        }

        #[test]
        fn large_groups_use_histogram_and_agree(seed in any::<u64>(), k_frac in 0.0f64..1.0) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            // Above SMALL so the histogram path runs; narrow range so buckets hold many ties.
            let v: Vec<f32> = (0..SMALL * 3)
                .map(|_| (rng.random_range(-64i32..64) as f32) * 1.0e-3 * rng.random::<f32>())
                .collect();
            let k = 1 + ((v.len() - 1) as f64 * k_frac) as usize;
            let parts = [&v[..1000], &v[1000..]];
            prop_assert_eq!(
                kth_largest_abs(&parts, k).to_bits(),
                kth_largest_abs_by_sort(&parts, k).to_bits()
            );
        }
    }

    #[test]
    fn one_entry() {
        assert_eq!(kth_largest_abs(&[&[-2.5]], 1), 2.5);
    }

    #[test]
    fn signed_zero_is_zero() {
        assert_eq!(kth_largest_abs(&[&[-0.0, 0.0]], 2).to_bits(), 0);
    }
}
