//! The all-reduce of replicas that are devices of one process: the step's totals (or a
//! replica's failure) meet on the host first; then burn-collective sums each parameter's
//! gradient over the devices.

use std::sync::Arc;

use burn::collective::{self, CollectiveConfig, PeerId, ReduceOperation};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorPrimitive};
use gmt_models::LlamaForCausalLm;

use super::rendezvous::Rendezvous;
use crate::{GradientAllReduce, ReplicaStep, StepTotals, TrainError};

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

/// What a replica brings to a step's meeting: its totals, or why it failed.
pub(crate) type Share = Result<StepTotals, String>;

/// Replica `rank`'s side of the all-reduce.
pub(crate) struct DeviceAllReduce {
    pub(crate) rank: usize,
    pub(crate) meet: Arc<Rendezvous<Share>>,
}

impl<B: AutodiffBackend> GradientAllReduce<B> for DeviceAllReduce {
    fn all_reduce(
        &mut self,
        model: &LlamaForCausalLm<B>,
        local: Result<ReplicaStep, TrainError>,
    ) -> Result<ReplicaStep, TrainError> {
        let share = match &local {
            Ok(step) => Ok(step.totals.clone()),
            Err(e) => Err(e.to_string()),
        };
        let shares =
            self.meet
                .exchange(self.rank, share)
                .map_err(|reason| TrainError::ReplicaFailed {
                    replica: None,
                    reason,
                })?;
        let local = local?;
        let mut totals = StepTotals::default();
        for (replica, share) in shares.iter().enumerate() {
            let share = share.as_ref().map_err(|reason| TrainError::ReplicaFailed {
                replica: Some(replica),
                reason: reason.clone(),
            })?;
            add_totals(&mut totals, share);
        }
        // Every replica has arrived and none failed: each now issues the same all-reduces in
        // the same order (the model's parameter order), as burn-collective requires.
        let mut sum = SumOverDevices::<B> {
            peer: PeerId::from(self.rank),
            grads: local.grad_sum,
            error: None,
            backend: std::marker::PhantomData,
        };
        model.visit(&mut sum);
        if let Some(e) = sum.error {
            return Err(TrainError::Collective(e));
        }
        Ok(ReplicaStep {
            grad_sum: sum.grads,
            totals,
        })
    }
}

/// Adds one replica's totals, in replica order (so that every replica's sums are the same
/// bits).
fn add_totals(sum: &mut StepTotals, share: &StepTotals) {
    sum.weight += share.weight;
    sum.loss_sum += share.loss_sum;
    sum.tokens += share.tokens;
    sum.micro_batches += share.micro_batches;
    sum.empty_micro_batches += share.empty_micro_batches;
    sum.metrics.merge(&share.metrics);
}

/// Replaces each parameter's gradient sum by its sum over the devices. A replica without a
/// gradient for a parameter (no token to learn from) contributes zeros.
struct SumOverDevices<B: AutodiffBackend> {
    peer: PeerId,
    grads: GradientsParams,
    error: Option<String>,
    backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SumOverDevices<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let local = self
            .grads
            .remove::<B::InnerBackend, D>(param.id)
            .unwrap_or_else(|| Tensor::zeros(param.shape(), &param.device()));
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
