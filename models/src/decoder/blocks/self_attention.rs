//! Multi-head self-attention with q/k/v/o projections and rotary embeddings, the attention of
//! every family here.

use candle_core::Tensor;
use patch_core::{Builder, Module, Result};

use crate::decoder::attention::{AttentionArgs, attend};
use crate::decoder::children::Children;
use crate::decoder::config::DecoderConfig;
use crate::decoder::context::LayerContext;
use crate::decoder::fused::FusedProjections;
use crate::decoder::linear::{Linear, projection};
use crate::decoder::norm::{Norm, NormArgs};
use crate::decoder::projection::Projection;
use crate::decoder::sites::DecoderSites;

const QKV: [&str; 3] = ["q_proj", "k_proj", "v_proj"];

/// Multi-head self-attention: q/k/v projections (biases when `qkv_bias`), per-head q/k RMS
/// norms before the rotary embedding when `qk_norm` (Qwen3's `q_norm`/`k_norm`, sites of the
/// family's norm type), grouped-query attention over the KV cache ([`attend`]), and the output
/// projection (a bias when `o_proj_bias`).
///
/// Each projection is a site at its path (`q_proj`, ..., `o_proj`). When nothing replaces q, k
/// or v they run as one fused product ([`FusedProjections`]); a rule on any of them makes
/// the three compute separately.
pub struct SelfAttention {
    /// `q_proj`, `k_proj` and `v_proj`, fused when none is replaced.
    pub qkv: FusedProjections,
    /// `[hidden, heads * head_dim]`.
    pub o_proj: Box<dyn Projection>,
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
    /// Builds `q_proj`, `k_proj`, `v_proj` and `o_proj` under `b` as projection sites, and
    /// `q_norm` and `k_norm` as `S`'s norm sites when the config has per-head q/k norms.
    pub fn load<S: DecoderSites>(b: &Builder, args: AttentionArgs<'_>) -> Result<Self> {
        let c = args.config;
        let (h, d) = (c.hidden_size, c.head_dim);
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        let widths = [nh * d, nkv * d, nkv * d];
        let parts = QKV
            .iter()
            .zip(widths)
            .map(|(name, out)| projection(b, c, name, h, out, c.qkv_bias))
            .collect::<Result<Vec<_>>>()?;
        let qkv = FusedProjections::new(b, &QKV, parts)?;
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
        Ok(Self::assemble(c, qkv, o_proj, q_norm, k_norm))
    }

    /// A self-attention from an already fused `qkv_proj` (q, k then v rows), `o_proj` and
    /// optional per-head norms, with the head layout of `config`; `q_proj`, `k_proj` and
    /// `v_proj` become views of `qkv_proj`'s rows.
    pub fn from_fused(
        config: &DecoderConfig,
        qkv_proj: Linear,
        o_proj: Box<dyn Projection>,
        q_norm: Option<Box<dyn Norm>>,
        k_norm: Option<Box<dyn Norm>>,
    ) -> candle_core::Result<Self> {
        let (nh, nkv, d) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        );
        let qkv = FusedProjections::from_fused(qkv_proj, &[nh * d, nkv * d, nkv * d])?;
        Ok(Self::assemble(config, qkv, o_proj, q_norm, k_norm))
    }

    fn assemble(
        config: &DecoderConfig,
        qkv: FusedProjections,
        o_proj: Box<dyn Projection>,
        q_norm: Option<Box<dyn Norm>>,
        k_norm: Option<Box<dyn Norm>>,
    ) -> Self {
        let d = config.head_dim;
        Self {
            qkv,
            o_proj,
            q_norm,
            k_norm,
            num_heads: config.num_attention_heads,
            num_kv_heads: config.num_key_value_heads,
            head_dim: d,
            scaling: (d as f64).powf(-0.5),
        }
    }

    /// `q_proj`.
    pub fn q_proj(&self) -> &dyn Projection {
        &*self.qkv.parts()[0]
    }

    /// `k_proj`.
    pub fn k_proj(&self) -> &dyn Projection {
        &*self.qkv.parts()[1]
    }

    /// `v_proj`.
    pub fn v_proj(&self) -> &dyn Projection {
        &*self.qkv.parts()[2]
    }

    /// Attends over `hidden_states` (`[batch, seq, hidden]`).
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = hidden_states.dims3()?;
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let [q, k, v]: [Tensor; 3] = self
            .qkv
            .forward(hidden_states, ctx.pass)?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("attention: q, k and v expected".into()))?;
        let mut q = q.reshape((b, t, nh, d))?;
        let mut k = k.reshape((b, t, nkv, d))?;
        let v = v.reshape((b, t, nkv, d))?;
        if let Some(norm) = &self.q_norm {
            q = norm.forward(&q, ctx.pass)?;
        }
        if let Some(norm) = &self.k_norm {
            k = norm.forward(&k, ctx.pass)?;
        }
        let q = ctx.rope.apply(&q)?;
        let k = ctx.rope.apply(&k)?;
        let y = attend(&q, &k, &v, ctx, self.scaling)?;
        self.o_proj.forward(&y, ctx.pass)
    }
}

impl Children for SelfAttention {
    fn children<'a>(&'a self, visit: &mut dyn FnMut(&str, &'a dyn Module)) {
        self.qkv.children(&QKV, visit);
        visit("o_proj", &*self.o_proj);
        for (name, norm) in [("q_norm", &self.q_norm), ("k_norm", &self.k_norm)] {
            if let Some(norm) = norm {
                visit(name, &**norm);
            }
        }
    }
}
