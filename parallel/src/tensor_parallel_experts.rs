//! Tensor parallelism inside routed experts (transformers' `moe_tp_experts`): each rank holds
//! every expert's share of the intermediate width, `gate_up_proj` split as packed columns (its
//! gate rows and its up rows each split) and `down_proj` by rows, the partial outputs summed
//! over ranks.

use std::sync::Arc;

use candle_core::Tensor;
use patch_checkpoint::ShardRange;
use patch_core::{Build, Builder, Result};
use patchwork_models::decoder::{Experts, MoeArgs, PassContext, StackedExperts};

use crate::comm::Communicator;
use crate::error::{alone, other};
use crate::experts::load_bank;
use crate::layout::Layout;
use crate::ops::{copy_to_ranks, reduce_from_ranks};
use crate::tp_plan::TpPlan;

/// The entries of a tensor-parallel plan that split routed experts.
const EXPERTS: [(&str, &str); 3] = [
    ("", "moe_tp_experts"),
    ("gate_up_proj", "packed_colwise"),
    ("down_proj", "rowwise"),
];

/// A layer's routed experts with this rank's share of each expert's intermediate width: a
/// [`StackedExperts`] over `gate_up_proj[:, gate and up rows of the share, :]` and
/// `down_proj[:, :, the share]`, run on every token with the replicated routing, its output
/// summed over ranks. Built by [`crate::ParallelPlan::patches`] under `tp` (without `ep`).
pub struct TensorParallelExperts {
    local: StackedExperts,
    comm: Arc<dyn Communicator>,
}

impl TensorParallelExperts {
    pub(crate) fn build_with(
        layout: &Arc<Layout>,
        b: &Builder,
        args: MoeArgs<'_>,
    ) -> Result<Box<dyn Experts>> {
        let c = args.config;
        if !TpPlan::of(c)
            .and_then(|p| p.splits(b.path(), &EXPERTS))
            .map_err(other)?
        {
            b.describe("not split: base_model_tp_plan has no entry for the experts");
            return b.build_original(args);
        }
        let moe = c.moe()?;
        let (e, i) = (moe.num_experts, moe.moe_intermediate_size);
        let (start, len) = layout.share("moe_intermediate_size", i).map_err(other)?;
        let gate_up = ShardRange::new(1, start, len).packed(2);
        let local = load_bank(layout, b, args, gate_up, ShardRange::new(2, start, len))?;
        b.describe(format!(
            "intermediate {start}..{} of {i} in each of {e} experts ({})",
            start + len,
            layout.who()
        ));
        Ok(Box::new(Self {
            local,
            comm: layout.comm.clone(),
        }))
    }
}

impl Build for TensorParallelExperts {
    type Slot = dyn Experts;

    /// Not buildable alone: the plan's patches carry the communicator.
    fn build(b: &Builder, _: MoeArgs<'_>) -> Result<Box<dyn Experts>> {
        Err(alone("TensorParallelExperts", b))
    }
}

impl Experts for TensorParallelExperts {
    fn forward(
        &self,
        x: &Tensor,
        indices: &Tensor,
        weights: &Tensor,
        pass: &PassContext,
    ) -> candle_core::Result<Tensor> {
        let tracks = pass.tracks_gradients();
        let x = copy_to_ranks(&self.comm, x, tracks)?;
        let weights = copy_to_ranks(&self.comm, weights, tracks)?;
        let partial = self.local.forward(&x, indices, &weights, pass)?;
        reduce_from_ranks(&self.comm, &partial, tracks)
    }
}
