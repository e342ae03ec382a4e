//! The mixture-of-experts slots: the top-k router, the experts, and the sparse block that
//! combines them (with an optional shared expert).

use candle_core::{DType, Tensor};
use patch_core::{Module, Slot};

use crate::decoder::config::DecoderConfig;
use crate::decoder::layer::LayerContext;

/// What a router returns, as transformers' `TopKRouter`: the raw logits, and the chosen
/// experts with their weights.
#[derive(Clone, Debug)]
pub struct RouterOutput {
    /// Router logits before softmax, `[tokens, num_experts]`.
    pub logits: Tensor,
    /// Routing weights of the chosen experts, `[tokens, top_k]`.
    pub weights: Tensor,
    /// Chosen expert ids, `[tokens, top_k]` (u32), in top-k order.
    pub indices: Tensor,
}

/// The router slot: chooses `top_k` experts per token.
pub trait Router: Module {
    /// Routes `x` (`[tokens, hidden]`); honours `ctx.forced_experts` when set.
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<RouterOutput>;
}

/// The experts slot: runs each token through its chosen experts and sums the results with
/// their routing weights.
pub trait Experts: Module {
    /// `x` `[tokens, hidden]`, `indices` `[tokens, top_k]` (u32), `weights` `[tokens, top_k]`;
    /// returns `[tokens, hidden]`.
    fn forward(
        &self,
        x: &Tensor,
        indices: &Tensor,
        weights: &Tensor,
    ) -> candle_core::Result<Tensor>;
}

/// What a sparse block returns: its output and its router's output (which the decoder layer
/// hands up for recording).
#[derive(Clone, Debug)]
pub struct MoeOutput {
    /// `[batch, seq, hidden]`.
    pub hidden_states: Tensor,
    /// The routing that produced it.
    pub router: RouterOutput,
}

/// The sparse MoE block slot: sits in a decoder layer's feed-forward position.
pub trait SparseMoe: Module {
    /// Applies the block to `x` (`[batch, seq, hidden]`).
    fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<MoeOutput>;
}

/// What every router, experts and sparse-block constructor receives.
#[derive(Clone, Copy, Debug)]
pub struct MoeArgs<'a> {
    /// The model's config view (its `moe` part is set).
    pub config: &'a DecoderConfig,
    /// Index of the layer.
    pub layer_idx: usize,
}

impl Slot for dyn Router {
    const NAME: &'static str = "Router";
    type Args<'a> = MoeArgs<'a>;
}

impl Slot for dyn Experts {
    const NAME: &'static str = "Experts";
    type Args<'a> = MoeArgs<'a>;
}

impl Slot for dyn SparseMoe {
    const NAME: &'static str = "SparseMoe";
    type Args<'a> = MoeArgs<'a>;
}

/// A softmax top-k router over a `[num_experts, hidden]` weight (transformers' `TopKRouter`
/// of the Qwen-MoE families): softmax in float32, top-k of the probabilities, optionally
/// renormalised; forced indices replay a recorded routing with the current probabilities.
#[derive(Clone, Debug)]
pub struct TopKRouter {
    /// `[num_experts, hidden]`.
    pub weight: Tensor,
    /// Experts per token.
    pub top_k: usize,
    /// Whether the chosen weights are renormalised to sum to one.
    pub norm_topk_prob: bool,
}

impl TopKRouter {
    /// Loads `weight` under `b` (random sources: N(0, std)).
    pub fn load(b: &patch_core::Builder, args: MoeArgs<'_>) -> patch_core::Result<Self> {
        let moe = args.config.moe().map_err(patch_core::Error::other)?;
        let weight = b.get_with_init(
            (moe.num_experts, args.config.hidden_size),
            "weight",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: args.config.initializer_range,
            },
        )?;
        Ok(Self {
            weight,
            top_k: moe.num_experts_per_tok,
            norm_topk_prob: moe.norm_topk_prob,
        })
    }

    /// Routes `x` (`[tokens, hidden]`): softmax of the logits in float32, the top-k experts
    /// (or the forced ones of `ctx`; a forced id of -1 leaves that choice to the router), and
    /// their weights gathered from the probabilities, so gradients reach the router weight
    /// whichever experts were chosen.
    pub fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<RouterOutput> {
        let logits = crate::ops::linear(x, &self.weight, None)?;
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

/// Routed experts with stacked weights (transformers v5's layout): `gate_up_proj`
/// `[E, 2I, H]` (gate rows first) and `down_proj` `[E, H, I]`.
///
/// Dispatch is grouped ([`crate::ops::routed_experts`]): each active expert runs once over the
/// tokens routed to it; experts no token chose are never touched.
#[derive(Clone, Debug)]
pub struct StackedExperts {
    /// `[E, 2I, H]`.
    pub gate_up_proj: Tensor,
    /// `[E, H, I]`.
    pub down_proj: Tensor,
    /// The activation of the gate.
    pub act: crate::decoder::HiddenAct,
}

impl StackedExperts {
    /// Loads `gate_up_proj` and `down_proj` under `b` (random sources: N(0, std)).
    pub fn load(b: &patch_core::Builder, args: MoeArgs<'_>) -> patch_core::Result<Self> {
        let c = args.config;
        let moe = c.moe().map_err(patch_core::Error::other)?;
        let (e, i, h) = (moe.num_experts, moe.moe_intermediate_size, c.hidden_size);
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: c.initializer_range,
        };
        // Expert weights are kept in `weight_dtype` when set, as the projections are.
        let weights = match c.weight_dtype {
            Some(dtype) => b.weights().with_dtype(dtype),
            None => b.weights().clone(),
        };
        let get =
            |shape: (usize, usize, usize), name: &str| weights.get_with_init(shape, name, init);
        Ok(Self {
            gate_up_proj: get((e, 2 * i, h), "gate_up_proj")?,
            down_proj: get((e, h, i), "down_proj")?,
            act: c.hidden_act,
        })
    }

    /// See [`Experts::forward`] ([`crate::ops::routed_experts`]).
    pub fn forward(
        &self,
        x: &Tensor,
        indices: &Tensor,
        weights: &Tensor,
    ) -> candle_core::Result<Tensor> {
        crate::ops::routed_experts(
            x,
            &self.gate_up_proj,
            &self.down_proj,
            indices,
            weights,
            self.act,
        )
    }
}
