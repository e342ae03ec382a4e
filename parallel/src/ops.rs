//! The collectives a plan computes with, each with its backward (Megatron-LM's conjugate
//! pairs): when the pass tracks gradients they are candle custom ops recording the autograd
//! graph (float32 on the CPU), otherwise plain calls on the [`Communicator`], on any device.
//!
//! | forward | backward |
//! | --- | --- |
//! | [`reduce_from_ranks`]: all-reduce | identity |
//! | [`copy_to_ranks`]: identity | all-reduce |
//! | [`gather_rows`]: all-gather | this rank's rows |
//! | [`gather_last_dim`]: all-gather of the last dimension | this rank's columns |
//! | [`split_rows`]: this rank's rows | all-gather |
//! | [`exchange_rows`]: all-to-all | the reverse all-to-all |

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

use crate::comm::Communicator;

/// The sum over ranks of `x` (a row-parallel projection's partial products); its gradient is
/// the output's, unchanged, on every rank.
pub fn reduce_from_ranks(comm: &Arc<dyn Communicator>, x: &Tensor, tracks: bool) -> Result<Tensor> {
    if !tracks || comm.world() == 1 {
        return comm.all_reduce(x);
    }
    x.contiguous()?.apply_op1(Collective {
        comm: comm.clone(),
        kind: Kind::Reduce,
    })
}

/// `x` itself (the replicated input of a column-parallel projection); its gradient is the sum
/// over ranks of the output's, since every rank's share of the computation reads it.
pub fn copy_to_ranks(comm: &Arc<dyn Communicator>, x: &Tensor, tracks: bool) -> Result<Tensor> {
    if !tracks || comm.world() == 1 {
        return Ok(x.clone());
    }
    x.contiguous()?.apply_op1(Collective {
        comm: comm.clone(),
        kind: Kind::Copy,
    })
}

/// Every rank's `x` concatenated along the first dimension, in rank order (the ranks' row
/// counts may differ); the gradient of this rank's `x` is its own rows of the output's.
pub fn gather_rows(comm: &Arc<dyn Communicator>, x: &Tensor, tracks: bool) -> Result<Tensor> {
    if !tracks || comm.world() == 1 {
        return comm.all_gather(x);
    }
    x.contiguous()?.apply_op1(Collective {
        comm: comm.clone(),
        kind: Kind::Gather(Mutex::new(None)),
    })
}

/// Every rank's `x` concatenated along the last dimension, in rank order (the ranks' shares of
/// the vocabulary, gathered into whole logits); its gradient is this rank's columns of the
/// output's.
pub fn gather_last_dim(comm: &Arc<dyn Communicator>, x: &Tensor, tracks: bool) -> Result<Tensor> {
    if comm.world() == 1 {
        return Ok(x.clone());
    }
    let dims = x.dims().to_vec();
    let last = dims.last().copied().unwrap_or(1);
    let rows = x.reshape(((), last))?.t()?.contiguous()?;
    let all = gather_rows(comm, &rows, tracks)?;
    let mut out = dims;
    if let Some(l) = out.last_mut() {
        *l = all.dim(0)?;
    }
    all.t()?.contiguous()?.reshape(out)
}

/// Rows `start..start + len` of `x`, where the ranks' ranges, in rank order, cover `x`'s rows
/// consecutively (each rank's share of replicated rows); the gradient of `x` is every rank's
/// gradient of its share, gathered.
pub fn split_rows(
    comm: &Arc<dyn Communicator>,
    x: &Tensor,
    start: usize,
    len: usize,
    tracks: bool,
) -> Result<Tensor> {
    if !tracks || comm.world() == 1 {
        return x.narrow(0, start, len);
    }
    x.contiguous()?.apply_op1(Collective {
        comm: comm.clone(),
        kind: Kind::Split { start, len },
    })
}

/// `x`'s rows in consecutive blocks of `send[r]` rows, block `r` sent to rank `r`: the rows
/// received, in rank order, and how many came from each rank. The gradient travels back by the
/// reverse exchange.
pub fn exchange_rows(
    comm: &Arc<dyn Communicator>,
    x: &Tensor,
    send: &[usize],
    tracks: bool,
) -> Result<(Tensor, Vec<usize>)> {
    if !tracks || comm.world() == 1 {
        return comm.all_to_all(x, send);
    }
    let recv = Arc::new(Mutex::new(None));
    let out = x.contiguous()?.apply_op1(Collective {
        comm: comm.clone(),
        kind: Kind::Exchange {
            send: send.to_vec(),
            recv: recv.clone(),
        },
    })?;
    let recv = recv
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or_else(|| candle_core::Error::Msg("exchange_rows: counts not recorded".into()))?;
    Ok((out, recv))
}

struct Collective {
    comm: Arc<dyn Communicator>,
    kind: Kind,
}

enum Kind {
    Reduce,
    Copy,
    /// The ranks' row counts, recorded by the forward for the backward.
    Gather(Mutex<Option<Vec<usize>>>),
    Split {
        start: usize,
        len: usize,
    },
    Exchange {
        send: Vec<usize>,
        recv: Arc<Mutex<Option<Vec<usize>>>>,
    },
}

impl Collective {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let comm = &self.comm;
        match &self.kind {
            Kind::Reduce => comm.all_reduce(x),
            Kind::Copy => Ok(x.clone()),
            Kind::Gather(rows) => {
                let n = x.dims().first().copied().unwrap_or(1);
                let counts = comm.all_gather(&Tensor::new(&[n as u32], x.device())?)?;
                let counts = counts.to_vec1::<u32>()?.into_iter().map(|c| c as usize);
                *rows.lock().unwrap_or_else(PoisonError::into_inner) = Some(counts.collect());
                comm.all_gather(x)
            }
            Kind::Split { start, len } => x.narrow(0, *start, *len),
            Kind::Exchange { send, recv } => {
                let (out, counts) = comm.all_to_all(x, send)?;
                *recv.lock().unwrap_or_else(PoisonError::into_inner) = Some(counts);
                Ok(out)
            }
        }
    }
}

impl CustomOp1 for Collective {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Reduce => "reduce-from-ranks",
            Kind::Copy => "copy-to-ranks",
            Kind::Gather(_) => "gather-rows",
            Kind::Split { .. } => "split-rows",
            Kind::Exchange { .. } => "exchange-rows",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: input not contiguous", self.name()))
        })?;
        let values = match storage {
            CpuStorage::F32(v) => v.get(start..end).ok_or_else(|| {
                candle_core::Error::Msg(format!("{}: layout out of range", self.name()))
            })?,
            other => candle_core::bail!(
                "{}: training across ranks computes in float32, got {:?}",
                self.name(),
                other.dtype()
            ),
        };
        let x = Tensor::from_slice(values, layout.shape(), &Device::Cpu)?;
        let y = self.forward(&x)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let comm = &self.comm;
        let grad = grad.to_dtype(DType::F32)?.contiguous()?;
        let g = match &self.kind {
            Kind::Reduce => grad,
            Kind::Copy => comm.all_reduce(&grad)?,
            Kind::Gather(rows) => {
                let rows = rows.lock().unwrap_or_else(PoisonError::into_inner);
                let rows = rows.as_ref().ok_or_else(|| {
                    candle_core::Error::Msg("gather-rows: backward before forward".into())
                })?;
                let before: usize = rows.iter().take(comm.rank()).sum();
                let mine = rows.get(comm.rank()).copied().unwrap_or(0);
                grad.narrow(0, before, mine)?
            }
            Kind::Split { .. } => comm.all_gather(&grad)?,
            Kind::Exchange { send, recv } => {
                let recv = recv.lock().unwrap_or_else(PoisonError::into_inner);
                let recv = recv.as_ref().ok_or_else(|| {
                    candle_core::Error::Msg("exchange-rows: backward before forward".into())
                })?;
                let (back, counts) = comm.all_to_all(&grad, recv)?;
                if counts != *send {
                    candle_core::bail!(
                        "exchange-rows: the reverse exchange returned {counts:?} rows, {send:?} were sent"
                    );
                }
                back
            }
        };
        Ok(Some(g.to_dtype(arg.dtype())?))
    }
}
