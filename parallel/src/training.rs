//! Training a split model: the gradients an optimiser steps with, made whole where several
//! ranks hold the same values.

use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use patch_checkpoint::Weights;

use crate::comm::Communicator;

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
        let mine = Tensor::new(&[r.start as u32, r.len as u32], device)?.reshape((1, 2))?;
        let ranges = comm.all_gather(&mine)?.to_vec2::<u32>()?;
        let overlaps = ranges.iter().enumerate().any(|(other, o)| {
            let (start, end) = (o[0] as usize, o[0] as usize + o[1] as usize);
            other != comm.rank() && start < r.start + r.len && r.start < end
        });
        if !overlaps {
            continue;
        }
        let local = match grads.get(var.as_tensor()) {
            Some(g) => g.to_dtype(DType::F32)?,
            None => var.as_tensor().zeros_like()?.to_dtype(DType::F32)?,
        };
        // This rank's gradient at its place in the full tensor, summed over ranks, then its
        // own slice again.
        let full_len = shard.full_shape.dims()[r.dim];
        let rows = local.transpose(0, r.dim)?.contiguous()?;
        let mut shape = rows.dims().to_vec();
        shape[0] = full_len;
        let index = Tensor::arange(r.start as u32, (r.start + r.len) as u32, device)?;
        let placed = Tensor::zeros(shape, DType::F32, device)?.index_add(&index, &rows, 0)?;
        let summed = comm.all_reduce(&placed)?.narrow(0, r.start, r.len)?;
        let summed = summed
            .transpose(0, r.dim)?
            .contiguous()?
            .to_dtype(var.dtype())?;
        grads.insert(var.as_tensor(), summed);
    }
    Ok(())
}
