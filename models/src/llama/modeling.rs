//! Llama's modules, in forward order, named as transformers' `modeling_llama`. Each layer type
//! is a site filling a shared decoder slot; parents build their children through the
//! [`Builder`], so any of them can be replaced by a patch.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use patch_core::{Build, Builder, Result as BuildResult, SiteInfo, patchable};

use crate::Result;
use crate::auto::{LoadOptions, create_from_config, load_pretrained};
use crate::causal_lm::CausalLM;
use crate::decoder::{
    Attention, AttentionArgs, DecoderConfig, DecoderLayer, DecoderLayerArgs, DecoderModel,
    FeedForward, GatedMlp, LayerContext, LayerOutput, Mlp, MlpArgs, Norm, NormArgs, Positions,
    PreNormLayer, RmsNorm, RopeConfig, RopeTables, RotaryArgs, RotaryEmbedding, SelfAttention,
};
use crate::family::ModelFamily;
use crate::llama::config::{LLAMA_MODEL_TYPE, LlamaConfig, parse_config};

/// transformers' `LlamaRMSNorm`: `weight * x / sqrt(mean(x^2) + eps)`.
#[patchable]
pub struct LlamaRMSNorm(pub RmsNorm);

/// A `LlamaRMSNorm` is a [`RmsNorm`]: its fields read as upstream's (`layer.self_attn`, `attn.q_proj`).
impl std::ops::Deref for LlamaRMSNorm {
    type Target = RmsNorm;
    fn deref(&self) -> &RmsNorm {
        &self.0
    }
}

impl LlamaRMSNorm {
    /// Builds it at the builder's path (what its [`Build`] impl does, returning the concrete type: a
    /// replacement can hold and extend it).
    pub fn new(b: &Builder, args: NormArgs<'_>) -> BuildResult<Self> {
        Ok(Self(RmsNorm::load(b, args)?))
    }
}

impl Build for LlamaRMSNorm {
    type Slot = dyn Norm;
    fn build(b: &Builder, args: NormArgs<'_>) -> BuildResult<Box<dyn Norm>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}

impl Norm for LlamaRMSNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward(x)
    }
}

/// transformers' `LlamaRotaryEmbedding`: cos/sin tables for a pass's positions, with the
/// config's rope scaling (default, linear, dynamic, llama3, yarn).
#[patchable]
pub struct LlamaRotaryEmbedding(pub RopeConfig);

/// A `LlamaRotaryEmbedding` is a [`RopeConfig`]: its fields read as upstream's (`layer.self_attn`, `attn.q_proj`).
impl std::ops::Deref for LlamaRotaryEmbedding {
    type Target = RopeConfig;
    fn deref(&self) -> &RopeConfig {
        &self.0
    }
}

impl LlamaRotaryEmbedding {
    /// Builds it at the builder's path (what its [`Build`] impl does, returning the concrete type: a
    /// replacement can hold and extend it).
    pub fn new(_: &Builder, args: RotaryArgs<'_>) -> BuildResult<Self> {
        Ok(Self(args.config.rope.clone()))
    }
}

impl Build for LlamaRotaryEmbedding {
    type Slot = dyn RotaryEmbedding;
    fn build(b: &Builder, args: RotaryArgs<'_>) -> BuildResult<Box<dyn RotaryEmbedding>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}

impl RotaryEmbedding for LlamaRotaryEmbedding {
    fn forward(
        &self,
        positions: &Positions,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<RopeTables> {
        self.0.tables(positions, dtype, device)
    }
}

/// transformers' `LlamaMLP`: `down_proj(silu(gate_proj(x)) * up_proj(x))`.
#[patchable]
pub struct LlamaMLP(pub GatedMlp);

/// A `LlamaMLP` is a [`GatedMlp`]: its fields read as upstream's (`layer.self_attn`, `attn.q_proj`).
impl std::ops::Deref for LlamaMLP {
    type Target = GatedMlp;
    fn deref(&self) -> &GatedMlp {
        &self.0
    }
}

impl LlamaMLP {
    /// Builds it at the builder's path (what its [`Build`] impl does, returning the concrete type: a
    /// replacement can hold and extend it).
    pub fn new(b: &Builder, args: MlpArgs<'_>) -> BuildResult<Self> {
        Ok(Self(GatedMlp::load(b, args)?))
    }
}

impl Build for LlamaMLP {
    type Slot = dyn Mlp;
    fn build(b: &Builder, args: MlpArgs<'_>) -> BuildResult<Box<dyn Mlp>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}

impl Mlp for LlamaMLP {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward(x)
    }
}

/// transformers' `LlamaAttention`: q/k/v/o projections, rotary embeddings, grouped-query
/// attention over the KV cache.
#[patchable]
pub struct LlamaAttention(pub SelfAttention);

/// A `LlamaAttention` is a [`SelfAttention`]: its fields read as upstream's (`layer.self_attn`, `attn.q_proj`).
impl std::ops::Deref for LlamaAttention {
    type Target = SelfAttention;
    fn deref(&self) -> &SelfAttention {
        &self.0
    }
}

impl LlamaAttention {
    /// Builds it at the builder's path (what its [`Build`] impl does, returning the concrete type: a
    /// replacement can hold and extend it).
    pub fn new(b: &Builder, args: AttentionArgs<'_>) -> BuildResult<Self> {
        Ok(Self(SelfAttention::load(b, args)?))
    }
}

impl Build for LlamaAttention {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: AttentionArgs<'_>) -> BuildResult<Box<dyn Attention>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}

impl Attention for LlamaAttention {
    fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<Tensor> {
        self.0.forward(hidden_states, ctx)
    }
}

/// transformers' `LlamaDecoderLayer`: pre-norm attention and MLP, each with a residual.
#[patchable]
pub struct LlamaDecoderLayer(pub PreNormLayer);

/// A `LlamaDecoderLayer` is a [`PreNormLayer`]: its fields read as upstream's (`layer.self_attn`, `attn.q_proj`).
impl std::ops::Deref for LlamaDecoderLayer {
    type Target = PreNormLayer;
    fn deref(&self) -> &PreNormLayer {
        &self.0
    }
}

impl LlamaDecoderLayer {
    /// Builds it at the builder's path (what its [`Build`] impl does, returning the concrete type: a
    /// replacement can hold and extend it).
    pub fn new(b: &Builder, args: DecoderLayerArgs<'_>) -> BuildResult<Self> {
        let config = args.config;
        let norm = NormArgs {
            config,
            dim: config.hidden_size,
        };
        Ok(Self(PreNormLayer {
            self_attn: b.pp("self_attn").build::<LlamaAttention>(AttentionArgs {
                config,
                layer_idx: args.layer_idx,
            })?,
            mlp: FeedForward::Dense(b.pp("mlp").build::<LlamaMLP>(MlpArgs {
                config,
                intermediate_size: config.intermediate_size,
            })?),
            input_layernorm: b.pp("input_layernorm").build::<LlamaRMSNorm>(norm)?,
            post_attention_layernorm: b
                .pp("post_attention_layernorm")
                .build::<LlamaRMSNorm>(norm)?,
        }))
    }
}

impl Build for LlamaDecoderLayer {
    type Slot = dyn DecoderLayer;
    fn build(b: &Builder, args: DecoderLayerArgs<'_>) -> BuildResult<Box<dyn DecoderLayer>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}

impl DecoderLayer for LlamaDecoderLayer {
    fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<LayerOutput> {
        self.0.forward(hidden_states, ctx)
    }
}

/// transformers' `LlamaModel`: the decoder body (embedding, layers, final norm, rotary
/// embedding), assembled from Llama's sites into the shared [`DecoderModel`].
#[derive(Clone, Copy, Debug)]
pub struct LlamaModel;

impl LlamaModel {
    /// Builds the body under `b` (conventionally at `model`).
    pub fn build(b: &Builder, config: &Arc<DecoderConfig>) -> BuildResult<DecoderModel> {
        let embed_tokens = DecoderModel::load_embedding(b, config)?;
        let layers = (0..config.num_hidden_layers)
            .map(|layer_idx| {
                b.pp("layers")
                    .pp(layer_idx.to_string())
                    .build::<LlamaDecoderLayer>(DecoderLayerArgs { config, layer_idx })
            })
            .collect::<BuildResult<Vec<_>>>()?;
        let norm = b.pp("norm").build::<LlamaRMSNorm>(NormArgs {
            config,
            dim: config.hidden_size,
        })?;
        let rotary_emb = b
            .pp("rotary_emb")
            .build::<LlamaRotaryEmbedding>(RotaryArgs { config })?;
        Ok(DecoderModel::new(
            config.clone(),
            embed_tokens,
            layers,
            norm,
            rotary_emb,
        ))
    }
}

/// transformers' `LlamaForCausalLM`: the entry points that build a Llama [`CausalLM`].
#[derive(Clone, Copy, Debug)]
pub struct LlamaForCausalLM;

impl LlamaForCausalLM {
    /// Loads a Llama checkpoint folder with the registered patches (an error if its
    /// `model_type` is not `llama`).
    pub fn from_pretrained(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<CausalLM> {
        load_pretrained(dir.as_ref(), Some(&LLAMA), options)
    }

    /// A seeded random Llama for `config`, with the registered patches.
    pub fn from_config(config: &LlamaConfig, options: &LoadOptions) -> Result<CausalLM> {
        create_from_config(&config.to_json(), &LLAMA, options)
    }

    /// Builds a Llama with `b` by hand: patches as `b` resolves them, so the originals unless
    /// built inside [`patch_core::apply_patches`] or with [`Builder::with_patches`]
    /// (transformers' `LlamaForCausalLM(config)`).
    pub fn build(b: &Builder, config: &LlamaConfig) -> Result<CausalLM> {
        let json = Arc::new(config.to_json());
        CausalLM::build(b, config.decoder_config(json, "config")?, &LLAMA)
    }
}

/// Llama's sites, as upstream's modeling file orders them.
static LLAMA_SITES: [SiteInfo; 5] = [
    SiteInfo::of::<LlamaRMSNorm>(module_path!()),
    SiteInfo::of::<LlamaRotaryEmbedding>(module_path!()),
    SiteInfo::of::<LlamaMLP>(module_path!()),
    SiteInfo::of::<LlamaAttention>(module_path!()),
    SiteInfo::of::<LlamaDecoderLayer>(module_path!()),
];

/// The Llama family (`model_type` `llama`), registered at link time.
pub static LLAMA: ModelFamily = ModelFamily {
    model_type: LLAMA_MODEL_TYPE,
    architecture: "LlamaForCausalLM",
    parse_config,
    build_model: LlamaModel::build,
    sites: &LLAMA_SITES,
};

crate::register_family!(LLAMA);
