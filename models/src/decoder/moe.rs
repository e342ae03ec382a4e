//! The mixture-of-experts slots: the top-k router, the experts, and the sparse block that
//! combines them (with an optional shared expert).

use candle_core::Tensor;
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

    /// Routes `x` (`[tokens, hidden]`).
    pub fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<RouterOutput> {
        let logits = crate::decoder::linear::matmul_t(x, &self.weight)?;
        let (tokens, experts) = logits.dims2()?;
        let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(candle_core::DType::F32)?)?;
        let p: Vec<f32> = probs.flatten_all()?.to_vec1()?;
        let k = self.top_k;
        let indices: Vec<u32> = match ctx.forced_experts {
            Some(forced) => {
                if forced.dims() != [tokens, k] {
                    candle_core::bail!(
                        "layer {}: forced experts have shape {:?}, the router chooses [{tokens}, {k}]",
                        ctx.layer_idx,
                        forced.dims()
                    );
                }
                let ids: Vec<u32> = forced
                    .to_dtype(candle_core::DType::U32)?
                    .flatten_all()?
                    .to_vec1()?;
                if let Some(bad) = ids.iter().find(|&&e| e as usize >= experts) {
                    candle_core::bail!(
                        "layer {}: forced expert {bad} >= {experts} experts",
                        ctx.layer_idx
                    );
                }
                ids
            }
            None => {
                let mut ids = Vec::with_capacity(tokens * k);
                let mut order: Vec<u32> = Vec::with_capacity(experts);
                for row in p.chunks(experts) {
                    order.clear();
                    order.extend(0..experts as u32);
                    // Highest probability first; ties keep the lower expert id first.
                    order.sort_by(|&a, &b| {
                        row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b))
                    });
                    ids.extend_from_slice(&order[..k]);
                }
                ids
            }
        };
        let mut weights: Vec<f32> = indices
            .iter()
            .enumerate()
            .map(|(i, &e)| p[(i / k) * experts + e as usize])
            .collect();
        if self.norm_topk_prob {
            for row in weights.chunks_mut(k) {
                let sum: f32 = row.iter().sum();
                row.iter_mut().for_each(|w| *w /= sum);
            }
        }
        let device = x.device();
        Ok(RouterOutput {
            weights: Tensor::from_vec(weights, (tokens, k), device)?.to_dtype(x.dtype())?,
            indices: Tensor::from_vec(indices, (tokens, k), device)?,
            logits,
        })
    }
}

/// Routed experts with stacked weights (transformers v5's layout): `gate_up_proj`
/// `[E, 2I, H]` (gate rows first) and `down_proj` `[E, H, I]`.
///
/// Dispatch is grouped: the tokens routed to each expert are gathered, each active expert
/// runs once over its tokens (two matmuls on views of its slice of the stacked weights), and
/// all results are scattered back with their routing weights in one `index_add`. Experts no
/// token chose are never touched; there is no loop over tokens and no dense pass over all
/// experts.
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

    /// See [`Experts::forward`].
    pub fn forward(
        &self,
        x: &Tensor,
        indices: &Tensor,
        weights: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (tokens, k) = indices.dims2()?;
        let num_experts = self.gate_up_proj.dim(0)?;
        let inter = self.down_proj.dim(2)?;
        let ids: Vec<u32> = indices
            .to_dtype(candle_core::DType::U32)?
            .flatten_all()?
            .to_vec1()?;
        let w: Vec<f32> = weights
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        if let Some(out) = self.forward_cpu(x, &ids, &w, k)? {
            return Ok(out);
        }
        // Per expert: the tokens routed to it and their weights, in token order.
        let mut routed: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); num_experts];
        for (slot, &e) in ids.iter().enumerate() {
            let e = e as usize;
            if e >= num_experts {
                candle_core::bail!("expert id {e} >= {num_experts} experts");
            }
            routed[e].0.push((slot / k) as u32);
            routed[e].1.push(w[slot]);
        }
        let device = x.device();
        let mut outputs = Vec::new();
        let mut targets: Vec<u32> = Vec::with_capacity(tokens * k);
        for (e, (token_ids, token_weights)) in routed.into_iter().enumerate() {
            if token_ids.is_empty() {
                continue;
            }
            let m = token_ids.len();
            let rows = Tensor::from_vec(token_ids.clone(), m, device)?;
            let xs = x.index_select(&rows, 0)?;
            let gate_up = crate::decoder::linear::matmul_t(&xs, &self.gate_up_proj.get(e)?)?;
            let gate = self.act.apply(&gate_up.narrow(1, 0, inter)?)?;
            let up = gate_up.narrow(1, inter, inter)?;
            let y = crate::decoder::linear::matmul_t(&(gate * up)?, &self.down_proj.get(e)?)?;
            let scale = Tensor::from_vec(token_weights, (m, 1), device)?.to_dtype(y.dtype())?;
            outputs.push(y.broadcast_mul(&scale)?);
            targets.extend(token_ids);
        }
        let out = Tensor::zeros(x.shape(), x.dtype(), device)?;
        if outputs.is_empty() {
            return Ok(out);
        }
        let ys = Tensor::cat(&outputs, 0)?;
        let targets = Tensor::from_vec(targets, ys.dim(0)?, device)?;
        out.index_add(&targets, &ys, 0)
    }

    /// The CPU path ([`crate::kernels::moe::routed_experts`]) for float32 activations and
    /// float32 or bfloat16 expert weights with a SiLU gate; `None` when it does not apply.
    fn forward_cpu(
        &self,
        x: &Tensor,
        ids: &[u32],
        w: &[f32],
        top_k: usize,
    ) -> candle_core::Result<Option<Tensor>> {
        use crate::kernels::moe::{ExpertsShape, routed_experts};
        use crate::kernels::tensor::{cpu_tensor, with_slice};
        use crate::kernels::{Isa, bf16};
        let cpu = x.device().is_cpu() && self.gate_up_proj.device().is_cpu();
        if !cpu
            || x.dtype() != candle_core::DType::F32
            || self.act != crate::decoder::HiddenAct::Silu
        {
            return Ok(None);
        }
        let (tokens, hidden) = x.dims2()?;
        let (experts, two_i, _) = self.gate_up_proj.dims3()?;
        let shape = ExpertsShape {
            tokens,
            hidden,
            inter: two_i / 2,
            experts,
            top_k,
        };
        let x = x.contiguous()?;
        let gu = self.gate_up_proj.contiguous()?;
        let down = self.down_proj.contiguous()?;
        let isa = Isa::detect();
        let result = with_slice::<f32, _>(&x, |xs| match gu.dtype() {
            candle_core::DType::F32 => with_slice::<f32, _>(&gu, |g| {
                with_slice::<f32, _>(&down, |d| routed_experts(isa, &shape, xs, g, d, ids, w))
            })
            .flatten(),
            candle_core::DType::BF16 => with_slice::<bf16, _>(&gu, |g| {
                with_slice::<bf16, _>(&down, |d| routed_experts(isa, &shape, xs, g, d, ids, w))
            })
            .flatten(),
            _ => None,
        })
        .flatten();
        match result {
            Some(Ok(out)) => Ok(Some(cpu_tensor(out, (tokens, hidden))?)),
            Some(Err(e)) => candle_core::bail!("{e}"),
            None => Ok(None),
        }
    }
}
