//! A small model of toy sites, in plain candle, that exercises the patch registry before (and
//! independently of) the real model families.
//!
//! Layout, with the upstream-style site names patterns are tested against:
//!
//! ```text
//! ToyModel
//!   layers.N: ToyDecoderLayer            slot Block
//!     input_layernorm: ToyRMSNorm        slot Norm
//!     attention: BertAttention           slot AttentionBlock  (a container, like BERT's)
//!       self: BertSelfAttention          slot Attention       (the inner attention)
//!       output.dense (linear)
//!     post_attention_layernorm: ToyRMSNorm
//!     mlp: ToyMLP                        slot Mlp
//!   norm: ToyRMSNorm
//! ```
//!
//! `BertAttention` and `BertSelfAttention` both match `".*Attention"`: only the inner one fills
//! the `Attention` slot, which is the upstream page's warning case.

use candle_core::{D, Tensor};
use candle_nn::{Linear, Module as _};
use patch_core::{Build, Builder, Module, Result, Slot, patchable};

/// The toy model's configuration.
#[derive(Clone, Debug)]
pub struct ToyConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
}

/// What every layer-level constructor receives.
#[derive(Clone, Copy, Debug)]
pub struct LayerArgs<'a> {
    /// The model configuration.
    pub config: &'a ToyConfig,
    /// Index of the decoder layer being built.
    pub layer_idx: usize,
}

/// The inner attention slot.
pub trait Attention: Module {
    /// `x`: [T, hidden] -> [T, hidden].
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
}
impl Slot for dyn Attention {
    const NAME: &'static str = "Attention";
    type Args<'a> = LayerArgs<'a>;
}

/// The container slot: attention plus its output projection (BERT's `BertAttention`).
pub trait AttentionBlock: Module {
    /// `x`: [T, hidden] -> [T, hidden].
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
}
impl Slot for dyn AttentionBlock {
    const NAME: &'static str = "AttentionBlock";
    type Args<'a> = LayerArgs<'a>;
}

/// The feed-forward slot.
pub trait Mlp: Module {
    /// `x`: [T, hidden] -> [T, hidden].
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
}
impl Slot for dyn Mlp {
    const NAME: &'static str = "Mlp";
    type Args<'a> = LayerArgs<'a>;
}

/// The normalisation slot.
pub trait Norm: Module {
    /// Normalises the last dimension.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
}
impl Slot for dyn Norm {
    const NAME: &'static str = "Norm";
    type Args<'a> = &'a ToyConfig;
}

/// The decoder layer slot.
pub trait Block: Module {
    /// One residual block.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
}
impl Slot for dyn Block {
    const NAME: &'static str = "Block";
    type Args<'a> = LayerArgs<'a>;
}

/// RMS normalisation with a learned scale.
#[patchable]
pub struct ToyRMSNorm {
    weight: Tensor,
}
impl Build for ToyRMSNorm {
    type Slot = dyn Norm;
    fn build(b: &Builder, config: &ToyConfig) -> Result<Box<dyn Norm>> {
        let weight = b.get_with_init(config.hidden_size, "weight", candle_nn::Init::Const(1.0))?;
        Ok(Box::new(ToyRMSNorm { weight }))
    }
}
impl Norm for ToyRMSNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, 1e-6)
    }
}

/// Single-head softmax attention (causal), the inner attention.
#[patchable]
pub struct BertSelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    scale: f64,
}
impl BertSelfAttention {
    /// The original, built directly (what a replacement wrapping it calls).
    pub fn new(b: &Builder, args: LayerArgs<'_>) -> Result<Self> {
        let h = args.config.hidden_size;
        let vb = b.vb();
        Ok(Self {
            q: candle_nn::linear_no_bias(h, h, vb.pp("query"))?,
            k: candle_nn::linear_no_bias(h, h, vb.pp("key"))?,
            v: candle_nn::linear_no_bias(h, h, vb.pp("value"))?,
            scale: 1.0 / (h as f64).sqrt(),
        })
    }
}
impl Build for BertSelfAttention {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: LayerArgs<'_>) -> Result<Box<dyn Attention>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}
impl Attention for BertSelfAttention {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let t = x.dim(0)?;
        let q = self.q.forward(x)?;
        let k = self.k.forward(x)?;
        let v = self.v.forward(x)?;
        let scores = (q.matmul(&k.t()?)? * self.scale)?;
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), x.device())?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
        probs.matmul(&v)
    }
}

/// The container: inner attention plus output projection.
#[patchable]
pub struct BertAttention {
    /// The inner attention (`self` in BERT's checkpoints).
    pub inner: Box<dyn Attention>,
    output: Linear,
}
impl Build for BertAttention {
    type Slot = dyn AttentionBlock;
    fn build(b: &Builder, args: LayerArgs<'_>) -> Result<Box<dyn AttentionBlock>> {
        let h = args.config.hidden_size;
        Ok(Box::new(BertAttention {
            inner: b.pp("self").build::<BertSelfAttention>(args)?,
            output: candle_nn::linear_no_bias(h, h, b.vb().pp("output").pp("dense"))?,
        }))
    }
}
impl AttentionBlock for BertAttention {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.output.forward(&self.inner.forward(x)?)
    }
}

/// SwiGLU feed-forward.
#[patchable]
pub struct ToyMLP {
    gate: Linear,
    up: Linear,
    down: Linear,
}
impl ToyMLP {
    /// The original, built directly.
    pub fn new(b: &Builder, args: LayerArgs<'_>) -> Result<Self> {
        let (h, i) = (args.config.hidden_size, args.config.intermediate_size);
        let vb = b.vb();
        Ok(Self {
            gate: candle_nn::linear_no_bias(h, i, vb.pp("gate_proj"))?,
            up: candle_nn::linear_no_bias(h, i, vb.pp("up_proj"))?,
            down: candle_nn::linear_no_bias(i, h, vb.pp("down_proj"))?,
        })
    }
}
impl Build for ToyMLP {
    type Slot = dyn Mlp;
    fn build(b: &Builder, args: LayerArgs<'_>) -> Result<Box<dyn Mlp>> {
        Ok(Box::new(Self::new(b, args)?))
    }
}
impl Mlp for ToyMLP {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gated = (candle_nn::ops::silu(&self.gate.forward(x)?)? * self.up.forward(x)?)?;
        self.down.forward(&gated)
    }
}

/// Pre-norm residual block.
#[patchable]
pub struct ToyDecoderLayer {
    /// Norm before attention.
    pub input_layernorm: Box<dyn Norm>,
    /// The attention container.
    pub attention: Box<dyn AttentionBlock>,
    /// Norm before the MLP.
    pub post_attention_layernorm: Box<dyn Norm>,
    /// The MLP.
    pub mlp: Box<dyn Mlp>,
}
impl Build for ToyDecoderLayer {
    type Slot = dyn Block;
    fn build(b: &Builder, args: LayerArgs<'_>) -> Result<Box<dyn Block>> {
        Ok(Box::new(ToyDecoderLayer {
            input_layernorm: b.pp("input_layernorm").build::<ToyRMSNorm>(args.config)?,
            attention: b.pp("attention").build::<BertAttention>(args)?,
            post_attention_layernorm: b
                .pp("post_attention_layernorm")
                .build::<ToyRMSNorm>(args.config)?,
            mlp: b.pp("mlp").build::<ToyMLP>(args)?,
        }))
    }
}
impl Block for ToyDecoderLayer {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = (x + self.attention.forward(&self.input_layernorm.forward(x)?)?)?;
        &x + self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?)?
    }
}

/// The toy model: decoder layers and a final norm.
pub struct ToyModel {
    /// The decoder layers.
    pub layers: Vec<Box<dyn Block>>,
    /// The final norm.
    pub norm: Box<dyn Norm>,
}

impl ToyModel {
    /// Builds the model at `b` (weights under `layers.N.*` and `norm.*`).
    pub fn build(b: &Builder, config: &ToyConfig) -> Result<Self> {
        let layers = (0..config.num_layers)
            .map(|layer_idx| {
                b.pp("layers")
                    .pp(layer_idx.to_string())
                    .build::<ToyDecoderLayer>(LayerArgs { config, layer_idx })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ToyModel {
            layers,
            norm: b.pp("norm").build::<ToyRMSNorm>(config)?,
        })
    }

    /// `x`: [T, hidden] -> [T, hidden].
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        self.norm.forward(&x)
    }
}

/// The sum of squares of `x`'s last dimension, handy for comparing outputs in tests.
pub fn energy(x: &Tensor) -> candle_core::Result<f32> {
    x.sqr()?.sum(D::Minus1)?.sum_all()?.to_scalar::<f32>()
}
