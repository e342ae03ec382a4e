//! `ParallelLinear`: a projection split across ranks by output rows (column-parallel) or by
//! input columns (row-parallel, the partial products summed over ranks).

use std::sync::Arc;

use candle_core::Tensor;
use candle_nn::Init;
use patch_checkpoint::ShardRange;
use patch_core::{Build, Builder, Result};
use patchwork_models::decoder::{Linear, PassContext, Projection, ProjectionArgs};

use crate::comm::Communicator;
use crate::error::alone;
use crate::gather::AllGather;
use crate::layout::{Layout, Slice, Split};
use crate::ops::{copy_to_ranks, gather_last_dim, reduce_from_ranks};

/// `x W^T + b` with `W` split across ranks ([`Slice`]): column-parallel (this rank's output
/// rows of `W` and `b`, from the replicated input) or row-parallel (this rank's input columns
/// of `W` applied to its share of the input, summed over ranks, then the replicated bias).
/// Each rank reads only its slice of the checkpoint's tensor
/// (`patch_checkpoint::Weights::get_shard`); gradients by checkpoint key and saving gather the
/// full tensor back.
pub struct ParallelLinear {
    local: Linear,
    bias: Option<Tensor>,
    slice: Slice,
    /// The output head (transformers' `colwise_rep`): this rank's vocabulary rows, the logits
    /// gathered so every rank has them all.
    gather_output: bool,
    comm: Arc<dyn Communicator>,
}

/// The output head's path.
pub(crate) const HEAD: &str = "lm_head";

impl std::fmt::Debug for ParallelLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelLinear")
            .field("slice", &self.slice)
            .field("rank", &self.comm.rank())
            .finish()
    }
}

impl ParallelLinear {
    /// How this projection is split.
    pub fn slice(&self) -> Slice {
        self.slice
    }

    /// The local layer: this rank's rows or columns of the weight (and of the bias, when
    /// column-parallel).
    pub fn local(&self) -> &Linear {
        &self.local
    }

    /// Builds the projection at `b`'s path with the slice the enclosing wrapper decided, the
    /// output head split by vocabulary rows (transformers' `lm_head: colwise_rep`: untied, and
    /// a vocabulary that divides across the ranks), or what the site builds without this
    /// replacement where nothing is split (a projection every rank holds whole: a router).
    pub(crate) fn build_with(
        layout: &Arc<Layout>,
        b: &Builder,
        args: ProjectionArgs<'_>,
    ) -> Result<Box<dyn Projection>> {
        let head = b.path() == HEAD;
        let slice = match layout.get(b.path()) {
            Some(slice) => slice,
            None if head => match head_slice(layout, b, &args) {
                Some(slice) => slice,
                None => return b.build_original(args),
            },
            None => return b.build_original(args),
        };
        let c = args.config;
        let weights = match c.weight_dtype {
            Some(dtype) if dtype != b.dtype() => b.weights().with_dtype(dtype),
            _ => b.weights().clone(),
        };
        let (out, inp) = (args.out_features, args.in_features);
        let (full, range) = match slice.split {
            Split::Columns => ((slice.full, inp), shard(0, slice)),
            Split::Rows => ((out, slice.full), shard(1, slice)),
        };
        let local_width = match slice.split {
            Split::Columns => out,
            Split::Rows => inp,
        };
        if local_width != slice.len && !head {
            return Err(patch_core::Error::other(format!(
                "{}: the block built a projection {inp} -> {out}, the plan's slice is {} of {}",
                b.path(),
                slice.len,
                slice.full
            )));
        }
        let gather = Arc::new(AllGather(layout.comm.clone()));
        let init = Init::Randn {
            mean: 0.0,
            stdev: c.initializer_range,
        };
        let weight = weights.get_shard(full, "weight", init, range, gather.clone())?;
        let zero = Init::Const(0.0);
        let (local_bias, bias) = match (args.bias, slice.split) {
            (false, _) => (None, None),
            (true, Split::Columns) => {
                let bias =
                    b.weights()
                        .get_shard(slice.full, "bias", zero, shard(0, slice), gather)?;
                (Some(bias), None)
            }
            (true, Split::Rows) => (None, Some(b.get_with_init(out, "bias", zero)?)),
        };
        let kind = match slice.split {
            Split::Columns if head => "vocabulary-parallel: rows",
            Split::Columns => "column-parallel: output rows",
            Split::Rows => "row-parallel: input columns",
        };
        b.describe(format!(
            "{kind} {}..{} of {} ({})",
            slice.start,
            slice.start + slice.len,
            slice.full,
            layout.who()
        ));
        Ok(Box::new(Self {
            local: Linear::new(weight, local_bias),
            bias,
            slice,
            gather_output: head,
            comm: layout.comm.clone(),
        }))
    }
}

/// The head's share of the vocabulary, or `None` (described) where it stays whole.
fn head_slice(layout: &Layout, b: &Builder, args: &ProjectionArgs<'_>) -> Option<Slice> {
    if args.tied.is_some() {
        b.describe("not split: tied to the token embedding, which every rank holds");
        return None;
    }
    let vocab = args.out_features;
    match layout.share("vocab_size", vocab) {
        Ok((start, len)) => Some(Slice {
            split: Split::Columns,
            full: vocab,
            start,
            len,
        }),
        Err(e) => {
            b.describe(format!("not split: {e}"));
            None
        }
    }
}

fn shard(dim: usize, slice: Slice) -> ShardRange {
    ShardRange::new(dim, slice.start, slice.len)
}

impl Build for ParallelLinear {
    type Slot = dyn Projection;

    /// Not buildable alone: the plan's patches carry the communicator.
    fn build(b: &Builder, _: ProjectionArgs<'_>) -> Result<Box<dyn Projection>> {
        Err(alone("ParallelLinear", b))
    }
}

impl Projection for ParallelLinear {
    fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor> {
        let tracks = pass.tracks_gradients();
        match self.slice.split {
            Split::Columns if self.gather_output => {
                let local = self.local.forward(&copy_to_ranks(&self.comm, x, tracks)?)?;
                gather_last_dim(&self.comm, &local, tracks)
            }
            Split::Columns => self.local.forward(&copy_to_ranks(&self.comm, x, tracks)?),
            Split::Rows => {
                let partial = self.local.forward(x)?;
                let y = reduce_from_ranks(&self.comm, &partial, tracks)?;
                match &self.bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }

    /// This rank's input width (the share a row-parallel projection multiplies).
    fn in_features(&self) -> usize {
        self.local.dims().1
    }

    /// This rank's output width (its rows of a column-parallel projection; the whole
    /// vocabulary for the head, whose logits are gathered).
    fn out_features(&self) -> usize {
        if self.gather_output {
            self.slice.full
        } else {
            self.local.dims().0
        }
    }
}
