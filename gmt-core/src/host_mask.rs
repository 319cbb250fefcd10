//! The host masking kernel: one pass over a gradient in host memory that zeroes the dropped
//! entries and counts what was kept.

/// Entries processed side by side: independent accumulators, so the sums vectorize instead of
/// waiting on one long chain of dependent additions.
const LANES: usize = 8;

/// What one pass of [`mask_in_place`] counted.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct HostCounts {
    /// Entries kept.
    pub kept: usize,
    /// ‖Γ‖².
    pub total_sq: f64,
    /// ‖Γ·mask‖².
    pub kept_sq: f64,
}

/// Zeroes every entry of `values` for which `keep(index, value)` is false, in place, and
/// returns the kept count and both squared norms; `drops`, when given (same length as
/// `values`), receives `true` for each dropped entry.
///
/// Squares are summed in f64 over [`LANES`] interleaved accumulators, combined at the end: an
/// order fixed by the length alone, so the result is the same on every run. (The previous
/// version summed one entry after another; that serial chain, not memory, bound the pass —
/// ~3.5× slower on a 28M-entry embedding gradient.) A dropped entry becomes +0.0.
///
/// `keep` must be cheap and branch-free for the loop to vectorize: a threshold comparison or
/// a lookup in a mask.
#[inline]
pub(crate) fn mask_in_place(
    values: &mut [f32],
    keep: impl Fn(usize, f32) -> bool,
    drops: Option<&mut [bool]>,
) -> HostCounts {
    match drops {
        Some(drops) => {
            assert_eq!(drops.len(), values.len(), "one drop flag per entry");
            pass(values, &keep, |j, kept| drops[j] = !kept)
        }
        None => pass(values, &keep, |_, _| {}),
    }
}

#[inline(always)]
fn pass(
    values: &mut [f32],
    keep: &impl Fn(usize, f32) -> bool,
    mut record: impl FnMut(usize, bool),
) -> HostCounts {
    let mut total = [0f64; LANES];
    let mut kept_sq = [0f64; LANES];
    let mut kept = [0usize; LANES];
    let mut chunks = values.chunks_exact_mut(LANES);
    for (c, chunk) in (&mut chunks).enumerate() {
        let chunk: &mut [f32; LANES] = chunk.try_into().expect("exact chunk");
        let base = c * LANES;
        // Each step is its own loop over the lanes so that each compiles to vector code.
        let mut mask = [0u32; LANES];
        for l in 0..LANES {
            let x = chunk[l] as f64;
            total[l] += x * x;
        }
        for l in 0..LANES {
            let k = keep(base + l, chunk[l]);
            mask[l] = (k as u32).wrapping_neg();
            kept[l] += k as usize;
            record(base + l, k);
        }
        for l in 0..LANES {
            chunk[l] = f32::from_bits(chunk[l].to_bits() & mask[l]);
            let x = chunk[l] as f64;
            kept_sq[l] += x * x;
        }
    }
    let mut counts = HostCounts {
        kept: kept.iter().sum(),
        total_sq: total.iter().sum(),
        kept_sq: kept_sq.iter().sum(),
    };
    let start = values.len() - values.len() % LANES;
    for (j, x) in values[start..].iter_mut().enumerate() {
        let sq = (*x as f64) * (*x as f64);
        counts.total_sq += sq;
        let k = keep(start + j, *x);
        record(start + j, k);
        if k {
            counts.kept += 1;
            counts.kept_sq += sq;
        } else {
            *x = 0.0;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, entry by entry.
    fn reference(values: &[f32], t: f32) -> (Vec<f32>, Vec<bool>, usize, f64, f64) {
        let mut out = values.to_vec();
        let mut drops = vec![false; values.len()];
        let (mut kept, mut total, mut kept_sq) = (0, 0.0, 0.0);
        for (j, x) in out.iter_mut().enumerate() {
            let sq = (*x as f64) * (*x as f64);
            total += sq;
            if x.abs() >= t {
                kept += 1;
                kept_sq += sq;
            } else {
                *x = 0.0;
                drops[j] = true;
            }
        }
        (out, drops, kept, total, kept_sq)
    }

    proptest! {
        #[test]
        fn matches_the_entrywise_definition(
            values in prop::collection::vec(-4.0f32..4.0, 0..100),
            t in 0.0f32..4.0,
        ) {
            let (want, want_drops, kept, total, kept_sq) = reference(&values, t);
            let mut got = values.clone();
            let mut drops = vec![false; values.len()];
            let counts = mask_in_place(&mut got, |_, x| x.abs() >= t, Some(&mut drops));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&got), bits(&want));
            prop_assert_eq!(drops, want_drops);
            prop_assert_eq!(counts.kept, kept);
            // Same terms, summed in another order.
            prop_assert!((counts.total_sq - total).abs() <= 1e-12 * total.max(1.0));
            prop_assert!((counts.kept_sq - kept_sq).abs() <= 1e-12 * kept_sq.max(1.0));
        }
    }

    #[test]
    fn keep_sees_each_index_once_and_nan_is_dropped() {
        let mut values: Vec<f32> = (0..19).map(|i| i as f32).collect();
        values[4] = f32::NAN;
        let counts = mask_in_place(&mut values, |j, x| j % 2 == 0 && x.abs() >= 0.0, None);
        let kept: Vec<usize> = (0..19).filter(|j| j % 2 == 0 && *j != 4).collect();
        assert_eq!(counts.kept, kept.len());
        for (j, x) in values.iter().enumerate() {
            let want = if kept.contains(&j) { j as f32 } else { 0.0 };
            assert_eq!(x.to_bits(), want.to_bits(), "entry {j}");
        }
    }
}
