//! The `config.json` keys families share, declared and lowered once: the decoder keys every
//! family reads ([`DecoderKeys`]), the mixture-of-experts keys ([`MoeKeys`]) and the
//! sliding-window keys ([`SlidingWindowKeys`]). How a family's config is made of them:
//! `family_config.rs`.
//!
//! A group has no `Default` of its own: its defaults differ between families (Llama's BOS/EOS
//! ids, Qwen3-MoE's expert counts), so a family's `Default` is the only place they are set.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Result;
use crate::decoder::config::{AttentionKind, DecoderConfig, FeedForwardKind, MoeConfig};
use crate::decoder::config_check::{ConfigCheck, bounds};
use crate::decoder::rope::RopeConfig;

/// The keys every decoder family reads, by transformers' names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecoderKeys {
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
    /// Key/value heads (default: `num_attention_heads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Width of a head (default: `hidden_size / num_attention_heads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// MLP activation (`silu`).
    pub hidden_act: String,
    /// Context length the model was built for.
    pub max_position_embeddings: usize,
    /// Standard deviation of random initialisation.
    pub initializer_range: f64,
    /// Epsilon of the RMS norms.
    pub rms_norm_eps: f64,
    /// Whether the output head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Rotary base (older key style).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Rotary scaling (older key style): `rope_type` (or `type`) and its parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// Rotary parameters (newer key style): `rope_type`, `rope_theta` and the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    /// Beginning-of-sequence token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<Value>,
    /// End-of-sequence token(s): an id or a list of ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<Value>,
    /// Padding token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<Value>,
}

impl DecoderKeys {
    /// The defaults transformers' decoder configs share (silu, 0.02 init, 1e-6 epsilon, untied,
    /// default rope, no special tokens), with Llama-2-7B's sizes: a family's `Default` sets its
    /// own over these. Not public, and `DecoderKeys` has no `Default`: a config written by hand
    /// starts from its family's defaults (`LlamaConfig::builder()`, or
    /// `..LlamaConfig::default().common`), so it cannot silently lose them.
    pub(crate) fn base() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            head_dim: None,
            hidden_act: "silu".into(),
            max_position_embeddings: 2048,
            initializer_range: 0.02,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: false,
            rope_theta: None,
            rope_scaling: None,
            rope_parameters: None,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
        }
    }
}

impl DecoderKeys {
    /// Validates these keys and lowers them to the common view of a model of `model_type`
    /// (rope read from `json`, the config as published); what the keys do not say is left at
    /// its plain value (no biases, full attention and a dense MLP in every layer, no experts),
    /// for the family to set.
    pub fn lower(
        &self,
        model_type: &str,
        check: &ConfigCheck<'_>,
        json: Arc<Value>,
    ) -> Result<DecoderConfig> {
        let vocab_size = check.size("vocab_size", self.vocab_size, bounds::MAX_VOCAB)?;
        let hidden_size = check.size("hidden_size", self.hidden_size, bounds::MAX_WIDTH)?;
        let (heads, kv_heads, head_dim) = check.heads(
            hidden_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
        )?;
        let layers = check.size(
            "num_hidden_layers",
            self.num_hidden_layers,
            bounds::MAX_LAYERS,
        )?;
        let max_position_embeddings = check.size(
            "max_position_embeddings",
            self.max_position_embeddings,
            bounds::MAX_POSITIONS,
        )?;
        if self.intermediate_size > bounds::MAX_WIDTH {
            check.size(
                "intermediate_size",
                self.intermediate_size,
                bounds::MAX_WIDTH,
            )?;
        }
        let rope = RopeConfig::parse(check, &json, head_dim, max_position_embeddings, 10000.0)?;
        let first = |key: &str, value: &Option<Value>| -> Result<Option<u32>> {
            Ok(check
                .token_ids(key, value.as_ref(), vocab_size)?
                .first()
                .copied())
        };
        Ok(DecoderConfig {
            model_type: model_type.into(),
            vocab_size,
            hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            hidden_act: check.hidden_act("hidden_act", &self.hidden_act)?,
            rms_norm_eps: check.positive_f64("rms_norm_eps", self.rms_norm_eps)?,
            rope,
            max_position_embeddings,
            qkv_bias: false,
            qk_norm: false,
            o_proj_bias: false,
            mlp_bias: false,
            tie_word_embeddings: self.tie_word_embeddings,
            layer_types: vec![AttentionKind::Full; layers],
            feed_forward: vec![FeedForwardKind::Dense; layers],
            moe: None,
            bos_token_id: first("bos_token_id", &self.bos_token_id)?,
            eos_token_ids: check.token_ids(
                "eos_token_id",
                self.eos_token_id.as_ref(),
                vocab_size,
            )?,
            pad_token_id: first("pad_token_id", &self.pad_token_id)?,
            initializer_range: check.positive_f64("initializer_range", self.initializer_range)?,
            weight_dtype: None,
            json,
        })
    }
}

/// The mixture-of-experts keys of the Qwen-MoE families.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeKeys {
    /// Every `decoder_sparse_step`-th layer (1-based) is sparse.
    pub decoder_sparse_step: usize,
    /// Layers that stay dense whatever `decoder_sparse_step` says.
    pub mlp_only_layers: Vec<usize>,
    /// Intermediate size of each routed expert.
    pub moe_intermediate_size: usize,
    /// Experts each token is routed to.
    pub num_experts_per_tok: usize,
    /// Number of routed experts.
    pub num_experts: usize,
    /// Whether the top-k routing weights are renormalised.
    pub norm_topk_prob: bool,
    /// Weight of the load-balancing loss added to the training loss.
    pub router_aux_loss_coef: f64,
    /// Whether forward passes return router outputs by default.
    pub output_router_logits: bool,
}

impl MoeKeys {
    /// transformers' Qwen-MoE defaults (every layer sparse, 0.001 aux weight), with
    /// Qwen1.5-MoE-A2.7B's expert counts: a family's `Default` sets its own over these. Not
    /// public, as [`DecoderKeys::base`]: no family's experts can be silently reset to another's.
    pub(crate) fn base() -> Self {
        Self {
            decoder_sparse_step: 1,
            mlp_only_layers: Vec::new(),
            moe_intermediate_size: 1408,
            num_experts_per_tok: 4,
            num_experts: 60,
            norm_topk_prob: false,
            router_aux_loss_coef: 0.001,
            output_router_logits: false,
        }
    }
}

impl MoeKeys {
    /// Sets `config`'s feed-forward kinds and MoE facts: a layer is sparse when it is not in
    /// `mlp_only_layers`, there are experts, and `(layer + 1) % decoder_sparse_step == 0`;
    /// `shared_expert_intermediate_size` is the family's (0: none).
    pub fn lower(
        &self,
        check: &ConfigCheck<'_>,
        config: &mut DecoderConfig,
        shared_expert_intermediate_size: usize,
    ) -> Result<()> {
        let layers = config.num_hidden_layers;
        let step = check.positive("decoder_sparse_step", self.decoder_sparse_step)?;
        if let Some(&bad) = self.mlp_only_layers.iter().find(|&&l| l >= layers) {
            return Err(check.error(
                "mlp_only_layers",
                format!("layer {bad} does not exist (num_hidden_layers = {layers})"),
            ));
        }
        config.feed_forward = (0..layers)
            .map(|i| {
                if self.num_experts > 0 && !self.mlp_only_layers.contains(&i) && (i + 1) % step == 0
                {
                    FeedForwardKind::Sparse
                } else {
                    FeedForwardKind::Dense
                }
            })
            .collect();
        config.moe = if config.feed_forward.contains(&FeedForwardKind::Sparse) {
            let num_experts = check.size("num_experts", self.num_experts, bounds::MAX_EXPERTS)?;
            let top_k = check.positive("num_experts_per_tok", self.num_experts_per_tok)?;
            if top_k > num_experts {
                return Err(check.error(
                    "num_experts_per_tok",
                    format!("{top_k} is more than num_experts = {num_experts}"),
                ));
            }
            Some(MoeConfig {
                num_experts,
                num_experts_per_tok: top_k,
                moe_intermediate_size: check.size(
                    "moe_intermediate_size",
                    self.moe_intermediate_size,
                    bounds::MAX_WIDTH,
                )?,
                shared_expert_intermediate_size: if shared_expert_intermediate_size > 0 {
                    check.size(
                        "shared_expert_intermediate_size",
                        shared_expert_intermediate_size,
                        bounds::MAX_WIDTH,
                    )?
                } else {
                    0
                },
                norm_topk_prob: self.norm_topk_prob,
                router_aux_loss_coef: check
                    .finite("router_aux_loss_coef", self.router_aux_loss_coef)?,
                output_router_logits: self.output_router_logits,
            })
        } else {
            None
        };
        Ok(())
    }
}

/// The sliding-window keys of the Qwen families.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlidingWindowKeys {
    /// Whether sliding-window attention is used at all: a window applies only when true.
    pub use_sliding_window: bool,
    /// Window size of sliding layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Layers below this index use full attention when no `layer_types` is given.
    pub max_window_layers: usize,
    /// Per-layer attention kinds (`full_attention` / `sliding_attention`); derived when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
}

impl SlidingWindowKeys {
    /// transformers' defaults of the Qwen families: no sliding window, 4096 when enabled, from
    /// layer 28 on.
    pub fn qwen() -> Self {
        Self {
            use_sliding_window: false,
            sliding_window: Some(4096),
            max_window_layers: 28,
            layer_types: None,
        }
    }

    /// Sets `config`'s attention kinds: `layer_types` when given, else layers from
    /// `max_window_layers` on are sliding (transformers' rule); either way a layer slides only
    /// when `use_sliding_window` is true.
    pub fn lower(&self, check: &ConfigCheck<'_>, config: &mut DecoderConfig) -> Result<()> {
        let layers = config.num_hidden_layers;
        let window = match (self.use_sliding_window, self.sliding_window) {
            (false, _) => None,
            (true, Some(w)) => Some(check.size("sliding_window", w, bounds::MAX_POSITIONS)?),
            (true, None) => {
                return Err(check.error(
                    "sliding_window",
                    "use_sliding_window is true but no sliding_window is given",
                ));
            }
        };
        config.layer_types = match &self.layer_types {
            Some(types) => {
                if types.len() != layers {
                    return Err(check.error(
                        "layer_types",
                        format!(
                            "has {} entries for num_hidden_layers = {layers}",
                            types.len()
                        ),
                    ));
                }
                types
                    .iter()
                    .enumerate()
                    .map(|(i, t)| match (t.as_str(), window) {
                        ("full_attention", _) | ("sliding_attention", None) => Ok(AttentionKind::Full),
                        ("sliding_attention", Some(window)) => Ok(AttentionKind::Sliding { window }),
                        (other, _) => Err(check.error(
                            &format!("layer_types[{i}]"),
                            format!("unknown layer type {other:?} (expected full_attention or sliding_attention)"),
                        )),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            None => (0..layers)
                .map(|i| match window {
                    Some(window) if i >= self.max_window_layers => {
                        AttentionKind::Sliding { window }
                    }
                    _ => AttentionKind::Full,
                })
                .collect(),
        };
        Ok(())
    }
}
