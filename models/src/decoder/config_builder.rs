//! [`ConfigBuilder`]: a family config built by hand in one expression, as upstream writes
//! `LlamaConfig(hidden_size=64, num_hidden_layers=2)`: the family's defaults for every key, a
//! typed setter per key (the shared keys' setters written once, here, for every family; a
//! family's own keys next to its config), and one validation, the one a `config.json` gets.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::Result;
use crate::decoder::config_keys::{DecoderKeys, MoeKeys, SlidingWindowKeys};
use crate::decoder::family_config::FamilyConfig;

/// Marks a family config that has the key group `G` (written by
/// [`family_config!`](crate::family_config) for each group it lists): the builder's setters of
/// that group exist for it, and for no other family.
pub trait HasKeys<G> {}

/// A family config being built by hand: `LlamaConfig::builder()`, then one setter per key to
/// change (named as the `config.json` key), then [`build`](ConfigBuilder::build).
///
/// Every key not set keeps the family's default (transformers' `LlamaConfig()` defaults for
/// Llama), and `build` checks the result exactly as a parsed `config.json` is checked, with the
/// same errors (naming the key and value; the source reads `LlamaConfig::builder()`).
///
/// ```
/// use patchwork_models::llama::{LlamaConfig, LlamaForCausalLM};
/// use patchwork_models::LoadOptions;
///
/// // Upstream: LlamaModel(LlamaConfig(hidden_size=64, num_hidden_layers=2, ...))
/// let config = LlamaConfig::builder()
///     .hidden_size(64)
///     .intermediate_size(128)
///     .num_hidden_layers(2)
///     .num_attention_heads(4)
///     .num_key_value_heads(2)
///     .vocab_size(256)
///     .build()?;
/// assert_eq!(config.common.bos_token_id, Some(1.into())); // Llama's defaults are kept
/// let model = LlamaForCausalLM::from_config(&config, &LoadOptions::default())?;
/// assert_eq!(model.model.layers.len(), 2);
///
/// // The same checks as a config.json: the key and the value are named.
/// let err = LlamaConfig::builder().hidden_size(64).num_attention_heads(5).build().unwrap_err();
/// assert!(err.to_string().contains("num_attention_heads"), "{err}");
/// # Ok::<(), patchwork_models::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ConfigBuilder<C> {
    keys: Map<String, Value>,
    family: PhantomData<fn() -> C>,
}

impl<C: FamilyConfig> ConfigBuilder<C> {
    /// What `C::builder()` returns.
    #[doc(hidden)]
    pub fn new() -> Self {
        Self {
            keys: Map::new(),
            family: PhantomData,
        }
    }

    /// Sets `key` as a `config.json` would.
    pub(crate) fn set(mut self, key: &str, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        self.keys.insert(key.to_string(), value);
        self
    }

    /// The config: the keys set over the family's defaults, checked as `C::parse` checks a
    /// `config.json` (sizes within bounds, heads dividing the width, rope parameters, token
    /// ids within the vocabulary, ...): an error names the key and its value.
    pub fn build(self) -> Result<C> {
        let name = std::any::type_name::<C>();
        let source = format!("{}::builder()", name.rsplit("::").next().unwrap_or(name));
        let json = Value::Object(self.keys);
        let config = C::from_json(&json, &source)?;
        config.decoder_config(Arc::new(json), &source)?;
        Ok(config)
    }
}

impl<C: FamilyConfig> Default for ConfigBuilder<C> {
    fn default() -> Self {
        Self::new()
    }
}

/// Setters that write one `config.json` key each, named as the key.
macro_rules! setters {
    ($( $(#[$doc:meta])* $key:ident: $ty:ty; )+) => {
        $(
            $(#[$doc])*
            pub fn $key(self, value: $ty) -> Self {
                self.set(stringify!($key), value)
            }
        )+
    };
}

/// The keys every family reads ([`DecoderKeys`]).
impl<C: FamilyConfig + HasKeys<DecoderKeys>> ConfigBuilder<C> {
    setters! {
        /// Vocabulary size.
        vocab_size: usize;
        /// Width of the residual stream.
        hidden_size: usize;
        /// Intermediate size of the dense MLPs.
        intermediate_size: usize;
        /// Number of decoder layers.
        num_hidden_layers: usize;
        /// Query heads.
        num_attention_heads: usize;
        /// Key/value heads (grouped-query attention).
        num_key_value_heads: usize;
        /// Width of a head (default: `hidden_size / num_attention_heads`, Qwen3's 128).
        head_dim: usize;
        /// MLP activation (`silu`, `gelu`, `gelu_pytorch_tanh`, `relu`).
        hidden_act: &str;
        /// Context length the model was built for.
        max_position_embeddings: usize;
        /// Standard deviation of random initialisation.
        initializer_range: f64;
        /// Epsilon of the RMS norms.
        rms_norm_eps: f64;
        /// Whether the output head reuses the token embedding.
        tie_word_embeddings: bool;
        /// Rotary base.
        rope_theta: f64;
        /// Rotary scaling, as the JSON object upstream takes (`{"rope_type": "linear",
        /// "factor": 2.0}`).
        rope_scaling: Value;
        /// Rotary parameters in the newer key style (`rope_type`, `rope_theta`, ...).
        rope_parameters: Value;
    }

    /// Beginning-of-sequence token (`None`: none).
    pub fn bos_token_id(self, id: Option<u32>) -> Self {
        self.set("bos_token_id", id)
    }

    /// End-of-sequence token(s): one id or several (empty: none).
    pub fn eos_token_id(self, ids: &[u32]) -> Self {
        match ids {
            [] => self.set("eos_token_id", Value::Null),
            [id] => self.set("eos_token_id", id),
            ids => self.set("eos_token_id", ids),
        }
    }

    /// Padding token (`None`: none).
    pub fn pad_token_id(self, id: Option<u32>) -> Self {
        self.set("pad_token_id", id)
    }
}

/// The mixture-of-experts keys ([`MoeKeys`]), for the families that have them.
impl<C: FamilyConfig + HasKeys<MoeKeys>> ConfigBuilder<C> {
    setters! {
        /// Every `decoder_sparse_step`-th layer (1-based) is sparse.
        decoder_sparse_step: usize;
        /// Layers that stay dense.
        mlp_only_layers: &[usize];
        /// Intermediate size of each routed expert.
        moe_intermediate_size: usize;
        /// Experts each token is routed to.
        num_experts_per_tok: usize;
        /// Number of routed experts.
        num_experts: usize;
        /// Whether the top-k routing weights are renormalised.
        norm_topk_prob: bool;
        /// Weight of the load-balancing loss.
        router_aux_loss_coef: f64;
        /// Whether forward passes return router outputs by default.
        output_router_logits: bool;
    }
}

/// The sliding-window keys ([`SlidingWindowKeys`]), for the families that have them.
impl<C: FamilyConfig + HasKeys<SlidingWindowKeys>> ConfigBuilder<C> {
    setters! {
        /// Whether sliding-window attention is used at all.
        use_sliding_window: bool;
        /// Window size of sliding layers.
        sliding_window: usize;
        /// Layers below this index use full attention (when no `layer_types` is given).
        max_window_layers: usize;
        /// Per-layer attention kinds (`full_attention` / `sliding_attention`).
        layer_types: &[&str];
    }
}

/// A family's own keys: `family_setters!(LlamaConfig { attention_bias: bool, .. })` next to
/// its config.
macro_rules! family_setters {
    ($config:ty { $( $(#[$doc:meta])* $key:ident: $ty:ty; )+ }) => {
        /// This family's own keys.
        impl $crate::decoder::ConfigBuilder<$config> {
            $(
                $(#[$doc])*
                pub fn $key(self, value: $ty) -> Self {
                    self.set(stringify!($key), value)
                }
            )+
        }
    };
}
pub(crate) use family_setters;
