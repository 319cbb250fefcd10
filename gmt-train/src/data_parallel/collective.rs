//! The all-reduce of replicas that are devices of one process: the step's totals (or a
//! replica's failure) meet on the host first; then burn-collective sums each parameter's
//! gradient over the devices.

use std::sync::Arc;
use std::time::Instant;

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorPrimitive};
use gmt_models::LlamaForCausalLm;

use super::rendezvous::Rendezvous;
use super::shares::{Share, combine, share_of};
use super::stats::SharedStats;
use crate::{GradientAllReduce, ReplicaStep, TrainError};

/// Joins replica `rank` on `device` to the process's burn-collective group; returns once
/// every replica of the group has joined.
pub(crate) fn register<B: AutodiffBackend>(
    rank: usize,
    device: B::Device,
    config: CollectiveConfig,
) -> Result<(), TrainError> {
    collective::register::<B::InnerBackend>(PeerId::from(rank), device, config)
        .map_err(|e| TrainError::Collective(format!("replica {rank} cannot join: {e:?}")))
}

/// Leaves the group (errors mean it had already left).
pub(crate) fn finish<B: AutodiffBackend>(rank: usize) {
    let _ = collective::finish_collective::<B::InnerBackend>(PeerId::from(rank));
}

/// Forgets whatever an earlier group left behind in burn-collective's server.
pub(crate) fn reset<B: AutodiffBackend>() {
    collective::reset_collective::<B::InnerBackend>();
}

/// Replica `rank`'s side of the all-reduce.
pub(crate) struct DeviceAllReduce {
    pub(crate) rank: usize,
    pub(crate) meet: Arc<Rendezvous<Share>>,
    /// Where replica 0 records the all-reduce's bytes and time.
    pub(crate) stats: Option<SharedStats>,
}

impl<B: AutodiffBackend> GradientAllReduce<B> for DeviceAllReduce {
    fn all_reduce(
        &mut self,
        model: &LlamaForCausalLm<B>,
        local: Result<ReplicaStep, TrainError>,
    ) -> Result<ReplicaStep, TrainError> {
        let waiting = Instant::now();
        let shares = self
            .meet
            .exchange(self.rank, share_of(&local))
            .map_err(|reason| TrainError::ReplicaFailed {
                replica: None,
                reason,
            })?;
        let local = local?;
        let totals = combine(&shares)?;
        let waited = waiting.elapsed();
        // Every replica has arrived and none failed: each now issues the same all-reduces in
        // the same order (the model's parameter order), as burn-collective requires.
        let mut sum = SumOverDevices::<B> {
            peer: PeerId::from(self.rank),
            grads: local.grad_sum,
            error: None,
            bytes: 0,
            backend: std::marker::PhantomData,
        };
        let summing = Instant::now();
        model.visit(&mut sum);
        if let Some(e) = sum.error {
            return Err(TrainError::Collective(e));
        }
        if let Some(stats) = &self.stats {
            stats.record(sum.bytes, summing.elapsed(), waited);
        }
        Ok(ReplicaStep {
            grad_sum: sum.grads,
            totals,
        })
    }
}

/// Replaces each parameter's gradient sum by its sum over the devices. A replica without a
/// gradient for a parameter (no token to learn from) contributes zeros.
struct SumOverDevices<B: AutodiffBackend> {
    peer: PeerId,
    grads: GradientsParams,
    error: Option<String>,
    /// Bytes of gradient all-reduced.
    bytes: u64,
    backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SumOverDevices<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let local = self
            .grads
            .remove::<B::InnerBackend, D>(param.id)
            .unwrap_or_else(|| Tensor::zeros(param.shape(), &param.device()));
        self.bytes += (local.shape().num_elements() * local.dtype().size()) as u64;
        let reduced = collective::all_reduce::<B::InnerBackend>(
            self.peer,
            local.into_primitive().tensor(),
            ReduceOperation::Sum,
        );
        match reduced {
            Ok(sum) => self.grads.register(
                param.id,
                Tensor::<B::InnerBackend, D>::from_primitive(TensorPrimitive::Float(sum)),
            ),
            // Keep issuing the rest: the other devices wait for this one's every call.
            Err(e) => {
                self.error.get_or_insert_with(|| format!("{e:?}"));
            }
        }
    }
}
