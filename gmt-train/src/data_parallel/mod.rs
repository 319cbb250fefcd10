//! [`DataParallel`]: one run over several replicas — devices of one process, or processes of
//! an MPI job — every replica stepping on its share of each step's micro-batches and all of
//! them applying the same Γ.

mod checksum;
mod collective;
mod lease;
#[cfg(feature = "mpi")]
mod processes;
mod rendezvous;
mod shares;
mod stats;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use burn::collective::CollectiveConfig;
use burn::tensor::backend::AutodiffBackend;

pub use checksum::WeightChecksum;
use collective::DeviceAllReduce;
use lease::GroupLease;
#[cfg(feature = "mpi")]
pub use processes::MpiGroup;
use rendezvous::Rendezvous;
use shares::Share;
pub use stats::AllReduceStats;
use stats::SharedStats;

use crate::{Objective, StepSummary, TrainError, Trainer};

/// Steps between two comparisons of the replicas' weights, by default.
pub const DEFAULT_SYNC_CHECK_EVERY: u64 = 16;

/// A run over W replicas of a [`Trainer`]: W devices of this process ([`new`](Self::new):
/// replica 0 in the caller's thread, each other one in a thread of its own), or W processes of
/// an MPI job ([`over_processes`](Self::over_processes), feature `mpi`: this process holds
/// one replica, the others hold theirs).
///
/// Each [`step`](Self::step) takes the whole step's micro-batches and splits them into W runs
/// of consecutive micro-batches, replica r taking the r-th; the replicas' weighted gradient
/// sums and totals are all-reduced (burn-collective between devices, MPI between processes),
/// so Γ is what one process with all the micro-batches computes, and every replica masks,
/// clips and applies the same Γ. The step's data, and so the run, does not depend on W. Every
/// [`with_sync_check_every`](Self::with_sync_check_every) steps the replicas' weights are
/// compared by checksum; a difference is an error naming the step.
///
/// burn-collective has one server per process, so one group of devices exists at a time: a
/// second [`DataParallel::new`] while the first is alive is an error.
///
/// ```no_run
/// # use burn::backend::{Autodiff, NdArray};
/// # use burn::backend::ndarray::NdArrayDevice;
/// # use burn::module::Module;
/// # use gmt_train::{CausalLm, DataParallel, Trainer, TrainerConfig};
/// # fn run(model: gmt_models::LlamaForCausalLm<Autodiff<NdArray>>,
/// #        steps: Vec<Vec<gmt_models::TokenBatch>>) -> Result<(), gmt_train::TrainError> {
/// let devices = vec![NdArrayDevice::Cpu, NdArrayDevice::Cpu];
/// let config = TrainerConfig::default();
/// let replicas = devices
///     .iter()
///     .map(|device| Trainer::new(model.clone().fork(device), CausalLm, &config, 100))
///     .collect::<Result<Vec<_>, _>>()?;
/// let mut run = DataParallel::new(replicas, devices)?;
/// for micro_batches in steps {
///     let step = run.step(micro_batches)?; // 2, 4, … micro-batches: half to each device
///     println!("step {}: loss {:.4}", step.step, step.loss());
/// }
/// # Ok(()) }
/// ```
pub struct DataParallel<B: AutodiffBackend, O: Objective> {
    /// This process's replica (replica 0 of a group of devices).
    primary: Trainer<B, O>,
    peers: Peers<B, O>,
    sync_check_every: u64,
    stats: SharedStats,
}

/// Where the other replicas are.
enum Peers<B: AutodiffBackend, O: Objective> {
    /// Nowhere: one device.
    Alone,
    /// In threads of this process, one per device.
    Threads(Group<B, O>),
    /// In the other processes of an MPI job.
    #[cfg(feature = "mpi")]
    Processes(MpiGroup),
}

/// Work for a replica's thread.
type Job<B, O> = Box<dyn FnOnce(&mut Trainer<B, O>) + Send>;

/// A replica's thread and the channel that brings it work.
type Worker<B, O> = (mpsc::Sender<Job<B, O>>, JoinHandle<()>);

/// Replicas 1…W-1, each in its thread, and what binds them to replica 0.
struct Group<B: AutodiffBackend, O: Objective> {
    workers: Vec<Worker<B, O>>,
    meet: Arc<Rendezvous<Share>>,
    /// Whether replica 0 joined burn-collective (and so every thread's registration
    /// returned: until then they wait, and cannot be joined).
    registered: bool,
    _lease: GroupLease,
}

impl<B, O> DataParallel<B, O>
where
    B: AutodiffBackend,
    O: Objective + Send + 'static,
    O::Batch: Send + 'static,
{
    /// A run on one device: [`step`](Self::step) is the trainer's own.
    pub fn single(trainer: Trainer<B, O>) -> Self {
        Self {
            primary: trainer,
            peers: Peers::Alone,
            sync_check_every: 0,
            stats: SharedStats::default(),
        }
    }

    /// This process's replica of a run over the processes of an MPI job, one replica per
    /// rank. Every rank calls it with the same run (the same weights, optimizer state and
    /// counters); their weights are compared before the first step
    /// ([`TrainError::ReplicaMismatch`] names a rank that started from others).
    #[cfg(feature = "mpi")]
    pub fn over_processes(trainer: Trainer<B, O>, group: MpiGroup) -> Result<Self, TrainError> {
        group.ensure_same(
            "the starting weights (model file or checkpoint)",
            weights_fingerprint(trainer.model()).as_bytes(),
        )?;
        let stats = SharedStats::default();
        Ok(Self {
            primary: trainer.with_all_reduce(group.all_reduce(stats.clone())),
            peers: Peers::Processes(group),
            sync_check_every: DEFAULT_SYNC_CHECK_EVERY,
            stats,
        })
    }

    /// A run over `devices`, `replicas[r]` on `devices[r]`. The replicas must be the same run
    /// (the same weights, optimizer state and counters: built from one model, or resumed from
    /// one checkpoint); their weights are compared before the first step.
    pub fn new(replicas: Vec<Trainer<B, O>>, devices: Vec<B::Device>) -> Result<Self, TrainError> {
        if replicas.len() != devices.len() || replicas.is_empty() {
            return Err(TrainError::InvalidConfig {
                key: "devices",
                reason: format!(
                    "{} replicas for {} devices: give one replica per device",
                    replicas.len(),
                    devices.len()
                ),
            });
        }
        let mut replicas = replicas.into_iter();
        let first = replicas.next().expect("at least one replica");
        if devices.len() == 1 {
            return Ok(Self::single(first));
        }
        let lease = GroupLease::try_acquire().ok_or_else(|| {
            TrainError::Collective(
                "another data-parallel run is active in this process (burn-collective serves one group at a time): drop it first".into(),
            )
        })?;
        collective::reset::<B>();
        let size = devices.len();
        let meet = Arc::new(Rendezvous::new(size));
        let config = CollectiveConfig::default().with_num_devices(size);
        let stats = SharedStats::default();
        let attach = |trainer: Trainer<B, O>, rank: usize| {
            trainer.with_all_reduce(DeviceAllReduce {
                rank,
                meet: meet.clone(),
                stats: (rank == 0).then(|| stats.clone()),
            })
        };
        let mut workers = Vec::with_capacity(size - 1);
        for (rank, (trainer, device)) in replicas.zip(devices.iter().skip(1)).enumerate() {
            let rank = rank + 1;
            let trainer = attach(trainer, rank);
            let (jobs, inbox) = mpsc::channel::<Job<B, O>>();
            let (device, config, meet) = (device.clone(), config.clone(), meet.clone());
            let thread = std::thread::Builder::new()
                .name(format!("gmt-replica-{rank}"))
                .spawn(move || serve(rank, trainer, device, config, inbox, &meet))
                .map_err(|e| TrainError::Collective(format!("cannot start replica {rank}: {e}")))?;
            workers.push((jobs, thread));
        }
        let primary = attach(first, 0);
        let mut group = Group {
            workers,
            meet,
            registered: false,
            _lease: lease,
        };
        // Registration returns once every replica has registered.
        collective::register::<B>(0, devices[0].clone(), config)?;
        group.registered = true;
        let mut run = Self {
            primary,
            peers: Peers::Threads(group),
            sync_check_every: DEFAULT_SYNC_CHECK_EVERY,
            stats,
        };
        run.check_in_sync()?;
        Ok(run)
    }

    /// Compares the replicas' weights every `steps` steps (0: never; the default is
    /// [`DEFAULT_SYNC_CHECK_EVERY`]).
    pub fn with_sync_check_every(mut self, steps: u64) -> Self {
        self.sync_check_every = steps;
        self
    }

    /// One optimizer step over `micro_batches`, split over the replicas in runs of
    /// consecutive micro-batches, as evenly as they go (the first replicas take one more when
    /// they do not divide; a replica with none contributes nothing but waits for the others).
    pub fn step(&mut self, micro_batches: Vec<O::Batch>) -> Result<StepSummary, TrainError> {
        let shares = split(micro_batches, self.replicas());
        let summary = match &self.peers {
            Peers::Alone => return self.primary.step(shares.into_iter().flatten()),
            Peers::Threads(group) => {
                let mut shares = shares.into_iter();
                let first = shares.next().expect("one share per replica");
                let pending: Vec<_> = group
                    .workers
                    .iter()
                    .zip(shares)
                    .map(|((jobs, _), mine)| ask(jobs, move |t| t.step(mine)))
                    .collect();
                let summary = self.primary.step(first);
                let others = collect(pending);
                let summary = summary?;
                for (replica, other) in others.into_iter().enumerate() {
                    let other = other?;
                    if other.totals != summary.totals || other.mask != summary.mask {
                        return Err(diverged(&summary, replica + 1));
                    }
                }
                summary
            }
            #[cfg(feature = "mpi")]
            Peers::Processes(group) => {
                let mine = shares
                    .into_iter()
                    .nth(group.rank())
                    .expect("a share per rank");
                let summary = self.primary.step(mine)?;
                let fingerprint = format!("{:?} {:?}", summary.totals, summary.mask);
                if let Some(rank) = group.first_differing(fingerprint.as_bytes()) {
                    return Err(diverged(&summary, rank));
                }
                summary
            }
        };
        if self.sync_check_every > 0 && summary.step % self.sync_check_every == 0 {
            self.check_in_sync()?;
        }
        Ok(summary)
    }

    /// Compares every replica's weights with replica 0's (a checksum of each parameter);
    /// a difference is [`TrainError::ReplicasDiverged`]. Run it before saving a checkpoint.
    pub fn check_in_sync(&mut self) -> Result<(), TrainError> {
        let step = self.primary.progress().step;
        let diverged = |replica| TrainError::ReplicasDiverged {
            step,
            replica,
            what: "the weights".into(),
        };
        match &self.peers {
            Peers::Alone => Ok(()),
            Peers::Threads(group) => {
                let pending: Vec<_> = group
                    .workers
                    .iter()
                    .map(|(jobs, _)| ask(jobs, |t| Ok(WeightChecksum::of(t.model()))))
                    .collect();
                let mine = WeightChecksum::of(self.primary.model());
                for (replica, theirs) in collect(pending).into_iter().enumerate() {
                    if theirs? != mine {
                        return Err(diverged(replica + 1));
                    }
                }
                Ok(())
            }
            #[cfg(feature = "mpi")]
            Peers::Processes(group) => {
                let mine = weights_fingerprint(self.primary.model());
                match group.first_differing(mine.as_bytes()) {
                    None => Ok(()),
                    Some(rank) => Err(diverged(rank)),
                }
            }
        }
    }

    /// Whether `flag` is set for any replica: every process of an MPI job must ask at the same
    /// point (a stop requested on one rank must stop them all at the same step); in one
    /// process, `flag` itself.
    pub fn any_replica(&self, flag: bool) -> bool {
        match &self.peers {
            Peers::Alone | Peers::Threads(_) => flag,
            #[cfg(feature = "mpi")]
            Peers::Processes(group) => group.any(flag),
        }
    }

    /// Ends the run at the current step on every replica (see [`Trainer::finish_here`]).
    pub fn finish_here(&mut self) {
        if let Peers::Threads(group) = &self.peers {
            let pending: Vec<_> = group
                .workers
                .iter()
                .map(|(jobs, _)| {
                    ask(jobs, |t| {
                        t.finish_here();
                        Ok(())
                    })
                })
                .collect();
            // A replica that is gone has nothing left to end.
            let _ = collect(pending);
        }
        self.primary.finish_here();
    }
}

impl<B: AutodiffBackend, O: Objective> DataParallel<B, O> {
    /// Replicas in the run.
    pub fn replicas(&self) -> usize {
        match &self.peers {
            Peers::Alone => 1,
            Peers::Threads(group) => 1 + group.workers.len(),
            #[cfg(feature = "mpi")]
            Peers::Processes(group) => group.size(),
        }
    }

    /// This process's replica: its rank in an MPI job, else 0.
    pub fn rank(&self) -> usize {
        match &self.peers {
            Peers::Alone | Peers::Threads(_) => 0,
            #[cfg(feature = "mpi")]
            Peers::Processes(group) => group.rank(),
        }
    }

    /// Whether this process holds replica 0, which evaluates and writes the run's files.
    pub fn is_primary(&self) -> bool {
        self.rank() == 0
    }

    /// This process's replica (replica 0 of a group of devices): the run's model, optimizer
    /// and counters, for evaluation, checkpoints and export (every replica holds the same).
    pub fn primary(&self) -> &Trainer<B, O> {
        &self.primary
    }

    /// What the all-reduce has cost so far (zero steps on one device).
    pub fn all_reduce_stats(&self) -> AllReduceStats {
        self.stats.get()
    }

    /// Replica 0, ending the run (the other replicas stop).
    pub fn into_primary(self) -> Trainer<B, O> {
        self.primary
    }
}

/// `micro_batches` in `replicas` runs of consecutive micro-batches, as even as they go: the
/// first runs take one more when they do not divide.
fn split<T>(micro_batches: Vec<T>, replicas: usize) -> Vec<Vec<T>> {
    let (base, extra) = (
        micro_batches.len() / replicas,
        micro_batches.len() % replicas,
    );
    let mut micro_batches = micro_batches.into_iter();
    (0..replicas)
        .map(|r| {
            let take = base + usize::from(r < extra);
            micro_batches.by_ref().take(take).collect()
        })
        .collect()
}

/// The weights' checksum as bytes to compare across processes.
#[cfg(feature = "mpi")]
fn weights_fingerprint<B: AutodiffBackend>(model: &gmt_models::LlamaForCausalLm<B>) -> String {
    let sums = WeightChecksum::of(model);
    format!(
        "{:x} {:x}",
        sums.sum.to_bits(),
        sums.sum_of_squares.to_bits()
    )
}

/// A step after which `replica` holds other totals or masks than this one.
fn diverged(summary: &StepSummary, replica: usize) -> TrainError {
    TrainError::ReplicasDiverged {
        step: summary.step,
        replica,
        what: "the step's totals or mask statistics".into(),
    }
}

/// A reply that will come from a replica's thread.
type Reply<T> = mpsc::Receiver<Result<T, TrainError>>;

/// Sends `job` to a replica's thread; its result comes back on the returned channel.
fn ask<B, O, T, F>(jobs: &mpsc::Sender<Job<B, O>>, job: F) -> Reply<T>
where
    B: AutodiffBackend,
    O: Objective,
    T: Send + 'static,
    F: FnOnce(&mut Trainer<B, O>) -> Result<T, TrainError> + Send + 'static,
{
    let (reply, answer) = mpsc::channel();
    // A replica whose thread is gone never answers: `collect` reports it.
    let _ = jobs.send(Box::new(move |trainer| {
        let _ = reply.send(job(trainer));
    }));
    answer
}

/// Waits for every replica's answer; a replica that stopped answering is an error.
fn collect<T>(pending: Vec<Reply<T>>) -> Vec<Result<T, TrainError>> {
    pending
        .into_iter()
        .enumerate()
        .map(|(i, answer)| {
            answer.recv().unwrap_or_else(|_| {
                Err(TrainError::ReplicaFailed {
                    replica: Some(i + 1),
                    reason: "its thread stopped (it panicked)".into(),
                })
            })
        })
        .collect()
}

/// A replica's thread: registers with burn-collective, then runs the jobs it is sent until
/// the group drops the channel. A panic breaks the group's rendezvous so that no other
/// replica waits for this one.
fn serve<B: AutodiffBackend, O: Objective>(
    rank: usize,
    mut trainer: Trainer<B, O>,
    device: B::Device,
    config: CollectiveConfig,
    inbox: mpsc::Receiver<Job<B, O>>,
    meet: &Rendezvous<Share>,
) {
    if let Err(e) = collective::register::<B>(rank, device, config) {
        meet.break_with(format!("replica {rank} could not join the group: {e}"));
        return;
    }
    while let Ok(job) = inbox.recv() {
        if catch_unwind(AssertUnwindSafe(|| job(&mut trainer))).is_err() {
            meet.break_with(format!("replica {rank} panicked"));
            return;
        }
    }
    collective::finish::<B>(rank);
}

impl<B: AutodiffBackend, O: Objective> Drop for Group<B, O> {
    fn drop(&mut self) {
        // Any replica still waiting in a step is released with an error, then each thread
        // sees its channel close and ends.
        self.meet.break_with("the data-parallel run was stopped");
        if !self.registered {
            return; // the threads wait in burn-collective's registration for good
        }
        for (jobs, thread) in self.workers.drain(..) {
            drop(jobs);
            let _ = thread.join();
        }
        collective::finish::<B>(0);
    }
}
