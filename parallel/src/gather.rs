//! The reverse of a sharding transform: a full tensor rebuilt from every rank's slice, what
//! gradients by checkpoint key and saving read ([`patch_checkpoint::Gather`]).

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use patch_checkpoint::{Gather, Replicas, ShardRange};

use crate::comm::Communicator;

/// All-gathers the slices of a tensor split across the ranks of `comm`: disjoint slices are
/// placed, slices several ranks hold (replicated key/value heads) taken once
/// ([`Replicas::Identical`]) or added ([`Replicas::Summed`]).
pub struct AllGather(pub Arc<dyn Communicator>);

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
        let ranges = Tensor::new(&[range.start as u32, range.len as u32], device)?;
        let ranges = comm
            .all_gather(&ranges.reshape((1, 2))?)?
            .to_vec2::<u32>()?;
        // The split dimension first, so that every rank's slice is whole rows.
        let rows = local.transpose(0, range.dim)?.contiguous()?;
        let all = comm.all_gather(&rows)?;
        let dtype = local.dtype();
        let mut shape = rows.dims().to_vec();
        shape[0] = full_len;
        let mut full = Tensor::zeros(shape, DType::F32, device)?;
        let mut covered = vec![false; full_len];
        let mut at = 0usize;
        for r in &ranges {
            let (start, len) = (r[0] as usize, r[1] as usize);
            let piece = all.narrow(0, at, len)?.to_dtype(DType::F32)?;
            at += len;
            let fresh = covered
                .get(start..start + len)
                .is_some_and(|c| c.iter().all(|&c| !c));
            if replicas == Replicas::Identical && !fresh {
                continue;
            }
            let index = Tensor::arange(start as u32, (start + len) as u32, device)?;
            full = full.index_add(&index, &piece, 0)?;
            covered
                .get_mut(start..start + len)
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!("slice {start}+{len} past {full_len}"))
                })?
                .iter_mut()
                .for_each(|c| *c = true);
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
