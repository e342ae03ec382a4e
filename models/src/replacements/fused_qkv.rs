//! Attention with one fused `qkv_proj`, loaded from the checkpoint's separate q/k/v tensors
//! through the transform it carries.

use candle_core::Tensor;
use patch_checkpoint::{Op, Transform, WeightConverter};
use patch_core::{Build, Builder, Result};

use crate::decoder::linear::linear;
use crate::decoder::{
    Attention, AttentionArgs, LayerContext, Norm, NormArgs, PassContext, RmsNorm, SelfAttention,
};

/// Self-attention whose q, k and v projections are one tensor `qkv_proj`
/// `[(heads + 2 * kv_heads) * head_dim, hidden]` (with one bias when the config has q/k/v
/// biases), for every family (grouped-query attention, per-head q/k norms where the config has
/// them). It carries the transform that concatenates the checkpoint's `q_proj`, `k_proj` and
/// `v_proj` into `qkv_proj` (and splits them back on save), so registering it is all it takes:
/// `PatchSet::from_mapping([(".*Attention", Replacement::of::<FusedQkvAttention>())])`.
pub struct FusedQkvAttention(pub SelfAttention);

impl std::ops::Deref for FusedQkvAttention {
    type Target = SelfAttention;
    fn deref(&self) -> &SelfAttention {
        &self.0
    }
}

impl FusedQkvAttention {
    /// Loads `qkv_proj` and `o_proj` (and the head norms) under `b`: the checkpoint's q/k/v
    /// must already be fused into `qkv_proj` there, through [`Build::transforms`] when the
    /// registry builds it, or a registered conversion mapping.
    pub fn new(b: &Builder, args: AttentionArgs<'_>) -> Result<Self> {
        let c = args.config;
        let (h, d, std) = (c.hidden_size, c.head_dim, c.initializer_range);
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        let qkv_proj = linear(b, "qkv_proj", h, (nh + 2 * nkv) * d, c.qkv_bias, std)?;
        let o_proj = Box::new(linear(b, "o_proj", nh * d, h, c.o_proj_bias, std)?);
        let head_norm = |name: &str| -> Result<Box<dyn Norm>> {
            let norm = RmsNorm::load(&b.pp(name), NormArgs { config: c, dim: d })?;
            Ok(Box::new(HeadNorm(norm)))
        };
        let (q_norm, k_norm) = if c.qk_norm {
            (Some(head_norm("q_norm")?), Some(head_norm("k_norm")?))
        } else {
            (None, None)
        };
        let attention = SelfAttention::from_fused(c, qkv_proj, o_proj, q_norm, k_norm)?;
        Ok(Self(attention))
    }
}

impl Build for FusedQkvAttention {
    type Slot = dyn Attention;

    fn build(b: &Builder, args: AttentionArgs<'_>) -> Result<Box<dyn Attention>> {
        Ok(Box::new(Self::new(b, args)?))
    }

    /// `q_proj`, `k_proj`, `v_proj` (weights and biases) concatenated along the output rows
    /// into `qkv_proj`; split back into the three on save.
    fn transforms() -> Vec<Transform> {
        vec![
            WeightConverter::new(
                ["q_proj", "k_proj", "v_proj"],
                ["qkv_proj"],
                [Op::Concatenate { dim: 0 }],
            )
            .into(),
        ]
    }
}

impl Attention for FusedQkvAttention {
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext<'_>) -> candle_core::Result<Tensor> {
        self.0.forward(x, ctx)
    }
}

/// The per-head q/k norm of a fused attention (a module of the norm slot, not a site: the
/// family's own norm site is not known to a replacement serving every family).
struct HeadNorm(RmsNorm);

impl Build for HeadNorm {
    type Slot = dyn Norm;
    fn build(b: &Builder, args: NormArgs<'_>) -> Result<Box<dyn Norm>> {
        Ok(Box::new(Self(RmsNorm::load(b, args)?)))
    }
}

impl Norm for HeadNorm {
    fn forward(&self, x: &Tensor, _: &PassContext) -> candle_core::Result<Tensor> {
        self.0.forward(x)
    }
}
