//! The attention slot, the shared attention kernel (grouped-query attention without copies of
//! keys/values, KV-cache writes, masking), and the q/k/v/o self-attention of the Llama-style
//! families.

use candle_core::Tensor;
use patch_core::{Builder, Module, Result, Slot};

use crate::decoder::config::DecoderConfig;
use crate::decoder::layer::LayerContext;
use crate::decoder::linear::{Linear, fused_projection, projection};
use crate::ops::{KeyValues, tracks_gradients};

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

/// `softmax(q k^T * scale + bias) v` on candle's ops for `q` `[batch, heads, seq, head_dim]`
/// and `k`, `v` `[batch, kv_heads, kv_len, head_dim]`, with `bias` `[batch, 1, seq, kv_len]`;
/// returns `[batch, heads, seq, head_dim]` (see [`crate::ops::eager_attention`]).
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    Ok(crate::ops::eager_attention(q, k, v, bias, scale, false)?.0)
}

/// The attention step shared by every attention here and by replacements: takes rotated `q`
/// `[batch, seq, heads, head_dim]` and `k`, `v` `[batch, seq, kv_heads, head_dim]` (the
/// projections' natural layout), appends `k`/`v` to this layer's cache when there is one,
/// attends with the pass's mask ([`crate::ops::attention`], reading the cache in place), and
/// returns `[batch, seq, heads * head_dim]`, ready for the output projection (transformers'
/// `past_key_values.update` + `sdpa_attention_forward`).
///
/// When gradients are tracked, they flow through this pass's keys and values; cached
/// positions from earlier passes are constants.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    ctx: &mut LayerContext<'_>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let t = q.dim(1)?;
    let kt = k.transpose(1, 2)?.contiguous()?;
    let vt = v.transpose(1, 2)?.contiguous()?;
    let out = match ctx.cache.as_deref_mut() {
        Some(cache) => {
            let past = cache.len();
            let (kc, vc) = cache.append(&kt, &vt)?;
            if tracks_gradients(&[q, &kt, &vt]) {
                // The cache holds copies; attend over the tracked keys of this pass.
                let keys = Tensor::cat(&[&kc.narrow(2, 0, past)?, &kt], 2)?;
                let values = Tensor::cat(&[&vc.narrow(2, 0, past)?, &vt], 2)?;
                let kv = KeyValues {
                    keys: &keys,
                    values: &values,
                    len: past + t,
                };
                crate::ops::attention(q, &kv, ctx.mask, scale, false)?
            } else {
                let len = cache.len();
                let (kb, vb) = cache.buffers().ok_or_else(|| {
                    candle_core::Error::Msg("kv cache: no buffers after a write".into())
                })?;
                let kv = KeyValues {
                    keys: kb,
                    values: vb,
                    len,
                };
                crate::ops::attention(q, &kv, ctx.mask, scale, false)?
            }
        }
        None => {
            let kv = KeyValues {
                keys: &kt,
                values: &vt,
                len: t,
            };
            crate::ops::attention(q, &kv, ctx.mask, scale, false)?
        }
    };
    Ok(out.0)
}

/// Multi-head self-attention with q/k/v/o projections and rotary embeddings (the attention of
/// Llama and Qwen2-MoE; q/k/v biases when `qkv_bias`, an output bias when `o_proj_bias`).
///
/// q, k and v run as one fused projection (`qkv_proj`, one product per step); `q_proj`,
/// `k_proj` and `v_proj` are views of its rows, recorded under the checkpoint's names (see
/// [`fused_projection`]).
#[derive(Clone, Debug)]
pub struct SelfAttention {
    /// q, k and v rows in that order, `[(heads + 2 * kv_heads) * head_dim, hidden]`.
    pub qkv_proj: Linear,
    /// `[heads * head_dim, hidden]` (a view of `qkv_proj`).
    pub q_proj: Linear,
    /// `[kv_heads * head_dim, hidden]` (a view of `qkv_proj`).
    pub k_proj: Linear,
    /// `[kv_heads * head_dim, hidden]` (a view of `qkv_proj`).
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
    /// Loads `q_proj`, `k_proj`, `v_proj` (fused) and `o_proj` under `b`.
    pub fn load(b: &Builder, args: AttentionArgs<'_>) -> Result<Self> {
        let c = args.config;
        let (h, d) = (c.hidden_size, c.head_dim);
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        let (qkv_proj, parts) = fused_projection(
            b,
            c,
            &[("q_proj", nh * d), ("k_proj", nkv * d), ("v_proj", nkv * d)],
            h,
            c.qkv_bias,
        )?;
        let [q_proj, k_proj, v_proj]: [Linear; 3] = parts.try_into().map_err(|_| {
            patch_core::Error::other(candle_core::Error::Msg("qkv: 3 parts".into()))
        })?;
        Ok(Self {
            qkv_proj,
            q_proj,
            k_proj,
            v_proj,
            o_proj: projection(b, c, "o_proj", nh * d, h, c.o_proj_bias)?,
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
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let qkv = self.qkv_proj.forward(hidden_states)?;
        let q = qkv.narrow(2, 0, nh * d)?.reshape((b, t, nh, d))?;
        let k = qkv.narrow(2, nh * d, nkv * d)?.reshape((b, t, nkv, d))?;
        let v = qkv
            .narrow(2, (nh + nkv) * d, nkv * d)?
            .reshape((b, t, nkv, d))?;
        let q = ctx.rope.apply(&q)?;
        let k = ctx.rope.apply(&k)?;
        let y = attend(&q, &k, &v, ctx, self.scaling)?;
        self.o_proj.forward(&y)
    }
}
