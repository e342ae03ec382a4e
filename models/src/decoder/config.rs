//! The common config view every decoder slot's constructor receives, whatever the family.
//!
//! A family parses its own `config.json` (`LlamaConfig`, `Qwen2MoeConfig`), validates it, and
//! lowers it to a [`DecoderConfig`]: the normalised facts a layer needs (sizes, head layout,
//! biases, norm epsilon, rope, per-layer attention kind and feed-forward kind). A replacement
//! written against this view serves every family; one that needs a family-specific key reads
//! it from [`DecoderConfig::json`].

use std::sync::Arc;

use serde_json::Value;

use crate::decoder::activation::HiddenAct;
use crate::decoder::config_check::ConfigCheck;
use crate::decoder::rope::RopeConfig;
use crate::{Error, Result};

/// Which attention a layer runs: over every past token, or over a sliding window of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKind {
    /// Causal attention over every past token (`"full_attention"`).
    Full,
    /// Causal attention over the last `window` positions, the query's own included
    /// (`"sliding_attention"`).
    Sliding {
        /// Number of positions a query sees.
        window: usize,
    },
}

/// What sits in a decoder layer's feed-forward position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedForwardKind {
    /// A dense gated MLP of `intermediate_size`.
    Dense,
    /// A sparse mixture-of-experts block (see [`MoeConfig`]).
    Sparse,
}

/// The mixture-of-experts facts of a family that has them.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Number of routed experts.
    pub num_experts: usize,
    /// Experts each token is routed to (top-k).
    pub num_experts_per_tok: usize,
    /// Intermediate size of each routed expert.
    pub moe_intermediate_size: usize,
    /// Intermediate size of the shared expert; 0 when there is none.
    pub shared_expert_intermediate_size: usize,
    /// Whether the top-k routing weights are renormalised to sum to one.
    pub norm_topk_prob: bool,
    /// Weight of the load-balancing loss in the training loss (`router_aux_loss_coef`).
    pub router_aux_loss_coef: f64,
    /// Whether forward passes return router outputs (and the aux loss) unless told otherwise
    /// (`output_router_logits`).
    pub output_router_logits: bool,
}

/// The normalised config every decoder slot's constructor receives (see the module docs).
#[derive(Clone, Debug)]
pub struct DecoderConfig {
    /// The family's `model_type` (`llama`, `qwen2_moe`).
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Intermediate size of the dense MLPs.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (divides `num_attention_heads`; fewer means grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Activation of the gated MLPs.
    pub hidden_act: HiddenAct,
    /// Epsilon of the RMS norms.
    pub rms_norm_eps: f64,
    /// Rotary embedding parameters.
    pub rope: RopeConfig,
    /// `max_position_embeddings` as published (dynamic rope scaling reads it).
    pub max_position_embeddings: usize,
    /// Whether q/k/v projections have a bias.
    pub qkv_bias: bool,
    /// Whether queries and keys are RMS-normalised per head before the rotary embedding
    /// (Qwen3's `q_norm`/`k_norm`).
    pub qk_norm: bool,
    /// Whether the attention output projection has a bias.
    pub o_proj_bias: bool,
    /// Whether the MLP projections have biases.
    pub mlp_bias: bool,
    /// Whether the output head reuses the token embedding (no `lm_head.weight` is read).
    pub tie_word_embeddings: bool,
    /// The attention kind of each layer (`len() == num_hidden_layers`).
    pub layer_types: Vec<AttentionKind>,
    /// The feed-forward kind of each layer (`len() == num_hidden_layers`).
    pub feed_forward: Vec<FeedForwardKind>,
    /// Mixture-of-experts facts, for families that have sparse layers.
    pub moe: Option<MoeConfig>,
    /// Beginning-of-sequence token, if the config names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (generation stops at any of them).
    pub eos_token_ids: Vec<u32>,
    /// Padding token, if the config names one.
    pub pad_token_id: Option<u32>,
    /// Standard deviation of random initialisation (`from_config`).
    pub initializer_range: f64,
    /// The dtype projection weights are kept in when it differs from the compute dtype
    /// (`None`: the compute dtype). Loading sets it to bf16 for bf16 checkpoints computed in
    /// float32 on CPU unless [`crate::LoadOptions::upcast_weights`] asks otherwise; see
    /// PERFORMANCE.md.
    pub weight_dtype: Option<candle_core::DType>,
    /// The config JSON as published, for family-specific keys and for saving.
    pub json: Arc<Value>,
}

impl DecoderConfig {
    /// Query heads per key/value head.
    pub fn num_key_value_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// The attention kind of layer `layer_idx`.
    pub fn attention_kind(&self, layer_idx: usize) -> AttentionKind {
        self.layer_types
            .get(layer_idx)
            .copied()
            .unwrap_or(AttentionKind::Full)
    }

    /// The feed-forward kind of layer `layer_idx`.
    pub fn feed_forward_kind(&self, layer_idx: usize) -> FeedForwardKind {
        self.feed_forward
            .get(layer_idx)
            .copied()
            .unwrap_or(FeedForwardKind::Dense)
    }

    /// This config after the checks that need every layer's kind: `intermediate_size` must be
    /// at least 1 when some layer has a dense MLP (an all-sparse MoE config may leave it 0).
    pub fn checked(self, check: &ConfigCheck<'_>) -> Result<Self> {
        if self.feed_forward.contains(&FeedForwardKind::Dense) {
            check.positive("intermediate_size", self.intermediate_size)?;
        }
        Ok(self)
    }

    /// The number of parameters a model of this config has, by transformers' layout of the
    /// standard sites (u128: the sizes are bounded, so it cannot overflow): what loading
    /// compares with the checkpoint, and `from_config` with the memory available.
    pub fn parameter_count(&self) -> u128 {
        let h = self.hidden_size as u128;
        let hd = self.head_dim as u128;
        let (heads, kv) = (
            self.num_attention_heads as u128,
            self.num_key_value_heads as u128,
        );
        let bias = |yes: bool, n: u128| if yes { n } else { 0 };
        let attention = h * hd * (heads + 2 * kv)
            + bias(self.qkv_bias, hd * (heads + 2 * kv))
            + heads * hd * h
            + bias(self.o_proj_bias, h)
            + bias(self.qk_norm, 2 * hd);
        let mlp = |i: u128| 3 * h * i + bias(self.mlp_bias, 2 * i + h);
        let sparse = self.moe.as_ref().map_or(0, |m| {
            let e = m.num_experts as u128;
            let shared = m.shared_expert_intermediate_size as u128;
            e * h
                + e * 3 * h * m.moe_intermediate_size as u128
                + if shared > 0 { 3 * h * shared + h } else { 0 }
        });
        let layers: u128 = self
            .feed_forward
            .iter()
            .map(|kind| {
                attention
                    + 2 * h
                    + match kind {
                        FeedForwardKind::Dense => mlp(self.intermediate_size as u128),
                        FeedForwardKind::Sparse => sparse,
                    }
            })
            .sum();
        let embeddings = self.vocab_size as u128 * h;
        embeddings
            + layers
            + h
            + if self.tie_word_embeddings {
                0
            } else {
                embeddings
            }
    }

    /// Whether any layer uses a sliding window.
    pub fn has_sliding_layers(&self) -> bool {
        self.layer_types
            .iter()
            .any(|k| matches!(k, AttentionKind::Sliding { .. }))
    }

    /// The `MoeConfig`, or an error naming the layer that needs one (for MoE sites built from
    /// a config without experts).
    pub fn moe(&self) -> Result<&MoeConfig> {
        self.moe.as_ref().ok_or_else(|| {
            Error::config(
                &self.model_type,
                "num_experts",
                "this model type has no mixture-of-experts config, but an MoE layer was asked for",
            )
        })
    }
}
