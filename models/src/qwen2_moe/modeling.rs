//! Qwen2-MoE's modules, in forward order, named as transformers' `modeling_qwen2_moe`. Each
//! layer type is a site filling a shared decoder slot, so a replacement written for Llama's
//! attention (say) serves these too.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use patch_core::{Build, Builder, Result as BuildResult, SiteInfo, patchable};

use crate::Result;
use crate::auto::{LoadOptions, create_from_config, load_pretrained};
use crate::causal_lm::CausalLM;
use crate::decoder::linear::{Linear, projection};
use crate::decoder::{
    Attention, AttentionArgs, DecoderConfig, DecoderLayer, DecoderLayerArgs, DecoderModel, Experts,
    FeedForward, FeedForwardKind, GatedMlp, LayerContext, LayerOutput, Mlp, MlpArgs, MoeArgs,
    MoeOutput, Norm, NormArgs, Positions, PreNormLayer, RmsNorm, RopeConfig, RopeTables,
    RotaryArgs, RotaryEmbedding, Router, RouterOutput, SelfAttention, SparseMoe, StackedExperts,
    TopKRouter,
};
use crate::family::ModelFamily;
use crate::qwen2_moe::config::{QWEN2_MOE_MODEL_TYPE, Qwen2MoeConfig, parse_config};

/// Implements `Deref` to the shared building block a site wraps, so its fields read as
/// upstream's (`layer.self_attn`, `experts.gate_up_proj`).
macro_rules! deref_to {
    ($site:ty => $inner:ty) => {
        impl std::ops::Deref for $site {
            type Target = $inner;
            fn deref(&self) -> &$inner {
                &self.0
            }
        }
    };
}

/// transformers' `Qwen2MoeRMSNorm`.
#[patchable]
pub struct Qwen2MoeRMSNorm(pub RmsNorm);
deref_to!(Qwen2MoeRMSNorm => RmsNorm);

impl Qwen2MoeRMSNorm {
    /// Builds it at the builder's path (what its [`Build`] impl does, returning the concrete type: a
    /// replacement can hold and extend it).
    pub fn new(b: &Builder, args: NormArgs<'_>) -> BuildResult<Self> {
        Ok(Self(RmsNorm::load(b, args)?))
    }
}

impl Build for Qwen2MoeRMSNorm {
    type Slot = dyn Norm;
    fn build(b: &Builder, args: NormArgs<'_>) -> BuildResult<Box<dyn Norm>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}

impl Norm for Qwen2MoeRMSNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward(x)
    }
}

/// transformers' `Qwen2MoeRotaryEmbedding`.
#[patchable]
pub struct Qwen2MoeRotaryEmbedding(pub RopeConfig);
deref_to!(Qwen2MoeRotaryEmbedding => RopeConfig);

impl Qwen2MoeRotaryEmbedding {
    /// Builds it at the builder's path (what its [`Build`] impl does, returning the concrete type: a
    /// replacement can hold and extend it).
    pub fn new(_: &Builder, args: RotaryArgs<'_>) -> BuildResult<Self> {
        Ok(Self(args.config.rope.clone()))
    }
}

impl Build for Qwen2MoeRotaryEmbedding {
    type Slot = dyn RotaryEmbedding;
    fn build(b: &Builder, args: RotaryArgs<'_>) -> BuildResult<Box<dyn RotaryEmbedding>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}

impl RotaryEmbedding for Qwen2MoeRotaryEmbedding {
    fn forward(
        &self,
        positions: &Positions,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<RopeTables> {
        self.0.tables(positions, dtype, device)
    }
}

/// transformers' `Qwen2MoeMLP`: the dense layers' MLP and the shared expert.
#[patchable]
pub struct Qwen2MoeMLP(pub GatedMlp);
deref_to!(Qwen2MoeMLP => GatedMlp);

impl Qwen2MoeMLP {
    /// Builds it at the builder's path (what its [`Build`] impl does, returning the concrete type: a
    /// replacement can hold and extend it).
    pub fn new(b: &Builder, args: MlpArgs<'_>) -> BuildResult<Self> {
        Ok(Self(GatedMlp::load(b, args)?))
    }
}

impl Build for Qwen2MoeMLP {
    type Slot = dyn Mlp;
    fn build(b: &Builder, args: MlpArgs<'_>) -> BuildResult<Box<dyn Mlp>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}

impl Mlp for Qwen2MoeMLP {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward(x)
    }
}

/// transformers' `Qwen2MoeAttention`: q/k/v projections with biases (`qkv_bias`), rotary
/// embeddings, a sliding window on the layers configured for one.
#[patchable]
pub struct Qwen2MoeAttention(pub SelfAttention);
deref_to!(Qwen2MoeAttention => SelfAttention);

impl Qwen2MoeAttention {
    /// Builds it at the builder's path (what its [`Build`] impl does, returning the concrete type: a
    /// replacement can hold and extend it).
    pub fn new(b: &Builder, args: AttentionArgs<'_>) -> BuildResult<Self> {
        Ok(Self(SelfAttention::load(b, args)?))
    }
}

impl Build for Qwen2MoeAttention {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: AttentionArgs<'_>) -> BuildResult<Box<dyn Attention>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}

impl Attention for Qwen2MoeAttention {
    fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<Tensor> {
        self.0.forward(hidden_states, ctx)
    }
}

/// transformers' `Qwen2MoeExperts`: stacked expert weights (`gate_up_proj` `[E, 2I, H]`,
/// `down_proj` `[E, H, I]`, filled from the per-expert checkpoint tensors by the qwen2_moe
/// conversion mapping), grouped dispatch.
#[patchable]
pub struct Qwen2MoeExperts(pub StackedExperts);
deref_to!(Qwen2MoeExperts => StackedExperts);

impl Qwen2MoeExperts {
    /// Builds it at the builder's path (what its [`Build`] impl does, returning the concrete type: a
    /// replacement can hold and extend it).
    pub fn new(b: &Builder, args: MoeArgs<'_>) -> BuildResult<Self> {
        Ok(Self(StackedExperts::load(b, args)?))
    }
}

impl Build for Qwen2MoeExperts {
    type Slot = dyn Experts;
    fn build(b: &Builder, args: MoeArgs<'_>) -> BuildResult<Box<dyn Experts>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}

impl Experts for Qwen2MoeExperts {
    fn forward(
        &self,
        x: &Tensor,
        indices: &Tensor,
        weights: &Tensor,
    ) -> candle_core::Result<Tensor> {
        self.0.forward(x, indices, weights)
    }
}

/// transformers' `Qwen2MoeTopKRouter`: returns the router logits, the top-k weights and the
/// top-k expert ids.
#[patchable]
pub struct Qwen2MoeTopKRouter(pub TopKRouter);
deref_to!(Qwen2MoeTopKRouter => TopKRouter);

impl Qwen2MoeTopKRouter {
    /// Builds it at the builder's path (what its [`Build`] impl does, returning the concrete type: a
    /// replacement can hold and extend it).
    pub fn new(b: &Builder, args: MoeArgs<'_>) -> BuildResult<Self> {
        Ok(Self(TopKRouter::load(b, args)?))
    }
}

impl Build for Qwen2MoeTopKRouter {
    type Slot = dyn Router;
    fn build(b: &Builder, args: MoeArgs<'_>) -> BuildResult<Box<dyn Router>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}

impl Router for Qwen2MoeTopKRouter {
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<RouterOutput> {
        self.0.forward(x, ctx)
    }
}

/// transformers' `Qwen2MoeSparseMoeBlock`: routed experts plus a shared expert scaled by a
/// sigmoid gate.
#[patchable]
pub struct Qwen2MoeSparseMoeBlock {
    /// The router (`mlp.gate.weight`).
    pub gate: Box<dyn Router>,
    /// The routed experts.
    pub experts: Box<dyn Experts>,
    /// The shared expert, when `shared_expert_intermediate_size > 0`.
    pub shared_expert: Option<Box<dyn Mlp>>,
    /// Its gate `[1, hidden]`, present with it.
    pub shared_expert_gate: Option<Linear>,
}

impl Qwen2MoeSparseMoeBlock {
    /// Builds it at the builder's path (what its [`Build`] impl does, returning the concrete type: a
    /// replacement can hold and extend it).
    pub fn new(b: &Builder, args: MoeArgs<'_>) -> BuildResult<Self> {
        let c = args.config;
        let shared = c
            .moe()
            .map_err(patch_core::Error::other)?
            .shared_expert_intermediate_size;
        let (shared_expert, shared_expert_gate) = if shared > 0 {
            let mlp = b.pp("shared_expert").build::<Qwen2MoeMLP>(MlpArgs {
                config: c,
                intermediate_size: shared,
            })?;
            let gate = projection(b, c, "shared_expert_gate", c.hidden_size, 1, false)?;
            (Some(mlp), Some(gate))
        } else {
            (None, None)
        };
        Ok(Self {
            gate: b.pp("gate").build::<Qwen2MoeTopKRouter>(args)?,
            experts: b.pp("experts").build::<Qwen2MoeExperts>(args)?,
            shared_expert,
            shared_expert_gate,
        })
    }
}

impl Build for Qwen2MoeSparseMoeBlock {
    type Slot = dyn SparseMoe;
    fn build(b: &Builder, args: MoeArgs<'_>) -> BuildResult<Box<dyn SparseMoe>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}

impl SparseMoe for Qwen2MoeSparseMoeBlock {
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<MoeOutput> {
        let (b, t, h) = x.dims3()?;
        let flat = x.reshape((b * t, h))?;
        let router = self.gate.forward(&flat, ctx)?;
        let mut out = self
            .experts
            .forward(&flat, &router.indices, &router.weights)?;
        if let (Some(shared), Some(gate)) = (&self.shared_expert, &self.shared_expert_gate) {
            let scale = candle_nn::ops::sigmoid(&gate.forward(&flat)?)?;
            out = crate::ops::add_scaled(&out, &shared.forward(&flat)?, Some(&scale))?;
        }
        Ok(MoeOutput {
            hidden_states: out.reshape((b, t, h))?,
            router,
        })
    }
}

/// transformers' `Qwen2MoeDecoderLayer`: pre-norm attention, then a sparse MoE block or (for
/// `mlp_only_layers` and off-step layers) a dense MLP.
#[patchable]
pub struct Qwen2MoeDecoderLayer(pub PreNormLayer);
deref_to!(Qwen2MoeDecoderLayer => PreNormLayer);

impl Qwen2MoeDecoderLayer {
    /// Builds it at the builder's path (what its [`Build`] impl does, returning the concrete type: a
    /// replacement can hold and extend it).
    pub fn new(b: &Builder, args: DecoderLayerArgs<'_>) -> BuildResult<Self> {
        let config = args.config;
        let layer_idx = args.layer_idx;
        let norm = NormArgs {
            config,
            dim: config.hidden_size,
        };
        let self_attn = b
            .pp("self_attn")
            .build::<Qwen2MoeAttention>(AttentionArgs { config, layer_idx })?;
        let mlp = match config.feed_forward_kind(layer_idx) {
            FeedForwardKind::Sparse => FeedForward::Sparse(
                b.pp("mlp")
                    .build::<Qwen2MoeSparseMoeBlock>(MoeArgs { config, layer_idx })?,
            ),
            FeedForwardKind::Dense => {
                FeedForward::Dense(b.pp("mlp").build::<Qwen2MoeMLP>(MlpArgs {
                    config,
                    intermediate_size: config.intermediate_size,
                })?)
            }
        };
        Ok(Self(PreNormLayer {
            self_attn,
            mlp,
            input_layernorm: b.pp("input_layernorm").build::<Qwen2MoeRMSNorm>(norm)?,
            post_attention_layernorm: b
                .pp("post_attention_layernorm")
                .build::<Qwen2MoeRMSNorm>(norm)?,
        }))
    }
}

impl Build for Qwen2MoeDecoderLayer {
    type Slot = dyn DecoderLayer;
    fn build(b: &Builder, args: DecoderLayerArgs<'_>) -> BuildResult<Box<dyn DecoderLayer>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}

impl DecoderLayer for Qwen2MoeDecoderLayer {
    fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<LayerOutput> {
        self.0.forward(hidden_states, ctx)
    }
}

/// transformers' `Qwen2MoeModel`: the decoder body assembled from Qwen2-MoE's sites.
#[derive(Clone, Copy, Debug)]
pub struct Qwen2MoeModel;

impl Qwen2MoeModel {
    /// Builds the body under `b` (conventionally at `model`).
    pub fn build(b: &Builder, config: &Arc<DecoderConfig>) -> BuildResult<DecoderModel> {
        let embed_tokens = DecoderModel::load_embedding(b, config)?;
        let layers = (0..config.num_hidden_layers)
            .map(|layer_idx| {
                b.pp("layers")
                    .pp(layer_idx.to_string())
                    .build::<Qwen2MoeDecoderLayer>(DecoderLayerArgs { config, layer_idx })
            })
            .collect::<BuildResult<Vec<_>>>()?;
        let norm = b.pp("norm").build::<Qwen2MoeRMSNorm>(NormArgs {
            config,
            dim: config.hidden_size,
        })?;
        let rotary_emb = b
            .pp("rotary_emb")
            .build::<Qwen2MoeRotaryEmbedding>(RotaryArgs { config })?;
        Ok(DecoderModel::new(
            config.clone(),
            embed_tokens,
            layers,
            norm,
            rotary_emb,
        ))
    }
}

/// transformers' `Qwen2MoeForCausalLM`: the entry points that build a Qwen2-MoE [`CausalLM`].
#[derive(Clone, Copy, Debug)]
pub struct Qwen2MoeForCausalLM;

impl Qwen2MoeForCausalLM {
    /// Loads a Qwen2-MoE checkpoint folder with the registered patches.
    pub fn from_pretrained(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<CausalLM> {
        load_pretrained(dir.as_ref(), Some(&QWEN2_MOE), options)
    }

    /// A seeded random Qwen2-MoE for `config`, with the registered patches.
    pub fn from_config(config: &Qwen2MoeConfig, options: &LoadOptions) -> Result<CausalLM> {
        create_from_config(&config.to_json(), &QWEN2_MOE, options)
    }

    /// Builds a Qwen2-MoE with `b` by hand (patches as `b` resolves them).
    pub fn build(b: &Builder, config: &Qwen2MoeConfig) -> Result<CausalLM> {
        let json = Arc::new(config.to_json());
        CausalLM::build(b, config.decoder_config(json, "config")?, &QWEN2_MOE)
    }
}

/// Qwen2-MoE's sites, as upstream's modeling file orders them.
static QWEN2_MOE_SITES: [SiteInfo; 8] = [
    SiteInfo::of::<Qwen2MoeRMSNorm>(module_path!()),
    SiteInfo::of::<Qwen2MoeRotaryEmbedding>(module_path!()),
    SiteInfo::of::<Qwen2MoeMLP>(module_path!()),
    SiteInfo::of::<Qwen2MoeAttention>(module_path!()),
    SiteInfo::of::<Qwen2MoeExperts>(module_path!()),
    SiteInfo::of::<Qwen2MoeTopKRouter>(module_path!()),
    SiteInfo::of::<Qwen2MoeSparseMoeBlock>(module_path!()),
    SiteInfo::of::<Qwen2MoeDecoderLayer>(module_path!()),
];

/// The Qwen2-MoE family (`model_type` `qwen2_moe`), registered at link time.
pub static QWEN2_MOE: ModelFamily = ModelFamily {
    model_type: QWEN2_MOE_MODEL_TYPE,
    architecture: "Qwen2MoeForCausalLM",
    parse_config,
    build_model: Qwen2MoeModel::build,
    sites: &QWEN2_MOE_SITES,
};

crate::register_family!(QWEN2_MOE);

// The checkpoint layout: transformers' qwen2_moe conversion mapping stacks the per-expert
// tensors into `mlp.experts.gate_up_proj` `[E, 2I, H]` (gate rows first) and
// `mlp.experts.down_proj` `[E, H, I]`, and splits them back on save. A link-time default,
// overridable with `register_checkpoint_conversion_mapping("qwen2_moe", .., true)`.
patch_checkpoint::submit_conversion_mapping!(
    QWEN2_MOE_MODEL_TYPE,
    patch_checkpoint::mappings::qwen2_moe
);
