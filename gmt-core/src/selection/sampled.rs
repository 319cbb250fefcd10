//! Threshold estimated from a uniform sample.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use rand::Rng;

use super::kth_largest_abs;

/// Rank in a sample of `sample` entries that matches keeping `keep` of `n`:
/// `ceil(keep / n · sample)`, at least 1.
pub fn sample_count(keep: usize, n: usize, sample: usize) -> usize {
    let rank = (keep as f64 / n as f64 * sample as f64).ceil() as usize;
    rank.clamp(1, sample)
}

/// Estimates the `keep`-th largest |x| of the group `parts` (1-D tensors) from `sample_size`
/// entries drawn uniformly with replacement. Only the sample leaves the device.
///
/// A group no larger than the sample is selected exactly instead.
pub fn sampled_kth_largest_abs<B: Backend>(
    parts: &[Tensor<B, 1>],
    keep: usize,
    sample_size: usize,
    rng: &mut impl Rng,
) -> f32 {
    let sizes: Vec<usize> = parts.iter().map(|t| t.dims()[0]).collect();
    let n: usize = sizes.iter().sum();
    if n <= sample_size {
        let data: Vec<Vec<f32>> = parts
            .iter()
            .map(|t| t.clone().into_data().iter::<f32>().collect())
            .collect();
        let slices: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
        return kth_largest_abs(&slices, keep);
    }

    // Draw global indices, then route each to its part.
    let mut per_part: Vec<Vec<i64>> = vec![Vec::new(); parts.len()];
    let starts: Vec<usize> = sizes
        .iter()
        .scan(0, |acc, &s| {
            let start = *acc;
            *acc += s;
            Some(start)
        })
        .collect();
    for _ in 0..sample_size {
        let index = rng.random_range(0..n);
        let part = starts.partition_point(|&s| s <= index) - 1;
        per_part[part].push((index - starts[part]) as i64);
    }
    let gathered: Vec<Tensor<B, 1>> = parts
        .iter()
        .zip(per_part)
        .filter(|(_, idx)| !idx.is_empty())
        .map(|(t, idx)| {
            let len = idx.len();
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [len]), &t.device());
            t.clone().select(0, idx)
        })
        .collect();
    let sample: Vec<f32> = Tensor::cat(gathered, 0).into_data().iter::<f32>().collect();
    kth_largest_abs(&[&sample], sample_count(keep, n, sample_size))
}
