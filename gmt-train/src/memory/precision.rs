//! Number formats of a run and what they cost per parameter.

use std::fmt;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The number formats of a run (`--precision`). GMT's definitions hold in every mode: Γ, the
/// mask and its ties are always computed from the formats given here.
///
/// Bytes per parameter (README "Fitting a 7B model"):
///
/// | mode | weights | gradient | Γ (grad_accum > 1) | AdamW state | total (K = 1 / K > 1) |
/// | --- | --- | --- | --- | --- | --- |
/// | `fp32` | 4 | 4 | 4 | 8 (m, v) | 16 / 20 |
/// | `bf16-mixed` | 2 + 4 (fp32 master) | 2 | 4 (fp32) | 8 | 16 / 20 |
/// | `bf16` | 2 | 2 | 2 | 4 (m, v) + 2 (compensation) | 10 / 12 |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything fp32.
    #[default]
    Fp32,
    /// bf16 weights, activations and gradients in the forward and backward passes; fp32
    /// master weights, AdamW moments, Γ and mask.
    Bf16Mixed,
    /// Everything bf16, the update applied with a compensation term so small updates are
    /// not rounded away.
    Bf16,
}

impl Precision {
    /// Every mode, cheapest in memory last.
    pub const ALL: [Precision; 3] = [Self::Fp32, Self::Bf16Mixed, Self::Bf16];

    /// The name `--precision` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Bf16Mixed => "bf16-mixed",
            Self::Bf16 => "bf16",
        }
    }

    /// Bytes per parameter of the weights the optimizer updates, and of any working copy the
    /// forward pass reads.
    pub fn weight_bytes(self) -> u64 {
        match self {
            Self::Fp32 => 4,
            Self::Bf16Mixed => 2 + 4,
            Self::Bf16 => 2,
        }
    }

    /// Bytes per parameter of one backward pass's gradient.
    pub fn gradient_bytes(self) -> u64 {
        match self {
            Self::Fp32 => 4,
            Self::Bf16Mixed | Self::Bf16 => 2,
        }
    }

    /// Bytes per parameter of Γ while it is a tensor of its own: with several micro-batches
    /// a gradient accumulates into it while the next one is computed. With one, Γ takes
    /// the gradient's place: in `bf16-mixed` the bf16 gradients are widened into fp32 Γ
    /// after the bf16 working copy is freed, so Γ (4 bytes) replaces copy and gradient
    /// (2 + 2) and the peak is the same.
    pub fn gamma_bytes(self, grad_accum: usize) -> u64 {
        match self {
            _ if grad_accum <= 1 => 0,
            Self::Fp32 | Self::Bf16Mixed => 4,
            Self::Bf16 => 2,
        }
    }

    /// Bytes per parameter of AdamW's state (first and second moments, and the compensation
    /// term of `bf16`).
    pub fn optimizer_bytes(self) -> u64 {
        match self {
            Self::Fp32 | Self::Bf16Mixed => 8,
            Self::Bf16 => 4 + 2,
        }
    }

    /// Bytes per element of the activations kept for backward.
    pub fn activation_bytes(self) -> u64 {
        match self {
            Self::Fp32 => 4,
            Self::Bf16Mixed | Self::Bf16 => 2,
        }
    }

    /// AdamW's and the mask's temporaries, in fp32 copies of the largest parameter tensor:
    /// |Γ| for the threshold, the masked Γ, the moments' new values and the update; in
    /// `bf16` also the widened weight, Γ and moments and the compensated update's terms
    /// (`gmt_core::FusedAdamW` computes in f32).
    pub fn workspace_copies(self) -> u64 {
        match self {
            Self::Fp32 | Self::Bf16Mixed => 4,
            Self::Bf16 => 8,
        }
    }

    /// Bytes per element of the logits and the loss's softmax: fp32 in every mode, as the
    /// Transformers trainers do, so the loss over a large vocabulary is not rounded to bf16.
    pub fn logit_bytes(self) -> u64 {
        4
    }

    /// Bytes per element of the attention scores backward keeps: fp32 in every mode, since
    /// the softmax runs in fp32 (as Transformers' eager attention does) and keeps its fp32
    /// input and output.
    pub fn score_bytes(self) -> u64 {
        4
    }
}

impl Precision {
    /// Whether gmt trains in this precision on a backend with (`bf16_arithmetic`) or without
    /// bf16 arithmetic: fp32 everywhere, both bf16 modes where the backend has bf16.
    /// [`check_backend`](Self::check_backend) asks the backend itself.
    pub fn trains_with(self, bf16_arithmetic: bool) -> bool {
        match self {
            Self::Fp32 => true,
            Self::Bf16Mixed | Self::Bf16 => bf16_arithmetic,
        }
    }

    /// The format of the forward and backward passes: bf16 in both bf16 modes.
    pub fn forward_dtype(self) -> FloatDType {
        match self {
            Self::Fp32 => FloatDType::F32,
            Self::Bf16Mixed | Self::Bf16 => FloatDType::BF16,
        }
    }

    /// Whether a run in this precision can train on backend `B` at `device`: fp32 always;
    /// `bf16-mixed` and `bf16` where the backend computes in bf16 (CUDA, burn's Flex CPU
    /// backend — not burn-ndarray nor WGPU). The error says what can.
    ///
    /// ```
    /// use burn::backend::NdArray;
    /// use gmt_train::memory::Precision;
    ///
    /// assert!(Precision::Fp32.check_backend::<NdArray>(&Default::default()).is_ok());
    /// let err = Precision::Bf16Mixed.check_backend::<NdArray>(&Default::default());
    /// assert!(err.unwrap_err().to_string().contains("no bf16 arithmetic"));
    /// ```
    pub fn check_backend<B: Backend>(self, device: &B::Device) -> Result<(), TrainError> {
        let unsupported = |reason: &str| TrainError::UnsupportedPrecision {
            precision: self,
            backend: B::name(device),
            reason: reason.to_string(),
        };
        if self.trains_with(B::supports_dtype(device, DType::BF16)) {
            Ok(())
        } else {
            Err(unsupported(
                "it has no bf16 arithmetic (bf16 trains on CUDA and on burn's Flex CPU \
                 backend; fp32 trains everywhere)",
            ))
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown precision `{s}`: expected fp32, bf16-mixed or bf16"))
    }
}

/// What backward does with cheap intermediate results (`--checkpointing`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Checkpointing {
    /// Keep every result backward needs (burn's `NoCheckpointing`).
    #[default]
    None,
    /// Keep the results of compute-bound operations (matrix products) and recompute
    /// memory-bound, element-wise ones in backward (burn's `BalancedCheckpointing`).
    Balanced,
}

impl Checkpointing {
    /// Both strategies, cheapest in memory last.
    pub const ALL: [Checkpointing; 2] = [Self::None, Self::Balanced];

    /// The name `--checkpointing` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Balanced => "balanced",
        }
    }
}

impl fmt::Display for Checkpointing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Checkpointing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown checkpointing `{s}`: expected none or balanced"))
    }
}
