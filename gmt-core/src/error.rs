//! Errors of gmt-core.

/// Everything that can go wrong when building or stepping a [`GmtOptimizer`](crate::GmtOptimizer).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum GmtError {
    /// A setting has a value that cannot work.
    #[error("invalid GMT config `{key}`: {reason}")]
    InvalidConfig {
        /// The config key.
        key: &'static str,
        /// Why the value is rejected.
        reason: String,
    },
    /// An `exclude` pattern is not a valid glob.
    #[error("invalid exclude pattern `{pattern}`: {reason}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// The parser's message.
        reason: String,
    },
    /// An `exclude` pattern matches no parameter of the model, which is almost always a typo.
    #[error(
        "exclude pattern `{pattern}` matches no parameter of the model; parameters look like `{example}`"
    )]
    PatternMatchesNothing {
        /// The pattern as given.
        pattern: String,
        /// One parameter path of the model, to show the naming.
        example: String,
    },
    /// The model has no float parameter at all.
    #[error("the model has no float parameters to optimize")]
    NoParameters,
    /// A gradient holds NaN or ±∞.
    #[error(
        "non-finite gradient (NaN or infinity) in parameter `{param}` at optimizer step {step}"
    )]
    NonFiniteGradient {
        /// Module path of the parameter.
        param: String,
        /// Optimizer step (0-based) that saw it.
        step: u64,
    },
    /// [`GradientMean`](crate::GradientMean) was asked for a mean of nothing.
    #[error("no micro-batch gradients were accumulated (total weight {total_weight})")]
    EmptyAccumulation {
        /// Sum of the weights given so far.
        total_weight: f64,
    },
    /// A micro-batch weight is negative, zero or not finite.
    #[error("micro-batch weight must be finite and positive, got {weight}")]
    InvalidWeight {
        /// The weight given.
        weight: f64,
    },
    /// The module stepped is not the one the optimizer was built for: its float parameters
    /// differ in number, order or path.
    #[error(
        "the module does not match the one the GMT optimizer was built for ({expected} float parameters): found {found}"
    )]
    ModuleMismatch {
        /// Float parameters listed at `init`.
        expected: usize,
        /// What was found instead.
        found: String,
    },
    /// [`MaskTarget::Update`](crate::MaskTarget::Update) on a half-precision (bf16 or f16)
    /// parameter: the update target restores masked entries exactly, but an optimizer that
    /// carries what rounding lost ([`FusedAdamW`](crate::FusedAdamW)'s Kahan compensation of
    /// bf16 weights) would apply their masked updates at a later step.
    #[error(
        "the update target cannot keep the masked entries of {dtype} parameter `{param}` exactly; \
         use the gradient target, or fp32 weights"
    )]
    UpdateTargetPrecision {
        /// Module path of the parameter.
        param: String,
        /// Its float type.
        dtype: String,
    },
    /// A step's gradients hold none of the module's parameters: nothing would be masked or
    /// updated (e.g. gradients computed for another copy of the model).
    #[error(
        "optimizer step {step}: the gradients hold no parameter of the module; were they computed for another copy of the model?"
    )]
    NoGradients {
        /// Optimizer step (0-based).
        step: u64,
    },
}
