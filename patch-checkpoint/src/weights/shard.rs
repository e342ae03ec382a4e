//! Weights split across processes: a module that holds one slice of a tensor (tensor- and
//! expert-parallel plans) asks for that slice only, and records how the full tensor is rebuilt
//! (an all-gather over the processes), so that gradients by checkpoint key and saving see the
//! tensor in the checkpoint's layout whatever slice this process computes with.

use std::sync::Arc;

use candle_core::{Shape, Tensor};
use candle_nn::Init;

use super::Weights;
use crate::{Error, Result};

/// The slice of a tensor one process holds along dimension `dim`: `len` entries from `start`
/// of each of `parts` equal blocks of that dimension (`parts` is 1 for a plain slice; 2 for
/// a packed gate/up projection, whose gate rows and up rows are each split).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardRange {
    /// The dimension the tensor is split along.
    pub dim: usize,
    /// The first entry this process holds, in each block.
    pub start: usize,
    /// How many entries it holds, in each block.
    pub len: usize,
    /// How many equal blocks the dimension is made of, each split alike.
    pub parts: usize,
}

impl ShardRange {
    /// `len` entries from `start` of dimension `dim`.
    pub fn new(dim: usize, start: usize, len: usize) -> Self {
        Self {
            dim,
            start,
            len,
            parts: 1,
        }
    }

    /// The same slice taken in each of `parts` equal blocks of the dimension.
    pub fn packed(self, parts: usize) -> Self {
        Self { parts, ..self }
    }

    /// Where this slice's entries sit in a dimension of `full_len`, in order; `None` when the
    /// slice does not fit (an empty slice, blocks that do not divide `full_len`, or entries
    /// past a block's end).
    pub fn positions(&self, full_len: usize) -> Option<Vec<usize>> {
        if self.len == 0 || self.parts == 0 || !full_len.is_multiple_of(self.parts) {
            return None;
        }
        let block = full_len / self.parts;
        if self.start.checked_add(self.len)? > block {
            return None;
        }
        Some(
            (0..self.parts)
                .flat_map(|p| (self.start..self.start + self.len).map(move |i| p * block + i))
                .collect(),
        )
    }
}

/// How the slices of several processes that hold the same range combine when the full tensor
/// is rebuilt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicas {
    /// They hold the same values (weights): one of them is taken.
    Identical,
    /// Each holds a part of a sum (gradients of a replicated slice, each process's share of
    /// the loss): they are added.
    Summed,
}

/// Rebuilds a full tensor from every process's slice: the reverse of a sharding transform,
/// collective (every process calls it, in the same order, for the same parameters).
pub trait Gather: Send + Sync + 'static {
    /// The full tensor, `full_len` entries along `range.dim`, from this process's `local`
    /// slice (`range`) and the other processes' slices.
    fn gather(
        &self,
        local: &Tensor,
        range: ShardRange,
        full_len: usize,
        replicas: Replicas,
    ) -> candle_core::Result<Tensor>;
}

/// A sharded parameter's record: its full shape, the slice held here, and how to rebuild it.
#[derive(Clone)]
pub struct Shard {
    /// The full tensor's shape, as the checkpoint stores it.
    pub full_shape: Shape,
    /// The slice this process holds.
    pub range: ShardRange,
    /// How the full tensor is rebuilt.
    pub gather: Arc<dyn Gather>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("full_shape", &self.full_shape)
            .field("range", &self.range)
            .finish()
    }
}

impl Shard {
    /// The full tensor rebuilt from `local` (this process's slice, or a value of its shape
    /// such as its gradient).
    pub fn gather(&self, local: &Tensor, replicas: Replicas) -> candle_core::Result<Tensor> {
        let full_len = self.full_shape.dims()[self.range.dim];
        self.gather.gather(local, self.range, full_len, replicas)
    }
}

/// Rows of a chunked read kept at once: about 4 MiB of float32.
const CHUNK_BYTES: usize = 4 << 20;

impl Weights {
    /// Declares the tensor already handed out as `name` (under this path) whole on this
    /// process and on every other, each process's gradient being a part of the sum (a norm
    /// applied to this process's attention heads only): gradients by checkpoint key add the
    /// processes' gradients through `gather`, saving takes this process's values. An error
    /// when nothing was handed out under `name`.
    pub fn declare_replicated(&self, name: &str, gather: Arc<dyn Gather>) -> Result<()> {
        let full_name = self.full_name(name);
        let tensor = self.params.get(&full_name).ok_or_else(|| Error::Missing {
            name: full_name.clone(),
            shape: Vec::new(),
            context: ": declared replicated, but never handed out".into(),
        })?;
        let len = tensor.dims().first().copied().unwrap_or(1);
        self.params.insert_shard(
            &full_name,
            Shard {
                full_shape: tensor.shape().clone(),
                range: ShardRange::new(0, 0, len),
                gather,
            },
        );
        Ok(())
    }

    /// This process's slice `range` of the tensor `name` (full shape `full`), recorded as a
    /// sharded parameter: the state dict holds the slice (a trainable handle makes it the
    /// variable), gradients by checkpoint key and saving rebuild the full tensor through
    /// `gather`. A slice of the first dimension (output rows, experts) is read alone
    /// ([`crate::WeightSource::get_row_range`]); a slice of another dimension (input columns)
    /// is read in chunks of rows, each cut to the slice before the next is read, so no
    /// process holds the whole tensor. An error names the tensor when `range` does not fit
    /// `full`.
    pub fn get_shard(
        &self,
        full: impl Into<Shape>,
        name: &str,
        init: Init,
        range: ShardRange,
        gather: Arc<dyn Gather>,
    ) -> Result<Tensor> {
        let full_shape = full.into();
        let full_name = self.full_name(name);
        let dims = full_shape.dims().to_vec();
        let positions = dims.get(range.dim).and_then(|&n| range.positions(n));
        let Some(positions) = positions else {
            return Err(Error::Shape {
                name: full_name,
                expected: dims.clone(),
                found: dims,
                context: format!(": the slice {range:?} asked for does not fit this shape"),
            });
        };
        let row_bytes = dims
            .iter()
            .skip(1)
            .try_fold(4usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX)
            .max(1);
        let rows = (CHUNK_BYTES / row_bytes).max(1);
        let request = self.request(&full_name, &full_shape, init);
        let index = |device: &candle_core::Device| {
            let v: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
            Tensor::from_vec(v, positions.len(), device)
        };
        let mut kept = Vec::new();
        if range.dim == 0 && range.parts == 1 {
            // Rows: read alone.
            let rows_range = range.start..range.start + range.len;
            self.source
                .get_row_range(&request, rows_range, rows, &mut |chunk| {
                    kept.push(chunk.contiguous()?);
                    Ok(())
                })?;
        } else if range.dim == 0 {
            let whole = self.source.get(&request)?;
            kept.push(whole.index_select(&index(whole.device())?, 0)?);
        } else {
            // Chunks of rows, each cut to the slice before the next is read.
            self.source.get_chunks(&request, rows, &mut |chunk| {
                let cut = chunk.index_select(&index(chunk.device())?, range.dim)?;
                kept.push(cut.contiguous()?);
                Ok(())
            })?;
        }
        let local = match kept.len() {
            1 => kept
                .pop()
                .ok_or_else(|| candle_core::Error::Msg("internal: empty shard".into()))?,
            _ => Tensor::cat(&kept, 0)?,
        };
        let tensor = self.hand_out(&full_name, local)?;
        self.params.insert_shard(
            &full_name,
            Shard {
                full_shape,
                range,
                gather,
            },
        );
        Ok(tensor)
    }
}
