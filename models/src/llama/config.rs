//! `LlamaConfig`: Llama's `config.json`, as published.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decoder::{AttentionKind, ConfigCheck, DecoderConfig, FeedForwardKind, RopeConfig};
use crate::{Error, Result};

/// Llama's `config.json`, with transformers' defaults for absent keys. Unknown keys are
/// ignored (published configs carry many). Both rope key styles are read: `rope_theta` plus
/// `rope_scaling`, or `rope_parameters`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Intermediate size of the MLPs.
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
    /// Rotary scaling (older key style): `rope_type` (or `type`) and its parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// Rotary parameters (newer key style): `rope_type`, `rope_theta` and the rest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    /// Whether the attention projections have biases.
    pub attention_bias: bool,
    /// Whether the MLP projections have biases.
    pub mlp_bias: bool,
    /// Beginning-of-sequence token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<Value>,
    /// End-of-sequence token(s): an id or a list of ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<Value>,
    /// Padding token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<Value>,
}

impl Default for LlamaConfig {
    /// transformers' `LlamaConfig()` defaults (Llama-2-7B's shape).
    fn default() -> Self {
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
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: Some(1.into()),
            eos_token_id: Some(2.into()),
            pad_token_id: None,
        }
    }
}

/// The `model_type` of Llama configs.
pub const LLAMA_MODEL_TYPE: &str = "llama";

impl LlamaConfig {
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
            obj.insert("model_type".into(), LLAMA_MODEL_TYPE.into());
            obj.insert(
                "architectures".into(),
                serde_json::json!(["LlamaForCausalLM"]),
            );
        }
        v
    }

    /// Validates this config and lowers it to the common view; `json` is the config as
    /// published (kept for saving and read for the rope keys).
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
        Ok(DecoderConfig {
            model_type: LLAMA_MODEL_TYPE.into(),
            vocab_size,
            hidden_size,
            intermediate_size: check.positive("intermediate_size", self.intermediate_size)?,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            hidden_act: check.hidden_act("hidden_act", &self.hidden_act)?,
            rms_norm_eps: check.positive_f64("rms_norm_eps", self.rms_norm_eps)?,
            rope,
            max_position_embeddings,
            qkv_bias: self.attention_bias,
            o_proj_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            tie_word_embeddings: self.tie_word_embeddings,
            layer_types: vec![AttentionKind::Full; layers],
            feed_forward: vec![FeedForwardKind::Dense; layers],
            moe: None,
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
    LlamaConfig::from_json(json, source_name)?.decoder_config(Arc::new(json.clone()), source_name)
}
