//! `Qwen2MoeConfig`: Qwen2-MoE's `config.json`, as published.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decoder::{
    AttentionKind, ConfigCheck, DecoderConfig, FeedForwardKind, MoeConfig, RopeConfig,
};
use crate::{Error, Result};

/// Qwen2-MoE's `config.json`, with transformers' defaults for absent keys (Qwen1.5-MoE-A2.7B's
/// shape). Unknown keys are ignored. Both rope key styles are read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Qwen2MoeConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Intermediate size of the dense layers' MLPs.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (default: `num_attention_heads`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Width of a head (default: `hidden_size / num_attention_heads`).
    #[serde(skip_serializing_if = "Option::is_none")]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Rotary scaling (older key style).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// Rotary parameters (newer key style).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    /// Whether sliding-window attention is used at all: a window applies only when true.
    pub use_sliding_window: bool,
    /// Window size of sliding layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Layers below this index use full attention when no `layer_types` is given.
    pub max_window_layers: usize,
    /// Per-layer attention kinds (`full_attention` / `sliding_attention`); derived when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Every `decoder_sparse_step`-th layer (1-based) is sparse.
    pub decoder_sparse_step: usize,
    /// Layers that stay dense whatever `decoder_sparse_step` says.
    pub mlp_only_layers: Vec<usize>,
    /// Intermediate size of each routed expert.
    pub moe_intermediate_size: usize,
    /// Intermediate size of the shared expert (0: none).
    pub shared_expert_intermediate_size: usize,
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
    /// Whether q/k/v projections have biases.
    pub qkv_bias: bool,
    /// Beginning-of-sequence token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<Value>,
    /// End-of-sequence token(s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<Value>,
    /// Padding token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<Value>,
}

impl Default for Qwen2MoeConfig {
    /// transformers' `Qwen2MoeConfig()` defaults.
    fn default() -> Self {
        Self {
            vocab_size: 151936,
            hidden_size: 2048,
            intermediate_size: 5632,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            num_key_value_heads: Some(16),
            head_dim: None,
            hidden_act: "silu".into(),
            max_position_embeddings: 32768,
            initializer_range: 0.02,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: false,
            rope_theta: None,
            rope_scaling: None,
            rope_parameters: None,
            use_sliding_window: false,
            sliding_window: Some(4096),
            max_window_layers: 28,
            layer_types: None,
            decoder_sparse_step: 1,
            mlp_only_layers: Vec::new(),
            moe_intermediate_size: 1408,
            shared_expert_intermediate_size: 5632,
            num_experts_per_tok: 4,
            num_experts: 60,
            norm_topk_prob: false,
            router_aux_loss_coef: 0.001,
            output_router_logits: false,
            qkv_bias: true,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
        }
    }
}

/// The `model_type` of Qwen2-MoE configs.
pub const QWEN2_MOE_MODEL_TYPE: &str = "qwen2_moe";

impl Qwen2MoeConfig {
    /// Parses a config JSON object; `source_name` (the file) and the key appear in errors.
    pub fn from_json(json: &Value, source_name: &str) -> Result<Self> {
        serde_path_to_error::deserialize(json).map_err(|e| {
            let key = e.path().to_string();
            Error::config(source_name, key, e.into_inner().to_string())
        })
    }

    /// This config as the JSON transformers would write (with `model_type`).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("model_type".into(), QWEN2_MOE_MODEL_TYPE.into());
            obj.insert(
                "architectures".into(),
                serde_json::json!(["Qwen2MoeForCausalLM"]),
            );
        }
        v
    }

    /// Validates this config and lowers it to the common view; `json` is the config as
    /// published.
    ///
    /// Attention kinds: `layer_types` when given, else layers from `max_window_layers` on are
    /// sliding (transformers' rule); either way a layer slides only when `use_sliding_window`
    /// is true. Feed-forward kinds: a layer is sparse when it is not in `mlp_only_layers`,
    /// there are experts, and `(layer + 1) % decoder_sparse_step == 0`.
    pub fn decoder_config(&self, json: Arc<Value>, source_name: &str) -> Result<DecoderConfig> {
        let check = ConfigCheck::new(source_name);
        let vocab_size = check.positive("vocab_size", self.vocab_size)?;
        let hidden_size = check.positive("hidden_size", self.hidden_size)?;
        let (heads, kv_heads, head_dim) = check.heads(
            hidden_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
        )?;
        let layers = check.positive("num_hidden_layers", self.num_hidden_layers)?;
        let max_position_embeddings =
            check.positive("max_position_embeddings", self.max_position_embeddings)?;
        let rope = RopeConfig::parse(&check, &json, head_dim, max_position_embeddings, 10000.0)?;

        let window = match (self.use_sliding_window, self.sliding_window) {
            (false, _) => None,
            (true, Some(w)) => Some(check.positive("sliding_window", w)?),
            (true, None) => {
                return Err(check.error(
                    "sliding_window",
                    "use_sliding_window is true but no sliding_window is given",
                ));
            }
        };
        let layer_types = match &self.layer_types {
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

        let step = check.positive("decoder_sparse_step", self.decoder_sparse_step)?;
        if let Some(&bad) = self.mlp_only_layers.iter().find(|&&l| l >= layers) {
            return Err(check.error(
                "mlp_only_layers",
                format!("layer {bad} does not exist (num_hidden_layers = {layers})"),
            ));
        }
        let feed_forward: Vec<FeedForwardKind> = (0..layers)
            .map(|i| {
                if self.num_experts > 0 && !self.mlp_only_layers.contains(&i) && (i + 1) % step == 0
                {
                    FeedForwardKind::Sparse
                } else {
                    FeedForwardKind::Dense
                }
            })
            .collect();
        let moe = if feed_forward.contains(&FeedForwardKind::Sparse) {
            let num_experts = self.num_experts;
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
                moe_intermediate_size: check
                    .positive("moe_intermediate_size", self.moe_intermediate_size)?,
                shared_expert_intermediate_size: self.shared_expert_intermediate_size,
                norm_topk_prob: self.norm_topk_prob,
                router_aux_loss_coef: check
                    .finite("router_aux_loss_coef", self.router_aux_loss_coef)?,
                output_router_logits: self.output_router_logits,
            })
        } else {
            None
        };
        let intermediate_size = if feed_forward.contains(&FeedForwardKind::Dense) {
            check.positive("intermediate_size", self.intermediate_size)?
        } else {
            self.intermediate_size
        };

        Ok(DecoderConfig {
            model_type: QWEN2_MOE_MODEL_TYPE.into(),
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            hidden_act: check.hidden_act("hidden_act", &self.hidden_act)?,
            rms_norm_eps: check.positive_f64("rms_norm_eps", self.rms_norm_eps)?,
            rope,
            max_position_embeddings,
            qkv_bias: self.qkv_bias,
            o_proj_bias: false,
            mlp_bias: false,
            tie_word_embeddings: self.tie_word_embeddings,
            layer_types,
            feed_forward,
            moe,
            bos_token_id: check
                .token_ids("bos_token_id", self.bos_token_id.as_ref(), vocab_size)?
                .first()
                .copied(),
            eos_token_ids: check.token_ids(
                "eos_token_id",
                self.eos_token_id.as_ref(),
                vocab_size,
            )?,
            pad_token_id: check
                .token_ids("pad_token_id", self.pad_token_id.as_ref(), vocab_size)?
                .first()
                .copied(),
            initializer_range: check.positive_f64("initializer_range", self.initializer_range)?,
            weight_dtype: None,
            json,
        })
    }
}

/// The family's config parser: JSON as published to the common view.
pub(crate) fn parse_config(json: &Value, source_name: &str) -> Result<DecoderConfig> {
    Qwen2MoeConfig::from_json(json, source_name)?
        .decoder_config(Arc::new(json.clone()), source_name)
}
