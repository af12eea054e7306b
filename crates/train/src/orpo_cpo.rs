//! The reference-free preference losses with TRL 1.16's definitions and metric names: ORPO
//! (`trl.experimental.orpo.ORPOTrainer`) and CPO with its SimPO variant
//! (`trl.experimental.cpo.CPOTrainer`, `loss_type` `sigmoid`, `hinge`, `ipo`, `simpo`).
//!
//! - ORPO (<https://huggingface.co/papers/2403.07691>): with `c`, `r` the chosen and rejected
//!   log-probabilities averaged over their completion tokens, the log odds ratio is
//!   `L = (c - r) - (log(1 - e^c) - log(1 - e^r))` and the loss `nll - β log σ(L)`, where `nll` is
//!   the chosen sequences' cross-entropy over every token, prompt included (TRL's comment:
//!   "orpo chosen nll loss is computed over the full prompt and response"), pooled over the
//!   micro-batch's chosen tokens.
//! - CPO (<https://huggingface.co/papers/2401.08417>): `x = c - r` on summed log-probabilities
//!   (`sigmoid`, `hinge`) or averaged ones (`ipo`, `simpo`); SimPO subtracts `γ / β`; the loss
//!   is the DPO-style loss of `x` plus `cpo_alpha` times the chosen completions' cross-entropy
//!   (pooled over the micro-batch's chosen completion tokens; not computed when `cpo_alpha`
//!   is 0, its metric then 0 as TRL's).
//!
//! Rewards are `β` times the log-probabilities the loss uses. The batches are laid out as DPO's
//! ([`crate::preference`]), tokenized as TRL's experimental trainers do
//! ([`kiln_data::AnswerIds`]). TRL's `logits/chosen` and `logits/rejected` (the mean of
//! every logit, padding positions included) are not logged: they would need the full logits,
//! which the fused backward never forms.
use crate::preference::{CpoLoss, PairBatch, PairStats, PreferenceLoss, log_sigmoid, sigmoid};

/// The reference-free losses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefFreeLoss {
    Orpo,
    Cpo(CpoLoss),
}

impl PreferenceLoss {
    /// ORPO or CPO; `None` for DPO.
    pub(crate) fn ref_free(self) -> Option<RefFreeLoss> {
        match self {
            Self::Dpo(_) | Self::Kto(_) => None,
            Self::Orpo => Some(RefFreeLoss::Orpo),
            Self::Cpo(k) => Some(RefFreeLoss::Cpo(k)),
        }
    }
}

/// The ORPO/CPO hyperparameters (TRL's names).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefFree {
    pub loss: RefFreeLoss,
    pub beta: f64,
    pub label_smoothing: f64,
    pub cpo_alpha: f64,
    pub simpo_gamma: f64,
}

/// `log(1 - e^x)` for `x < 0`, with TRL's branch at `-ln 2`.
fn log1mexp(x: f64) -> f64 {
    if x < -std::f64::consts::LN_2 {
        (-x.exp()).ln_1p()
    } else {
        (-x.exp_m1()).ln()
    }
}

/// One pair's loss and its derivatives by `c` and `r` (the log-probabilities the loss reads),
/// with the pair's contribution to the ORPO-only metrics `(log σ(L), L)`.
fn pair_loss(h: &RefFree, c: f64, r: f64) -> (f64, f64, f64, (f64, f64)) {
    let b = h.beta;
    match h.loss {
        RefFreeLoss::Orpo => {
            let lo = (c - r) - (log1mexp(c) - log1mexp(r));
            let ratio = log_sigmoid(lo);
            let d = -b * sigmoid(-lo);
            // dL/dc = 1 / (1 - e^c), dL/dr = -1 / (1 - e^r).
            (-b * ratio, -d / c.exp_m1(), d / r.exp_m1(), (ratio, lo))
        }
        RefFreeLoss::Cpo(kind) => {
            let x = match kind {
                CpoLoss::Simpo => c - r - h.simpo_gamma / b,
                _ => c - r,
            };
            let (l, d) = match kind {
                CpoLoss::Sigmoid | CpoLoss::Simpo => {
                    let e = h.label_smoothing;
                    let l = -(1.0 - e) * log_sigmoid(b * x) - e * log_sigmoid(-b * x);
                    (l, b * (-(1.0 - e) * sigmoid(-b * x) + e * sigmoid(b * x)))
                }
                CpoLoss::Hinge => {
                    let m = 1.0 - b * x;
                    (m.max(0.0), if m > 0.0 { -b } else { 0.0 })
                }
                CpoLoss::Ipo => {
                    let m = x - 1.0 / (2.0 * b);
                    (m * m, 2.0 * m)
                }
            };
            (l, d, -d, (0.0, 0.0))
        }
    }
}

impl RefFree {
    /// Whether the loss reads log-probabilities averaged over each completion (else summed).
    fn averaged(&self) -> bool {
        matches!(
            self.loss,
            RefFreeLoss::Orpo | RefFreeLoss::Cpo(CpoLoss::Ipo | CpoLoss::Simpo)
        )
    }

    /// The weight of the chosen sequences' cross-entropy in the loss.
    fn nll_weight(&self) -> f64 {
        match self.loss {
            RefFreeLoss::Orpo => 1.0,
            _ => self.cpo_alpha,
        }
    }
}

/// The micro-batch's loss (times `1 / accum`), its derivative by each counted label's
/// log-probability, and its metrics. The batch carries labels on the chosen prompts too for
/// ORPO (its cross-entropy covers them); only completion labels enter `c` and `r`.
pub(crate) fn micro_loss(
    h: &RefFree,
    batch: &PairBatch,
    logps: &[f32],
    accum: usize,
) -> (f64, Vec<f32>, PairStats) {
    let n = batch.pairs;
    let (sums, counts) = (batch.row_sums(logps), &batch.counted);
    let per = |row: usize| {
        if h.averaged() {
            counts[row].max(1) as f64
        } else {
            1.0
        }
    };
    let scale = 1.0 / accum as f64;
    let mean = 1.0 / n as f64;
    let mut d_row = vec![0f64; 2 * n];
    let (mut loss, mut stats) = (0.0, PairStats::default());
    for p in 0..n {
        let (c, r) = (sums[p] / per(p), sums[n + p] / per(n + p));
        let (l, dc, dr, (ratio, lo)) = pair_loss(h, c, r);
        loss += l * mean;
        d_row[p] = dc * mean * scale / per(p);
        d_row[n + p] = dr * mean * scale / per(n + p);
        let (rc, rr) = (h.beta * c, h.beta * r);
        stats.add(
            &PairStats {
                rewards_chosen: rc,
                rewards_rejected: rr,
                accuracies: f64::from(u8::from(rc > rr)),
                margins: rc - rr,
                logps_chosen: c,
                logps_rejected: r,
                log_odds_ratio: ratio,
                log_odds_chosen: lo,
                nll_loss: 0.0,
            },
            mean,
        );
    }
    // The chosen rows' cross-entropy: every counted label of a chosen row (the batch puts
    // prompt labels there only for ORPO), pooled.
    let alpha = h.nll_weight();
    let in_nll = |k: usize| batch.rows[k] < n;
    let nll_n = (0..logps.len()).filter(|&k| in_nll(k)).count().max(1) as f64;
    if alpha != 0.0 {
        let nll = -(0..logps.len())
            .filter(|&k| in_nll(k))
            .map(|k| f64::from(logps[k]))
            .sum::<f64>()
            / nll_n;
        stats.nll_loss = nll;
        loss += alpha * nll;
    }
    let g = (0..logps.len())
        .map(|k| {
            let r = batch.rows[k];
            let mut g = if batch.completion[k] { d_row[r] } else { 0.0 };
            if alpha != 0.0 && in_nll(k) {
                g -= alpha * scale / nll_n;
            }
            g as f32
        })
        .collect();
    (loss * scale, g, stats)
}
