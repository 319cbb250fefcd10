//! Threshold selection: the (n − m)-th largest |Γ| of one group, at mask ratio 0.3.
//!
//! - `host_exact`: radix histogram + select on host memory (what CPU backends use)
//! - `device_exact_ndarray`: the on-device bisection, here run on ndarray (1M and 16M)
//! - `sampled`: quantile of a 1M-entry sample (gathered on the device)
//! - `sort_reference`: a full sort, for scale (1M only)

use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gmt_bench::random_values;
use gmt_core::masking::{
    device_kth_largest_abs, kept_count, kth_largest_abs, kth_largest_abs_by_sort,
    sampled_kth_largest_abs,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const RATIO: f64 = 0.3;
const SAMPLE: usize = 1 << 20;

fn selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("selection");
    group.sample_size(10);
    for n in [1usize << 20, 16 << 20, 64 << 20] {
        let label = format!("{}M", n >> 20);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let values = random_values(&mut rng, n, 1e-3);
        let keep = kept_count(n, RATIO);
        group.throughput(criterion::Throughput::Elements(n as u64));

        group.bench_function(BenchmarkId::new("host_exact", &label), |b| {
            b.iter(|| kth_largest_abs(&[&values], keep));
        });
        let tensor = Tensor::<NdArray, 1>::from_data(
            TensorData::new(values.clone(), [n]),
            &Default::default(),
        );
        let abs = vec![vec![tensor.clone().abs()]];
        // The device bisection is meant for GPUs; on ndarray it is shown for scale only, and
        // skipped at 64M where one run takes tens of seconds.
        if n <= 16 << 20 {
            group.bench_function(BenchmarkId::new("device_exact_ndarray", &label), |b| {
                b.iter(|| device_kth_largest_abs(&abs, &[keep]));
            });
        }
        group.bench_function(BenchmarkId::new("sampled_1M", &label), |b| {
            let mut rng = ChaCha8Rng::seed_from_u64(2);
            b.iter(|| sampled_kth_largest_abs(&abs[0], keep, SAMPLE, &mut rng));
        });
        if n == 1 << 20 {
            group.bench_function(BenchmarkId::new("sort_reference", &label), |b| {
                b.iter(|| kth_largest_abs_by_sort(&[&values], keep));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, selection);
criterion_main!(benches);
