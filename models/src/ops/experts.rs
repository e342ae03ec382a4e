//! Routed experts over stacked weights: each token through its chosen experts, summed with
//! its routing weights.

use candle_core::{DType, Tensor};

use super::cpu::{CpuSlice, cpu_tensor};
use super::{cpu_f32, gated, linear, tracks_gradients};
use crate::decoder::HiddenAct;
use crate::kernels::moe::{ExpertsShape, routed_experts as kernel};
use crate::kernels::{Isa, bf16};

/// `out[t] = sum_j weights[t, j] * expert_{ids[t, j]}(x[t])` with
/// `expert_e(x) = down_e (act(gate_e x) * up_e x)`, for `x` `[tokens, hidden]`, stacked
/// `gate_up` `[E, 2I, H]` (gate rows first) and `down` `[E, H, I]`, `ids` and `weights`
/// `[tokens, top_k]`; returns `[tokens, hidden]`. Experts no token chose are never read.
///
/// Kernel path (SiLU, CPU float32 activations, float32 or bfloat16 experts, nothing tracking
/// gradients): [`crate::kernels::moe::routed_experts`]. Otherwise grouped dispatch on
/// candle's ops: each active expert runs once over its tokens (views of its slice of the
/// stacked weights), scaled by its routing weights gathered from `weights` (so gradients
/// reach the router), and the results are added back in one `index_add`.
pub fn routed_experts(
    x: &Tensor,
    gate_up: &Tensor,
    down: &Tensor,
    ids: &Tensor,
    weights: &Tensor,
    act: HiddenAct,
) -> candle_core::Result<Tensor> {
    let (tokens, hidden) = x.dims2()?;
    let (experts, two_i, gh) = gate_up.dims3()?;
    let (de, dh, inter) = down.dims3()?;
    let (it, top_k) = ids.dims2()?;
    if gh != hidden || de != experts || dh != hidden || two_i != 2 * inter {
        candle_core::bail!(
            "experts: gate_up {:?} and down {:?} do not fit tokens {:?}",
            gate_up.dims(),
            down.dims(),
            x.dims()
        );
    }
    if it != tokens || weights.dims() != [tokens, top_k] {
        candle_core::bail!(
            "experts: ids {:?} and weights {:?} do not fit {tokens} tokens",
            ids.dims(),
            weights.dims()
        );
    }
    let id_values: Vec<u32> = ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
    if let Some((slot, e)) = id_values
        .iter()
        .enumerate()
        .find(|&(_, &e)| e as usize >= experts)
    {
        candle_core::bail!(
            "experts: token {} choice {} is expert {e}, but there are {experts} experts",
            slot / top_k.max(1),
            slot % top_k.max(1)
        );
    }
    let operands = [x, gate_up, down, weights];
    let fits = act == HiddenAct::Silu
        && cpu_f32(x)
        && gate_up.device().is_cpu()
        && down.device().is_cpu()
        && gate_up.dtype() == down.dtype();
    if fits && !tracks_gradients(&operands) {
        let shape = ExpertsShape {
            tokens,
            hidden,
            inter,
            experts,
            top_k,
        };
        let w: Vec<f32> = weights.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let (x, gu, dn) = (x.contiguous()?, gate_up.contiguous()?, down.contiguous()?);
        let (rx, rg, rd) = (CpuSlice::of(&x), CpuSlice::of(&gu), CpuSlice::of(&dn));
        if let (Some(xs), Some(rg), Some(rd)) = (rx.as_ref().and_then(CpuSlice::get::<f32>), rg, rd)
        {
            let isa = Isa::detect();
            let out = match gu.dtype() {
                DType::F32 => rg
                    .get::<f32>()
                    .zip(rd.get::<f32>())
                    .map(|(g, d)| kernel(isa, &shape, xs, g, d, &id_values, &w)),
                DType::BF16 => rg
                    .get::<bf16>()
                    .zip(rd.get::<bf16>())
                    .map(|(g, d)| kernel(isa, &shape, xs, g, d, &id_values, &w)),
                _ => None,
            };
            match out {
                Some(Ok(out)) => return cpu_tensor(out, (tokens, hidden)),
                Some(Err(e)) => candle_core::bail!("experts: {e}"),
                None => {}
            }
        }
    }
    experts_per_expert_loop(x, gate_up, down, ids, weights, act)
}

/// The same as [`routed_experts`], always on candle's ops: each expert some token chose runs
/// once over its tokens (views of its slice of the stacked weights), scaled by its routing
/// weights gathered from `weights`, the results added back in one `index_add`. The reference
/// the kernels are checked against, and the differentiable path.
pub fn experts_per_expert_loop(
    x: &Tensor,
    gate_up: &Tensor,
    down: &Tensor,
    ids: &Tensor,
    weights: &Tensor,
    act: HiddenAct,
) -> candle_core::Result<Tensor> {
    per_expert(x, ids, weights, gate_up.dim(0)?, |expert, xs| {
        let h = gated(&linear(xs, &gate_up.get(expert)?, None)?, act)?;
        linear(&h, &down.get(expert)?, None)
    })
}

/// `sum_k weights[t, k] * expert(ids[t, k], x[t])` for every token `t`: each expert some token
/// chose runs once, `expert(e, xs)` over its tokens `xs` `[m, hidden]` returning `[m, hidden]`,
/// and the weighted results are added back in one `index_add`. The loop every per-expert
/// implementation shares (stacked, quantized, a user's). An id outside `0..num_experts` is an
/// error ([`tokens_per_expert`]).
pub fn per_expert(
    x: &Tensor,
    ids: &Tensor,
    weights: &Tensor,
    num_experts: usize,
    expert: impl Fn(usize, &Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let mut outputs = Vec::new();
    let mut targets = Vec::new();
    for group in tokens_per_expert(ids, weights, num_experts)? {
        let xs = x.index_select(&group.rows, 0)?;
        let y = expert(group.expert, &xs)?;
        outputs.push(y.broadcast_mul(&group.weights.to_dtype(y.dtype())?)?);
        targets.push(group.rows);
    }
    let out = x.zeros_like()?;
    if outputs.is_empty() {
        return Ok(out);
    }
    out.index_add(&Tensor::cat(&targets, 0)?, &Tensor::cat(&outputs, 0)?, 0)
}

/// The tokens routed to one expert: what a per-expert loop runs it on.
#[derive(Clone, Debug)]
pub struct ExpertTokens {
    /// The expert.
    pub expert: usize,
    /// The token rows routed to it, in token order (u32 `[m]`: `index_select` / `index_add`
    /// indices).
    pub rows: Tensor,
    /// Their routing weights for this expert, `[m, 1]`, gathered from the weights tensor (so
    /// gradients reach the router).
    pub weights: Tensor,
}

/// For `indices` and `weights` `[tokens, top_k]` (a router's output) over `num_experts`
/// experts, every expert some token chose, in expert order, with the tokens routed to it: the
/// grouping of a per-expert loop (`for g in tokens_per_expert(ids, w, n)? { out =
/// out.index_add(&g.rows, &(expert(x[g.rows]) * g.weights), 0)? }`). An id outside
/// `0..num_experts` is an error naming it, its token and the count.
pub fn tokens_per_expert(
    indices: &Tensor,
    weights: &Tensor,
    num_experts: usize,
) -> candle_core::Result<Vec<ExpertTokens>> {
    let (tokens, k) = indices.dims2()?;
    if weights.dims() != [tokens, k] {
        candle_core::bail!(
            "experts: weights {:?} do not match expert ids {:?}",
            weights.dims(),
            indices.dims()
        );
    }
    let ids: Vec<i64> = indices.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
    let mut routed: Vec<(Vec<u32>, Vec<u32>)> = vec![(Vec::new(), Vec::new()); num_experts];
    for (slot, &e) in ids.iter().enumerate() {
        let Some(group) = usize::try_from(e).ok().and_then(|e| routed.get_mut(e)) else {
            candle_core::bail!(
                "experts: token {} choice {} is expert {e}, but there are {num_experts} experts",
                slot / k,
                slot % k
            );
        };
        group.0.push((slot / k) as u32);
        group.1.push(slot as u32);
    }
    let device = indices.device();
    let flat = weights.flatten_all()?;
    routed
        .into_iter()
        .enumerate()
        .filter(|(_, (rows, _))| !rows.is_empty())
        .map(|(expert, (rows, slots))| {
            let m = rows.len();
            Ok(ExpertTokens {
                expert,
                rows: Tensor::from_vec(rows, m, device)?,
                weights: flat
                    .index_select(&Tensor::from_vec(slots, m, device)?, 0)?
                    .unsqueeze(1)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn kernel_and_graph_paths_agree_and_gradients_reach_the_routing_weights() {
        let dev = Device::Cpu;
        let (t, h, i, e, k) = (6, 16, 8, 5, 2);
        let x = Tensor::randn(0f32, 1.0, (t, h), &dev).unwrap();
        let gu = Tensor::randn(0f32, 0.3, (e, 2 * i, h), &dev).unwrap();
        let down = Tensor::randn(0f32, 0.3, (e, h, i), &dev).unwrap();
        let ids = Tensor::new(&[[0u32, 3], [3, 1], [4, 0], [0, 3], [2, 2], [1, 4]], &dev).unwrap();
        let w = Tensor::rand(0f32, 1.0, (t, k), &dev).unwrap();
        let fast = routed_experts(&x, &gu, &down, &ids, &w, HiddenAct::Silu).unwrap();
        let wv = Var::from_tensor(&w).unwrap();
        let graph = routed_experts(&x, &gu, &down, &ids, wv.as_tensor(), HiddenAct::Silu).unwrap();
        assert!(graph.track_op() && !fast.track_op());
        let d = crate::ops::max_diff(&fast, &graph);
        assert!(d < 1e-5, "{d}");
        let grads = graph.sum_all().unwrap().backward().unwrap();
        let g: Vec<Vec<f32>> = grads.get(wv.as_tensor()).unwrap().to_vec2().unwrap();
        // d out / d w[t, j] = expert_{ids[t, j]}(x[t]): one expert run alone, weight 1.
        let one = Tensor::ones((1, 1), DType::F32, &dev).unwrap();
        let x2 = x.narrow(0, 1, 1).unwrap();
        let id = Tensor::new(&[[1u32]], &dev).unwrap();
        let alone = routed_experts(&x2, &gu, &down, &id, &one, HiddenAct::Silu).unwrap();
        let want = alone.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((g[1][1] - want).abs() < 1e-4, "{} vs {want}", g[1][1]);
        let bad = Tensor::new(&[[0u32, 9], [3, 1], [4, 0], [0, 3], [2, 2], [1, 4]], &dev).unwrap();
        let err = routed_experts(&x, &gu, &down, &bad, &w, HiddenAct::Silu).unwrap_err();
        assert!(
            err.to_string().contains("token 0 choice 1 is expert 9"),
            "{err}"
        );
    }

    #[test]
    fn tokens_per_expert_groups_by_expert_and_rejects_ids_outside_the_experts() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[0.5f32, 0.25], [0.75, 1.0]], &dev).unwrap();
        let ids = Tensor::new(&[[2u32, 0], [2, 1]], &dev).unwrap();
        let groups = tokens_per_expert(&ids, &w, 4).unwrap();
        let seen: Vec<(usize, Vec<u32>, Vec<f32>)> = groups
            .iter()
            .map(|g| {
                let weights = g.weights.flatten_all().unwrap().to_vec1().unwrap();
                (g.expert, g.rows.to_vec1().unwrap(), weights)
            })
            .collect();
        assert_eq!(
            seen,
            [
                (0, vec![0], vec![0.25]),
                (1, vec![1], vec![1.0]),
                (2, vec![0, 1], vec![0.5, 0.75]),
            ]
        );
        // The largest id is bounded by the count, not allocated up to: u32::MAX is an error.
        for (bad, id) in [(u32::MAX, "4294967295"), (4, "4")] {
            let ids = Tensor::new(&[[2u32, 0], [bad, 1]], &dev).unwrap();
            let e = tokens_per_expert(&ids, &w, 4).unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "token 1 choice 0 is expert {id}, but there are 4 experts"
                )),
                "{e}"
            );
        }
        let negative = Tensor::new(&[[2i64, -1], [0, 1]], &dev).unwrap();
        let e = tokens_per_expert(&negative, &w, 4).unwrap_err().to_string();
        assert!(e.contains("token 0 choice 1 is expert -1"), "{e}");
        let x = Tensor::ones((2, 3), DType::F32, &dev).unwrap();
        let e = per_expert(&x, &ids, &w, 2, |_, xs| Ok(xs.clone()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is expert 2, but there are 2 experts"), "{e}");
    }
}
