//! Learning-rate schedules: linear warmup, then constant, linear or cosine decay.
//!
//! Written as a closed form of the step number rather than with burn's stateful schedulers:
//! the rate of any step is then a pure function of the settings, so resuming from a
//! checkpoint needs no scheduler state beyond the step count.

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The decay after warmup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// The peak rate until the end.
    Constant,
    /// Straight down to `min_lr_ratio · lr`, reached at step `total_steps` (one past the
    /// last step, whose rate is one decay step above the floor).
    Linear,
    /// Half a cosine down to `min_lr_ratio · lr`, reached at step `total_steps` as for
    /// `Linear`.
    #[default]
    Cosine,
}

/// A schedule over a known number of steps.
///
/// ```
/// use gmt_train::{LrSchedule, ScheduleKind};
///
/// let schedule = LrSchedule { lr: 1e-4, kind: ScheduleKind::Cosine, warmup_steps: 2,
///                             total_steps: 10, min_lr_ratio: 0.0 };
/// assert_eq!(schedule.at(0), 0.5e-4); // warmup
/// assert_eq!(schedule.at(2), 1e-4);   // the peak, then half a cosine down
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak rate.
    pub lr: f64,
    /// Decay shape.
    pub kind: ScheduleKind,
    /// Steps of linear warmup from 0.
    pub warmup_steps: u64,
    /// Total optimizer steps.
    pub total_steps: u64,
    /// Final rate as a fraction of `lr`.
    pub min_lr_ratio: f64,
}

/// The schedule's shape, as a config file holds it (`[schedule]` in `gmt train`'s config); the
/// peak rate and the run's length complete it into an [`LrSchedule`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Decay after warmup (default cosine).
    pub kind: ScheduleKind,
    /// Steps of linear warmup from 0 (default 0).
    pub warmup_steps: u64,
    /// The rate at the end of decay, as a fraction of the peak, in [0, 1] (default 0).
    pub min_lr_ratio: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Cosine,
            warmup_steps: 0,
            min_lr_ratio: 0.0,
        }
    }
}

impl ScheduleConfig {
    /// Refuses a floor outside [0, 1] (the key is `schedule.min_lr_ratio`).
    pub fn validate(&self) -> Result<(), TrainError> {
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(TrainError::InvalidConfig {
                key: "schedule.min_lr_ratio",
                reason: format!("{} is outside [0, 1]", self.min_lr_ratio),
            });
        }
        Ok(())
    }

    /// The schedule from peak rate `lr` over `total_steps` optimizer steps.
    pub fn over(&self, lr: f64, total_steps: u64) -> LrSchedule {
        LrSchedule {
            lr,
            kind: self.kind,
            warmup_steps: self.warmup_steps,
            total_steps,
            min_lr_ratio: self.min_lr_ratio,
        }
    }
}

impl LrSchedule {
    /// The rate of optimizer step `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let floor = self.lr * self.min_lr_ratio;
        match self.kind {
            ScheduleKind::Constant => self.lr,
            ScheduleKind::Linear => floor + (self.lr - floor) * (1.0 - progress),
            ScheduleKind::Cosine => {
                floor + (self.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: ScheduleKind) -> LrSchedule {
        LrSchedule {
            lr: 1.0,
            kind,
            warmup_steps: 4,
            total_steps: 14,
            min_lr_ratio: 0.1,
        }
    }

    #[test]
    fn warmup_rises_linearly_to_the_peak() {
        let s = schedule(ScheduleKind::Cosine);
        let rates: Vec<f64> = (0..4).map(|t| s.at(t)).collect();
        assert_eq!(rates, vec![0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn decays_end_at_the_floor() {
        for kind in [ScheduleKind::Linear, ScheduleKind::Cosine] {
            let s = schedule(kind);
            assert!((s.at(4) - 1.0).abs() < 1e-12, "{kind:?} starts at the peak");
            assert!((s.at(14) - 0.1).abs() < 1e-12, "{kind:?} ends at the floor");
            assert!(s.at(9) < s.at(8), "{kind:?} decreases");
        }
        assert_eq!(schedule(ScheduleKind::Constant).at(13), 1.0);
        // Halfway through a cosine is the midpoint of peak and floor.
        assert!((schedule(ScheduleKind::Cosine).at(9) - 0.55).abs() < 1e-12);
    }
}
