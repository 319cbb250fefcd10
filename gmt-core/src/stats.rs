//! What one optimizer step's mask did, for logging.

/// Mask statistics of one parameter for one step.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamMaskStats {
    /// Dotted module path of the parameter.
    pub path: String,
    /// Number of entries.
    pub numel: usize,
    /// Entries whose gradient reached the optimizer.
    pub kept: usize,
    /// The |Γ| threshold applied (entries with |Γ| ≥ threshold are kept). `None` when no
    /// entry was masked by magnitude: excluded, random strategy, or floor(r·n) = 0.
    pub threshold: Option<f32>,
    /// ‖Γ‖² of the parameter.
    pub grad_sq_norm: f64,
    /// ‖Γ·mask‖²: the part of the squared norm that was kept.
    pub kept_sq_norm: f64,
    /// Whether GMT may mask it: false when an `exclude` pattern keeps it out of masking.
    pub maskable: bool,
}

impl ParamMaskStats {
    /// Fraction of entries kept.
    pub fn kept_fraction(&self) -> f64 {
        ratio(self.kept as f64, self.numel as f64)
    }

    /// Fraction of the gradient's squared L2 norm kept (1 for an all-zero gradient).
    pub fn kept_norm_fraction(&self) -> f64 {
        ratio(self.kept_sq_norm, self.grad_sq_norm)
    }
}

/// Mask statistics of one step over all parameters that had a gradient.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MaskStats {
    /// One entry per parameter with a gradient, in module order.
    pub params: Vec<ParamMaskStats>,
}

impl MaskStats {
    /// Total entries.
    pub fn numel(&self) -> usize {
        self.params.iter().map(|p| p.numel).sum()
    }

    /// Total entries kept.
    pub fn kept(&self) -> usize {
        self.params.iter().map(|p| p.kept).sum()
    }

    /// Overall fraction of entries kept.
    pub fn kept_fraction(&self) -> f64 {
        ratio(self.kept() as f64, self.numel() as f64)
    }

    /// Overall fraction of the squared gradient norm kept.
    pub fn kept_norm_fraction(&self) -> f64 {
        let total: f64 = self.params.iter().map(|p| p.grad_sq_norm).sum();
        let kept: f64 = self.params.iter().map(|p| p.kept_sq_norm).sum();
        ratio(kept, total)
    }

    /// ‖Γ·mask‖ over all parameters: the global L2 norm of what the inner optimizer receives
    /// (before any clipping).
    pub fn kept_norm(&self) -> f64 {
        self.params
            .iter()
            .map(|p| p.kept_sq_norm)
            .sum::<f64>()
            .sqrt()
    }

    /// The stats of the parameter at `path`.
    pub fn get(&self, path: &str) -> Option<&ParamMaskStats> {
        self.params.iter().find(|p| p.path == path)
    }
}

fn ratio(part: f64, whole: f64) -> f64 {
    if whole == 0.0 { 1.0 } else { part / whole }
}

/// What one call to [`GmtOptimizer::try_step`](crate::GmtOptimizer::try_step) did.
#[derive(Clone, Debug, PartialEq)]
pub enum StepReport {
    /// The step was applied with these mask statistics.
    Applied {
        /// Optimizer step index (0-based).
        step: u64,
        /// Mask statistics.
        stats: MaskStats,
        /// The factor the masked gradient was scaled by to meet
        /// [`GmtConfig::max_grad_norm`](crate::GmtConfig::max_grad_norm); `None` when it was
        /// not scaled.
        clip_scale: Option<f64>,
    },
    /// The step was skipped because a gradient was not finite
    /// ([`NonFinitePolicy::Skip`](crate::NonFinitePolicy::Skip)).
    Skipped {
        /// Optimizer step index the step would have had.
        step: u64,
        /// Module path of the first parameter with a non-finite gradient.
        param: String,
    },
}

impl StepReport {
    /// The mask statistics of an applied step.
    pub fn stats(&self) -> Option<&MaskStats> {
        match self {
            Self::Applied { stats, .. } => Some(stats),
            Self::Skipped { .. } => None,
        }
    }

    /// Fraction of gradient entries that reached the inner optimizer: 0 for a skipped step.
    pub fn kept_fraction(&self) -> f64 {
        self.stats().map_or(0.0, MaskStats::kept_fraction)
    }

    /// The global L2 norm of the masked gradient before clipping, for an applied step.
    pub fn grad_norm(&self) -> Option<f64> {
        self.stats().map(MaskStats::kept_norm)
    }
}
