//! What a pass checks before it runs: token ids, the attention mask, forced experts, and the
//! memory its activations need.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use super::CausalLM;
use super::options::{ForwardOptions, LogitsMode};
use crate::decoder::FeedForwardKind;
use crate::loss::integer_values;
use crate::{Error, Result};

impl CausalLM {
    /// Checks that the activations of a pass of `batch x seq` tokens fit in memory: about
    /// float32 values per token for the logits asked for, the residual stream and norms, the
    /// widest feed-forward's three projections, and queries, keys and values (attention itself
    /// is linear in the tokens on the fused path and works in blocks on the eager one).
    pub(super) fn check_pass_memory(
        &self,
        batch: usize,
        seq: usize,
        options: &ForwardOptions,
    ) -> Result<()> {
        let c = self.config();
        let widest = c
            .moe
            .as_ref()
            .map_or(0, |m| {
                (m.moe_intermediate_size * m.num_experts_per_tok)
                    .max(m.shared_expert_intermediate_size)
            })
            .max(c.intermediate_size) as u128;
        let logits = match options.logits {
            LogitsMode::All => c.vocab_size as u128,
            LogitsMode::Last | LogitsMode::None => 0,
        };
        let attention = ((c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim) as u128;
        let per_token = logits + 4 * c.hidden_size as u128 + 3 * widest + 2 * attention;
        let tokens = (batch as u128) * (seq as u128);
        patch_checkpoint::memory::check(
            tokens.saturating_mul(per_token).saturating_mul(4),
            || format!("a forward pass of {batch} x {seq} tokens"),
            if logits > 0 {
                "pass fewer tokens, or ask for the last position's logits only (LogitsMode::Last)"
            } else {
                "pass fewer tokens"
            },
        )?;
        Ok(())
    }

    /// Checks forced experts before the pass: each names an MoE layer of this model and holds
    /// `[tokens, top_k]` integers, each -1 or an expert id; errors name the layer and position.
    pub(super) fn check_forced_experts(
        &self,
        forced: &BTreeMap<usize, Tensor>,
        tokens: usize,
    ) -> Result<()> {
        if forced.is_empty() {
            return Ok(());
        }
        let c = self.config();
        let moe = c.moe()?;
        let sparse: Vec<usize> = (0..c.num_hidden_layers)
            .filter(|&i| c.feed_forward_kind(i) == FeedForwardKind::Sparse)
            .collect();
        let (k, experts) = (moe.num_experts_per_tok, moe.num_experts);
        for (&layer, ids) in forced {
            let name = format!("forced_experts[{layer}]");
            if !sparse.contains(&layer) {
                return Err(Error::input(
                    name,
                    format!(
                        "layer {layer} is not an MoE layer of this model (MoE layers: {sparse:?})"
                    ),
                ));
            }
            if ids.dims() != [tokens, k] {
                return Err(Error::input(
                    name,
                    format!(
                        "shape {:?}: this pass routes {tokens} tokens to {k} experts each ([{tokens}, {k}])",
                        ids.dims()
                    ),
                ));
            }
            let values = integer_values(&name, ids)?;
            if let Some((i, e)) = values
                .iter()
                .enumerate()
                .find(|&(_, &e)| e < -1 || e >= experts as i64)
            {
                return Err(Error::input(
                    name,
                    format!(
                        "expert {e} at token {}, choice {}: expected -1 (route freely) or an expert below {experts}",
                        i / k,
                        i % k
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `input_ids` as a u32 tensor on the model's device, after checking its shape, dtype and
    /// that every id is below the vocabulary size.
    pub fn check_input_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2().map_err(|_| {
            Error::input(
                "input_ids",
                format!("expected shape [batch, seq], found {:?}", input_ids.dims()),
            )
        })?;
        if batch == 0 || seq == 0 {
            return Err(Error::input(
                "input_ids",
                format!("empty batch {:?}", input_ids.dims()),
            ));
        }
        let values: Vec<i64> = match input_ids.dtype() {
            DType::U32 | DType::U8 | DType::I64 | DType::I32 | DType::I16 => {
                input_ids.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?
            }
            other => {
                return Err(Error::input(
                    "input_ids",
                    format!("expected integer token ids (u32 or i64), found {other:?}"),
                ));
            }
        };
        let vocab = self.config().vocab_size;
        if let Some((i, &token)) = values
            .iter()
            .enumerate()
            .find(|(_, t)| **t < 0 || **t >= vocab as i64)
        {
            return Err(Error::TokenOutOfRange {
                input: "input_ids".into(),
                row: i / seq,
                col: i % seq,
                token,
                vocab_size: vocab,
            });
        }
        let ids: Vec<u32> = values.into_iter().map(|t| t as u32).collect();
        Ok(Tensor::from_vec(ids, (batch, seq), self.device())?)
    }
}

/// The mask as bytes, after checking its shape and that it holds only 0 and 1.
pub(super) fn check_mask(mask: &Tensor, batch: usize, seq: usize) -> Result<Vec<u8>> {
    if mask.dims() != [batch, seq] {
        return Err(Error::input(
            "attention_mask",
            format!(
                "expected shape [{batch}, {seq}] like input_ids, found {:?}",
                mask.dims()
            ),
        ));
    }
    let values: Vec<f64> = mask.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if v == 0.0 || v == 1.0 {
                Ok(v as u8)
            } else {
                Err(Error::input(
                    "attention_mask",
                    format!(
                        "value {v} at [{}, {}]: expected 1 (token) or 0 (padding)",
                        i / seq,
                        i % seq
                    ),
                ))
            }
        })
        .collect()
}
