//! [`OptimConfig`]: the learning rate and AdamW's hyper-parameters, as a config file holds them.

use gmt_core::FusedAdamW;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The peak learning rate and AdamW's hyper-parameters (`[optim]` in `gmt train`'s config).
///
/// The defaults are PyTorch's AdamW (β 0.9/0.999, ε 1e-8) with weight decay 0, which
/// fine-tuning recipes usually set (PyTorch's default is 0.01; burn's AdamW defaults, ε 1e-5
/// and weight decay 1e-4, are not used).
///
/// ```
/// use gmt_train::OptimConfig;
///
/// let optim: OptimConfig = serde_json::from_str(r#"{"lr": 2e-5, "weight_decay": 0.1}"#)?;
/// assert_eq!((optim.lr, optim.beta2, optim.eps), (2e-5, 0.999, 1e-8));
/// assert!(optim.validate().is_ok());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate (the schedule's).
    pub lr: f64,
    /// AdamW β1.
    pub beta1: f32,
    /// AdamW β2.
    pub beta2: f32,
    /// AdamW ε.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl OptimConfig {
    /// Refuses values AdamW cannot work with; the error names the key (`optim.lr`, …).
    pub fn validate(&self) -> Result<(), TrainError> {
        let checks: [(bool, &'static str, String); 5] = [
            (
                !(self.lr >= 0.0 && self.lr.is_finite()),
                "optim.lr",
                format!("{} is not a learning rate ≥ 0", self.lr),
            ),
            (
                !(0.0..1.0).contains(&self.beta1),
                "optim.beta1",
                format!("{} is outside [0, 1)", self.beta1),
            ),
            (
                !(0.0..1.0).contains(&self.beta2),
                "optim.beta2",
                format!("{} is outside [0, 1)", self.beta2),
            ),
            (
                !(self.eps > 0.0 && self.eps.is_finite()),
                "optim.eps",
                format!("{} is not a positive finite ε", self.eps),
            ),
            (
                !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()),
                "optim.weight_decay",
                format!("{} is not a weight decay ≥ 0", self.weight_decay),
            ),
        ];
        match checks.into_iter().find(|(bad, ..)| *bad) {
            Some((_, key, reason)) => Err(TrainError::InvalidConfig { key, reason }),
            None => Ok(()),
        }
    }

    /// AdamW with these hyper-parameters (the rate is set per step by the schedule): burn's,
    /// computed in one fused pass per parameter on CPU backends ([`FusedAdamW`]).
    pub fn adamw(&self) -> FusedAdamW {
        FusedAdamW::new(self.beta1, self.beta2, self.eps, self.weight_decay)
    }
}
