//! The training losses of the causal LMs, as transformers computes them: the shifted
//! cross-entropy of `ForCausalLMLoss`, and the Switch Transformer load-balancing loss of the
//! MoE families (`load_balancing_loss_func`).

use candle_core::{D, DType, Tensor};

use crate::{Error, Result};

/// The label transformers ignores (`ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// The causal-LM loss: the logits of position `t` predict the label at `t + 1` (the last
/// position predicts nothing), labels equal to [`IGNORE_INDEX`] are skipped, and the loss is
/// the mean cross-entropy over the remaining targets (transformers' `ForCausalLMLoss` with
/// `reduction="mean"`).
///
/// `logits` `[batch, seq, vocab]`; `labels` `[batch, seq]`, any integer dtype, each a token
/// id below `vocab` or -100. An error if no target remains (transformers returns NaN: a batch
/// with nothing to learn is almost always a masking bug).
pub fn causal_lm_loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (batch, seq, vocab) = logits.dims3()?;
    if labels.dims() != [batch, seq] {
        return Err(Error::input(
            "labels",
            format!(
                "expected shape [{batch}, {seq}] like input_ids, found {:?}",
                labels.dims()
            ),
        ));
    }
    let values = integer_values("labels", labels)?;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for b in 0..batch {
        for t in 0..seq {
            let label = values[b * seq + t];
            if label == IGNORE_INDEX {
                continue;
            }
            if label < 0 || label >= vocab as i64 {
                return Err(Error::input(
                    "labels",
                    format!(
                        "value {label} at [{b}, {t}]: expected a token id below the vocabulary size {vocab}, or {IGNORE_INDEX} to ignore the position"
                    ),
                ));
            }
            // The logits at t - 1 predict the label at t.
            if t > 0 {
                rows.push((b * seq + t - 1) as u32);
                targets.push(label as u32);
            }
        }
    }
    if rows.is_empty() {
        return Err(Error::input(
            "labels",
            format!(
                "no position to learn from: every label after the first position of each row is {IGNORE_INDEX}"
            ),
        ));
    }
    let n = rows.len();
    let device = logits.device();
    let rows = Tensor::from_vec(rows, n, device)?;
    let targets = Tensor::from_vec(targets, (n, 1), device)?;
    let selected = logits
        .reshape((batch * seq, vocab))?
        .index_select(&rows, 0)?
        .to_dtype(DType::F32)?;
    let log_probs = candle_nn::ops::log_softmax(&selected, D::Minus1)?;
    let picked = log_probs.gather(&targets, 1)?;
    Ok((picked.sum_all()?.neg()? / n as f64)?)
}

/// transformers' `load_balancing_loss_func`: for the router logits of every MoE layer
/// (`[batch * seq, num_experts]` each, concatenated over layers), the fraction of tokens whose
/// top-k includes each expert (top-k recomputed from the logits, so a replayed routing does not
/// change it) times the mean router probability of that expert, summed and scaled by
/// `num_experts`. With an attention mask (`batch * seq` bytes, 1 = token), padding tokens are
/// left out of both averages.
///
/// Differentiable through the router probabilities (the top-k counts are constants).
pub fn load_balancing_loss(
    router_logits: &[&Tensor],
    num_experts: usize,
    top_k: usize,
    attention_mask: Option<&[u8]>,
) -> Result<Tensor> {
    let first = router_logits
        .first()
        .ok_or_else(|| Error::input("router_logits", "no MoE layer produced router logits"))?;
    let tokens = first.dim(0)?;
    for (i, l) in router_logits.iter().enumerate() {
        if l.dims() != [tokens, num_experts] {
            return Err(Error::input(
                "router_logits",
                format!(
                    "layer {i} of the record has shape {:?}, expected [{tokens}, {num_experts}]",
                    l.dims()
                ),
            ));
        }
    }
    if let Some(m) = attention_mask
        && m.len() != tokens
    {
        return Err(Error::input(
            "attention_mask",
            format!("{} entries for {tokens} routed tokens", m.len()),
        ));
    }
    if top_k == 0 || top_k > num_experts {
        return Err(Error::input(
            "num_experts_per_tok",
            format!("{top_k} experts per token out of {num_experts}"),
        ));
    }
    let logits = Tensor::cat(router_logits, 0)?.to_dtype(DType::F32)?;
    let probs = candle_nn::ops::softmax(&logits, D::Minus1)?;
    let values: Vec<f32> = probs.detach().flatten_all()?.to_vec1()?;
    let layers = router_logits.len();
    let token_weight = |row: usize| -> f32 {
        attention_mask.map_or(1.0, |m| if m[row % tokens] != 0 { 1.0 } else { 0.0 })
    };
    let total: f32 = (0..layers * tokens).map(token_weight).sum();
    if total == 0.0 {
        return Err(Error::input(
            "attention_mask",
            "every token is padding: there is no routing to balance",
        ));
    }
    // For each expert, the (masked) count of top-k slots choosing it, over tokens: summed over
    // the k slots, the fractions transformers multiplies with the probabilities.
    let mut chosen = vec![0f32; num_experts];
    let mut order: Vec<usize> = Vec::with_capacity(num_experts);
    for (row, p) in values.chunks(num_experts).enumerate() {
        let wt = token_weight(row);
        if wt == 0.0 {
            continue;
        }
        order.clear();
        order.extend(0..num_experts);
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        for &e in &order[..top_k] {
            chosen[e] += wt;
        }
    }
    let fractions: Vec<f32> = chosen.iter().map(|c| c / total).collect();
    let device = logits.device();
    let fractions = Tensor::from_vec(fractions, num_experts, device)?;
    let weights: Vec<f32> = (0..layers * tokens).map(token_weight).collect();
    let weights = Tensor::from_vec(weights, (layers * tokens, 1), device)?;
    let mean_probs = (probs.broadcast_mul(&weights)?.sum(0)? / total as f64)?;
    Ok(((mean_probs * fractions)?.sum_all()? * num_experts as f64)?)
}

/// An integer tensor's values as i64, or an error naming `name` for another dtype.
pub(crate) fn integer_values(name: &str, t: &Tensor) -> Result<Vec<i64>> {
    match t.dtype() {
        DType::U8 | DType::U32 | DType::I16 | DType::I32 | DType::I64 => {
            Ok(t.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?)
        }
        other => Err(Error::input(
            name,
            format!("expected integers (u8, u32, i16, i32 or i64), found {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn causal_lm_loss_is_the_shifted_mean_cross_entropy() {
        let dev = Device::Cpu;
        let logits = Tensor::new(
            &[[[2.0f32, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]],
            &dev,
        )
        .unwrap();
        // Targets: position 0 predicts 1, position 1 predicts 2 (ignored), position 2 nothing.
        let labels = Tensor::new(&[[0i64, 1, -100]], &dev).unwrap();
        let loss = causal_lm_loss(&logits, &labels)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let want = -(0f32.exp() / (2f32.exp() + 2.0)).ln();
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
        let none = Tensor::new(&[[2i64, -100, -100]], &dev).unwrap();
        let err = causal_lm_loss(&logits, &none).unwrap_err().to_string();
        assert!(err.contains("no position to learn from"), "{err}");
        let bad = Tensor::new(&[[0i64, 7, 1]], &dev).unwrap();
        let err = causal_lm_loss(&logits, &bad).unwrap_err().to_string();
        assert!(err.contains("value 7 at [0, 1]"), "{err}");
    }

    #[test]
    fn load_balancing_loss_counts_top_k_and_is_differentiable() {
        let dev = Device::Cpu;
        // Two tokens, three experts, top-1: token 0 -> expert 0, token 1 -> expert 2.
        let logits = Tensor::new(&[[3.0f32, 0.0, 0.0], [0.0, 1.0, 2.0]], &dev).unwrap();
        let var = Var::from_tensor(&logits).unwrap();
        let loss = load_balancing_loss(&[var.as_tensor()], 3, 1, None).unwrap();
        let p = candle_nn::ops::softmax(&logits, 1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let mean = |e: usize| (p[0][e] + p[1][e]) / 2.0;
        let want = 3.0 * (0.5 * mean(0) + 0.5 * mean(2));
        let got = loss.to_scalar::<f32>().unwrap();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert!(loss.backward().unwrap().get(var.as_tensor()).is_some());
        // A masked-out token counts for nothing.
        let masked = load_balancing_loss(&[&logits], 3, 1, Some(&[1, 0])).unwrap();
        let want = 3.0 * p[0][0];
        assert!((masked.to_scalar::<f32>().unwrap() - want).abs() < 1e-6);
    }
}
