//! Choosing the compute backend at run time: CPU (burn's Flex), WGPU or CUDA, all compiled
//! into the one binary.
//!
//! The CPU backend is Flex rather than burn-ndarray (which the cross-backend tests keep as
//! their reference): measured side by side (README "Benchmarks") it is faster at every phase
//! of a step and 10× faster at one-token decoding, it has bf16 arithmetic (`bf16-mixed`
//! trains on the CPU), and it passes the same parity, reproducibility and resume tests.
//!
//! Code that trains or evaluates is written once, generic over burn's `AutodiffBackend`, as a
//! [`BackendJob`]; [`run_job`] monomorphizes it for the backend that was picked.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::cuda::CudaDevice;
use burn::backend::flex::FlexDevice;
use burn::backend::wgpu::graphics::AutoGraphicsApi;
use burn::backend::wgpu::{RuntimeOptions, WgpuDevice, init_setup};
use burn::backend::{Autodiff, Cuda, Flex, Wgpu};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use gmt_train::memory::Checkpointing;
use serde::{Deserialize, Serialize};

/// The `--backend` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// CUDA if a GPU and driver are found, else WGPU on a real GPU, else CPU.
    #[default]
    Auto,
    /// burn's Flex on the CPU (multi-threaded, SIMD).
    Cpu,
    /// WGPU (Vulkan, Metal, DX12) on the first adapter, including software ones.
    Wgpu,
    /// CUDA on GPU 0.
    Cuda,
}

/// The backend in use, with its devices: one, or one per replica of a data-parallel run.
#[derive(Clone, Debug)]
pub enum Selected {
    /// burn's Flex, with `replicas` replicas on the one CPU (for tests of the
    /// data-parallel path: they share the cores).
    Cpu {
        /// Replicas (1 unless `--devices cpu,cpu,…`).
        replicas: usize,
    },
    /// WGPU on one or more adapters.
    Wgpu {
        /// The initialized devices.
        devices: Vec<WgpuDevice>,
        /// The first adapter's name and kind, for the log.
        adapter: String,
    },
    /// CUDA on one or more GPUs.
    Cuda(Vec<CudaDevice>),
}

impl fmt::Display for Selected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu { replicas: 1 } => write!(f, "cpu (flex, {} threads)", rayon_threads()),
            Self::Cpu { replicas } => write!(
                f,
                "cpu (flex, {} threads) × {replicas} replicas",
                rayon_threads()
            ),
            Self::Wgpu { devices, adapter } if devices.len() == 1 => write!(f, "wgpu ({adapter})"),
            Self::Wgpu { devices, adapter } => {
                write!(
                    f,
                    "wgpu ({} devices: {devices:?}; first {adapter})",
                    devices.len()
                )
            }
            Self::Cuda(devices) => {
                let ids: Vec<String> = devices.iter().map(|d| d.index.to_string()).collect();
                match ids.len() {
                    1 => write!(f, "cuda (GPU {})", ids[0]),
                    _ => write!(f, "cuda (GPUs {})", ids.join(", ")),
                }
            }
        }
    }
}

/// One entry of `--devices`: `cpu`, `cuda:N` or `wgpu:N` (the N-th discrete GPU; `wgpu` alone
/// is the default adapter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// A replica on the CPU (burn's Flex).
    Cpu,
    /// CUDA GPU N.
    Cuda(usize),
    /// WGPU: discrete GPU N, or the default adapter.
    Wgpu(Option<usize>),
}

impl DeviceSpec {
    fn backend(self) -> BackendChoice {
        match self {
            Self::Cpu => BackendChoice::Cpu,
            Self::Cuda(_) => BackendChoice::Cuda,
            Self::Wgpu(_) => BackendChoice::Wgpu,
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, index) = match s.trim().split_once(':') {
            Some((kind, index)) => (kind, Some(index)),
            None => (s.trim(), None),
        };
        let index = index
            .map(|i| {
                i.parse::<usize>()
                    .map_err(|_| format!("device `{s}`: `{i}` is not a device number"))
            })
            .transpose()?;
        match (kind, index) {
            ("cpu", None) => Ok(Self::Cpu),
            ("cuda", Some(i)) => Ok(Self::Cuda(i)),
            ("cuda", None) => Ok(Self::Cuda(0)),
            ("wgpu", i) => Ok(Self::Wgpu(i)),
            _ => Err(format!(
                "unknown device `{s}`: expected cpu, cuda:N or wgpu:N"
            )),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(spec: DeviceSpec) -> String {
        spec.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            Self::Wgpu(None) => write!(f, "wgpu"),
        }
    }
}

/// `--devices` that cannot be used together or with `--backend`.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    /// Devices of more than one backend.
    #[error(
        "--devices mixes backends ({0} and {1}): every replica must run on the same kind of device"
    )]
    MixedBackends(DeviceSpec, DeviceSpec),
    /// Devices of another backend than `--backend` names.
    #[error("--devices {devices} is not a device of --backend {backend}")]
    OtherBackend {
        /// The devices' kind.
        devices: DeviceSpec,
        /// The backend asked for, as `--backend` spells it.
        backend: String,
    },
    /// A GPU named twice.
    #[error("--devices names {0} twice: one replica per GPU")]
    Repeated(DeviceSpec),
    /// A device that cannot be initialized.
    #[error(transparent)]
    Unavailable(#[from] BackendUnavailable),
}

/// Picks the backend and initializes every device of `devices` (one replica each); with no
/// devices, one device of `choice` as [`select`] does.
pub fn select_devices(
    choice: BackendChoice,
    devices: &[DeviceSpec],
) -> Result<Selected, DevicesError> {
    let Some(&first) = devices.first() else {
        return Ok(select(choice)?);
    };
    if let Some(&other) = devices.iter().find(|d| d.backend() != first.backend()) {
        return Err(DevicesError::MixedBackends(first, other));
    }
    for (i, d) in devices.iter().enumerate() {
        if *d != DeviceSpec::Cpu && devices[..i].contains(d) {
            return Err(DevicesError::Repeated(*d));
        }
    }
    if !matches!(choice, BackendChoice::Auto) && choice != first.backend() {
        return Err(DevicesError::OtherBackend {
            devices: first,
            backend: clap::ValueEnum::to_possible_value(&choice)
                .map_or_else(|| format!("{choice:?}"), |v| v.get_name().to_string()),
        });
    }
    Ok(match first {
        DeviceSpec::Cpu => Selected::Cpu {
            replicas: devices.len(),
        },
        DeviceSpec::Cuda(_) => Selected::Cuda(
            devices
                .iter()
                .map(|d| match d {
                    DeviceSpec::Cuda(i) => probe_cuda(*i),
                    _ => unreachable!("checked: one backend"),
                })
                .collect::<Result<_, _>>()?,
        ),
        DeviceSpec::Wgpu(_) => {
            let mut adapters = Vec::new();
            for d in devices {
                let device = match d {
                    DeviceSpec::Wgpu(Some(i)) => WgpuDevice::DiscreteGpu(*i),
                    _ => WgpuDevice::DefaultDevice,
                };
                adapters.push(probe_wgpu_device(device)?);
            }
            let adapter = adapters[0].1.clone();
            Selected::Wgpu {
                devices: adapters.into_iter().map(|(d, _, _)| d).collect(),
                adapter,
            }
        }
    })
}

/// Threads the CPU backend runs on.
pub(crate) fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The asked-for backend cannot run here. The CLI exits with code 2 on it.
#[derive(Debug, thiserror::Error)]
#[error("backend `{backend}` is not available: {reason}")]
pub struct BackendUnavailable {
    /// `wgpu` or `cuda`.
    pub backend: &'static str,
    /// What failed, in burn's or the driver's words.
    pub reason: String,
}

/// Picks and initializes the backend.
pub fn select(choice: BackendChoice) -> Result<Selected, BackendUnavailable> {
    match choice {
        BackendChoice::Cpu => Ok(Selected::Cpu { replicas: 1 }),
        BackendChoice::Cuda => probe_cuda(0).map(|d| Selected::Cuda(vec![d])),
        BackendChoice::Wgpu => probe_wgpu().map(|(selected, _)| selected),
        BackendChoice::Auto => {
            if let Ok(cuda) = probe_cuda(0) {
                return Ok(Selected::Cuda(vec![cuda]));
            }
            // A software adapter (e.g. Mesa's lavapipe) is slower than the CPU backend: only
            // a real GPU beats it.
            match probe_wgpu() {
                Ok((selected, true)) => Ok(selected),
                _ => Ok(Selected::Cpu { replicas: 1 }),
            }
        }
    }
}

/// Runs `f`, turning a panic into an error message without printing it: burn's backends
/// panic when a driver or adapter is missing.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "initialization failed".into())
    })
}

fn probe_cuda(index: usize) -> Result<CudaDevice, BackendUnavailable> {
    let device = CudaDevice::new(index);
    quietly(|| {
        Tensor::<Cuda, 1>::zeros([1], &device)
            .into_data()
            .to_vec::<f32>()
    })
    .and_then(|read| read.map(drop).map_err(|e| format!("{e:?}")))
    .map_err(|reason| BackendUnavailable {
        backend: "cuda",
        reason: format!(
            "CUDA device {index} could not be initialized (is an NVIDIA GPU with its driver present?); burn reported: {reason}"
        ),
    })?;
    Ok(device)
}

/// The initialized default WGPU device and whether its adapter is a real GPU.
fn probe_wgpu() -> Result<(Selected, bool), BackendUnavailable> {
    let (device, adapter, real_gpu) = probe_wgpu_device(WgpuDevice::DefaultDevice)?;
    Ok((
        Selected::Wgpu {
            devices: vec![device],
            adapter,
        },
        real_gpu,
    ))
}

/// `device` initialized, its adapter's description, and whether it is a real GPU.
fn probe_wgpu_device(device: WgpuDevice) -> Result<(WgpuDevice, String, bool), BackendUnavailable> {
    let setup = quietly(|| init_setup::<AutoGraphicsApi>(&device, RuntimeOptions::default()))
        .map_err(|reason| BackendUnavailable {
            backend: "wgpu",
            reason: format!(
                "{device:?}: {reason} (no Vulkan/Metal/DX12 adapter; on Linux without a GPU, install Mesa's lavapipe: apt-get install mesa-vulkan-drivers)"
            ),
        })?;
    let info = setup.adapter.get_info();
    let real_gpu = matches!(
        info.device_type,
        wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu
    );
    let adapter = format!("{} [{:?}, {:?}]", info.name, info.device_type, info.backend);
    Ok((device, adapter, real_gpu))
}

/// What `gmt info` prints about each backend, without initializing any of them for training.
pub fn describe_backends() -> Vec<(String, String)> {
    let mut lines = vec![(
        "cpu".to_string(),
        format!("available: burn's Flex, {} threads", rayon_threads()),
    )];
    // Vulkan, Metal, DX12: what burn runs on (GL adapters are never used, and probing them
    // prints EGL noise on headless machines).
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters =
        futures_lite::future::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    if adapters.is_empty() {
        lines.push(("wgpu".into(), "not available: no adapter found".into()));
    }
    for (i, adapter) in adapters.iter().enumerate() {
        let info = adapter.get_info();
        lines.push((
            format!("wgpu[{i}]"),
            format!("{} [{:?}, {:?}]", info.name, info.device_type, info.backend),
        ));
    }
    lines.push((
        "cuda".into(),
        match probe_cuda(0) {
            Ok(_) => "available: GPU 0".into(),
            Err(e) => format!("not available: {}", e.reason),
        },
    ));
    lines
}

/// Work that runs on whichever backend was selected.
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs on backend `B` with `devices`: one, or one per replica of a data-parallel run
    /// (only `gmt train` selects several).
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> anyhow::Result<Self::Output>;
}

/// Runs `job` on the selected backend.
pub fn run_job<J: BackendJob>(selected: &Selected, job: J) -> anyhow::Result<J::Output> {
    match selected {
        Selected::Cpu { replicas } => job.run::<Autodiff<Flex>>(vec![FlexDevice; *replicas]),
        Selected::Wgpu { devices, .. } => job.run::<Autodiff<Wgpu>>(devices.clone()),
        Selected::Cuda(devices) => job.run::<Autodiff<Cuda>>(devices.clone()),
    }
}

/// [`run_job`] for a training job, whose backward keeps or recomputes element-wise results
/// as `checkpointing` says (burn's checkpointing strategies, a type parameter of its
/// autodiff backend: training is compiled once for each).
pub fn run_training_job<J: BackendJob>(
    selected: &Selected,
    checkpointing: Checkpointing,
    job: J,
) -> anyhow::Result<J::Output> {
    type Balanced<B> = Autodiff<B, BalancedCheckpointing>;
    match (checkpointing, selected) {
        (Checkpointing::None, _) => run_job(selected, job),
        (Checkpointing::Balanced, Selected::Cpu { replicas }) => {
            job.run::<Balanced<Flex>>(vec![FlexDevice; *replicas])
        }
        (Checkpointing::Balanced, Selected::Wgpu { devices, .. }) => {
            job.run::<Balanced<Wgpu>>(devices.clone())
        }
        (Checkpointing::Balanced, Selected::Cuda(devices)) => {
            job.run::<Balanced<Cuda>>(devices.clone())
        }
    }
}

/// The one device of a single-device job.
pub fn single<D>(devices: Vec<D>) -> D {
    devices
        .into_iter()
        .next()
        .expect("a backend is selected with at least one device")
}
