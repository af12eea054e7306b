//! Learning-rate schedules as transformers' `get_*_schedule_with_warmup` compute them.
//!
//! Optimizer step `i` (0-based) uses `lr(i)`: PyTorch's `LambdaLR` starts at `lambda(0)` and
//! advances after each `optimizer.step()`. With warmup the first step therefore has lr 0, as in
//! transformers.
use crate::config::{ScheduleKind, ScheduleOptions};

/// A resolved schedule: peak lr, warmup steps, total steps.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub peak: f64,
    pub min_lr: f64,
    pub warmup: usize,
    pub total: usize,
}

impl LrSchedule {
    /// Resolves `options` for a run of `total` optimizer steps at peak learning rate `peak`.
    /// `warmup_steps` wins over `warmup_ratio`; a ratio rounds up as transformers does.
    pub fn new(options: &ScheduleOptions, peak: f64, total: usize) -> Self {
        let warmup = options
            .warmup_steps
            .or_else(|| {
                options
                    .warmup_ratio
                    .map(|r| (r * total as f64).ceil() as usize)
            })
            .unwrap_or(0);
        Self {
            kind: options.kind,
            peak,
            min_lr: options.min_lr,
            warmup,
            total,
        }
    }

    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.peak * step as f64 / self.warmup.max(1) as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        let factor = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => 1.0 - progress,
            ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.min_lr + (self.peak - self.min_lr) * factor.max(0.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn options(kind: ScheduleKind, warmup: usize, min_lr: f64) -> ScheduleOptions {
        ScheduleOptions {
            kind,
            warmup_steps: Some(warmup),
            warmup_ratio: None,
            min_lr,
        }
    }

    #[test]
    fn linear_with_warmup_matches_transformers() {
        // get_linear_schedule_with_warmup(opt, 2, 5) with lr 1e-3:
        // lambdas 0, 0.5, 1, 2/3, 1/3.
        let s = LrSchedule::new(&options(ScheduleKind::Linear, 2, 0.0), 1e-3, 5);
        let want = [0.0, 0.5e-3, 1e-3, 2e-3 / 3.0, 1e-3 / 3.0];
        for (i, w) in want.iter().enumerate() {
            assert!((s.lr(i) - w).abs() < 1e-15, "step {i}: {} vs {w}", s.lr(i));
        }
    }

    #[test]
    fn cosine_reaches_min_lr_and_constant_stays() {
        let s = LrSchedule::new(&options(ScheduleKind::Cosine, 0, 1e-5), 1e-3, 10);
        assert_eq!(s.lr(0), 1e-3);
        assert!((s.lr(5) - (1e-5 + (1e-3 - 1e-5) * 0.5)).abs() < 1e-15);
        assert!((s.lr(10) - 1e-5).abs() < 1e-15);
        let c = LrSchedule::new(&options(ScheduleKind::Constant, 3, 0.0), 1.0, 10);
        assert_eq!(
            [c.lr(0), c.lr(1), c.lr(3), c.lr(9)],
            [0.0, 1.0 / 3.0, 1.0, 1.0]
        );
    }

    #[test]
    fn warmup_ratio_rounds_up() {
        let o = ScheduleOptions {
            warmup_ratio: Some(0.1),
            ..Default::default()
        };
        assert_eq!(LrSchedule::new(&o, 1.0, 25).warmup, 3);
    }
}
