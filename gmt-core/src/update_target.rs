//! [`MaskTarget::Update`](crate::MaskTarget::Update): masked entries keep their value from
//! before the inner optimizer's step, exactly.
//!
//! Two ways to put them back, by where the parameter lives:
//! - **host memory** (burn's Flex and ndarray): before the step, the values of the dropped
//!   entries alone are copied out into one buffer the optimizer reuses from step to step; after
//!   it, they are written back in place. No parameter is copied whole, so an in-place inner
//!   optimizer ([`FusedAdamW`](crate::FusedAdamW)) stays in place, and no step allocates
//!   parameter-sized memory once the buffer has grown.
//! - **elsewhere** (GPUs): the whole previous value is kept as a tensor and the dropped
//!   entries are taken from it with `mask_where`, on the device.

use core::marker::PhantomData;
use core::ops::Range;
use std::collections::HashMap;

use burn::module::{ModuleMapper, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, DType, Tensor};
use rayon::prelude::*;

use crate::mask::is_host_backend;

/// Entries per rayon task when gathering or scattering.
const CHUNK: usize = 1 << 16;

/// Whether a parameter's dropped entries are saved on the host (only its dropped values
/// copied out) rather than by keeping its whole previous value.
pub(crate) fn saved_on_host<B: Backend, const D: usize>(value: &Tensor<B, D>) -> bool {
    value.dtype() == DType::F32 && is_host_backend::<B>(&value.device())
}

/// A drop mask's flags on the host (without a copy where the backend allows).
pub(crate) fn host_flags<B: Backend>(drop: Tensor<B, 1, Bool>) -> Vec<bool> {
    let data = drop.into_data();
    match data.as_slice::<bool>() {
        Ok(_) => data.into_vec().expect("dtype checked"),
        Err(_) => data.iter::<bool>().collect(), // stored as u8 or u32
    }
}

/// Copies each parameter's dropped entries (`drops`: `true` = dropped, flattened) into
/// `saved`, which it clears first; [`RestoreSaved`] writes them back after the step.
pub(crate) struct SaveDropped<'a, B: AutodiffBackend> {
    /// Per parameter, its drop flags (handed on to [`RestoreSaved`]).
    drops: HashMap<ParamId, Vec<bool>>,
    /// Where each parameter's saved values lie in `saved`.
    ranges: HashMap<ParamId, Range<usize>>,
    saved: &'a mut Vec<f32>,
    marker: PhantomData<B>,
}

impl<'a, B: AutodiffBackend> SaveDropped<'a, B> {
    pub fn new(drops: HashMap<ParamId, Vec<bool>>, saved: &'a mut Vec<f32>) -> Self {
        saved.clear();
        Self {
            drops,
            ranges: HashMap::new(),
            saved,
            marker: PhantomData,
        }
    }

    /// Whether no parameter has entries to save.
    pub fn is_empty(&self) -> bool {
        self.drops.is_empty()
    }

    /// What [`RestoreSaved`] needs once the inner optimizer has stepped.
    pub fn into_restore(self) -> RestoreSaved<'a, B> {
        RestoreSaved {
            drops: self.drops,
            ranges: self.ranges,
            saved: self.saved,
            marker: PhantomData,
        }
    }
}

impl<B: AutodiffBackend> ModuleMapper<B> for SaveDropped<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(drop) = self.drops.get(&param.id) else {
            return param;
        };
        let start = self.saved.len();
        let saved = &mut *self.saved;
        let param = with_host_values(param, |values| gather_dropped(values, drop, saved));
        self.ranges.insert(param.id, start..self.saved.len());
        param
    }
}

/// Writes the values [`SaveDropped`] saved back into the dropped entries.
pub(crate) struct RestoreSaved<'a, B: AutodiffBackend> {
    drops: HashMap<ParamId, Vec<bool>>,
    ranges: HashMap<ParamId, Range<usize>>,
    saved: &'a [f32],
    marker: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for RestoreSaved<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (Some(drop), Some(range)) =
            (self.drops.remove(&param.id), self.ranges.remove(&param.id))
        else {
            return param;
        };
        let saved = &self.saved[range];
        with_host_values(param, |values| scatter_dropped(values, &drop, saved))
    }
}

/// Runs `f` on a host parameter's f32 values and returns the parameter with them. A parameter
/// whose tensor is held only here is neither copied nor reallocated.
fn with_host_values<B: AutodiffBackend, const D: usize>(
    param: Param<Tensor<B, D>>,
    f: impl FnOnce(&mut [f32]),
) -> Param<Tensor<B, D>> {
    map_value(param, |tensor| {
        let device = tensor.device();
        let mut data = tensor.into_data();
        f(data
            .as_mut_slice::<f32>()
            .expect("saved_on_host admits f32 parameters only"));
        Tensor::from_data(data, &device)
    })
}

/// `param` with its value replaced by `f` of it, outside the autodiff graph; its id, and
/// whether it requires a gradient, stay as they were.
fn map_value<B: AutodiffBackend, const D: usize>(
    param: Param<Tensor<B, D>>,
    f: impl FnOnce(Tensor<B::InnerBackend, D>) -> Tensor<B::InnerBackend, D>,
) -> Param<Tensor<B, D>> {
    let (id, tensor, mapper) = param.consume();
    let require_grad = tensor.is_require_grad();
    let mut tensor = Tensor::from_inner(f(tensor.inner()));
    if require_grad {
        tensor = tensor.require_grad();
    }
    Param::from_mapped_value(id, tensor, mapper)
}

/// Appends `values[j]` for every `j` with `drop[j]` to `out`, in order.
fn gather_dropped(values: &[f32], drop: &[bool], out: &mut Vec<f32>) {
    assert_eq!(values.len(), drop.len(), "one drop flag per entry");
    let counts = dropped_per_chunk(drop);
    let start = out.len();
    out.resize(start + counts.iter().sum::<usize>(), 0.0);
    split_by(&mut out[start..], &counts)
        .into_par_iter()
        .zip(values.par_chunks(CHUNK).zip(drop.par_chunks(CHUNK)))
        .for_each(|(out, (values, drop))| {
            // Branch-free: every entry is written to the next free place, which only a dropped
            // one then takes (a drop pattern is as unpredictable as the gradient).
            let mut k = 0;
            for (v, &d) in values.iter().zip(drop) {
                if let Some(o) = out.get_mut(k) {
                    *o = *v;
                }
                k += d as usize;
            }
        });
}

/// Writes `saved`, in order, into the entries of `values` with `drop` set: the inverse of
/// [`gather_dropped`].
fn scatter_dropped(values: &mut [f32], drop: &[bool], saved: &[f32]) {
    assert_eq!(values.len(), drop.len(), "one drop flag per entry");
    let counts = dropped_per_chunk(drop);
    assert_eq!(
        counts.iter().sum::<usize>(),
        saved.len(),
        "one value per drop"
    );
    let mut rest = saved;
    let saved: Vec<&[f32]> = counts
        .iter()
        .map(|&n| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head
        })
        .collect();
    saved
        .into_par_iter()
        .zip(values.par_chunks_mut(CHUNK).zip(drop.par_chunks(CHUNK)))
        .for_each(|(saved, (values, drop))| {
            let mut k = 0;
            for (v, &d) in values.iter_mut().zip(drop) {
                let s = saved.get(k).copied().unwrap_or(*v);
                *v = if d { s } else { *v };
                k += d as usize;
            }
        });
}

/// How many entries are dropped in each chunk of `CHUNK` flags.
fn dropped_per_chunk(drop: &[bool]) -> Vec<usize> {
    drop.par_chunks(CHUNK)
        .map(|d| d.iter().filter(|&&d| d).count())
        .collect()
}

/// `slice` cut into consecutive pieces of the given lengths.
fn split_by<'s>(mut slice: &'s mut [f32], lengths: &[usize]) -> Vec<&'s mut [f32]> {
    lengths
        .iter()
        .map(|&n| {
            let (head, tail) = core::mem::take(&mut slice).split_at_mut(n);
            slice = tail;
            head
        })
        .collect()
}

/// A parameter's drop mask and its whole value before the step, flattened.
type KeptValue<B> = (Tensor<B, 1, Bool>, Tensor<B, 1>);

/// Puts dropped entries back from each parameter's kept previous value, with `mask_where`:
/// the way for parameters that are not in host memory.
pub(crate) struct RestoreKept<B: AutodiffBackend> {
    pub kept: HashMap<ParamId, KeptValue<B::InnerBackend>>,
    pub marker: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for RestoreKept<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some((drop, old)) = self.kept.remove(&param.id) else {
            return param;
        };
        map_value(param, |tensor| {
            let shape = tensor.shape();
            tensor.mask_where(drop.reshape(shape.clone()), old.reshape(shape))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_undoes_gather_across_chunks() {
        let n = 3 * CHUNK + 17;
        let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let drop: Vec<bool> = (0..n).map(|i| (i * 7919) % 10 < 3).collect();
        let mut saved = vec![-1.0];
        gather_dropped(&values, &drop, &mut saved);
        let expected: Vec<f32> = values
            .iter()
            .zip(&drop)
            .filter(|(_, d)| **d)
            .map(|(v, _)| *v)
            .collect();
        assert_eq!(saved[0], -1.0, "appends");
        assert_eq!(saved[1..], expected[..]);

        let mut updated: Vec<f32> = values.iter().map(|v| v + 0.5).collect();
        scatter_dropped(&mut updated, &drop, &saved[1..]);
        for j in 0..n {
            let want = if drop[j] { values[j] } else { values[j] + 0.5 };
            assert_eq!(updated[j], want, "entry {j}");
        }
    }
}
