//! The log-probability of each label under two passes, and the KL between their next-token
//! distributions.

use candle_core::{D, DType, Tensor};

use crate::loss::IGNORE_INDEX;
use crate::{Error, Result};

/// The direction of [`LabelLogProb::kl`].
pub const KL_DIRECTION: &str =
    "KL(replayed || free) = sum_v p_replayed(v) * (log p_replayed(v) - log p_free(v))";

/// One label: its log-probability under free routing and under the replayed one.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LabelLogProb {
    /// Batch row.
    pub row: usize,
    /// The label's column (the logits of column `position - 1` predict it, as the loss
    /// shifts).
    pub position: usize,
    /// The label (a token id).
    pub token: u32,
    /// `log p(token)` under the trainer's own routing.
    pub free: f64,
    /// `log p(token)` under the rollout's routing replayed.
    pub replayed: f64,
    /// `replayed - free`.
    pub difference: f64,
    /// The KL divergence between the two next-token distributions at `position - 1`, in the
    /// direction [`KL_DIRECTION`] names (nats).
    pub kl: f64,
}

/// For every label (`labels[b * seq + t]` not -100, `t >= 1`), its log-probability under the
/// `free` and `replayed` logits (`[batch, seq, vocab]` each) of column `t - 1`, and their KL.
/// Computed in float64; logits that are not finite at a position used are an error naming the
/// pass, the row and the column.
pub(crate) fn label_log_probs(
    free: &Tensor,
    replayed: &Tensor,
    labels: &[i64],
) -> Result<Vec<LabelLogProb>> {
    let (batch, seq, vocab) = free.dims3()?;
    if replayed.dims() != free.dims() || labels.len() != batch * seq {
        return Err(Error::input(
            "logits",
            format!(
                "free {:?}, replayed {:?} and {} labels do not line up",
                free.dims(),
                replayed.dims(),
                labels.len()
            ),
        ));
    }
    let mut at = Vec::new();
    let mut rows = Vec::new();
    for (i, &label) in labels.iter().enumerate() {
        let t = i % seq;
        if label == IGNORE_INDEX || t == 0 {
            continue;
        }
        let token = u32::try_from(label)
            .ok()
            .filter(|&l| (l as usize) < vocab)
            .ok_or_else(|| {
                Error::input(
                    "labels",
                    format!(
                        "value {label} at [{}, {t}]: expected a token id below {vocab} or {IGNORE_INDEX}",
                        i / seq
                    ),
                )
            })?;
        at.push((i / seq, t, token));
        rows.push((i - 1) as u32);
    }
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let index = Tensor::new(rows.as_slice(), free.device())?;
    let log_probs = |logits: &Tensor, pass: &str| -> Result<Vec<Vec<f64>>> {
        let selected = logits
            .reshape((batch * seq, vocab))?
            .index_select(&index, 0)?
            .to_dtype(DType::F64)?;
        let values: Vec<Vec<f64>> = candle_nn::ops::log_softmax(&selected, D::Minus1)?.to_vec2()?;
        if let Some((n, _)) = values
            .iter()
            .enumerate()
            .find(|(_, row)| row.iter().any(|v| v.is_nan() || *v == f64::INFINITY))
        {
            let (b, t, _) = at[n];
            return Err(Error::input(
                "logits",
                format!(
                    "the {pass} pass's logits at row {b}, column {} are not finite",
                    t - 1
                ),
            ));
        }
        Ok(values)
    };
    let lf = log_probs(free, "free")?;
    let lr = log_probs(replayed, "replayed")?;
    Ok(at
        .into_iter()
        .zip(lf.iter().zip(&lr))
        .map(|((row, position, token), (f, r))| {
            let kl = r
                .iter()
                .zip(f)
                .filter(|(r, _)| r.is_finite())
                .map(|(r, f)| r.exp() * (r - f))
                .sum();
            let (free, replayed) = (f[token as usize], r[token as usize]);
            LabelLogProb {
                row,
                position,
                token,
                free,
                replayed,
                difference: replayed - free,
                kl,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn label_log_probs_shift_like_the_loss_and_kl_is_by_hand() {
        let dev = Device::Cpu;
        // One row of 3 positions, vocabulary 2.
        let free = Tensor::new(&[[[0f32, 0.0], [1.0, 0.0], [5.0, 5.0]]], &dev).unwrap();
        let replayed = Tensor::new(&[[[0f32, 0.0], [0.0, 0.0], [0.0, 0.0]]], &dev).unwrap();
        // Position 0 never counts; position 1's label 1 is predicted at column 0 (identical
        // distributions), position 2's label 0 at column 1.
        let out = label_log_probs(&free, &replayed, &[7, 1, 0]).unwrap();
        assert_eq!(out.len(), 2);
        let half = 0.5f64.ln();
        assert_eq!((out[0].row, out[0].position, out[0].token), (0, 1, 1));
        assert!((out[0].free - half).abs() < 1e-12 && (out[0].replayed - half).abs() < 1e-12);
        assert!(out[0].kl.abs() < 1e-15 && out[0].difference.abs() < 1e-15);
        // Column 1: free p = (e/(e+1), 1/(e+1)), replayed (1/2, 1/2); KL(replayed || free) is
        // not KL(free || replayed).
        let (hi, lo) = (
            (1f64.exp() / (1f64.exp() + 1.0)).ln(),
            (1.0 / (1f64.exp() + 1.0)).ln(),
        );
        assert!((out[1].free - hi).abs() < 1e-12 && (out[1].replayed - half).abs() < 1e-12);
        assert!((out[1].difference - (half - hi)).abs() < 1e-12);
        let kl = 0.5 * (half - hi) + 0.5 * (half - lo);
        let reverse = hi.exp() * (hi - half) + lo.exp() * (lo - half);
        assert!((kl - reverse).abs() > 1e-3);
        assert!((out[1].kl - kl).abs() < 1e-12, "{} vs {kl}", out[1].kl);
        // -100 and the first column are skipped; a NaN in a used column is an error.
        assert!(
            label_log_probs(&free, &replayed, &[-100, -100, -100])
                .unwrap()
                .is_empty()
        );
        let nan = Tensor::new(&[[[0f32, 0.0], [f32::NAN, 0.0], [0.0, 0.0]]], &dev).unwrap();
        let err = label_log_probs(&nan, &replayed, &[-100, -100, 0])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("free pass's logits at row 0, column 1"),
            "{err}"
        );
        let err = label_log_probs(&free, &replayed, &[0, 9, 0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("value 9 at [0, 1]"), "{err}");
    }
}
