//! Sums whose rounding does not depend on thread scheduling.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Entries summed per row before the row sums are added up.
const ROW: usize = 4096;

/// The sum of `x`'s entries as a one-entry tensor, added up in an order fixed by `x`'s length
/// alone: rows of 4096 entries first, then the row sums, then the remainder.
///
/// A plain `sum` is free to split the work by what the thread pool is doing: burn's Flex CPU
/// backend sums tensors of over 4M entries in rayon chunks combined in work-stealing order,
/// so ‖Γ‖² of a 49152 × 576 embedding could change in its last bit from run to run, and with
/// it the clipping scale and every weight after it. Reductions along a dimension are
/// row-by-row on every backend gmt uses, so summing rows first and then fewer than 4M row
/// sums keeps the same command giving the same bits. Small tensors take the plain `sum`.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// use gmt_core::masking::fixed_order_sum;
///
/// let x = Tensor::<NdArray, 1>::from_floats([1.0, 2.0, 3.5], &Default::default());
/// assert_eq!(fixed_order_sum(x).into_scalar(), 6.5);
/// ```
pub fn fixed_order_sum<B: Backend>(x: Tensor<B, 1>) -> Tensor<B, 1> {
    let n = x.dims()[0];
    let rows = n / ROW;
    if rows < 2 {
        return x.sum();
    }
    let body = x
        .clone()
        .slice(0..rows * ROW)
        .reshape([rows, ROW])
        .sum_dim(1)
        .reshape([rows])
        .sum();
    match n % ROW {
        0 => body,
        _ => body + x.slice(rows * ROW..n).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn agrees_with_a_sequential_f64_sum_on_every_split() {
        let device = Default::default();
        for n in [1, ROW - 1, ROW, 2 * ROW, 2 * ROW + 1, 5 * ROW + 17] {
            let values: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) * 0.125).collect();
            let exact: f64 = values.iter().map(|&v| v as f64).sum();
            let x = Tensor::<NdArray, 1>::from_floats(values.as_slice(), &device);
            let sum = fixed_order_sum(x).into_scalar() as f64;
            // Multiples of 1/8 below 2^20 in magnitude: every partial sum is exact in f32.
            assert_eq!(sum, exact, "n = {n}");
        }
    }
}
