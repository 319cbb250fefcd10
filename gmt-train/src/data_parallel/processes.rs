//! Replicas that are processes: one per rank of an MPI job (`mpirun -np W …`), on one
//! machine or several. Each step the ranks' totals (or a rank's failure) are all-gathered,
//! then every parameter's gradient sum is all-reduced as a flat f32 host buffer, parameter by
//! parameter in the model's order.
//!
//! The model's order is its structure (embedding, then each layer's attention and MLP, the
//! norms, the head): the order of the parameters' paths, the same in every process. burn's
//! `ParamId`s are not: they are drawn per process.

use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{FloatDType, Tensor, TensorData};
use gmt_models::LlamaForCausalLm;
use mpi::Count;
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::shares::{Share, combine, share_of};
use super::stats::SharedStats;
use crate::{GradientAllReduce, MetricSums, ReplicaStep, StepTotals, TrainError};

/// The processes of an MPI job, seen from one of them: its rank among them and on its
/// machine.
///
/// The application initializes MPI (`mpi::initialize()`) and keeps the `Universe` it returns
/// until the run is over; `MpiGroup` speaks over `MPI_COMM_WORLD`. Every method that talks to
/// the other processes is collective: every rank calls it, in the same order.
///
/// ```no_run
/// # fn run() -> Result<(), gmt_train::TrainError> {
/// let _universe = mpi::initialize().expect("MPI initializes once");
/// let group = gmt_train::MpiGroup::world()?;
/// group.ensure_same("the settings", b"lr = 1e-5")?; // every rank must pass the same bytes
/// println!("rank {} of {} (GPU {} of its machine)", group.rank(), group.size(), group.local_rank());
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MpiGroup {
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
}

impl MpiGroup {
    /// The processes of `MPI_COMM_WORLD`. An error when MPI is not initialized.
    pub fn world() -> Result<Self, TrainError> {
        if !mpi::environment::is_initialized() || mpi::environment::is_finalized() {
            return Err(TrainError::Collective(
                "MPI is not initialized: call mpi::initialize() first and keep its Universe".into(),
            ));
        }
        let world = world();
        // The processes that share this one's memory: its machine.
        let machine = world.split_shared(world.rank());
        Ok(Self {
            rank: index(world.rank()),
            size: index(world.size()),
            local_rank: index(machine.rank()),
            local_size: index(machine.size()),
        })
    }

    /// This process's rank, 0…size-1. Rank 0 writes the run's files.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Processes in the job.
    pub fn size(&self) -> usize {
        self.size
    }

    /// This process's rank among those on its machine: which of the machine's GPUs it takes.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Processes on this process's machine.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Checks that every rank brings the same `value` (e.g. the run's settings); otherwise
    /// [`TrainError::ReplicaMismatch`] naming the first rank that differs from rank 0 and
    /// `what` the value is.
    pub fn ensure_same(&self, what: &str, value: &[u8]) -> Result<(), TrainError> {
        match self.first_differing(value) {
            None => Ok(()),
            Some(rank) => Err(TrainError::ReplicaMismatch {
                rank,
                what: what.to_string(),
            }),
        }
    }

    /// The first rank whose `value` differs from rank 0's (compared by SHA-256).
    pub(crate) fn first_differing(&self, value: &[u8]) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(value).into();
        let mut all = vec![0u8; digest.len() * self.size];
        world().all_gather_into(&digest[..], &mut all[..]);
        let rank0 = &all[..digest.len()];
        all.chunks(digest.len()).position(|d| d != rank0)
    }

    /// Whether `flag` is set on any rank.
    pub fn any(&self, flag: bool) -> bool {
        let mut any = 0u8;
        world().all_reduce_into(&u8::from(flag), &mut any, SystemOperation::max());
        any != 0
    }

    /// Waits until every rank has arrived here.
    pub fn barrier(&self) {
        world().barrier();
    }

    /// Ends every process of the job with `code` (`MPI_Abort`): for an error that the other
    /// ranks may not have met, which would otherwise leave them waiting in their next
    /// collective operation.
    pub fn abort(&self, code: i32) -> ! {
        world().abort(code)
    }

    /// Every rank's `bytes`, by rank.
    fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, TrainError> {
        let world = world();
        let length = Count::try_from(bytes.len()).map_err(|_| {
            TrainError::Collective(format!("a message of {} bytes is too long", bytes.len()))
        })?;
        let mut lengths: Vec<Count> = vec![0; self.size];
        world.all_gather_into(&length, &mut lengths[..]);
        let offsets: Vec<Count> = lengths
            .iter()
            .scan(0, |at, &n| {
                let start = *at;
                *at += n;
                Some(start)
            })
            .collect();
        let total = lengths.iter().map(|&n| index(n)).sum();
        let mut all = vec![0u8; total];
        {
            let mut parts = PartitionMut::new(&mut all[..], &lengths[..], &offsets[..]);
            world.all_gather_varcount_into(bytes, &mut parts);
        }
        Ok(lengths
            .iter()
            .zip(&offsets)
            .map(|(&n, &at)| all[index(at)..index(at) + index(n)].to_vec())
            .collect())
    }

    /// This rank's side of each step's all-reduce, for its [`Trainer`](crate::Trainer).
    pub(crate) fn all_reduce(&self, stats: SharedStats) -> MpiAllReduce {
        MpiAllReduce {
            group: *self,
            stats,
        }
    }
}

/// `MPI_COMM_WORLD`. Made on each use rather than stored: a communicator handle is not
/// `Send`, and a trainer (with its all-reduce) must be.
fn world() -> SimpleCommunicator {
    SimpleCommunicator::world()
}

/// An MPI rank or count as an index (MPI's are non-negative `int`s).
fn index(n: Count) -> usize {
    usize::try_from(n).expect("MPI ranks and counts are non-negative")
}

/// Elements per all-reduce call: MPI counts are `int`s, and a bounded host buffer keeps a
/// 7B model's largest matrices from doubling in host memory at once.
const CHUNK: usize = 1 << 26;

/// A rank's side of the all-reduce.
pub(crate) struct MpiAllReduce {
    group: MpiGroup,
    stats: SharedStats,
}

impl<B: AutodiffBackend> GradientAllReduce<B> for MpiAllReduce {
    fn all_reduce(
        &mut self,
        model: &LlamaForCausalLm<B>,
        local: Result<ReplicaStep, TrainError>,
    ) -> Result<ReplicaStep, TrainError> {
        let waiting = Instant::now();
        let sent = WireShare::from(share_of(&local));
        let message = serde_json::to_vec(&sent)
            .map_err(|e| TrainError::Collective(format!("cannot encode this rank's share: {e}")))?;
        let shares = self
            .group
            .all_gather_bytes(&message)?
            .iter()
            .enumerate()
            .map(|(rank, bytes)| {
                serde_json::from_slice::<WireShare>(bytes)
                    .map(Share::from)
                    .map_err(|e| {
                        TrainError::Collective(format!("rank {rank} sent an unreadable share: {e}"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let local = local?;
        let totals = combine(&shares)?;
        let waited = waiting.elapsed();

        // Every rank arrived and none failed: each now all-reduces every parameter, in the
        // model's order.
        let summing = Instant::now();
        let mut sum = SumOverProcesses {
            grads: local.grad_sum,
            bytes: 0,
        };
        model.visit(&mut sum);
        self.stats.record(sum.bytes, summing.elapsed(), waited);
        Ok(ReplicaStep {
            grad_sum: sum.grads,
            totals,
        })
    }
}

/// Replaces each parameter's gradient sum by its sum over the ranks. A rank without a
/// gradient for a parameter (no token to learn from) contributes zeros.
struct SumOverProcesses {
    grads: GradientsParams,
    bytes: u64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SumOverProcesses {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let local = self
            .grads
            .remove::<B::InnerBackend, D>(param.id)
            .unwrap_or_else(|| Tensor::zeros(param.shape(), &param.device()));
        let (device, shape) = (local.device(), local.shape());
        let local_dtype: FloatDType = local.dtype().into();
        let values: Vec<f32> = local
            .into_data()
            .convert::<f32>()
            .into_vec()
            .expect("converted to f32");
        let mut sum = vec![0f32; values.len()];
        for (mine, all) in values.chunks(CHUNK).zip(sum.chunks_mut(CHUNK)) {
            world().all_reduce_into(mine, all, SystemOperation::sum());
        }
        self.bytes += (values.len() * size_of::<f32>()) as u64;
        // Back in the gradient's format (bf16 for bf16 weights): the sum is taken in f32.
        let sum = Tensor::<B::InnerBackend, D>::from_data(TensorData::new(sum, shape), &device)
            .cast(local_dtype);
        self.grads.register(param.id, sum);
    }
}

/// A [`Share`] as it travels: floats as their bits, so that every value (NaN included)
/// arrives exactly.
#[derive(Serialize, Deserialize)]
enum WireShare {
    Ok {
        weight: u64,
        loss_sum: u64,
        tokens: u64,
        micro_batches: usize,
        empty_micro_batches: usize,
        metrics: Vec<(String, u64)>,
    },
    Err(String),
}

impl From<Share> for WireShare {
    fn from(share: Share) -> Self {
        match share {
            Ok(t) => Self::Ok {
                weight: t.weight.to_bits(),
                loss_sum: t.loss_sum.to_bits(),
                tokens: t.tokens,
                micro_batches: t.micro_batches,
                empty_micro_batches: t.empty_micro_batches,
                metrics: t
                    .metrics
                    .iter()
                    .map(|(name, sum)| (name.to_string(), sum.to_bits()))
                    .collect(),
            },
            Err(reason) => Self::Err(reason),
        }
    }
}

impl From<WireShare> for Share {
    fn from(wire: WireShare) -> Self {
        match wire {
            WireShare::Ok {
                weight,
                loss_sum,
                tokens,
                micro_batches,
                empty_micro_batches,
                metrics,
            } => {
                let mut sums = MetricSums::default();
                for (name, bits) in metrics {
                    sums.add(&name, f64::from_bits(bits));
                }
                Ok(StepTotals {
                    weight: f64::from_bits(weight),
                    loss_sum: f64::from_bits(loss_sum),
                    tokens,
                    micro_batches,
                    empty_micro_batches,
                    metrics: sums,
                })
            }
            WireShare::Err(reason) => Err(reason),
        }
    }
}
