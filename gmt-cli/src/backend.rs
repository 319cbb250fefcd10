//! Choosing the compute backend at run time: CPU (burn-ndarray), WGPU or CUDA, all compiled
//! into the one binary.
//!
//! Code that trains or evaluates is written once, generic over burn's `AutodiffBackend`, as a
//! [`BackendJob`]; [`run_job`] monomorphizes it for the backend that was picked.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::backend::cuda::CudaDevice;
use burn::backend::ndarray::NdArrayDevice;
use burn::backend::wgpu::graphics::AutoGraphicsApi;
use burn::backend::wgpu::{RuntimeOptions, WgpuDevice, init_setup};
use burn::backend::{Autodiff, Cuda, NdArray, Wgpu};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

/// The `--backend` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// CUDA if a GPU and driver are found, else WGPU on a real GPU, else CPU.
    #[default]
    Auto,
    /// burn-ndarray on the CPU.
    Cpu,
    /// WGPU (Vulkan, Metal, DX12) on the first adapter, including software ones.
    Wgpu,
    /// CUDA on GPU 0.
    Cuda,
}

/// The backend in use, with its device.
#[derive(Clone, Debug)]
pub enum Selected {
    /// burn-ndarray.
    Cpu,
    /// WGPU on an adapter.
    Wgpu {
        /// The initialized device.
        device: WgpuDevice,
        /// Adapter name and kind, for the log.
        adapter: String,
    },
    /// CUDA on GPU 0.
    Cuda(CudaDevice),
}

impl fmt::Display for Selected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu (ndarray, {} threads)", rayon_threads()),
            Self::Wgpu { adapter, .. } => write!(f, "wgpu ({adapter})"),
            Self::Cuda(_) => write!(f, "cuda (GPU 0)"),
        }
    }
}

fn rayon_threads() -> usize {
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
        BackendChoice::Cpu => Ok(Selected::Cpu),
        BackendChoice::Cuda => probe_cuda(),
        BackendChoice::Wgpu => probe_wgpu().map(|(selected, _)| selected),
        BackendChoice::Auto => {
            if let Ok(cuda) = probe_cuda() {
                return Ok(cuda);
            }
            // A software adapter (e.g. Mesa's lavapipe) is slower than burn-ndarray: only a
            // real GPU beats the CPU backend.
            match probe_wgpu() {
                Ok((selected, true)) => Ok(selected),
                _ => Ok(Selected::Cpu),
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

fn probe_cuda() -> Result<Selected, BackendUnavailable> {
    let device = CudaDevice::new(0);
    quietly(|| {
        Tensor::<Cuda, 1>::zeros([1], &device)
            .into_data()
            .to_vec::<f32>()
    })
    .and_then(|read| read.map(drop).map_err(|e| format!("{e:?}")))
    .map_err(|reason| BackendUnavailable {
        backend: "cuda",
        reason: format!(
            "no CUDA device could be initialized (is an NVIDIA GPU with its driver present?); burn reported: {reason}"
        ),
    })?;
    Ok(Selected::Cuda(device))
}

/// The initialized WGPU device and whether its adapter is a real GPU.
fn probe_wgpu() -> Result<(Selected, bool), BackendUnavailable> {
    let device = WgpuDevice::DefaultDevice;
    let setup = quietly(|| init_setup::<AutoGraphicsApi>(&device, RuntimeOptions::default()))
        .map_err(|reason| BackendUnavailable {
            backend: "wgpu",
            reason: format!(
                "{reason} (no Vulkan/Metal/DX12 adapter; on Linux without a GPU, install Mesa's lavapipe: apt-get install mesa-vulkan-drivers)"
            ),
        })?;
    let info = setup.adapter.get_info();
    let real_gpu = matches!(
        info.device_type,
        wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu
    );
    let adapter = format!("{} [{:?}, {:?}]", info.name, info.device_type, info.backend);
    Ok((Selected::Wgpu { device, adapter }, real_gpu))
}

/// What `gmt info` prints about each backend, without initializing any of them for training.
pub fn describe_backends() -> Vec<(String, String)> {
    let mut lines = vec![(
        "cpu".to_string(),
        format!("available: burn-ndarray, {} threads", rayon_threads()),
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
        match probe_cuda() {
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
    /// Runs on backend `B` with `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<Self::Output>;
}

/// Runs `job` on the selected backend.
pub fn run_job<J: BackendJob>(selected: &Selected, job: J) -> anyhow::Result<J::Output> {
    match selected {
        Selected::Cpu => job.run::<Autodiff<NdArray>>(NdArrayDevice::Cpu),
        Selected::Wgpu { device, .. } => job.run::<Autodiff<Wgpu>>(device.clone()),
        Selected::Cuda(device) => job.run::<Autodiff<Cuda>>(device.clone()),
    }
}
