//! Exact selection that stays on the device.

use burn::tensor::{Int, Tensor, backend::Backend};

/// For each group of non-negative 1-D tensors (|Γ| of its parameters), the `ks[g]`-th largest
/// entry, computed without copying any group to the host.
///
/// Non-negative `f32` values order exactly like their bit patterns, so the answer is the
/// largest bit pattern `t` with `count(x ≥ t) ≥ k`. A bisection over the 31 value bits finds
/// it; each round counts every still-open group at once and reads back one small vector, so
/// the host waits on the device about 32 times per call however many groups there are.
///
/// # Panics
/// If a `k` is 0 or exceeds its group's size (callers derive `k` from the size).
pub fn device_kth_largest_abs<B: Backend>(groups: &[Vec<Tensor<B, 1>>], ks: &[usize]) -> Vec<f32> {
    assert_eq!(groups.len(), ks.len());
    if groups.is_empty() {
        return Vec::new();
    }
    for (group, &k) in groups.iter().zip(ks) {
        let n: usize = group.iter().map(|t| t.dims()[0]).sum();
        assert!(k >= 1 && k <= n, "k = {k} outside 1..={n}");
    }

    let maxima = read_f32(
        groups
            .iter()
            .map(|group| {
                let maxima = group.iter().map(|t| t.clone().max()).collect();
                Tensor::cat(maxima, 0).max()
            })
            .collect(),
    );
    let mut lo = vec![0u32; groups.len()];
    let mut hi: Vec<u32> = maxima.iter().map(|m| m.to_bits()).collect();

    loop {
        let open: Vec<usize> = (0..groups.len()).filter(|&g| lo[g] < hi[g]).collect();
        if open.is_empty() {
            break;
        }
        let mids: Vec<u32> = open
            .iter()
            .map(|&g| lo[g] + (hi[g] - lo[g]).div_ceil(2))
            .collect();
        let counts = read_counts(
            open.iter()
                .zip(&mids)
                .map(|(&g, &mid)| count_at_least(&groups[g], f32::from_bits(mid)))
                .collect(),
        );
        for ((&g, &mid), count) in open.iter().zip(&mids).zip(counts) {
            if count >= ks[g] as i64 {
                lo[g] = mid;
            } else {
                hi[g] = mid - 1;
            }
        }
    }
    lo.into_iter().map(f32::from_bits).collect()
}

fn count_at_least<B: Backend>(group: &[Tensor<B, 1>], threshold: f32) -> Tensor<B, 1, Int> {
    // Integer sums: float counts would lose exactness above 2^24 entries.
    let counts = group
        .iter()
        .map(|t| t.clone().greater_equal_elem(threshold).int().sum())
        .collect::<Vec<_>>();
    // One part per group is the common case; cat only when needed.
    if counts.len() == 1 {
        counts.into_iter().next().unwrap()
    } else {
        Tensor::cat(counts, 0).sum()
    }
}

fn read_counts<B: Backend>(counts: Vec<Tensor<B, 1, Int>>) -> Vec<i64> {
    Tensor::cat(counts, 0).into_data().iter::<i64>().collect()
}

fn read_f32<B: Backend>(scalars: Vec<Tensor<B, 1>>) -> Vec<f32> {
    Tensor::cat(scalars, 0).into_data().iter::<f32>().collect()
}
