//! Training a split model: the gradients an optimiser steps with, made whole where several
//! ranks hold the same values.

use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use patch_checkpoint::Weights;

use crate::comm::Communicator;
use crate::gather::{positions, ranges};

/// Makes `grads` what one process would have computed for this rank's variables: for every
/// parameter that other ranks hold too (a norm applied to this rank's heads only, key/value
/// heads replicated across ranks), the ranks' gradients are added up. A parameter split into
/// disjoint slices, or outside any split block, already has its whole gradient and is left
/// alone. Collective: every rank calls it after `backward` and before the optimiser's step.
pub fn sync_gradients(
    weights: &Weights,
    grads: &mut GradStore,
    comm: &Arc<dyn Communicator>,
) -> candle_core::Result<()> {
    if comm.world() == 1 {
        return Ok(());
    }
    let params = weights.params();
    for (name, var) in params.vars() {
        let Some(shard) = params.shard(&name) else {
            continue;
        };
        let r = shard.range;
        let device = var.device();
        let full_len = shard.full_shape.dims()[r.dim];
        let (mine, index) = positions(r, full_len, device)?;
        let others = ranges(comm, r)?;
        let mut shared = false;
        for (rank, o) in others.iter().enumerate() {
            let theirs = o.positions(full_len).unwrap_or_default();
            shared |= rank != comm.rank() && theirs.iter().any(|p| mine.contains(p));
        }
        if !shared {
            continue;
        }
        let local = match grads.get(var.as_tensor()) {
            Some(g) => g.to_dtype(DType::F32)?,
            None => var.as_tensor().zeros_like()?.to_dtype(DType::F32)?,
        };
        // This rank's gradient at its place in the full tensor, summed over ranks, then its
        // own entries again.
        let rows = local.transpose(0, r.dim)?.contiguous()?;
        let mut shape = rows.dims().to_vec();
        shape[0] = full_len;
        let placed = Tensor::zeros(shape, DType::F32, device)?.index_add(&index, &rows, 0)?;
        let summed = comm.all_reduce(&placed)?.index_select(&index, 0)?;
        let summed = summed
            .transpose(0, r.dim)?
            .contiguous()?
            .to_dtype(var.dtype())?;
        grads.insert(var.as_tensor(), summed);
    }
    Ok(())
}

/// Saves a split model as one process would (`CausalLM::save_pretrained`): every rank rebuilds
/// the split parameters together, rank 0 writes `dir` and returns its report, the others
/// return `None`. Collective: every rank calls it.
pub fn save_pretrained(
    model: &patchwork_models::CausalLM,
    comm: &Arc<dyn Communicator>,
    dir: impl AsRef<std::path::Path>,
    options: &patch_checkpoint::SaveOptions,
) -> patchwork_models::Result<Option<patch_checkpoint::SaveReport>> {
    let params = model.weights().params();
    let root = comm.rank() == 0;
    params.gather_shards(root)?;
    let saved = if root {
        Some(model.save_pretrained(dir, options))
    } else {
        None
    };
    params.release_gathered();
    comm.barrier()?;
    saved.transpose()
}
