//! The gradient mask of one optimizer step: which entries of Γ reach the optimizer.

use burn::tensor::{Bool, Int, Tensor, TensorData, backend::Backend};
use rand::Rng;

use crate::selection::{device_kth_largest_abs, kept_count, kth_largest_abs, sampled_kth_largest_abs};
use crate::{GmtConfig, MaskScope, MaskStats, MaskStrategy, ParamMaskStats, Selection, SelectionEngine};

/// One parameter's accumulated gradient Γ, flattened, with what GMT needs to know about it.
#[derive(Clone, Debug)]
pub struct MaskInput<B: Backend> {
    /// Dotted module path.
    pub path: String,
    /// Whether the parameter takes part in masking (false: excluded by a pattern).
    pub masked: bool,
    /// Γ flattened to one dimension.
    pub grad: Tensor<B, 1>,
}

/// The mask of one step: per input, the entries to drop (`true` = masked), or `None` when the
/// whole parameter is kept, plus the step's statistics.
#[derive(Clone, Debug)]
pub struct GradientMask<B: Backend> {
    /// Drop masks, one per input, in input order.
    pub drops: Vec<Option<Tensor<B, 1, Bool>>>,
    /// What the mask kept.
    pub stats: MaskStats,
}

impl<B: Backend> GradientMask<B> {
    /// Computes the mask of `inputs` under `config` (whose ratio must be valid). `rng` drives
    /// the random strategy and sampled selection; it is not touched otherwise.
    ///
    /// ```
    /// use burn::backend::NdArray;
    /// use burn::tensor::Tensor;
    /// use gmt_core::{GmtConfig, GradientMask, MaskInput};
    /// use rand::SeedableRng;
    ///
    /// let grad = Tensor::<NdArray, 1>::from_floats([0.1, -0.4, 0.3, 0.0], &Default::default());
    /// let input = MaskInput { path: "w".into(), masked: true, grad };
    /// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    /// let mask = GradientMask::compute(&GmtConfig::new(0.5), &[input], &mut rng);
    /// // floor(0.5·4) = 2 masked; threshold = 2nd largest |Γ| = 0.3.
    /// assert_eq!(mask.stats.params[0].threshold, Some(0.3));
    /// assert_eq!(mask.stats.kept(), 2);
    /// ```
    pub fn compute(config: &GmtConfig, inputs: &[MaskInput<B>], rng: &mut impl Rng) -> Self {
        let mut drops: Vec<Option<Tensor<B, 1, Bool>>> = vec![None; inputs.len()];
        let mut thresholds: Vec<Option<f32>> = vec![None; inputs.len()];
        let mut host_stats: Vec<Option<(usize, f64, f64)>> = vec![None; inputs.len()];

        if !config.is_identity() {
            let groups = groups(config.scope, inputs);
            let active: Vec<(Vec<usize>, usize)> = groups
                .into_iter()
                .filter_map(|group| {
                    let n: usize = group.iter().map(|&i| numel(&inputs[i])).sum();
                    let keep = kept_count(n, config.mask_ratio);
                    (keep < n).then_some((group, keep))
                })
                .collect();
            match config.strategy {
                MaskStrategy::None => {}
                MaskStrategy::Random => {
                    for (group, keep) in &active {
                        random_drops(inputs, group, *keep, rng, &mut drops);
                    }
                }
                MaskStrategy::Magnitude => {
                    let group_thresholds = match (config.selection, resolve_engine(config, inputs)) {
                        (Selection::Sampled { sample_size }, _) => active
                            .iter()
                            .map(|(group, keep)| {
                                let abs: Vec<_> = group.iter().map(|&i| inputs[i].grad.clone().abs()).collect();
                                sampled_kth_largest_abs(&abs, *keep, sample_size, rng)
                            })
                            .collect(),
                        (Selection::Exact, SelectionEngine::Device) => {
                            let abs: Vec<Vec<_>> = active
                                .iter()
                                .map(|(group, _)| group.iter().map(|&i| inputs[i].grad.clone().abs()).collect())
                                .collect();
                            let keeps: Vec<usize> = active.iter().map(|(_, keep)| *keep).collect();
                            device_kth_largest_abs(&abs, &keeps)
                        }
                        (Selection::Exact, _) => {
                            host_thresholds(inputs, &active, &mut host_stats)
                        }
                    };
                    for ((group, _), threshold) in active.iter().zip(group_thresholds) {
                        for &i in group {
                            thresholds[i] = Some(threshold);
                            drops[i] = Some(inputs[i].grad.clone().abs().lower_elem(threshold));
                        }
                    }
                }
            }
        }

        let stats = collect_stats(inputs, &drops, &thresholds, host_stats);
        Self { drops, stats }
    }
}

fn numel<B: Backend>(input: &MaskInput<B>) -> usize {
    input.grad.dims()[0]
}

/// Indices of the masked inputs, grouped by scope.
fn groups<B: Backend>(scope: MaskScope, inputs: &[MaskInput<B>]) -> Vec<Vec<usize>> {
    let masked = (0..inputs.len()).filter(|&i| inputs[i].masked);
    match scope {
        MaskScope::Tensor => masked.map(|i| vec![i]).collect(),
        MaskScope::Global => {
            let all: Vec<usize> = masked.collect();
            if all.is_empty() { Vec::new() } else { vec![all] }
        }
    }
}

fn resolve_engine<B: Backend>(config: &GmtConfig, inputs: &[MaskInput<B>]) -> SelectionEngine {
    match config.engine {
        SelectionEngine::Auto => match inputs.first() {
            Some(input) if is_host_backend::<B>(&input.grad.device()) => SelectionEngine::Host,
            Some(_) => SelectionEngine::Device,
            None => SelectionEngine::Host,
        },
        engine => engine,
    }
}

/// Whether tensors of this backend already live in host memory, so copying them out is cheap.
fn is_host_backend<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device).to_lowercase();
    ["ndarray", "flex", "cpu"].iter().any(|cpu| name.contains(cpu))
}

/// Exact thresholds on host copies of Γ; also fills each input's (kept, ‖Γ‖², ‖Γ·mask‖²) from
/// the same copies so no further pass over the device is needed.
fn host_thresholds<B: Backend>(
    inputs: &[MaskInput<B>],
    active: &[(Vec<usize>, usize)],
    host_stats: &mut [Option<(usize, f64, f64)>],
) -> Vec<f32> {
    active
        .iter()
        .map(|(group, keep)| {
            let data: Vec<Vec<f32>> = group.iter().map(|&i| host_values(&inputs[i].grad)).collect();
            let slices: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
            let threshold = kth_largest_abs(&slices, *keep);
            for (&i, values) in group.iter().zip(&slices) {
                host_stats[i] = Some(kept_stats(values, threshold));
            }
            threshold
        })
        .collect()
}

fn host_values<B: Backend>(tensor: &Tensor<B, 1>) -> Vec<f32> {
    let data = tensor.clone().into_data();
    match data.clone().into_vec::<f32>() {
        Ok(values) => values,
        // Half-precision backends: widen once.
        Err(_) => data.iter::<f32>().collect(),
    }
}

fn kept_stats(values: &[f32], threshold: f32) -> (usize, f64, f64) {
    let (mut kept, mut total, mut kept_sq) = (0usize, 0f64, 0f64);
    for &x in values {
        let sq = (x as f64) * (x as f64);
        total += sq;
        if x.abs() >= threshold {
            kept += 1;
            kept_sq += sq;
        }
    }
    (kept, total, kept_sq)
}

/// Keeps exactly `keep` entries of the group, chosen uniformly at random.
fn random_drops<B: Backend>(
    inputs: &[MaskInput<B>],
    group: &[usize],
    keep: usize,
    rng: &mut impl Rng,
    drops: &mut [Option<Tensor<B, 1, Bool>>],
) {
    let n: usize = group.iter().map(|&i| numel(&inputs[i])).sum();
    let mut drop = vec![true; n];
    for index in rand::seq::index::sample(rng, n, keep) {
        drop[index] = false;
    }
    let mut start = 0;
    for &i in group {
        let len = numel(&inputs[i]);
        let part = drop[start..start + len].to_vec();
        start += len;
        let device = inputs[i].grad.device();
        drops[i] = Some(Tensor::from_data(TensorData::new(part, [len]), &device));
    }
}

/// Per-input statistics; values not already computed on the host are reduced on the device
/// and read back in one transfer.
fn collect_stats<B: Backend>(
    inputs: &[MaskInput<B>],
    drops: &[Option<Tensor<B, 1, Bool>>],
    thresholds: &[Option<f32>],
    host_stats: Vec<Option<(usize, f64, f64)>>,
) -> MaskStats {
    let pending: Vec<usize> = (0..inputs.len()).filter(|&i| host_stats[i].is_none()).collect();
    let mut norms = Vec::new();
    let mut dropped = Vec::new();
    for &i in &pending {
        let sq = inputs[i].grad.clone().square();
        norms.push(sq.clone().sum());
        match &drops[i] {
            Some(drop) => {
                norms.push(sq.mask_fill(drop.clone(), 0.0).sum());
                dropped.push(drop.clone().int().sum());
            }
            None => norms.push(norms.last().cloned().expect("pushed above")),
        }
    }
    let norms: Vec<f64> = if norms.is_empty() {
        Vec::new()
    } else {
        Tensor::cat(norms, 0).into_data().iter::<f64>().collect()
    };
    let mut dropped: std::vec::IntoIter<i64> = if dropped.is_empty() {
        Vec::new().into_iter()
    } else {
        Tensor::<B, 1, Int>::cat(dropped, 0).into_data().iter::<i64>().collect::<Vec<_>>().into_iter()
    };

    let mut device_values = pending.iter().zip(norms.chunks(2));
    let params = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let n = numel(input);
            let (kept, grad_sq_norm, kept_sq_norm) = match host_stats[i] {
                Some(stats) => stats,
                None => {
                    let (_, pair) = device_values.next().expect("one pair per pending input");
                    let kept = match drops[i] {
                        Some(_) => n - dropped.next().expect("one count per drop") as usize,
                        None => n,
                    };
                    (kept, pair[0], pair[1])
                }
            };
            ParamMaskStats {
                path: input.path.clone(),
                numel: n,
                kept,
                threshold: thresholds[i],
                grad_sq_norm,
                kept_sq_norm,
                masked: input.masked,
            }
        })
        .collect();
    MaskStats { params }
}
