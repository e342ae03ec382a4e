//! The softmax top-k router of the Qwen-MoE families, replayable.

use candle_core::{DType, Tensor};
use patch_core::{Builder, Result};

use crate::decoder::children::Children;
use crate::decoder::context::LayerContext;
use crate::decoder::linear::Linear;
use crate::decoder::moe::MoeArgs;
use crate::decoder::outputs::RouterOutput;
use crate::decoder::projection::{Projection, ProjectionArgs};

/// A softmax top-k router over a `[num_experts, hidden]` weight (transformers' `TopKRouter`
/// of the Qwen-MoE families): softmax in float32, top-k of the probabilities, optionally
/// renormalised; forced indices replay a recorded routing with the current probabilities.
///
/// Its weight (`mlp.gate.weight`) is a projection site at the router's own path, as upstream's
/// router holds it directly.
pub struct TopKRouter {
    /// The logits: `[num_experts, hidden]`, a projection site at the router's path.
    pub proj: Box<dyn Projection>,
    /// Experts per token.
    pub top_k: usize,
    /// Whether the chosen weights are renormalised to sum to one.
    pub norm_topk_prob: bool,
}

impl TopKRouter {
    /// Builds its projection (`weight` under `b`, random sources: N(0, std)) as a site at
    /// `b`'s path.
    pub fn load(b: &Builder, args: MoeArgs<'_>) -> Result<Self> {
        let c = args.config;
        let moe = c.moe()?;
        let proj = b.build::<Linear>(ProjectionArgs::new(
            c,
            c.hidden_size,
            moe.num_experts,
            false,
        ))?;
        Ok(Self {
            proj,
            top_k: moe.num_experts_per_tok,
            norm_topk_prob: moe.norm_topk_prob,
        })
    }

    /// Routes `x` (`[tokens, hidden]`): softmax of the logits in float32, the top-k experts
    /// (or the forced ones of `ctx`; a forced id of -1 leaves that choice to the router), and
    /// their weights gathered from the probabilities, so gradients reach the router weight
    /// whichever experts were chosen.
    pub fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<RouterOutput> {
        let logits = self.proj.forward(x, ctx.pass)?;
        let (tokens, experts) = logits.dims2()?;
        let probs = crate::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
        let k = self.top_k;
        if k == 0 || k > experts {
            candle_core::bail!(
                "layer {}: the router picks {k} of {experts} experts",
                ctx.layer_idx
            );
        }
        let forced = match ctx.forced_experts {
            Some(f) => Some(forced_ids(f, tokens, k, experts, ctx.layer_idx)?),
            None => None,
        };
        let p: Vec<f32> = probs.detach().flatten_all()?.to_vec1()?;
        let mut ids: Vec<u32> = Vec::with_capacity(tokens * k);
        let mut order: Vec<u32> = Vec::with_capacity(experts);
        for (t, row) in p.chunks(experts).enumerate() {
            let forced_row = forced.as_ref().map(|f| &f[t * k..(t + 1) * k]);
            if let Some(f) = forced_row
                && f.iter().all(|&e| e >= 0)
            {
                ids.extend(f.iter().map(|&e| e as u32));
                continue;
            }
            order.clear();
            order.extend(0..experts as u32);
            // Highest probability first; ties keep the lower expert id first.
            order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
            match forced_row {
                // Partly forced: the forced choices stay, the free ones take the best others.
                Some(f) => {
                    let mut free = order.iter().filter(|e| !f.contains(&(**e as i64)));
                    for &e in f {
                        ids.push(if e >= 0 {
                            e as u32
                        } else {
                            *free.next().unwrap_or(&0)
                        });
                    }
                }
                None => ids.extend_from_slice(&order[..k]),
            }
        }
        let indices = Tensor::from_vec(ids, (tokens, k), x.device())?;
        let mut weights = probs.gather(&indices, 1)?;
        if self.norm_topk_prob {
            weights = weights.broadcast_div(&weights.sum_keepdim(1)?)?;
        }
        Ok(RouterOutput {
            weights: weights.to_dtype(x.dtype())?,
            indices,
            logits,
        })
    }
}

impl Children for TopKRouter {}

/// The forced expert ids of one layer as i64, `[tokens * k]`, after checking their shape and
/// that each is -1 (free) or an expert.
fn forced_ids(
    forced: &Tensor,
    tokens: usize,
    k: usize,
    experts: usize,
    layer: usize,
) -> candle_core::Result<Vec<i64>> {
    if forced.dims() != [tokens, k] {
        candle_core::bail!(
            "layer {layer}: forced experts have shape {:?}, the router chooses [{tokens}, {k}]",
            forced.dims()
        );
    }
    let ids: Vec<i64> = match forced.dtype() {
        DType::U8 | DType::U32 | DType::I16 | DType::I32 | DType::I64 => {
            forced.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?
        }
        other => {
            candle_core::bail!("layer {layer}: forced experts must be integers, found {other:?}")
        }
    };
    if let Some((slot, bad)) = ids
        .iter()
        .enumerate()
        .find(|&(_, &e)| e < -1 || e >= experts as i64)
    {
        candle_core::bail!(
            "layer {layer}: forced expert {bad} at token {}, choice {}: expected -1 (route freely) or an expert below {experts}",
            slot / k,
            slot % k
        );
    }
    Ok(ids)
}
