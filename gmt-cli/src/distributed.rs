//! `gmt train --distributed mpi`: this process as one rank of an MPI job
//! (`mpirun -np N gmt train … --distributed mpi`), one replica per rank; rank 0 evaluates and
//! writes the run's files.
//!
//! MPI is the cargo feature `mpi` (it needs an MPI library to build). In a build without it,
//! [`Rank`] has no values, so the code that drives a rank is compiled but can never run, and
//! asking for MPI is an error that says how to build it.

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use gmt_train::{DataParallel, Objective, Trainer};

use crate::backend::DeviceSpec;
use crate::settings::TrainSettings;

/// How the processes of a run find each other (`--distributed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Distributed {
    /// MPI: launched by `mpirun`, rank and size from the MPI job.
    Mpi,
}

/// This process's place among the processes of a run.
#[cfg(feature = "mpi")]
#[derive(Clone, Copy, Debug)]
pub struct Rank(gmt_train::MpiGroup);

/// This process's place among the processes of a run (none exists without MPI).
#[cfg(not(feature = "mpi"))]
#[derive(Clone, Copy, Debug)]
pub enum Rank {}

/// The job's communication, initialized for the run and finalized when dropped.
pub struct Session {
    #[cfg(feature = "mpi")]
    _universe: mpi::environment::Universe,
    rank: Rank,
}

impl Session {
    /// Joins the job (`MPI_Init`): this process's rank.
    #[cfg(feature = "mpi")]
    pub fn join(kind: Distributed) -> Result<Self> {
        let Distributed::Mpi = kind;
        // Funneled: only the main thread calls MPI (it drives the trainer; burn's and
        // rayon's threads never do).
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| anyhow::anyhow!("MPI cannot be initialized twice in a process"))?;
        let group = gmt_train::MpiGroup::world()?;
        tracing::debug!(
            "rank {} of {} (local rank {} of {})",
            group.rank(),
            group.size(),
            group.local_rank(),
            group.local_size()
        );
        Ok(Self {
            _universe: universe,
            rank: Rank(group),
        })
    }

    /// Without MPI: the error that says how to get it.
    #[cfg(not(feature = "mpi"))]
    pub fn join(kind: Distributed) -> Result<Self> {
        let Distributed::Mpi = kind;
        anyhow::bail!(
            "--distributed mpi: this gmt was built without MPI; build it with `cargo build --release -p gmt-cli --features mpi` (needs an MPI library: README, \"Several machines\")"
        )
    }

    /// This process's rank.
    pub fn rank(&self) -> Rank {
        self.rank
    }
}

#[cfg(feature = "mpi")]
impl Rank {
    /// 0…size-1.
    pub fn index(self) -> usize {
        self.0.rank()
    }

    /// Processes in the job.
    pub fn size(self) -> usize {
        self.0.size()
    }

    /// An error unless every rank brings the same `value` (compared by hash).
    pub fn ensure_same(self, what: &str, value: &str) -> Result<()> {
        Ok(self.0.ensure_same(what, value.as_bytes())?)
    }

    /// This rank's replica of the run, joined to the others'.
    pub fn data_parallel<B, O>(self, trainer: Trainer<B, O>) -> Result<DataParallel<B, O>>
    where
        B: AutodiffBackend,
        O: Objective + Send + 'static,
        O::Batch: Send + 'static,
    {
        Ok(DataParallel::over_processes(trainer, self.0)?)
    }

    /// This rank's device: with `--devices`, which lists the devices of a machine, the one at
    /// this rank's place on its machine; without, GPU `local rank` for CUDA, else the
    /// backend's one device.
    pub fn devices(self, settings: &TrainSettings) -> Result<Vec<DeviceSpec>> {
        use crate::backend::BackendChoice;
        let local = self.0.local_rank();
        let listed = &settings.train.devices;
        if listed.is_empty() {
            return Ok(match settings.train.backend {
                BackendChoice::Cuda => vec![DeviceSpec::Cuda(local)],
                BackendChoice::Auto if self.0.local_size() > 1 => {
                    tracing::warn!(
                        "{} ranks on this machine and --backend auto: each takes the one device auto picks; pass --backend cuda (GPU = rank on the machine) or --devices",
                        self.0.local_size()
                    );
                    Vec::new()
                }
                _ => Vec::new(),
            });
        }
        match listed.get(local) {
            Some(device) => Ok(vec![*device]),
            None => anyhow::bail!(
                "--devices lists {} devices, but {} ranks run on this machine: under --distributed mpi, --devices lists each machine's devices, one per rank on it",
                listed.len(),
                self.0.local_size()
            ),
        }
    }

    /// Waits for every rank.
    pub fn barrier(self) {
        self.0.barrier();
    }

    /// Ends every process of the job after `error` (printed with the rank): the others may be
    /// waiting for this one in a collective operation that it will never reach.
    pub fn fail(self, error: &anyhow::Error) -> ! {
        eprintln!("error: rank {}: {}", self.index(), crate::describe(error));
        self.0.abort(1)
    }
}

#[cfg(not(feature = "mpi"))]
impl Rank {
    /// 0…size-1.
    pub fn index(self) -> usize {
        match self {}
    }

    /// Processes in the job.
    pub fn size(self) -> usize {
        match self {}
    }

    /// An error unless every rank brings the same `value`.
    pub fn ensure_same(self, _what: &str, _value: &str) -> Result<()> {
        match self {}
    }

    /// This rank's replica of the run.
    pub fn data_parallel<B, O>(self, _trainer: Trainer<B, O>) -> Result<DataParallel<B, O>>
    where
        B: AutodiffBackend,
        O: Objective + Send + 'static,
        O::Batch: Send + 'static,
    {
        match self {}
    }

    /// This rank's device.
    pub fn devices(self, _settings: &TrainSettings) -> Result<Vec<DeviceSpec>> {
        match self {}
    }

    /// Waits for every rank.
    pub fn barrier(self) {
        match self {}
    }

    /// Ends every process of the job after `error`.
    pub fn fail(self, _error: &anyhow::Error) -> ! {
        match self {}
    }
}
