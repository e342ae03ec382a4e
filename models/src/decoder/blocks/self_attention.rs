//! Multi-head self-attention with q/k/v/o projections and rotary embeddings, the attention of
//! every family here.

use candle_core::Tensor;
use patch_core::{Builder, Result};

use crate::decoder::attention::{AttentionArgs, attend};
use crate::decoder::config::DecoderConfig;
use crate::decoder::context::LayerContext;
use crate::decoder::linear::{Linear, fused_projection, projection};
use crate::decoder::norm::{Norm, NormArgs};
use crate::decoder::sites::DecoderSites;

/// Multi-head self-attention: q/k/v projections (biases when `qkv_bias`), per-head q/k RMS
/// norms before the rotary embedding when `qk_norm` (Qwen3's `q_norm`/`k_norm`, sites of the
/// family's norm type), grouped-query attention over the KV cache ([`attend`]), and the output
/// projection (a bias when `o_proj_bias`).
///
/// q, k and v run as one fused projection (`qkv_proj`, one product per step); `q_proj`,
/// `k_proj` and `v_proj` are views of its rows, recorded under the checkpoint's names (see
/// [`fused_projection`]).
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
    /// Per-head query norm over `head_dim`, when the family has one.
    pub q_norm: Option<Box<dyn Norm>>,
    /// Per-head key norm over `head_dim`, when the family has one.
    pub k_norm: Option<Box<dyn Norm>>,
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
    /// Loads `q_proj`, `k_proj`, `v_proj` (fused) and `o_proj` under `b`, and builds `q_norm`
    /// and `k_norm` as `S`'s norm sites when the config has per-head q/k norms.
    pub fn load<S: DecoderSites>(b: &Builder, args: AttentionArgs<'_>) -> Result<Self> {
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
        let o_proj = projection(b, c, "o_proj", nh * d, h, c.o_proj_bias)?;
        let head_norm = NormArgs { config: c, dim: d };
        let (q_norm, k_norm) = if c.qk_norm {
            (
                Some(b.pp("q_norm").build::<S::Norm>(head_norm)?),
                Some(b.pp("k_norm").build::<S::Norm>(head_norm)?),
            )
        } else {
            (None, None)
        };
        Ok(Self::assemble(
            c,
            qkv_proj,
            [q_proj, k_proj, v_proj],
            o_proj,
            q_norm,
            k_norm,
        ))
    }

    /// A self-attention from an already fused `qkv_proj` (q, k then v rows), `o_proj` and
    /// optional per-head norms, with the head layout of `config`; `q_proj`, `k_proj` and
    /// `v_proj` become views of `qkv_proj`'s rows.
    pub fn from_fused(
        config: &DecoderConfig,
        qkv_proj: Linear,
        o_proj: Linear,
        q_norm: Option<Box<dyn Norm>>,
        k_norm: Option<Box<dyn Norm>>,
    ) -> candle_core::Result<Self> {
        let (nh, nkv, d) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        );
        let (w, bias) = (qkv_proj.weight()?, qkv_proj.bias()?);
        let rows = |start: usize, len: usize| -> candle_core::Result<Linear> {
            Ok(Linear::new(
                w.narrow(0, start, len)?,
                bias.as_ref().map(|b| b.narrow(0, start, len)).transpose()?,
            ))
        };
        let parts = [
            rows(0, nh * d)?,
            rows(nh * d, nkv * d)?,
            rows((nh + nkv) * d, nkv * d)?,
        ];
        Ok(Self::assemble(
            config, qkv_proj, parts, o_proj, q_norm, k_norm,
        ))
    }

    fn assemble(
        config: &DecoderConfig,
        qkv_proj: Linear,
        [q_proj, k_proj, v_proj]: [Linear; 3],
        o_proj: Linear,
        q_norm: Option<Box<dyn Norm>>,
        k_norm: Option<Box<dyn Norm>>,
    ) -> Self {
        let d = config.head_dim;
        Self {
            qkv_proj,
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_norm,
            k_norm,
            num_heads: config.num_attention_heads,
            num_kv_heads: config.num_key_value_heads,
            head_dim: d,
            scaling: (d as f64).powf(-0.5),
        }
    }

    /// The projections the forward pass computes with: `qkv_proj` (the fused q/k/v) and
    /// `o_proj`.
    pub fn projections_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        vec![
            ("qkv_proj", &mut self.qkv_proj),
            ("o_proj", &mut self.o_proj),
        ]
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
        let mut q = qkv.narrow(2, 0, nh * d)?.reshape((b, t, nh, d))?;
        let mut k = qkv.narrow(2, nh * d, nkv * d)?.reshape((b, t, nkv, d))?;
        let v = qkv
            .narrow(2, (nh + nkv) * d, nkv * d)?
            .reshape((b, t, nkv, d))?;
        if let Some(norm) = &self.q_norm {
            q = norm.forward(&q, ctx.pass)?;
        }
        if let Some(norm) = &self.k_norm {
            k = norm.forward(&k, ctx.pass)?;
        }
        let q = ctx.rope.apply(&q)?;
        let k = ctx.rope.apply(&k)?;
        let y = attend(&q, &k, &v, ctx, self.scaling)?;
        self.o_proj.forward(&y)
    }
}
