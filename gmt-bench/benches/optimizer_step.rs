//! One whole optimizer step over gradients shaped like SmolLM2-135M's parameters
//! (≈134.5M entries) on burn's Flex (the CLI's CPU backend): burn's AdamW, gmt-core's
//! `FusedAdamW` (the same bits in one pass per parameter), and GMT (ratio 0.3, exact
//! selection) around `FusedAdamW` with tensor and global scope, both targets. No forward or
//! backward pass: the step alone.

use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use burn::optim::{AdamWConfig, Optimizer};
use criterion::{Criterion, criterion_group, criterion_main};
use gmt_bench::{FixedGradients, ShapedParams, smollm2_135m_shapes};
use gmt_core::{FusedAdamW, GmtConfig, MaskScope, MaskTarget};

type B = Autodiff<Flex>;

fn burn_adamw() -> AdamWConfig {
    AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.0)
}

fn adamw() -> FusedAdamW {
    FusedAdamW::new(0.9, 0.999, 1e-8, 0.0)
}

fn time_steps<O: Optimizer<ShapedParams<B>, B>>(
    iters: u64,
    optim: &mut O,
    model: &mut Option<ShapedParams<B>>,
    grads: &FixedGradients,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let m = model.take().unwrap();
        let g = grads.params(&m); // untimed: stands in for the backward pass
        let start = Instant::now();
        let m = optim.step(1e-5, m, g);
        total += start.elapsed();
        *model = Some(m);
    }
    total
}

fn optimizer_step(c: &mut Criterion) {
    let device = Default::default();
    let shapes = smollm2_135m_shapes();
    let mut group = c.benchmark_group("optimizer_step_smollm2_135m");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));

    {
        let mut model = Some(ShapedParams::<B>::new(&shapes, &device, 0));
        let grads = FixedGradients::new(model.as_ref().unwrap(), 1);
        let mut optim = burn_adamw().init::<B, ShapedParams<B>>();
        time_steps(1, &mut optim, &mut model, &grads); // moments allocated before timing
        group.bench_function("adamw_burn", |b| {
            b.iter_custom(|iters| time_steps(iters, &mut optim, &mut model, &grads));
        });
    }
    {
        let mut model = Some(ShapedParams::<B>::new(&shapes, &device, 0));
        let grads = FixedGradients::new(model.as_ref().unwrap(), 1);
        let mut optim = adamw().init::<B, ShapedParams<B>>();
        time_steps(1, &mut optim, &mut model, &grads);
        group.bench_function("adamw", |b| {
            b.iter_custom(|iters| time_steps(iters, &mut optim, &mut model, &grads));
        });
    }
    for (name, scope, target) in [
        (
            "gmt_tensor_gradient",
            MaskScope::Tensor,
            MaskTarget::Gradient,
        ),
        (
            "gmt_global_gradient",
            MaskScope::Global,
            MaskTarget::Gradient,
        ),
        ("gmt_tensor_update", MaskScope::Tensor, MaskTarget::Update),
    ] {
        let mut model = Some(ShapedParams::<B>::new(&shapes, &device, 0));
        let grads = FixedGradients::new(model.as_ref().unwrap(), 1);
        let config = GmtConfig::new(0.3).with_scope(scope).with_target(target);
        let mut optim = config
            .init(adamw().init(), model.as_ref().unwrap())
            .unwrap();
        time_steps(1, &mut optim, &mut model, &grads);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| time_steps(iters, &mut optim, &mut model, &grads));
        });
    }
    group.finish();
}

criterion_group!(benches, optimizer_step);
criterion_main!(benches);
