//! The attention slot, the shared attention kernel (grouped-query attention without copies of
//! keys/values, KV-cache writes, masking), and the q/k/v/o self-attention of the Llama-style
//! families.

use candle_core::{D, Tensor};
use candle_nn::{Linear, Module as _};
use patch_core::{Builder, Module, Result, Slot};

use crate::decoder::config::DecoderConfig;
use crate::decoder::layer::LayerContext;
use crate::decoder::linear::linear;

/// The attention slot: causal self-attention over `hidden_states` (`[batch, seq, hidden]`),
/// with the pass's positions, mask and this layer's KV cache in `ctx`.
pub trait Attention: Module {
    /// Returns the attention block's output, `[batch, seq, hidden]`.
    fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<Tensor>;
}

/// What every attention constructor receives.
#[derive(Clone, Copy, Debug)]
pub struct AttentionArgs<'a> {
    /// The model's config view.
    pub config: &'a DecoderConfig,
    /// Index of the layer it belongs to.
    pub layer_idx: usize,
}

impl Slot for dyn Attention {
    const NAME: &'static str = "Attention";
    type Args<'a> = AttentionArgs<'a>;
}

/// `softmax(q k^T * scale + bias) v` for `q` `[batch, heads, seq, head_dim]` and `k`, `v`
/// `[batch, kv_heads, kv_len, head_dim]`, with `bias` `[batch, 1, seq, kv_len]`; returns
/// `[batch, heads, seq, head_dim]`.
///
/// Grouped-query attention without repeating keys/values: consecutive query heads share a
/// key/value head, so the `heads / kv_heads` query heads of a group are folded into the row
/// dimension of one matmul per key/value head (a free reshape of contiguous `q`). `k` and `v`
/// may be strided views (a KV cache narrowed to its filled length): nothing is copied.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, heads, t, d) = q.dims4()?;
    let (_, kv_heads, s, _) = k.dims4()?;
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        candle_core::bail!(
            "attention: {heads} query heads cannot share {kv_heads} key/value heads"
        );
    }
    let groups = heads / kv_heads;
    let q = (q.contiguous()? * scale)?.reshape((b, kv_heads, groups * t, d))?;
    let scores = q.matmul(&k.t()?)?;
    let scores = match bias {
        Some(bias) => scores
            .reshape((b, kv_heads, groups, t, s))?
            .broadcast_add(&bias.unsqueeze(1)?)?
            .reshape((b, kv_heads, groups * t, s))?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs.matmul(v)?.reshape((b, heads, t, v.dim(D::Minus1)?))
}

/// The attention step shared by every attention here and by replacements: takes rotated `q`
/// `[batch, seq, heads, head_dim]` and `k`, `v` `[batch, seq, kv_heads, head_dim]` (the
/// projections' natural layout), appends `k`/`v` to this layer's cache when there is one,
/// attends with the pass's mask, and returns `[batch, seq, heads * head_dim]`, ready for the
/// output projection (transformers' `past_key_values.update` + `sdpa_attention_forward`).
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    ctx: &mut LayerContext<'_>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, t, heads, d) = q.dims4()?;
    let q = q.transpose(1, 2)?.contiguous()?;
    let k = k.transpose(1, 2)?.contiguous()?;
    let v = v.transpose(1, 2)?.contiguous()?;
    let (k, v) = match ctx.cache.as_deref_mut() {
        Some(cache) => cache.append(&k, &v)?,
        None => (k, v),
    };
    let y = scaled_dot_product_attention(&q, &k, &v, ctx.mask, scale)?;
    y.transpose(1, 2)?.reshape((b, t, heads * d))
}

/// Multi-head self-attention with separate q/k/v/o projections and rotary embeddings (the
/// attention of Llama and Qwen2-MoE; q/k/v biases when `qkv_bias`, an output bias when
/// `o_proj_bias`).
#[derive(Clone, Debug)]
pub struct SelfAttention {
    /// `[heads * head_dim, hidden]`.
    pub q_proj: Linear,
    /// `[kv_heads * head_dim, hidden]`.
    pub k_proj: Linear,
    /// `[kv_heads * head_dim, hidden]`.
    pub v_proj: Linear,
    /// `[hidden, heads * head_dim]`.
    pub o_proj: Linear,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
    /// `head_dim^-0.5`.
    pub scaling: f64,
}

impl SelfAttention {
    /// Loads `q_proj`, `k_proj`, `v_proj`, `o_proj` under `b`.
    pub fn load(b: &Builder, args: AttentionArgs<'_>) -> Result<Self> {
        let c = args.config;
        let (h, d, std) = (c.hidden_size, c.head_dim, c.initializer_range);
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        Ok(Self {
            q_proj: linear(b, "q_proj", h, nh * d, c.qkv_bias, std)?,
            k_proj: linear(b, "k_proj", h, nkv * d, c.qkv_bias, std)?,
            v_proj: linear(b, "v_proj", h, nkv * d, c.qkv_bias, std)?,
            o_proj: linear(b, "o_proj", nh * d, h, c.o_proj_bias, std)?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
            scaling: (d as f64).powf(-0.5),
        })
    }

    /// Attends over `hidden_states` (`[batch, seq, hidden]`).
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = hidden_states.dims3()?;
        let q =
            self.q_proj
                .forward(hidden_states)?
                .reshape((b, t, self.num_heads, self.head_dim))?;
        let k = self.k_proj.forward(hidden_states)?.reshape((
            b,
            t,
            self.num_kv_heads,
            self.head_dim,
        ))?;
        let v = self.v_proj.forward(hidden_states)?.reshape((
            b,
            t,
            self.num_kv_heads,
            self.head_dim,
        ))?;
        let q = ctx.rope.apply(&q)?;
        let k = ctx.rope.apply(&k)?;
        let y = attend(&q, &k, &v, ctx, self.scaling)?;
        self.o_proj.forward(&y)
    }
}
