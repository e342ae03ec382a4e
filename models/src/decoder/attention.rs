//! The attention slot, and the attention step every attention here shares (KV-cache write,
//! then grouped-query attention over the cache in place, masked).

use candle_core::Tensor;
use patch_core::{Module, Observed, ObservedSite, Slot};

use crate::decoder::config::DecoderConfig;
use crate::decoder::context::LayerContext;
use crate::implementations::{AttentionInput, attention};
use crate::ops::KeyValues;

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

    fn observe(module: Box<Self>, site: ObservedSite) -> Box<Self> {
        Box::new(Observed::new(module, site))
    }
}

/// The attention step shared by every attention here and by replacements: takes rotated `q`
/// `[batch, seq, heads, head_dim]` and `k`, `v` `[batch, seq, kv_heads, head_dim]` (the
/// projections' natural layout), appends `k`/`v` to this layer's cache when there is one,
/// attends with the pass's mask ([`crate::ops::attention`], reading the cache in place), and
/// returns `[batch, seq, heads * head_dim]`, ready for the output projection (transformers'
/// `past_key_values.update` + `sdpa_attention_forward`).
///
/// When gradients are tracked, they flow through this pass's keys and values; cached
/// positions from earlier passes are constants. When the pass keeps this layer's attention
/// probabilities ([`PassContext::wants_attention_weights`](crate::decoder::PassContext)), they
/// are computed (by the eager path) and recorded; otherwise the fused path runs.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    ctx: &mut LayerContext<'_>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let t = q.dim(1)?;
    let want_weights = ctx.pass.wants_attention_weights(ctx.layer_idx);
    let kt = k.transpose(1, 2)?.contiguous()?;
    let vt = v.transpose(1, 2)?.contiguous()?;
    let tracks = ctx.pass.tracks_gradients();
    let imp = attention::for_pass(ctx.pass.attention_implementation(), tracks, want_weights);
    let (layer_idx, mask, sliding_window) = (ctx.layer_idx, ctx.mask, ctx.sliding_window);
    let run = |kv: KeyValues<'_>| {
        (imp.function)(&AttentionInput {
            q,
            kv,
            mask,
            scale,
            sliding_window,
            want_weights,
            layer_idx,
        })
    };
    let out = match ctx.cache.as_deref_mut() {
        Some(cache) => {
            let past = cache.len();
            let (kc, vc) = cache.append(&kt, &vt)?;
            if tracks {
                // The cache holds copies; attend over the tracked keys of this pass.
                let keys = Tensor::cat(&[&kc.narrow(2, 0, past)?, &kt], 2)?;
                let values = Tensor::cat(&[&vc.narrow(2, 0, past)?, &vt], 2)?;
                run(KeyValues {
                    keys: &keys,
                    values: &values,
                    len: past + t,
                })?
            } else {
                let len = cache.len();
                let (kb, vb) = cache.buffers().ok_or_else(|| {
                    candle_core::Error::Msg("kv cache: no buffers after a write".into())
                })?;
                run(KeyValues {
                    keys: kb,
                    values: vb,
                    len,
                })?
            }
        }
        None => run(KeyValues {
            keys: &kt,
            values: &vt,
            len: t,
        })?,
    };
    if let Some(probs) = out.weights {
        ctx.pass.record_attention_weights(layer_idx, probs);
    }
    Ok(out.output)
}
