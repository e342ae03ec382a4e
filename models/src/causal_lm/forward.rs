//! The forward pass: options, outputs, and the pass itself (logits, router outputs, the
//! training loss, captured states).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use super::CausalLM;
use super::checks::check_mask;
use super::options::{ForwardOptions, LogitsMode};
use crate::decoder::{DecoderInput, KvCache, PassContext, Records, RouterRecord};
use crate::loss::{causal_lm_loss, load_balancing_loss};
use crate::{Error, Result};

/// What [`CausalLM::forward_with`] returns.
#[derive(Clone, Debug)]
pub struct ForwardOutput {
    /// Logits in float32 (shape per [`LogitsMode`]); `None` with [`LogitsMode::None`].
    pub logits: Option<Tensor>,
    /// Each MoE layer's routing, in layer order, when asked for.
    pub router_logits: Vec<RouterRecord>,
    /// With labels: the mean shifted cross-entropy (float32 `[]`), plus
    /// `router_aux_loss_coef * aux_loss` when router outputs are returned (as
    /// `Qwen2MoeForCausalLM.forward` computes it). Differentiable when the model is trainable.
    pub loss: Option<Tensor>,
    /// For MoE models returning router outputs: the load-balancing loss (float32 `[]`,
    /// transformers' `load_balancing_loss_func`, padding-aware with an attention mask).
    pub aux_loss: Option<Tensor>,
    /// The selected hidden states `[batch, seq, hidden]`, by index: 0 the embedding output,
    /// `i` the output of layer `i - 1`, `num_hidden_layers` the final norm's output
    /// (transformers' `output_hidden_states` convention).
    pub hidden_states: BTreeMap<usize, Tensor>,
    /// The selected layers' post-softmax attention probabilities `[batch, heads, seq,
    /// kv_len]`, masked as the pass masks them, by layer index.
    pub attentions: BTreeMap<usize, Tensor>,
    /// The recorded sites' outputs, by module path, typed by slot.
    pub records: Records,
}

impl CausalLM {
    /// A KV cache for `batch` rows and `capacity` positions (prompt plus new tokens),
    /// allocated on first use and then written in place. `capacity` is checked against
    /// [`CausalLM::max_positions`] and the cache's size against the memory available.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        self.check_positions(
            &format!("a KV cache of {capacity} positions"),
            Some(capacity),
        )?;
        let c = self.config();
        let per_position = (self.model.layers.len() as u128)
            * (c.num_key_value_heads as u128)
            * (c.head_dim as u128)
            * 2
            * self.dtype().size_in_bytes() as u128
            + 1;
        patch_checkpoint::memory::check(
            (batch as u128) * (capacity as u128) * per_position,
            || format!("a KV cache of {batch} rows x {capacity} positions"),
            "generate fewer tokens, or fewer rows at once",
        )?;
        KvCache::new(self.model.layers.len(), batch, capacity)
    }

    /// Logits (float32 `[batch, seq, vocab]`) for `input_ids` (`[batch, seq]`, u32 or i64),
    /// with an optional `attention_mask` (`[batch, seq]`, 1 = token, 0 = padding; left or
    /// right padding). Positions come from the mask.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let out = self.forward_with(input_ids, attention_mask, None, &ForwardOptions::default())?;
        out.logits
            .ok_or_else(|| Error::input("logits", "not computed"))
    }

    /// The full forward pass. With `cache`, the tokens continue the cached sequence:
    /// `attention_mask` covers the new tokens only (the cache remembers the earlier ones), and
    /// the cache is extended in place.
    pub fn forward_with(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        options: &ForwardOptions,
    ) -> Result<ForwardOutput> {
        let ids = self.check_input_ids(input_ids)?;
        let (batch, seq) = ids.dims2()?;
        let past = cache.as_deref().map_or(0, KvCache::len);
        let _span = tracing::debug_span!("forward", batch, seq, past).entered();
        self.check_positions(
            &format!("a pass of {seq} tokens after {past} cached positions"),
            past.checked_add(seq),
        )?;
        self.check_pass_memory(batch, seq, options)?;
        let mask = match attention_mask {
            Some(m) => check_mask(m, batch, seq)?,
            None => vec![1u8; batch * seq],
        };
        self.check_forced_experts(&options.forced_experts, batch * seq)?;
        if options.labels.is_some() && options.logits != LogitsMode::All {
            return Err(Error::input(
                "labels",
                format!(
                    "the loss needs logits at every position, but the pass computes {:?}",
                    options.logits
                ),
            ));
        }
        let moe = self.config().moe.as_ref();
        let output_router_logits = options
            .output_router_logits
            .unwrap_or(moe.is_some_and(|m| m.output_router_logits));
        let layers = self.model.layers.len();
        let hidden_states = options
            .output_hidden_states
            .resolve("output_hidden_states", layers + 1)?;
        let attentions = options
            .output_attentions
            .resolve("output_attentions", layers)?;
        let pass = PassContext::new(
            &self.report,
            &options.recorders,
            attentions,
            &self.implementations,
        )
        .with_gradients(self.weights.is_trainable())
        .with_extensions(options.extensions.clone());
        let input = DecoderInput {
            input_ids: &ids,
            attention_mask: &mask,
            forced_experts: &options.forced_experts,
            output_router_logits,
            hidden_states: &hidden_states,
            pass: &pass,
        };
        let out = self.model.forward(&input, cache)?;
        let (hidden, router_logits) = (out.last_hidden_state, out.routers);
        let hidden = match options.logits {
            LogitsMode::All => Some(hidden),
            LogitsMode::Last => Some(hidden.narrow(1, seq - 1, 1)?),
            LogitsMode::None => None,
        };
        let logits = match hidden {
            Some(h) => Some(self.lm_head.forward(&h, &pass)?.to_dtype(DType::F32)?),
            None => None,
        };
        let aux_loss = match moe {
            Some(m) if output_router_logits && !router_logits.is_empty() => {
                let layers: Vec<&Tensor> = router_logits.iter().map(|r| &r.router.logits).collect();
                let mask = attention_mask.map(|_| mask.as_slice());
                Some(load_balancing_loss(
                    &layers,
                    m.num_experts,
                    m.num_experts_per_tok,
                    mask,
                )?)
            }
            _ => None,
        };
        let loss = match (&options.labels, &logits) {
            (Some(labels), Some(logits)) => {
                let loss = causal_lm_loss(logits, labels)?;
                Some(match (&aux_loss, moe) {
                    (Some(aux), Some(m)) => (loss + (aux * m.router_aux_loss_coef)?)?,
                    _ => loss,
                })
            }
            _ => None,
        };
        let (records, attentions) = pass.into_captured();
        Ok(ForwardOutput {
            logits,
            router_logits,
            loss,
            aux_loss,
            hidden_states: out.hidden_states,
            attentions,
            records,
        })
    }
}
