//! Expert parallelism as a patch: each rank holds `num_experts / world` of a layer's routed
//! experts; tokens travel to the rank holding their expert and back by all-to-all.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use candle_nn::Init;
use patch_checkpoint::ShardRange;
use patch_core::{Build, Builder, Result};
use patchwork_models::decoder::{Experts, MoeArgs, PassContext, StackedExperts};

use crate::comm::Communicator;
use crate::error::{alone, other};
use crate::gather::AllGather;
use crate::layout::Layout;
use crate::ops::{exchange_rows, gather_rows, split_rows};

/// A layer's routed experts split across ranks: this rank's `experts_per_rank` consecutive
/// experts (a [`StackedExperts`] over its slice of `gate_up_proj` and `down_proj`, read alone
/// from the checkpoint).
///
/// The routing is computed once, by the router every rank holds. Then each rank takes its
/// share of the tokens, sends each (token, expert) pair to the rank holding the expert
/// (all-to-all), runs its experts on what it received (the pass's experts implementation,
/// weighted by the routing weights), sends the results back (the reverse all-to-all), sums
/// them per token, and the shares are gathered so every rank has every token's output. Replay
/// (`forced_experts`) and router recording are the router's and unchanged. Built by
/// [`crate::ParallelPlan::patches`].
pub struct ExpertParallel {
    local: StackedExperts,
    first: usize,
    experts_per_rank: usize,
    comm: Arc<dyn Communicator>,
}

impl ExpertParallel {
    pub(crate) fn build_with(
        layout: &Arc<Layout>,
        b: &Builder,
        args: MoeArgs<'_>,
    ) -> Result<Box<dyn Experts>> {
        let c = args.config;
        let moe = c.moe()?;
        let e = moe.num_experts;
        let (first, n) = layout.share("num_experts", e).map_err(other)?;
        let range = ShardRange::new(0, first, n);
        let local = load_bank(layout, b, args, range, range)?;
        b.describe(format!(
            "experts {first}..{} of {e} ({})",
            first + n,
            layout.who()
        ));
        Ok(Box::new(Self {
            local,
            first,
            experts_per_rank: n,
            comm: layout.comm.clone(),
        }))
    }

    /// The first expert this rank holds, and how many.
    pub fn experts(&self) -> (usize, usize) {
        (self.first, self.experts_per_rank)
    }
}

impl Build for ExpertParallel {
    type Slot = dyn Experts;

    /// Not buildable alone: the plan's patches carry the communicator.
    fn build(b: &Builder, _: MoeArgs<'_>) -> Result<Box<dyn Experts>> {
        Err(alone("ExpertParallel", b))
    }
}

/// This rank's slices `gate_up` of `gate_up_proj` (`[E, 2I, H]`) and `down` of `down_proj`
/// (`[E, H, I]`) as a [`StackedExperts`], each read alone, kept in the config's
/// `weight_dtype`, gathered back for gradients and saving.
pub(crate) fn load_bank(
    layout: &Layout,
    b: &Builder,
    args: MoeArgs<'_>,
    gate_up: ShardRange,
    down: ShardRange,
) -> Result<StackedExperts> {
    let c = args.config;
    let moe = c.moe()?;
    let (e, i, h) = (moe.num_experts, moe.moe_intermediate_size, c.hidden_size);
    let weights = match c.weight_dtype {
        Some(dtype) => b.weights().with_dtype(dtype),
        None => b.weights().clone(),
    };
    let init = Init::Randn {
        mean: 0.0,
        stdev: c.initializer_range,
    };
    let gather = Arc::new(AllGather(layout.comm.clone()));
    Ok(StackedExperts {
        gate_up_proj: weights.get_shard(
            (e, 2 * i, h),
            "gate_up_proj",
            init,
            gate_up,
            gather.clone(),
        )?,
        down_proj: weights.get_shard((e, h, i), "down_proj", init, down, gather)?,
        act: c.hidden_act,
    })
}

/// Rank `rank`'s share of `n` tokens: consecutive, sizes differing by at most one.
fn token_share(n: usize, rank: usize, world: usize) -> (usize, usize) {
    let (base, extra) = (n / world, n % world);
    (
        rank * base + rank.min(extra),
        base + usize::from(rank < extra),
    )
}

impl Experts for ExpertParallel {
    fn forward(
        &self,
        x: &Tensor,
        indices: &Tensor,
        weights: &Tensor,
        pass: &PassContext,
    ) -> candle_core::Result<Tensor> {
        let comm = &self.comm;
        let tracks = pass.tracks_gradients();
        let (tokens, hidden) = x.dims2()?;
        let k = indices.dim(1)?;
        let (start, len) = token_share(tokens, comm.rank(), comm.world());
        let x_own = split_rows(comm, x, start, len, tracks)?;
        let w_own = split_rows(comm, weights, start, len, tracks)?;
        let chosen = indices
            .narrow(0, start, len)?
            .to_dtype(DType::U32)?
            .to_vec2::<u32>()?;
        // Every (token, slot) pair of this share, ordered by the rank holding its expert.
        let world = comm.world();
        let mut pairs: Vec<(usize, u32, u32, u32)> = Vec::with_capacity(len * k);
        for (t, row) in chosen.iter().enumerate() {
            for (j, &expert) in row.iter().enumerate() {
                let dest = expert as usize / self.experts_per_rank;
                if dest >= world {
                    candle_core::bail!(
                        "expert {expert} chosen, the layer has {}",
                        world * self.experts_per_rank
                    );
                }
                let local = expert - (dest * self.experts_per_rank) as u32;
                pairs.push((dest, t as u32, (t * k + j) as u32, local));
            }
        }
        pairs.sort_by_key(|p| p.0);
        let mut send = vec![0usize; world];
        for p in &pairs {
            send[p.0] += 1;
        }
        let device = x.device();
        let column = |f: fn(&(usize, u32, u32, u32)) -> u32| {
            let v: Vec<u32> = pairs.iter().map(f).collect();
            Tensor::from_vec(v, pairs.len(), device)
        };
        let (token_ix, slot_ix) = (column(|p| p.1)?, column(|p| p.2)?);
        let x_sel = x_own.index_select(&token_ix, 0)?;
        let w_sel = w_own
            .flatten_all()?
            .index_select(&slot_ix, 0)?
            .reshape((pairs.len(), 1))?;
        let e_sel = column(|p| p.3)?.reshape((pairs.len(), 1))?;
        let (x_in, recv) = exchange_rows(comm, &x_sel, &send, tracks)?;
        let (w_in, _) = exchange_rows(comm, &w_sel, &send, tracks)?;
        let (e_in, _) = comm.all_to_all(&e_sel, &send)?;
        let y_in = if x_in.dim(0)? == 0 {
            Tensor::zeros((0, hidden), x.dtype(), device)?
        } else {
            self.local
                .forward(&x_in, &e_in, &w_in.to_dtype(weights.dtype())?, pass)?
        };
        let (y_back, _) = exchange_rows(comm, &y_in, &recv, tracks)?;
        let own = Tensor::zeros((len, hidden), y_back.dtype(), device)?;
        let own = if pairs.is_empty() {
            own
        } else {
            own.index_add(&token_ix, &y_back, 0)?
        };
        gather_rows(comm, &own, tracks)
    }
}

#[cfg(test)]
mod tests {
    use super::token_share;

    #[test]
    fn token_shares_cover_every_token_once_in_order() {
        for n in 0..9 {
            for world in 1..5 {
                let mut at = 0;
                for rank in 0..world {
                    let (start, len) = token_share(n, rank, world);
                    assert_eq!(start, at);
                    at += len;
                }
                assert_eq!(at, n, "n {n} world {world}");
            }
        }
    }
}
