//! Masking one optimizer step's gradients: which entries of Γ reach the optimizer.

use burn::tensor::{Bool, DType, FloatDType, Int, Tensor, TensorData, backend::Backend};
use rand::Rng;
use rayon::prelude::*;

use crate::fixed_order::fixed_order_sum;
use crate::host_mask::{HostCounts, Keep, mask_in_place, mask_outside_bucket, settle};
use crate::selection::{
    BoundaryBucket, SMALL, abs_bits, device_kth_largest_abs, kept_count, kth_largest_abs,
    sampled_kth_largest_abs,
};
use crate::{
    GmtConfig, MaskScope, MaskStats, MaskStrategy, ParamMaskStats, Selection, SelectionEngine,
};

/// One parameter's accumulated gradient Γ, flattened, with what GMT needs to know about it.
#[derive(Clone, Debug)]
pub struct MaskInput<B: Backend> {
    /// Dotted module path.
    pub path: String,
    /// Whether the parameter takes part in masking (false: excluded by a pattern).
    pub maskable: bool,
    /// Γ flattened to one dimension.
    pub grad: Tensor<B, 1>,
}

/// The result of [`mask_gradients`].
#[derive(Clone, Debug)]
pub struct MaskedGradients<B: Backend> {
    /// Γ·mask, one per input, in input order.
    pub grads: Vec<Tensor<B, 1>>,
    /// Per input, the dropped entries (`true` = masked), when asked for and when any entry
    /// of that input was dropped; `None` otherwise.
    pub drops: Vec<Option<Tensor<B, 1, Bool>>>,
    /// What the mask kept.
    pub stats: MaskStats,
}

/// [`mask_gradients`] was given a Γ holding NaN or ±∞, for which no threshold, mask or norm
/// is defined.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the gradient of `{path}` holds NaN or infinity")]
pub struct NonFiniteInput {
    /// Index of the first such input, in input order.
    pub index: usize,
    /// Its module path.
    pub path: String,
}

/// How the kept entries of one group are decided.
enum Rule {
    /// Keep |Γ| ≥ threshold.
    Threshold(f32),
    /// Keep exactly these entries (the random strategy), over the whole group.
    Chosen(Vec<bool>),
}

/// Masks `inputs` under `config` (whose ratio must be valid) and returns Γ·mask with the
/// step's statistics. `rng` drives the random strategy and sampled selection only.
///
/// Inputs are taken by value: on CPU backends a gradient held only here is read and masked in
/// place in host memory, without a copy.
///
/// # Errors
/// [`NonFiniteInput`], naming the first input whose Γ holds NaN or ±∞. The host engine finds
/// it in the pass that masks and sums ‖Γ‖² (in f64, which no finite f32 entries overflow), so
/// a finite step reads Γ no extra time; the device engine screens every input before
/// masking, as its mask could drop a NaN without trace. Either way the inputs are consumed.
///
/// ```
/// use burn::backend::NdArray;
/// use burn::tensor::Tensor;
/// use gmt_core::GmtConfig;
/// use gmt_core::masking::{MaskInput, mask_gradients};
/// use rand::SeedableRng;
///
/// let grad = Tensor::<NdArray, 1>::from_floats([0.1, -0.4, 0.3, 0.0], &Default::default());
/// let input = MaskInput { path: "w".into(), maskable: true, grad };
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
/// let out = mask_gradients(&GmtConfig::new(0.5), vec![input], false, &mut rng)?;
/// // floor(0.5·4) = 2 masked; threshold = 2nd largest |Γ| = 0.3.
/// assert_eq!(out.stats.params[0].threshold, Some(0.3));
/// assert_eq!(out.grads[0].clone().into_data().to_vec::<f32>().unwrap(), vec![0.0, -0.4, 0.3, 0.0]);
/// # Ok::<(), gmt_core::masking::NonFiniteInput>(())
/// ```
pub fn mask_gradients<B: Backend>(
    config: &GmtConfig,
    inputs: Vec<MaskInput<B>>,
    with_drops: bool,
    rng: &mut impl Rng,
) -> Result<MaskedGradients<B>, NonFiniteInput> {
    let host = resolve_engine(config, &inputs) == SelectionEngine::Host;
    if !host && let Some(index) = first_non_finite(&inputs) {
        let path = inputs[index].path.clone();
        return Err(NonFiniteInput { index, path });
    }
    let groups = if config.is_identity() {
        Vec::new()
    } else {
        active_groups(config, &inputs)
    };
    let rules = decide_rules(config, &inputs, &groups, host, rng);

    let (paths, flags): (Vec<String>, Vec<bool>) =
        inputs.iter().map(|i| (i.path.clone(), i.maskable)).unzip();
    let mut pending: Vec<Option<Tensor<B, 1>>> = inputs.into_iter().map(|i| Some(i.grad)).collect();
    let mut outputs: Vec<Option<Masked<B>>> = (0..pending.len()).map(|_| None).collect();
    let work: Vec<GroupWork<B>> = groups
        .iter()
        .zip(rules)
        .map(|((group, keep), rule)| {
            let members = group
                .iter()
                .map(|&i| pending[i].take().expect("one group per input"))
                .collect();
            (group, *keep, rule, members)
        })
        .collect();
    let masked: Vec<Vec<Masked<B>>> = if host {
        // Groups are independent: spread them over the cores (tensor scope has one per
        // parameter; global scope's single group parallelizes over its members inside).
        work.into_par_iter()
            .map(|(_, keep, rule, members)| mask_group_on_host(members, keep, rule, with_drops))
            .collect()
    } else {
        work.into_iter()
            .map(|(_, _, rule, members)| {
                apply_on_device(
                    members,
                    rule.as_ref().expect("device rules are decided up front"),
                )
            })
            .collect()
    };
    for ((group, _), group_masked) in groups.iter().zip(masked) {
        for (&i, out) in group.iter().zip(group_masked) {
            outputs[i] = Some(out);
        }
    }
    // Inputs in no active group (excluded, identity config, floor(r·n) = 0) pass through.
    let outputs: Vec<Masked<B>> = outputs
        .into_iter()
        .zip(pending)
        .map(|(out, grad)| match (out, grad) {
            (Some(out), None) => out,
            (None, Some(grad)) => Masked::unchanged(grad),
            _ => unreachable!("each input is either grouped or passed through"),
        })
        .collect();

    let stats = collect_stats(&paths, &flags, &outputs);
    if host && let Some(index) = first_non_finite_norm(&stats, &outputs) {
        let path = paths[index].clone();
        return Err(NonFiniteInput { index, path });
    }
    let (grads, drops) = outputs
        .into_iter()
        .map(|out| (out.grad, if with_drops { out.drop } else { None }))
        .unzip();
    Ok(MaskedGradients {
        grads,
        drops,
        stats,
    })
}

/// Index of the first input whose Γ holds NaN or ±∞, with one read-back for all of them.
fn first_non_finite<B: Backend>(inputs: &[MaskInput<B>]) -> Option<usize> {
    // A sum is finite whenever every term is, so one reduction per tensor screens them all;
    // a non-finite sum is then confirmed entry-wise, since finite values can overflow a sum.
    let sums = inputs.iter().map(|i| widened(&i.grad).sum()).collect();
    let sums = read_floats(sums);
    inputs
        .iter()
        .zip(sums)
        .position(|(input, sum)| !sum.is_finite() && holds_non_finite(&input.grad))
}

/// After masking on the host: the first output whose ‖Γ‖² is not finite. A norm summed on the
/// host is exact evidence; one reduced on the device (an input no group masked, so its output
/// is Γ itself) may have overflowed f32 and is confirmed entry-wise.
fn first_non_finite_norm<B: Backend>(stats: &MaskStats, outputs: &[Masked<B>]) -> Option<usize> {
    stats.params.iter().zip(outputs).position(|(param, out)| {
        !param.grad_sq_norm.is_finite()
            && match out.norms {
                Norms::Host { .. } => true,
                Norms::Device { .. } => holds_non_finite(&out.grad),
            }
    })
}

fn holds_non_finite<B: Backend>(grad: &Tensor<B, 1>) -> bool {
    let count = widened(grad).is_finite().bool_not().int().sum();
    read_ints(vec![count])[0] > 0
}

/// The rule of each active group, where it can be decided before masking. `None` marks an
/// exact threshold that the host engine finds while it reads the group anyway.
fn decide_rules<B: Backend>(
    config: &GmtConfig,
    inputs: &[MaskInput<B>],
    groups: &[(Vec<usize>, usize)],
    host: bool,
    rng: &mut impl Rng,
) -> Vec<Option<Rule>> {
    let abs = |group: &[usize]| -> Vec<Tensor<B, 1>> {
        group
            .iter()
            .map(|&i| widened(&inputs[i].grad).abs())
            .collect()
    };
    match (config.strategy, config.selection) {
        (MaskStrategy::None, _) => groups.iter().map(|_| None).collect(),
        (MaskStrategy::Random, _) => groups
            .iter()
            .map(|(group, keep)| {
                let mut chosen = vec![false; group_size(inputs, group)];
                for index in rand::seq::index::sample(rng, chosen.len(), *keep) {
                    chosen[index] = true;
                }
                Some(Rule::Chosen(chosen))
            })
            .collect(),
        (MaskStrategy::Magnitude, Selection::Sampled { sample_size }) => groups
            .iter()
            .map(|(group, keep)| {
                Some(Rule::Threshold(sampled_kth_largest_abs(
                    &abs(group),
                    *keep,
                    sample_size,
                    rng,
                )))
            })
            .collect(),
        (MaskStrategy::Magnitude, Selection::Exact) if host => {
            groups.iter().map(|_| None).collect()
        }
        (MaskStrategy::Magnitude, Selection::Exact) => {
            let abs: Vec<Vec<Tensor<B, 1>>> = groups.iter().map(|(group, _)| abs(group)).collect();
            let keeps: Vec<usize> = groups.iter().map(|(_, keep)| *keep).collect();
            device_kth_largest_abs(&abs, &keeps)
                .into_iter()
                .map(|t| Some(Rule::Threshold(t)))
                .collect()
        }
    }
}

fn group_size<B: Backend>(inputs: &[MaskInput<B>], group: &[usize]) -> usize {
    group.iter().map(|&i| inputs[i].grad.dims()[0]).sum()
}

/// The masked inputs grouped by scope, with the number of entries each group keeps; groups
/// that keep everything (floor(r·n) = 0) are left out.
fn active_groups<B: Backend>(
    config: &GmtConfig,
    inputs: &[MaskInput<B>],
) -> Vec<(Vec<usize>, usize)> {
    let masked = (0..inputs.len()).filter(|&i| inputs[i].maskable);
    let groups: Vec<Vec<usize>> = match config.scope {
        MaskScope::Tensor => masked.map(|i| vec![i]).collect(),
        MaskScope::Global => vec![masked.collect()],
    };
    groups
        .into_iter()
        .filter_map(|group| {
            let n = group_size(inputs, &group);
            let keep = kept_count(n, config.mask_ratio);
            (keep < n).then_some((group, keep))
        })
        .collect()
}

fn resolve_engine<B: Backend>(config: &GmtConfig, inputs: &[MaskInput<B>]) -> SelectionEngine {
    match config.engine {
        SelectionEngine::Auto => match inputs.first() {
            Some(input) if !is_host_backend::<B>(&input.grad.device()) => SelectionEngine::Device,
            _ => SelectionEngine::Host,
        },
        engine => engine,
    }
}

/// Whether tensors of this backend already live in host memory, so reading them is cheap.
pub(crate) fn is_host_backend<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device).to_lowercase();
    ["ndarray", "flex", "cpu"]
        .iter()
        .any(|cpu| name.contains(cpu))
}

/// Γ in fp32, the format every threshold, count and norm is computed in: a bf16 Γ (of bf16
/// weights) widened, which is exact; an fp32 one as it is, without a copy.
pub(crate) fn widened<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> Tensor<B, D> {
    tensor.clone().cast(FloatDType::F32)
}

/// Γ as host `f32`s. On ndarray a tensor held only here converts without a copy.
pub(crate) fn host_values<B: Backend>(tensor: Tensor<B, 1>) -> Vec<f32> {
    let data = tensor.into_data();
    if data.dtype == DType::F32 {
        data.into_vec::<f32>().expect("dtype checked")
    } else {
        data.iter::<f32>().collect() // half-precision backends: widen once
    }
}

/// A group to mask: its members' gradients, how many entries it keeps, and its rule when
/// already decided.
type GroupWork<'a, B> = (&'a Vec<usize>, usize, Option<Rule>, Vec<Tensor<B, 1>>);

/// One input after masking.
struct Masked<B: Backend> {
    grad: Tensor<B, 1>,
    drop: Option<Tensor<B, 1, Bool>>,
    threshold: Option<f32>,
    norms: Norms<B>,
}

/// Kept count and squared norms: computed on the host, or still to be read from the device.
enum Norms<B: Backend> {
    Host {
        kept: usize,
        total: f64,
        kept_sq: f64,
    },
    /// ‖Γ‖² as a pending device scalar; kept count and ‖Γ·mask‖² follow from `grad`/`drop`.
    Device { total: Tensor<B, 1> },
}

impl<B: Backend> Masked<B> {
    fn unchanged(grad: Tensor<B, 1>) -> Self {
        let total = fixed_order_sum(widened(&grad).square());
        Self {
            grad,
            drop: None,
            threshold: None,
            norms: Norms::Device { total },
        }
    }
}

/// Reads a group's members to the host once, finds the exact threshold there if the rule is
/// not decided yet, and masks the copies in place.
fn mask_group_on_host<B: Backend>(
    members: Vec<Tensor<B, 1>>,
    keep: usize,
    rule: Option<Rule>,
    with_drops: bool,
) -> Vec<Masked<B>> {
    let device = members[0].device();
    let dtypes: Vec<FloatDType> = members.iter().map(|m| m.dtype().into()).collect();
    let mut data: Vec<Vec<f32>> = members.into_par_iter().map(host_values).collect();
    let rule = match rule {
        Some(rule) => rule,
        None => {
            let slices: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
            let n = slices.iter().map(|s| s.len()).sum::<usize>();
            if n <= SMALL {
                Rule::Threshold(kth_largest_abs(&slices, keep))
            } else {
                let bucket = BoundaryBucket::find(&slices, keep);
                // The pass below keeps one index per entry of the bucket; a bucket that holds
                // much of the group (all-zero rows of an embedding's Γ, say) is selected
                // from on its own first instead, in a pass of its own.
                if bucket.size <= n / PENDING_FRACTION {
                    return mask_exact_in_one_pass(data, &dtypes, bucket, with_drops, &device);
                }
                Rule::Threshold(bucket.select_from(&slices))
            }
        }
    };
    apply_on_host::<B>(&mut data, &dtypes, &rule, with_drops, &device)
}

/// A boundary bucket holding more than 1/`PENDING_FRACTION` of a group's entries is selected
/// from before masking (see [`mask_group_on_host`]).
const PENDING_FRACTION: usize = 16;

/// The exact magnitude mask of a group whose boundary bucket is known, reading each member
/// once: every entry outside the bucket is decided in the masking pass, which also collects
/// the bucket's entries; the threshold is selected among those, and they alone are settled.
/// Same values, drops, threshold and counts as finding the threshold first and then masking
/// (‖Γ·mask‖² summed in another order).
fn mask_exact_in_one_pass<B: Backend>(
    mut data: Vec<Vec<f32>>,
    dtypes: &[FloatDType],
    bucket: BoundaryBucket,
    with_drops: bool,
    device: &B::Device,
) -> Vec<Masked<B>> {
    let passes: Vec<(HostCounts, Vec<usize>)> = data
        .par_iter_mut()
        .map(|values| mask_outside_bucket(values, &bucket))
        .collect();
    let mut candidates: Vec<u32> = passes
        .iter()
        .zip(&data)
        .flat_map(|((_, pending), values)| pending.iter().map(|&j| abs_bits(values[j])))
        .collect();
    let threshold = bucket.select(&mut candidates);
    data.into_par_iter()
        .zip(passes)
        .zip(dtypes)
        .map(|((mut values, (mut counts, pending)), &dtype)| {
            settle(&mut values, &pending, threshold, &mut counts);
            let drop = with_drops
                .then(|| dropped_below(&values, threshold))
                .flatten();
            host_masked(values, dtype, drop, Some(threshold), counts, device)
        })
        .collect()
}

/// Masks host copies in place, counting kept entries and norms in the same pass; members
/// in parallel. Each masked member goes back to the device in its own format (`dtypes`):
/// masking only zeroes entries, so a widened bf16 Γ narrows back exactly.
fn apply_on_host<B: Backend>(
    data: &mut [Vec<f32>],
    dtypes: &[FloatDType],
    rule: &Rule,
    with_drops: bool,
    device: &B::Device,
) -> Vec<Masked<B>> {
    let offsets: Vec<usize> = data
        .iter()
        .scan(0, |acc, v| {
            let start = *acc;
            *acc += v.len();
            Some(start)
        })
        .collect();
    data.par_iter_mut()
        .zip(offsets)
        .zip(dtypes)
        .map(|((values, offset), &dtype)| {
            let len = values.len();
            let (counts, drop) = match rule {
                Rule::Threshold(t) => {
                    let counts = mask_in_place(values, Keep::AtLeast(*t));
                    let drop = with_drops.then(|| dropped_below(values, *t)).flatten();
                    (counts, drop)
                }
                Rule::Chosen(chosen) => {
                    let chosen = &chosen[offset..offset + len];
                    let drop = with_drops.then(|| chosen.iter().map(|c| !c).collect());
                    (mask_in_place(values, Keep::Chosen(chosen)), drop)
                }
            };
            host_masked(
                std::mem::take(values),
                dtype,
                drop,
                threshold_of(rule),
                counts,
                device,
            )
        })
        .collect()
}

/// The entries a magnitude mask with threshold `t` dropped, read off the masked `values`;
/// `None` when it dropped none.
///
/// Kept entries have |x| ≥ t, so for t > 0 the dropped ones are exactly those now zero
/// (including entries that were zero already); at t = 0 every entry is kept. Recording a
/// flag per entry inside the masking pass kept that pass from vectorizing (SmolLM2-135M's
/// Γ: 0.43 s a step with the flags, 0.14 s without); reading them off here costs ~0.05 s.
fn dropped_below(values: &[f32], t: f32) -> Option<Vec<bool>> {
    (t > 0.0).then(|| values.iter().map(|&x| x == 0.0).collect())
}

/// A member masked on the host, back on the device in its own format.
fn host_masked<B: Backend>(
    values: Vec<f32>,
    dtype: FloatDType,
    drop: Option<Vec<bool>>,
    threshold: Option<f32>,
    counts: HostCounts,
    device: &B::Device,
) -> Masked<B> {
    let len = values.len();
    let HostCounts {
        kept,
        total_sq: total,
        kept_sq,
    } = counts;
    Masked {
        grad: Tensor::<B, 1>::from_data(TensorData::new(values, [len]), device).cast(dtype),
        drop: drop.map(|d| Tensor::from_data(TensorData::new(d, [len]), device)),
        threshold,
        norms: Norms::Host {
            kept,
            total,
            kept_sq,
        },
    }
}

/// Masks on the device; statistics are reduced later in one batch.
fn apply_on_device<B: Backend>(members: Vec<Tensor<B, 1>>, rule: &Rule) -> Vec<Masked<B>> {
    let mut offset = 0;
    members
        .into_iter()
        .map(|grad| {
            let len = grad.dims()[0];
            let drop = match rule {
                Rule::Threshold(t) => widened(&grad).abs().lower_elem(*t),
                Rule::Chosen(chosen) => {
                    let part: Vec<bool> = chosen[offset..offset + len].iter().map(|c| !c).collect();
                    Tensor::from_data(TensorData::new(part, [len]), &grad.device())
                }
            };
            offset += len;
            Masked {
                norms: Norms::Device {
                    total: fixed_order_sum(widened(&grad).square()),
                },
                grad: grad.mask_fill(drop.clone(), 0.0),
                drop: Some(drop),
                threshold: threshold_of(rule),
            }
        })
        .collect()
}

fn threshold_of(rule: &Rule) -> Option<f32> {
    match rule {
        Rule::Threshold(t) => Some(*t),
        Rule::Chosen(_) => None,
    }
}

/// Per-input statistics; what the host pass did not compute is reduced on the device and read
/// back in three transfers for the whole step.
fn collect_stats<B: Backend>(paths: &[String], flags: &[bool], outputs: &[Masked<B>]) -> MaskStats {
    let mut totals = Vec::new();
    let mut kept_sqs = Vec::new();
    let mut dropped = Vec::new();
    for out in outputs {
        if let Norms::Device { total } = &out.norms {
            totals.push(total.clone());
            if let Some(drop) = &out.drop {
                kept_sqs.push(fixed_order_sum(widened(&out.grad).square()));
                dropped.push(drop.clone().int().sum());
            }
        }
    }
    let mut totals = read_floats(totals).into_iter();
    let mut kept_sqs = read_floats(kept_sqs).into_iter();
    let mut dropped = read_ints(dropped).into_iter();
    let params = outputs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            let numel = out.grad.dims()[0];
            let (kept, grad_sq_norm, kept_sq_norm) = match out.norms {
                Norms::Host {
                    kept,
                    total,
                    kept_sq,
                } => (kept, total, kept_sq),
                Norms::Device { .. } => {
                    let total = totals.next().expect("one total per device input");
                    match out.drop {
                        Some(_) => (
                            numel - dropped.next().expect("one count per drop") as usize,
                            total,
                            kept_sqs.next().expect("one kept norm per drop"),
                        ),
                        None => (numel, total, total),
                    }
                }
            };
            ParamMaskStats {
                path: paths[i].clone(),
                numel,
                kept,
                threshold: out.threshold,
                grad_sq_norm,
                kept_sq_norm,
                maskable: flags[i],
            }
        })
        .collect();
    MaskStats { params }
}

fn read_floats<B: Backend>(scalars: Vec<Tensor<B, 1>>) -> Vec<f64> {
    if scalars.is_empty() {
        return Vec::new();
    }
    Tensor::cat(scalars, 0).into_data().iter::<f64>().collect()
}

fn read_ints<B: Backend>(scalars: Vec<Tensor<B, 1, Int>>) -> Vec<i64> {
    if scalars.is_empty() {
        return Vec::new();
    }
    Tensor::cat(scalars, 0).into_data().iter::<i64>().collect()
}
