//! The configuration of a Gradient-Mask Tuning optimizer.

use serde::{Deserialize, Serialize};

use crate::GmtError;

/// Which entries share one threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskScope {
    /// Each parameter tensor is its own group: every tensor keeps the same fraction.
    #[default]
    Tensor,
    /// All masked parameters form one group with one threshold.
    Global,
}

/// What the mask acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskTarget {
    /// The inner optimizer receives Γ·mask. Masked entries still see weight decay and the
    /// decaying moments of earlier steps, exactly as with a zero gradient.
    #[default]
    Gradient,
    /// The inner optimizer's moments receive Γ·mask, but masked entries keep their previous
    /// value exactly (weight decay included): they do not move at all this step.
    Update,
}

/// How the entries to keep are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskStrategy {
    /// GMT: keep the entries with the largest |Γ|. Also read as `gmt`.
    #[default]
    #[serde(alias = "gmt")]
    Magnitude,
    /// The paper's control: a seeded uniformly random mask that keeps exactly as many entries
    /// per group as `Magnitude` would without ties (n − floor(r·n)).
    Random,
    /// No masking at all: the inner optimizer runs unchanged (plain fine-tuning).
    None,
}

/// How the magnitude threshold is found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The exact (n − m)-th largest |Γ| of the group.
    #[default]
    Exact,
    /// An estimate from `sample_size` entries drawn uniformly (with replacement) from the
    /// group: the threshold is the matching quantile of the sample. The kept fraction is then
    /// close to, not exactly, 1 − r. Meant for groups far larger than the sample.
    Sampled {
        /// Number of entries drawn per group.
        sample_size: usize,
    },
}

/// Where exact thresholds are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectionEngine {
    /// `Host` for CPU backends (ndarray, flex, cpu), `Device` for the others.
    #[default]
    Auto,
    /// Copy |Γ| to host memory and select in O(n) with a radix histogram. Fastest on CPU.
    Host,
    /// Stay on the device: a bisection over the bit patterns of |Γ|, 31 counting passes for all
    /// groups at once with one host synchronisation per pass. No gradient leaves the device.
    Device,
}

/// What a step does when a gradient holds NaN or ±∞.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinitePolicy {
    /// The step fails with [`GmtError::NonFiniteGradient`] naming the parameter.
    #[default]
    Error,
    /// The step is skipped (parameters and optimizer state unchanged) and the report says why.
    Skip,
}

/// Configuration of [`GmtOptimizer`](crate::GmtOptimizer).
///
/// Two starting points: [`GmtConfig::new`] is the bare optimizer (the ratio you give, no
/// clipping), and [`GmtConfig::default`] is the recommended setting that `gmt train` uses and
/// that a config file (TOML, JSON) gets for every key it leaves out: GMT at ratio 0.2 with the
/// masked gradient clipped to norm 1.0 (Hugging Face Trainer's clipping default).
///
/// ```
/// use gmt_core::{GmtConfig, MaskScope, MaskTarget};
///
/// let config = GmtConfig::new(0.3)
///     .with_scope(MaskScope::Global)
///     .with_target(MaskTarget::Update)
///     .with_exclude(vec!["*norm*".into(), "embed_tokens.*".into()]);
/// assert!(config.validate().is_ok());
/// assert!(GmtConfig::new(1.0).validate().is_err());
///
/// // The same, from a config file; unknown keys are refused.
/// let read: GmtConfig = serde_json::from_str(r#"{"mask_ratio": 0.3, "scope": "global"}"#)?;
/// assert_eq!((read.mask_ratio, read.scope), (0.3, MaskScope::Global));
/// assert_eq!(read.max_grad_norm, Some(1.0)); // the default's clipping
/// assert!(serde_json::from_str::<GmtConfig>(r#"{"mask_ratoi": 0.3}"#).is_err());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GmtConfig {
    /// Fraction of each group's entries set to zero, in `[0, 1)`. For a group of n entries,
    /// m = floor(ratio·n) are masked; `0` is plain fine-tuning.
    pub mask_ratio: f64,
    /// Whether each parameter is masked on its own or all together.
    pub scope: MaskScope,
    /// Whether the mask applies to the gradient or to the whole update.
    pub target: MaskTarget,
    /// How kept entries are chosen.
    pub strategy: MaskStrategy,
    /// Exact or sampled threshold.
    pub selection: Selection,
    /// Where the threshold is computed.
    pub engine: SelectionEngine,
    /// Glob patterns (`*`, `?`, `[..]`) over dotted module paths such as
    /// `layers.3.self_attn.q_proj.weight`. Matching parameters are never masked but are still
    /// optimized. Every pattern must match at least one parameter.
    pub exclude: Vec<String>,
    /// What to do with NaN or infinite gradients.
    pub non_finite: NonFinitePolicy,
    /// Seed of the random strategy and of sampled selection.
    pub seed: u64,
    /// Clip the global L2 norm of the *masked* gradient Γ·mask (over every parameter) to this
    /// value before the inner optimizer sees it, as PyTorch's `clip_grad_norm_` does
    /// (scale = max / (norm + 1e-6) when that is below 1). Clipping after masking means the
    /// budget is spent on the entries that are actually updated. `None`: no clipping, written
    /// `0` in a config file (TOML has no null).
    #[serde(with = "zero_is_none")]
    pub max_grad_norm: Option<f64>,
}

impl Default for GmtConfig {
    /// GMT at ratio 0.2, magnitude strategy, tensor scope, gradient target, clipping at 1.0.
    fn default() -> Self {
        Self::new(0.2).with_max_grad_norm(Some(1.0))
    }
}

impl burn::config::Config for GmtConfig {}

/// Builder methods, as burn's `Config` derive would write them (the derive cannot give the
/// serde defaults and unknown-key refusal that a config file needs).
macro_rules! with_setters {
    ($($(#[$doc:meta])* $with:ident: $field:ident: $ty:ty;)*) => {
        impl GmtConfig {
            $($(#[$doc])* pub fn $with(mut self, $field: $ty) -> Self {
                self.$field = $field;
                self
            })*
        }
    };
}

with_setters! {
    /// Sets [`scope`](Self::scope).
    with_scope: scope: MaskScope;
    /// Sets [`target`](Self::target).
    with_target: target: MaskTarget;
    /// Sets [`strategy`](Self::strategy).
    with_strategy: strategy: MaskStrategy;
    /// Sets [`selection`](Self::selection).
    with_selection: selection: Selection;
    /// Sets [`engine`](Self::engine).
    with_engine: engine: SelectionEngine;
    /// Sets [`exclude`](Self::exclude).
    with_exclude: exclude: Vec<String>;
    /// Sets [`non_finite`](Self::non_finite).
    with_non_finite: non_finite: NonFinitePolicy;
    /// Sets [`seed`](Self::seed).
    with_seed: seed: u64;
    /// Sets [`max_grad_norm`](Self::max_grad_norm).
    with_max_grad_norm: max_grad_norm: Option<f64>;
}

/// `max_grad_norm` in a file: a number, `0` for none.
mod zero_is_none {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(value.unwrap_or(0.0))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        let value = Option::<f64>::deserialize(d)?;
        Ok(value.filter(|v| *v != 0.0))
    }
}

impl GmtConfig {
    /// The bare optimizer at `mask_ratio`: magnitude strategy, tensor scope, gradient target,
    /// exact selection, seed 0, no clipping, non-finite gradients an error.
    pub fn new(mask_ratio: f64) -> Self {
        Self {
            mask_ratio,
            scope: MaskScope::Tensor,
            target: MaskTarget::Gradient,
            strategy: MaskStrategy::Magnitude,
            selection: Selection::Exact,
            engine: SelectionEngine::Auto,
            exclude: Vec::new(),
            non_finite: NonFinitePolicy::Error,
            seed: 0,
            max_grad_norm: None,
        }
    }

    /// Checks the settings that do not depend on the model.
    pub fn validate(&self) -> Result<(), GmtError> {
        let ratio = self.mask_ratio;
        if !(0.0..1.0).contains(&ratio) {
            return Err(GmtError::InvalidConfig {
                key: "mask_ratio",
                reason: format!(
                    "{ratio} is outside [0, 1): it is the fraction of entries set to zero"
                ),
            });
        }
        if let Some(max) = self.max_grad_norm
            && !(max > 0.0 && max.is_finite())
        {
            return Err(GmtError::InvalidConfig {
                key: "max_grad_norm",
                reason: format!("{max} is not a positive finite norm"),
            });
        }
        if let Selection::Sampled { sample_size: 0 } = self.selection {
            return Err(GmtError::InvalidConfig {
                key: "selection.sample_size",
                reason: "a sampled threshold needs at least one sample".into(),
            });
        }
        Ok(())
    }

    /// True when this configuration never changes a gradient: ratio 0 or strategy `none`.
    pub fn is_identity(&self) -> bool {
        self.mask_ratio == 0.0 || self.strategy == MaskStrategy::None
    }
}
