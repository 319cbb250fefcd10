//! Whether a run fits its device: `gmt plan`, and the check `gmt train` makes before it
//! loads anything. The numbers are gmt-train's [`MemoryPlan`] estimate (README "Fitting a 7B
//! model" says how it was measured against real peaks).

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use bytesize::ByteSize;
use gmt_models::LlamaConfig;
use gmt_train::memory::{
    Checkpointing, MemoryEstimate, MemoryPlan, OldValues, Precision, peak_rss,
    release_freed_host_memory, reset_peak_rss,
};

use crate::backend::Selected;
use crate::cli::PlanArgs;
use crate::commands::Finished;
use crate::model_source::model_config;
use crate::settings::{ObjectiveKind, ReferenceLogps, TrainSettings};

/// What `gmt train` trains where (`Precision::trains_with`), for the planner's notes.
const TRAINABLE: &str =
    "gmt train takes fp32 everywhere, bf16-mixed and bf16 on CUDA and the CPU (not WGPU)";

/// Memory to fit in, and where the figure came from.
struct Capacity {
    bytes: u64,
    source: String,
}

impl Capacity {
    /// The size `--device-memory` (or `[train] device_memory`) gives.
    fn given(size: ByteSize) -> Self {
        Self {
            bytes: size.as_u64(),
            source: "--device-memory".into(),
        }
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// `gmt plan`
pub fn plan(args: &PlanArgs) -> Result<Finished> {
    if args.micro_batch_size == 0 || args.max_seq_len == 0 || args.grad_accum == 0 {
        bail!("--micro-batch-size, --max-seq-len and --grad-accum must be positive");
    }
    let config = model_config(&args.model)?;
    // A GPU's own memory when one is here, else this machine's (a CPU run).
    let gpu = gpu_memory(0);
    let plan = MemoryPlan {
        micro_batch_size: args.micro_batch_size,
        seq_len: args.max_seq_len,
        grad_accum: args.grad_accum,
        precision: args.precision,
        checkpointing: args.checkpointing,
        sequences_per_example: sequences_per_example(args.objective),
        reserve: match (&gpu, args.device_memory) {
            (None, None) => MemoryPlan::CPU_RESERVE,
            _ => MemoryPlan::GPU_RESERVE,
        },
        // `gmt plan` is not told the mask's target: the gradient target, the default.
        old_values: OldValues::None,
    };
    let estimate = plan.estimate(&config);
    // A device given or found is taken for a CUDA GPU, else the host's memory means a CPU run
    // (burn's Flex): both compute in bf16. Only WGPU does not, and `gmt plan` is not asked
    // about a backend.
    let bf16 = true;
    let capacity = match args.device_memory {
        Some(size) => Some(Capacity::given(size)),
        None => gpu.or_else(host_memory),
    };
    outln!(
        "model {}: {} parameters ({:?}, {} layers, hidden {}, vocabulary {})",
        args.model.display(),
        estimate.parameters,
        config.architecture,
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size
    );
    outln!("run: {}", describe(&plan));
    outln!();
    for (part, bytes) in estimate.parts() {
        outln!("  {part:<12} {:>12}", gib(bytes));
    }
    outln!(
        "  {:<12} {:>12}  (weights, Γ, optimizer and reserve, with the larger of activations \
         and gradients + workspace: backward frees the one as it makes the other)",
        "peak",
        gib(estimate.total())
    );
    outln!();
    let Some(capacity) = capacity else {
        outln!("no device memory known: pass --device-memory (e.g. 80GiB) to see what fits");
        return Ok(Finished::Done);
    };
    let verdict = verdict(&estimate, &capacity);
    outln!("{verdict}");
    if !plan.precision.trains_with(bf16) {
        outln!(
            "note: {} is not trainable here ({TRAINABLE})",
            plan.precision
        );
    }
    outln!();
    outln!("alternatives (total, at {}):", gib(capacity.bytes));
    let candidates = candidates(&plan);
    let width = candidates.iter().map(|c| flags(c).len()).max().unwrap_or(0);
    for candidate in candidates {
        let total = candidate.estimate(&config).total();
        let fits = if total <= capacity.bytes { "fits" } else { "" };
        let planned = if candidate.precision.trains_with(bf16) {
            ""
        } else {
            " (not trainable here)"
        };
        outln!(
            "  {:<width$} {:>12}  {fits}{planned}",
            flags(&candidate),
            gib(total)
        );
    }
    match suggest(&config, &plan, capacity.bytes, bf16) {
        Some(best) if best == plan => {}
        Some(best) => outln!("\nsuggested: {}", flags(&best)),
        None => outln!("\nnothing gmt can train today fits {}", gib(capacity.bytes)),
    }
    Ok(Finished::Done)
}

/// `gmt train`'s check before loading: the run's estimate, logged against the device's
/// memory, and an error where it will not fit (unless `enforce` is off or the settings turn
/// the check off). `grad_accum` is this device's share of a step.
pub fn check_train(
    settings: &TrainSettings,
    selected: &Selected,
    grad_accum: usize,
    enforce: bool,
) -> Result<MemoryEstimate> {
    let config = model_config(settings.model_path()?)?;
    let plan = train_plan(settings, selected, grad_accum);
    let mut estimate = plan.estimate(&config);
    if settings.train.objective == ObjectiveKind::Dpo
        && settings.train.reference_logps == ReferenceLogps::Resident
    {
        // The frozen reference beside the policy.
        estimate.weights += estimate.parameters * plan.precision.weight_bytes();
    }
    // CPU replicas share the machine's memory; GPU replicas have a device each.
    let (capacity, sharing) = match (settings.train.device_memory, selected) {
        (Some(size), _) => (Some(Capacity::given(size)), 1),
        (None, Selected::Cpu { replicas }) => (host_memory(), *replicas as u64),
        (None, Selected::Cuda(devices)) => (devices.first().and_then(|d| gpu_memory(d.index)), 1),
        (None, Selected::Wgpu { .. }) => (None, 1),
    };
    let needed = estimate.total() * sharing;
    // Sequences past the model's context are the data's error to report (packing refuses
    // them; otherwise they are never that long), not a memory estimate's.
    let past_context = settings.data.max_seq_len > config.max_position_embeddings;
    let Some(capacity) = capacity.filter(|_| !past_context) else {
        tracing::info!(
            "memory: about {} (the device's own is not known)",
            gib(needed)
        );
        return Ok(estimate);
    };
    if needed <= capacity.bytes || !enforce || !settings.train.memory_check {
        tracing::info!(
            "memory: about {} of {} ({})",
            gib(needed),
            gib(capacity.bytes),
            capacity.source
        );
        return Ok(estimate);
    }
    let parts: Vec<String> = estimate
        .parts()
        .iter()
        .filter(|(_, bytes)| *bytes > 0)
        .map(|(part, bytes)| format!("{part} {}", gib(*bytes)))
        .collect();
    let replicas = if sharing > 1 {
        format!(" × {sharing} replicas")
    } else {
        String::new()
    };
    let bf16 = !matches!(selected, Selected::Wgpu { .. });
    let hint = match suggest(&config, &plan, capacity.bytes / sharing, bf16) {
        Some(best) => format!("these settings fit: {}", flags(&best)),
        None => "no settings gmt can train today fit".into(),
    };
    bail!(
        "this run needs about {}{replicas} at its peak ({}) but the device has {} ({}): it will not fit.\n{hint}\n(`gmt plan` shows the budget; --force trains anyway)",
        gib(estimate.total()),
        parts.join(", "),
        gib(capacity.bytes),
        capacity.source
    )
}

/// The peaks of loading, of the training steps and of checkpoint saves, kept apart: loading
/// holds the file's tensors and the model built from them at once, and a save copies the
/// weights and AdamW's state to the host and serializes them, neither of which the step's
/// estimate covers (on the CPU that is the same memory).
static LOAD_PEAK: AtomicU64 = AtomicU64::new(0);
static STEPS_PEAK: AtomicU64 = AtomicU64::new(0);
static SAVE_PEAK: AtomicU64 = AtomicU64::new(0);

/// Called once the trainers are built, before the first step: the peak so far is loading's.
/// What loading freed (the file's tensors) goes back to the kernel, so that the steps' peak
/// is the steps' own.
pub fn after_load() {
    LOAD_PEAK.fetch_max(peak_rss().unwrap_or(0), Ordering::Relaxed);
    release_freed_host_memory();
    reset_peak_rss();
}

/// Called before a checkpoint is saved: the peak so far belongs to the steps.
pub fn before_save() {
    STEPS_PEAK.fetch_max(peak_rss().unwrap_or(0), Ordering::Relaxed);
    reset_peak_rss();
}

/// Called after a checkpoint is saved: the peak since [`before_save`] belongs to the save.
pub fn after_save() {
    SAVE_PEAK.fetch_max(peak_rss().unwrap_or(0), Ordering::Relaxed);
    release_freed_host_memory();
    reset_peak_rss();
}

/// Logs the peak memory of the training steps beside the estimate, and of checkpoint saves
/// and the export (CPU runs: the process's memory is the run's).
pub fn report_peak(selected: &Selected, estimate: &MemoryEstimate) {
    let Selected::Cpu { .. } = selected else {
        return;
    };
    let now = peak_rss().unwrap_or(0);
    let steps = STEPS_PEAK.load(Ordering::Relaxed).max(now);
    if steps == 0 {
        return;
    }
    tracing::info!(
        "peak memory {} in training steps (estimated {}); {} while loading; {} while saving checkpoints and the final model",
        gib(steps),
        gib(estimate.total()),
        gib(LOAD_PEAK.load(Ordering::Relaxed)),
        gib(SAVE_PEAK.load(Ordering::Relaxed).max(now))
    );
}

/// The memory plan of a `gmt train` run on one device.
fn train_plan(settings: &TrainSettings, selected: &Selected, grad_accum: usize) -> MemoryPlan {
    MemoryPlan {
        reserve: match selected {
            Selected::Cpu { .. } => MemoryPlan::CPU_RESERVE,
            _ => MemoryPlan::GPU_RESERVE,
        },
        micro_batch_size: settings.train.micro_batch_size,
        seq_len: settings.data.max_seq_len,
        grad_accum,
        precision: settings.train.precision,
        checkpointing: settings.train.checkpointing,
        sequences_per_example: sequences_per_example(settings.train.objective),
        old_values: OldValues::of(&settings.gmt, matches!(selected, Selected::Cpu { .. })),
    }
}

fn sequences_per_example(objective: ObjectiveKind) -> usize {
    match objective {
        ObjectiveKind::CausalLm => 1,
        ObjectiveKind::Dpo => 2,
    }
}

fn verdict(estimate: &MemoryEstimate, capacity: &Capacity) -> String {
    let (total, have) = (estimate.total(), capacity.bytes);
    if total <= have {
        format!(
            "fits: {} of {} ({}, {:.0}%)",
            gib(total),
            gib(have),
            capacity.source,
            100.0 * total as f64 / have as f64
        )
    } else {
        format!(
            "does not fit: {} needed, {} available ({}): {} short",
            gib(total),
            gib(have),
            capacity.source,
            gib(total - have)
        )
    }
}

fn describe(plan: &MemoryPlan) -> String {
    format!(
        "micro-batch {} × {} tokens{}, grad-accum {}, {}, checkpointing {}",
        plan.micro_batch_size,
        plan.seq_len,
        if plan.sequences_per_example == 2 {
            " (pairs: chosen and rejected)"
        } else {
            ""
        },
        plan.grad_accum,
        plan.precision,
        plan.checkpointing
    )
}

fn flags(plan: &MemoryPlan) -> String {
    format!(
        "--precision {} --checkpointing {} --micro-batch-size {} --grad-accum {}",
        plan.precision, plan.checkpointing, plan.micro_batch_size, plan.grad_accum
    )
}

/// Other settings for the same run, in the order they are preferred: the precision and
/// checkpointing variants at the asked micro-batch size, then at smaller micro-batches with
/// more accumulation (the same sequences per step). Full bf16 comes last at each size: of
/// the modes it alone changes the numbers of the update.
fn candidates(plan: &MemoryPlan) -> Vec<MemoryPlan> {
    let mut sizes = vec![plan.micro_batch_size];
    while let Some(&b) = sizes.last().filter(|&&b| b > 1) {
        sizes.push(b / 2);
    }
    let per_step = plan.micro_batch_size * plan.grad_accum;
    let mut out = Vec::new();
    for b in sizes {
        // Full bf16 refuses the update target (README "GMT, precisely").
        let precisions = Precision::ALL
            .into_iter()
            .filter(|p| plan.old_values == OldValues::None || *p != Precision::Bf16);
        for precision in precisions {
            for checkpointing in Checkpointing::ALL {
                out.push(MemoryPlan {
                    micro_batch_size: b,
                    grad_accum: per_step.div_ceil(b),
                    precision,
                    checkpointing,
                    ..*plan
                });
            }
        }
    }
    out
}

/// The first trainable candidate that fits `capacity`, or the plan itself if it fits.
fn suggest(
    config: &LlamaConfig,
    plan: &MemoryPlan,
    capacity: u64,
    bf16: bool,
) -> Option<MemoryPlan> {
    if plan.precision.trains_with(bf16) && plan.estimate(config).total() <= capacity {
        return Some(*plan);
    }
    candidates(plan)
        .into_iter()
        .filter(|c| c.precision.trains_with(bf16))
        .find(|c| c.estimate(config).total() <= capacity)
}

/// This machine's available memory (Linux `MemAvailable`): what CPU training can use.
fn host_memory() -> Option<Capacity> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(Capacity {
        bytes: kib * 1024,
        source: "this machine's available memory".into(),
    })
}

/// GPU `index`'s total memory, as `nvidia-smi` reports it.
fn gpu_memory(index: usize) -> Option<Capacity> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.total,name",
            "--format=csv,noheader,nounits",
            &format!("--id={index}"),
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (mib, name) = text.trim().split_once(',')?;
    let mib: u64 = mib.trim().parse().ok()?;
    Some(Capacity {
        bytes: ByteSize::mib(mib).as_u64(),
        source: format!("GPU {index}, {}", name.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_update_target_is_not_offered_full_bf16() {
        let plan = MemoryPlan {
            micro_batch_size: 4,
            ..MemoryPlan::default()
        };
        assert!(
            candidates(&plan)
                .iter()
                .any(|c| c.precision == Precision::Bf16)
        );
        let update = MemoryPlan {
            old_values: OldValues::All,
            ..plan
        };
        let offered = candidates(&update);
        assert!(offered.iter().any(|c| c.precision == Precision::Bf16Mixed));
        assert!(offered.iter().all(|c| c.precision != Precision::Bf16));
    }
}
