//! The reverse of a sharding transform: a full tensor rebuilt from every rank's slice, what
//! gradients by checkpoint key and saving read ([`patch_checkpoint::Gather`]).

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use patch_checkpoint::{Gather, Replicas, ShardRange};

use crate::comm::Communicator;

/// All-gathers the slices of a tensor split across the ranks of `comm`: disjoint slices are
/// placed, slices several ranks hold (replicated key/value heads, per-head norms) taken once
/// ([`Replicas::Identical`]) or added ([`Replicas::Summed`]).
pub struct AllGather(pub Arc<dyn Communicator>);

/// Every rank's slice (`start`, `len`, `parts`), in rank order.
pub(crate) fn ranges(comm: &Arc<dyn Communicator>, range: ShardRange) -> Result<Vec<ShardRange>> {
    let mine = [range.start, range.len, range.parts].map(|v| v as u32);
    let all = comm.all_gather(&Tensor::new(&mine, &candle_core::Device::Cpu)?.reshape((1, 3))?)?;
    Ok(all
        .to_vec2::<u32>()?
        .into_iter()
        .map(|r| ShardRange::new(range.dim, r[0] as usize, r[1] as usize).packed(r[2] as usize))
        .collect())
}

/// Where `range`'s entries sit in a dimension of `full_len`, as an index tensor.
pub(crate) fn positions(
    range: ShardRange,
    full_len: usize,
    device: &candle_core::Device,
) -> Result<(Vec<usize>, Tensor)> {
    let p = range.positions(full_len).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "the slice {range:?} does not fit {full_len} entries"
        ))
    })?;
    let index: Vec<u32> = p.iter().map(|&i| i as u32).collect();
    let n = index.len();
    Ok((p, Tensor::from_vec(index, n, device)?))
}

impl Gather for AllGather {
    fn gather(
        &self,
        local: &Tensor,
        range: ShardRange,
        full_len: usize,
        replicas: Replicas,
    ) -> Result<Tensor> {
        let comm = &self.0;
        let device = local.device();
        // The split dimension first, so that every rank's slice is whole rows.
        let rows = local.transpose(0, range.dim)?.contiguous()?;
        let all = comm.all_gather(&rows)?;
        let dtype = local.dtype();
        let mut shape = rows.dims().to_vec();
        shape[0] = full_len;
        let mut full = Tensor::zeros(shape, DType::F32, device)?;
        let mut covered = vec![false; full_len];
        let mut at = 0usize;
        for r in ranges(comm, range)? {
            let (places, index) = positions(r, full_len, device)?;
            let piece = all.narrow(0, at, places.len())?.to_dtype(DType::F32)?;
            at += places.len();
            let fresh = places.iter().all(|&p| !covered[p]);
            if replicas == Replicas::Identical && !fresh {
                continue;
            }
            full = full.index_add(&index, &piece, 0)?;
            places.iter().for_each(|&p| covered[p] = true);
        }
        if let Some(gap) = covered.iter().position(|c| !c) {
            candle_core::bail!(
                "no rank holds entry {gap} of dimension {} ({full_len})",
                range.dim
            );
        }
        full.to_dtype(dtype)?.transpose(0, range.dim)?.contiguous()
    }
}
