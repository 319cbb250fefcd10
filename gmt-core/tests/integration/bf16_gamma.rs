//! A bf16 Γ (the gradient of bf16 weights) is masked as its exact fp32 widening is: the same
//! thresholds, kept counts, norms and kept entries, whatever the scope, strategy and engine;
//! and Γ·mask comes back in bf16.

use burn::backend::Flex;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use gmt_core::masking::{MaskInput, mask_gradients};
use gmt_core::{GmtConfig, MaskScope, MaskStrategy, SelectionEngine};
use rand::SeedableRng;

/// Three gradients of bf16 values: several magnitudes, both signs, ties and zeros.
fn inputs(dtype: FloatDType) -> Vec<MaskInput<Flex>> {
    [(0usize, 300usize), (1, 129), (2, 1000)]
        .into_iter()
        .map(|(k, n)| {
            let values: Vec<f32> = (0..n)
                .map(|i| match i % 13 {
                    0 => 0.0,
                    1 => 0.25, // ties
                    j => ((i * (k + 3)) as f32 * 0.37).sin() * 10f32.powi(j as i32 % 5 - 3),
                })
                .collect();
            let grad =
                Tensor::<Flex, 1>::from_data(TensorData::new(values, [n]), &Default::default())
                    .cast(FloatDType::BF16) // bf16 values, so the fp32 inputs are the same numbers
                    .cast(dtype);
            MaskInput {
                path: format!("p{k}"),
                maskable: true,
                grad,
            }
        })
        .collect()
}

fn widened(t: Tensor<Flex, 1>) -> Vec<u32> {
    let t = t.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap();
    t.into_iter().map(f32::to_bits).collect()
}

#[test]
fn bf16_gamma_is_masked_as_its_fp32_widening() {
    for scope in [MaskScope::Tensor, MaskScope::Global] {
        for strategy in [MaskStrategy::Magnitude, MaskStrategy::Random] {
            for engine in [SelectionEngine::Host, SelectionEngine::Device] {
                let config = GmtConfig::new(0.3)
                    .with_scope(scope)
                    .with_strategy(strategy)
                    .with_engine(engine);
                let run = |dtype| {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
                    mask_gradients(&config, inputs(dtype), false, &mut rng).expect("finite Γ")
                };
                let (fp32, bf16) = (run(FloatDType::F32), run(FloatDType::BF16));
                let what = format!("{scope:?} {strategy:?} {engine:?}");
                assert_eq!(fp32.stats, bf16.stats, "{what}: statistics");
                for (a, b) in fp32.grads.into_iter().zip(bf16.grads) {
                    assert_eq!(b.dtype(), DType::BF16, "{what}: Γ·mask stays bf16");
                    assert_eq!(widened(a), widened(b), "{what}: Γ·mask");
                }
            }
        }
    }
}
