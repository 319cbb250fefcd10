//! The memory budget of one training run, part by part, from the model's config alone.

use gmt_core::{GmtConfig, MaskTarget};
use gmt_models::LlamaConfig;

use super::{Checkpointing, Precision};

/// A training run's shape, as far as memory goes.
///
/// ```
/// use gmt_models::LlamaConfig;
/// use gmt_train::memory::{Checkpointing, MemoryPlan, Precision};
///
/// let config = LlamaConfig::from_hf_value(&serde_json::json!({
///     "model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096,
///     "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
///     "num_key_value_heads": 8, "max_position_embeddings": 32768,
/// }), "config.json").unwrap();
/// let plan = MemoryPlan { micro_batch_size: 1, seq_len: 2048, ..MemoryPlan::default() };
/// let fp32 = plan.estimate(&config);
/// let bf16 = MemoryPlan { precision: Precision::Bf16, ..plan }.estimate(&config);
/// assert!(bf16.total() < fp32.total());
/// assert_eq!(fp32.parameters, 7_241_732_096);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryPlan {
    /// Sequences per micro-batch (for DPO: preference pairs).
    pub micro_batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Micro-batches per optimizer step on this device.
    pub grad_accum: usize,
    /// Number formats.
    pub precision: Precision,
    /// What backward recomputes.
    pub checkpointing: Checkpointing,
    /// Sequences the objective runs through the model per micro-batch entry: 1 for causal
    /// LM, 2 for DPO (chosen and rejected).
    pub sequences_per_example: usize,
    /// Bytes the runtime takes besides the run's tensors (see [`MemoryPlan::CPU_RESERVE`]
    /// and [`MemoryPlan::GPU_RESERVE`]).
    pub reserve: u64,
    /// What GMT's update target keeps of the weights' previous values.
    pub old_values: OldValues,
}

/// The previous values GMT's update target ([`MaskTarget::Update`]) keeps to put back into
/// the masked entries after AdamW's step (gmt-core's `update_target.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum OldValues {
    /// None: the gradient target, or nothing masked.
    #[default]
    None,
    /// On the CPU: the masked entries' values alone (`mask_ratio` of the parameters, fp32),
    /// in a buffer kept from step to step.
    Masked {
        /// The fraction of entries masked.
        mask_ratio: f64,
    },
    /// On a GPU: every parameter's previous value (fp32), held through the update.
    All,
}

impl OldValues {
    /// What a run with `gmt` keeps, on the CPU (`on_host`) or a GPU.
    pub fn of(gmt: &GmtConfig, on_host: bool) -> Self {
        if gmt.target != MaskTarget::Update || gmt.is_identity() {
            Self::None
        } else if on_host {
            Self::Masked {
                mask_ratio: gmt.mask_ratio,
            }
        } else {
            Self::All
        }
    }
}

impl MemoryPlan {
    /// The runtime's own memory on the CPU: the program, its allocator and threads (measured
    /// with SmolLM2-135M: 0.04 GiB beyond the model's tensors).
    pub const CPU_RESERVE: u64 = 64 << 20;
    /// The runtime's own memory on a GPU: the CUDA context and the slack of cubecl's memory
    /// pools. Not measured here (no GPU): a margin, to be replaced by a measurement.
    pub const GPU_RESERVE: u64 = 2 << 30;
}

impl Default for MemoryPlan {
    fn default() -> Self {
        Self {
            micro_batch_size: 1,
            seq_len: 512,
            grad_accum: 1,
            precision: Precision::default(),
            checkpointing: Checkpointing::default(),
            sequences_per_example: 1,
            reserve: Self::CPU_RESERVE,
            old_values: OldValues::None,
        }
    }
}

/// Bytes a run needs, by part, and at its peak ([`total`](Self::total)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The model's parameter count.
    pub parameters: u64,
    /// Weights, with any working copy (`bf16-mixed`).
    pub weights: u64,
    /// One backward pass's gradients.
    pub gradients: u64,
    /// Γ, when it is a tensor of its own (several micro-batches, or widened to fp32).
    pub gamma: u64,
    /// AdamW's state.
    pub optimizer: u64,
    /// What backward needs of the forward pass at its start: every layer's kept results, the
    /// logits and the loss's softmax, and the first gradients of the loss.
    pub activations: u64,
    /// Temporaries of the mask and AdamW, one parameter tensor at a time.
    pub workspace: u64,
    /// The update target's previous values ([`OldValues`]).
    pub old_values: u64,
    /// Whether `old_values` live through the whole step (the CPU's buffer), rather than
    /// through the update alone (a GPU's copies).
    pub old_values_persist: bool,
    /// The runtime itself (allocator, device context), as [`MemoryPlan::reserve`] gives it.
    pub reserve: u64,
}

impl MemoryEstimate {
    /// The peak of a step. Backward frees the activations as it makes the gradients, so the
    /// two are not held in full at once: the peak is the start of backward (every
    /// activation) or its end (every gradient, then the update's temporaries), whichever is
    /// larger, over what lives through the whole step.
    pub fn total(&self) -> u64 {
        let (persistent, at_update) = match self.old_values_persist {
            true => (self.old_values, 0),
            false => (0, self.old_values),
        };
        self.weights
            + self.gamma
            + self.optimizer
            + persistent
            + self
                .activations
                .max(self.gradients + self.workspace + at_update)
            + self.reserve
    }

    /// The parts by name, in the order `gmt plan` prints them.
    pub fn parts(&self) -> [(&'static str, u64); 8] {
        [
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("Γ", self.gamma),
            ("optimizer", self.optimizer),
            ("activations", self.activations),
            ("workspace", self.workspace),
            ("old values", self.old_values),
            ("reserve", self.reserve),
        ]
    }
}

/// What backward keeps of the forward pass, per token, counted from gmt-models' forward
/// pass and what burn 0.21's autodiff saves for each operation, then checked against the
/// peaks measured on SmolLM2-135M (README "Fitting a 7B model"):
/// - per decoder layer, in elements per token: each RMSNorm's input, normalized input and
///   output; the query, key and value projections and their rotations, the repeated keys
///   and values and the attention output; the SwiGLU MLP's `gate`, `sigmoid(gate)`,
///   `silu(gate)`, `up` and their product;
/// - per decoder layer, in copies of the B × heads × T × T attention scores: the masked
///   scores, the softmax's exponentials and its output (3.5 measured: the boolean mask
///   expanded to the scores' shape adds a quarter, a transient in backward the rest);
/// - in copies of the B × T × vocabulary logits: the logits, the softmax's exponentials, and
///   backward's first two gradients.
///
/// Balanced checkpointing recomputes the element-wise results in backward: one hidden-sized
/// tensor per RMSNorm, two intermediate-sized in the MLP, about one copy of the scores
/// (measured) and one of the logits are not kept.
#[derive(Clone, Copy)]
struct Kept {
    hidden: u64,
    query: u64,
    key_value: u64,
    intermediate: u64,
    /// Copies of the attention scores, in quarters.
    score_quarters: u64,
    logit_copies: u64,
}

impl Kept {
    fn of(checkpointing: Checkpointing) -> Self {
        match checkpointing {
            Checkpointing::None => Self {
                hidden: 7,
                query: 6,
                key_value: 2,
                intermediate: 5,
                score_quarters: 14,
                logit_copies: 4,
            },
            Checkpointing::Balanced => Self {
                hidden: 5,
                query: 6,
                key_value: 2,
                intermediate: 3,
                score_quarters: 9,
                logit_copies: 3,
            },
        }
    }
}

impl MemoryPlan {
    /// The budget of this run for a model of `config`.
    pub fn estimate(&self, config: &LlamaConfig) -> MemoryEstimate {
        let p = self.precision;
        let parameters = config.num_parameters();
        let sequences = (self.micro_batch_size * self.sequences_per_example) as u64;
        let (seq, tokens) = (self.seq_len as u64, sequences * self.seq_len as u64);
        let heads = config.num_attention_heads as u64;
        let query = heads * config.head_dim as u64;
        let key_value = config.num_key_value_heads as u64 * config.head_dim as u64;
        let kept = Kept::of(self.checkpointing);
        let per_token = kept.hidden * config.hidden_size as u64
            + kept.query * query
            + kept.key_value * key_value
            + kept.intermediate * config.intermediate_size as u64;
        let scores = sequences * heads * seq * seq * kept.score_quarters / 4;
        let per_layer = tokens * per_token * p.activation_bytes() + scores * p.score_bytes();
        let logits = tokens * config.vocab_size as u64 * p.logit_bytes();
        MemoryEstimate {
            parameters,
            weights: parameters * p.weight_bytes(),
            gradients: parameters * p.gradient_bytes(),
            gamma: parameters * p.gamma_bytes(self.grad_accum),
            optimizer: parameters * p.optimizer_bytes(),
            activations: config.num_hidden_layers as u64 * per_layer + kept.logit_copies * logits,
            workspace: p.workspace_copies() * config.largest_parameter() * 4,
            old_values: match self.old_values {
                OldValues::None => 0,
                OldValues::Masked { mask_ratio } => (parameters as f64 * mask_ratio) as u64 * 4,
                OldValues::All => parameters * 4,
            },
            old_values_persist: matches!(self.old_values, OldValues::Masked { .. }),
            reserve: self.reserve,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> LlamaConfig {
        LlamaConfig::from_hf_value(
            &serde_json::json!({
                "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
                "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "max_position_embeddings": 8192,
                "tie_word_embeddings": true,
            }),
            "config.json",
        )
        .unwrap()
    }

    fn plan(micro_batch_size: usize, seq_len: usize) -> MemoryPlan {
        MemoryPlan {
            micro_batch_size,
            seq_len,
            ..MemoryPlan::default()
        }
    }

    #[test]
    fn accumulating_adds_one_gamma_and_checkpointing_keeps_less() {
        let config = smollm2();
        let one = plan(4, 128).estimate(&config);
        let two = MemoryPlan {
            grad_accum: 2,
            ..plan(4, 128)
        }
        .estimate(&config);
        assert_eq!(two.total() - one.total(), 4 * one.parameters);
        let balanced = MemoryPlan {
            checkpointing: Checkpointing::Balanced,
            ..plan(4, 128)
        }
        .estimate(&config);
        assert!(balanced.activations < one.activations);
        assert_eq!(balanced.weights, one.weights);
    }

    /// Peaks measured with `gmt-bench`'s `memory_profile` example (SmolLM2-135M, GMT 0.3;
    /// fp32 on burn-ndarray, bf16-mixed on Flex; README "Fitting a 7B model"): micro-batch,
    /// length, checkpointing, micro-batches per step, precision, GiB. The estimate must stay
    /// within 15%.
    #[test]
    fn smollm2_estimates_are_within_15_percent_of_measured_peaks() {
        let (none, balanced) = (Checkpointing::None, Checkpointing::Balanced);
        let (fp32, mixed) = (Precision::Fp32, Precision::Bf16Mixed);
        let measured = [
            (4, 128, none, 1, fp32, 3.032),
            (4, 128, balanced, 1, fp32, 2.615),
            (2, 512, none, 1, fp32, 5.883),
            (2, 512, balanced, 1, fp32, 4.596),
            (4, 128, none, 2, fp32, 3.545),
            (8, 256, none, 1, fp32, 8.403),
            (8, 256, balanced, 1, fp32, 6.419),
            (1, 128, none, 1, fp32, 2.317),
            (4, 128, none, 1, mixed, 2.790),
            (4, 128, balanced, 1, mixed, 2.639),
            (2, 512, none, 1, mixed, 4.840),
            (4, 128, none, 2, mixed, 3.311),
        ];
        for (b, t, checkpointing, grad_accum, precision, peak) in measured {
            let estimate = MemoryPlan {
                checkpointing,
                grad_accum,
                precision,
                ..plan(b, t)
            }
            .estimate(&smollm2())
            .total() as f64
                / (1u64 << 30) as f64;
            let error = (estimate - peak).abs() / peak;
            assert!(
                error <= 0.15,
                "{b}×{t} {checkpointing} K={grad_accum} {precision}: estimated {estimate:.3} GiB, measured {peak} GiB"
            );
        }
    }

    /// The update target keeps the masked entries' old values through the whole step on
    /// the CPU, and every weight's through the update on a GPU; the gradient target none.
    #[test]
    fn the_update_target_counts_its_old_values() {
        let config = smollm2();
        let gradient = plan(4, 128).estimate(&config);
        let with = |old_values| {
            MemoryPlan {
                old_values,
                ..plan(4, 128)
            }
            .estimate(&config)
        };
        let gmt = GmtConfig::new(0.3).with_target(MaskTarget::Update);
        assert_eq!(OldValues::of(&GmtConfig::new(0.3), true), OldValues::None);
        assert_eq!(
            OldValues::of(&GmtConfig::new(0.0).with_target(MaskTarget::Update), true),
            OldValues::None
        );
        assert_eq!(OldValues::of(&gmt, false), OldValues::All);

        let cpu = with(OldValues::of(&gmt, true));
        let masked = (gradient.parameters as f64 * 0.3) as u64 * 4;
        assert_eq!(cpu.old_values, masked);
        assert_eq!(cpu.total(), gradient.total() + masked);

        // On a GPU the copy is held only while the update runs, beside the gradients, so it
        // adds to the peak only as far as the end of backward becomes the larger side.
        let gpu = with(OldValues::All);
        let weights = gradient.parameters * 4;
        let end_of_backward = gradient.gradients + gradient.workspace + weights;
        let expected = gradient.total()
            - gradient
                .activations
                .max(gradient.gradients + gradient.workspace)
            + gradient.activations.max(end_of_backward);
        assert_eq!(gpu.total(), expected);
        // With short sequences the end of backward is the peak, and the copy adds in full.
        let short = plan(1, 16);
        let (without, gpu) = (
            short.estimate(&config),
            MemoryPlan {
                old_values: OldValues::All,
                ..short
            }
            .estimate(&config),
        );
        assert_eq!(gpu.total(), without.total() + weights);
    }

    #[test]
    fn bf16_costs_less_than_mixed_and_fp32() {
        let config = smollm2();
        let total = |precision| {
            MemoryPlan {
                precision,
                ..plan(4, 128)
            }
            .estimate(&config)
            .total()
        };
        assert!(total(Precision::Bf16) < total(Precision::Fp32));
        assert!(total(Precision::Bf16) < total(Precision::Bf16Mixed));
    }
}
