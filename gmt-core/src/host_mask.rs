//! The host masking kernel: one pass over a gradient in host memory that zeroes the dropped
//! entries and counts what was kept.

use crate::selection::{BoundaryBucket, abs_bits};

/// Entries processed side by side: independent accumulators, so the sums vectorize instead of
/// waiting on one long chain of dependent additions.
const LANES: usize = 16;
/// Entries per block: kept counts add up per block in `u32` lanes (vector code, and no
/// overflow), and only a block with a pending entry is looked through again for it.
const BLOCK: usize = LANES * 16;

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

/// Which entries a [`mask_in_place`] pass keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Keep<'a> {
    /// Those with |x| ≥ the threshold (NaN is dropped).
    AtLeast(f32),
    /// Those marked `true` (one flag per entry).
    Chosen(&'a [bool]),
}

/// Zeroes every entry of `values` that `keep` does not keep, in place, and returns the kept
/// count and both squared norms. (Which entries were dropped is not recorded here: writing a
/// flag per entry kept this pass from vectorizing; the caller reads it off the result.)
///
/// Squares are summed in f64 over [`LANES`] interleaved accumulators per block of [`BLOCK`]
/// entries, the blocks' sums added in order: an order fixed by the length alone, so the result
/// is the same on every run. (Summing one entry after another, a serial chain of dependent
/// additions bound the pass, ~3.5× slower on a 28M-entry embedding gradient; per-entry kept
/// counts in `usize` and a per-row check for pending entries made it ~1.5× slower than now.)
/// A dropped entry becomes +0.0.
///
/// The workspace builds for baseline x86-64, so these loops use SSE2 only. An AVX2 copy chosen
/// at run time (`pulp`'s dispatch) was measured: ~1.9× faster when everything is compiled
/// inside the dispatched copy, but the closures this pass is built from stayed baseline code
/// through the dispatch and the whole pass ran ~3× slower, so there is none.
pub(crate) fn mask_in_place(values: &mut [f32], keep: Keep<'_>) -> HostCounts {
    let none_pending = |_: f32| false;
    match keep {
        Keep::AtLeast(t) => pass(values, &|_, x| x.abs() >= t, &none_pending, |_| {}),
        Keep::Chosen(chosen) => {
            assert_eq!(chosen.len(), values.len(), "one choice per entry");
            pass(values, &|j, _| chosen[j], &none_pending, |_| {})
        }
    }
}

/// The exact magnitude mask in one read of Γ, before its threshold is known: entries above
/// `bucket` are kept and those below dropped, as [`mask_in_place`] would with the threshold;
/// entries inside it stay as they are, pending, and their indices are returned. The counts
/// leave the pending entries out (neither kept nor in ‖Γ·mask‖²) until [`settle`] decides
/// them; ‖Γ‖² is complete. Selecting the threshold from the pending entries of the whole
/// group ([`BoundaryBucket::select`]) and settling them gives exactly the values and kept
/// count of [`mask_in_place`] with that threshold.
pub(crate) fn mask_outside_bucket(
    values: &mut [f32],
    bucket: &BoundaryBucket,
) -> (HostCounts, Vec<usize>) {
    let mut pending = Vec::new();
    let keep = |_: usize, x: f32| abs_bits(x) >= bucket.lo;
    let in_bucket = |x: f32| bucket.contains(abs_bits(x));
    let counts = pass(values, &keep, &in_bucket, |j| pending.push(j));
    (counts, pending)
}

/// Decides the `pending` entries left by [`mask_outside_bucket`]: kept where |x| ≥
/// `threshold`, else zeroed (+0.0); `counts` take in the kept ones.
pub(crate) fn settle(
    values: &mut [f32],
    pending: &[usize],
    threshold: f32,
    counts: &mut HostCounts,
) {
    let t = abs_bits(threshold);
    for &j in pending {
        let x = values[j];
        if abs_bits(x) >= t {
            counts.kept += 1;
            counts.kept_sq += (x as f64) * (x as f64);
        } else {
            values[j] = 0.0;
        }
    }
}

/// The pass: `keep` decides each entry; entries for which `pending` holds are left in place,
/// out of the counts, and handed to `on_pending` (branch-free lanes; `pending` of a constant
/// `false` compiles away).
#[inline(always)]
fn pass(
    values: &mut [f32],
    keep: &impl Fn(usize, f32) -> bool,
    pending: &impl Fn(f32) -> bool,
    mut on_pending: impl FnMut(usize),
) -> HostCounts {
    let mut counts = HostCounts::default();
    for (b, block) in values.chunks_mut(BLOCK).enumerate() {
        let base = b * BLOCK;
        let mut total = [0f64; LANES];
        let mut kept_sq = [0f64; LANES];
        let mut kept = [0u32; LANES];
        // Per row of the block, a bit for each pending lane.
        let mut waiting = [0u32; BLOCK / LANES + 1];
        // One entry, into lane `l`: a dropped entry is zeroed; a pending one is left as it is
        // and out of the kept count and ‖Γ·mask‖² (its lane adds +0.0 there).
        let mut visit = |x: &mut f32, j: usize, l: usize| -> u32 {
            let (k, w) = (keep(j, *x), pending(*x));
            let v = *x as f64;
            total[l] += v * v;
            let decided = k & !w;
            let kv = if decided { v } else { 0.0 };
            kept_sq[l] += kv * kv;
            kept[l] += decided as u32;
            *x = f32::from_bits(x.to_bits() & (k as u32).wrapping_neg());
            (w as u32) << l
        };
        let tail_base = base + block.len() - block.len() % LANES;
        let mut rows = block.chunks_exact_mut(LANES);
        for (r, row) in (&mut rows).enumerate() {
            let row: &mut [f32; LANES] = row.try_into().expect("exact row");
            for (l, x) in row.iter_mut().enumerate() {
                waiting[r] |= visit(x, base + r * LANES + l, l);
            }
        }
        for (l, x) in rows.into_remainder().iter_mut().enumerate() {
            waiting[BLOCK / LANES] |= visit(x, tail_base + l, l);
        }
        counts.total_sq += total.iter().sum::<f64>();
        counts.kept_sq += kept_sq.iter().sum::<f64>();
        counts.kept += kept.iter().sum::<u32>() as usize;
        for (r, &bits) in waiting.iter().enumerate() {
            let row_base = if r < BLOCK / LANES {
                base + r * LANES
            } else {
                tail_base
            };
            let mut bits = bits;
            while bits != 0 {
                on_pending(row_base + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::{SMALL, kth_largest_abs};
    use proptest::prelude::*;

    /// The definition, entry by entry.
    fn reference(values: &[f32], t: f32) -> (Vec<f32>, usize, f64, f64) {
        let mut out = values.to_vec();
        let (mut kept, mut total, mut kept_sq) = (0, 0.0, 0.0);
        for x in out.iter_mut() {
            let sq = (*x as f64) * (*x as f64);
            total += sq;
            if x.abs() >= t {
                kept += 1;
                kept_sq += sq;
            } else {
                *x = 0.0;
            }
        }
        (out, kept, total, kept_sq)
    }

    proptest! {
        #[test]
        fn matches_the_entrywise_definition(
            values in prop::collection::vec(-4.0f32..4.0, 0..700),
            t in 0.0f32..4.0,
        ) {
            let (want, kept, total, kept_sq) = reference(&values, t);
            let mut got = values.clone();
            let counts = mask_in_place(&mut got, Keep::AtLeast(t));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&got), bits(&want));
            prop_assert_eq!(counts.kept, kept);
            // Same terms, summed in another order.
            prop_assert!((counts.total_sq - total).abs() <= 1e-12 * total.max(1.0));
            prop_assert!((counts.kept_sq - kept_sq).abs() <= 1e-12 * kept_sq.max(1.0));
        }
    }

    proptest! {
        /// Masking outside the boundary bucket, selecting among its entries and settling them
        /// gives what finding the threshold first and masking with it gives.
        #[test]
        fn one_pass_with_settling_equals_threshold_then_mask(
            values in prop::collection::vec(
                prop_oneof![4 => -4.0f32..4.0, 1 => Just(0.0f32), 1 => (-3i32..3).prop_map(|i| i as f32)],
                SMALL + 1..SMALL + 200,
            ),
            k_frac in 0.0f64..1.0,
            split in 0usize..SMALL,
        ) {
            let k = 1 + ((values.len() - 1) as f64 * k_frac) as usize;
            let (a, b) = values.split_at(split);
            let threshold = kth_largest_abs(&[a, b], k);
            let (want, kept, total, kept_sq) = reference(&values, threshold);

            let bucket = BoundaryBucket::find(&[a, b], k);
            let mut parts = [a.to_vec(), b.to_vec()];
            let passes: Vec<_> = parts.iter_mut().map(|part| mask_outside_bucket(part, &bucket)).collect();
            let mut candidates: Vec<u32> = passes
                .iter()
                .zip(&parts)
                .flat_map(|((_, pending), part)| pending.iter().map(|&j| abs_bits(part[j])))
                .collect();
            let selected = bucket.select(&mut candidates);
            prop_assert_eq!(selected.to_bits(), threshold.to_bits());
            let mut counts = HostCounts::default();
            for (part, (mut c, pending)) in parts.iter_mut().zip(passes) {
                settle(part, &pending, selected, &mut c);
                counts.kept += c.kept;
                counts.total_sq += c.total_sq;
                counts.kept_sq += c.kept_sq;
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&parts.concat()), bits(&want));
            prop_assert_eq!(counts.kept, kept);
            prop_assert!((counts.total_sq - total).abs() <= 1e-12 * total.max(1.0));
            prop_assert!((counts.kept_sq - kept_sq).abs() <= 1e-12 * kept_sq.max(1.0));
        }
    }

    #[test]
    fn chosen_entries_are_kept() {
        let mut values: Vec<f32> = (0..40).map(|i| i as f32 - 20.0).collect();
        let chosen: Vec<bool> = (0..40).map(|j| j % 3 == 0).collect();
        let counts = mask_in_place(&mut values, Keep::Chosen(&chosen));
        assert_eq!(counts.kept, 14);
        for (j, x) in values.iter().enumerate() {
            let want = if chosen[j] { j as f32 - 20.0 } else { 0.0 };
            assert_eq!(x.to_bits(), want.to_bits(), "entry {j}");
        }
    }

    #[test]
    fn nan_is_dropped() {
        let mut values: Vec<f32> = (0..19).map(|i| i as f32).collect();
        values[4] = f32::NAN;
        let counts = mask_in_place(&mut values, Keep::AtLeast(0.0));
        let kept: Vec<usize> = (0..19).filter(|j| *j != 4).collect();
        assert_eq!(counts.kept, kept.len());
        for (j, x) in values.iter().enumerate() {
            let want = if kept.contains(&j) { j as f32 } else { 0.0 };
            assert_eq!(x.to_bits(), want.to_bits(), "entry {j}");
        }
    }
}
