//! The NCCL backend: the same [`Communicator`] between GPUs, on candle's CUDA stack (cudarc's
//! NCCL bindings), one process per GPU. Float32 on the wire (other dtypes converted), every
//! collective a candle custom op whose CUDA forward calls NCCL on the tensor's device buffer.

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::nccl::safe::{Comm, Id, ReduceOp, group_end, group_start};
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

use crate::comm::{Communicator, check_counts, row_len};

/// One GPU of a group of processes, as a [`Communicator`] over NCCL.
///
/// Rank 0 makes the group's id ([`NcclCommunicator::new_id`]) and hands its bytes to every
/// rank (through MPI's broadcast, a file, the launcher); each rank then joins with
/// [`NcclCommunicator::join`] on its own CUDA device.
pub struct NcclCommunicator {
    comm: Arc<Mutex<SendComm>>,
    device: Device,
    rank: usize,
    world: usize,
}

struct SendComm(Comm);

// SAFETY: NCCL communicators may be used from any thread as long as calls do not overlap;
// every call goes through the mutex.
unsafe impl Send for SendComm {}

fn nccl_err(e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("nccl: {e:?}"))
}

impl NcclCommunicator {
    /// A new group id (on rank 0), as the bytes every rank passes to [`NcclCommunicator::join`].
    pub fn new_id() -> Result<Vec<u8>> {
        let id = Id::new().map_err(nccl_err)?;
        Ok(id.internal().iter().map(|&c| c as u8).collect())
    }

    /// Joins the group `id` as `rank` of `world`, on `device` (a CUDA device).
    pub fn join(device: &Device, rank: usize, world: usize, id: &[u8]) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            candle_core::bail!("nccl: {device:?} is not a CUDA device");
        };
        let mut internal = [0 as std::ffi::c_char; 128];
        if id.len() != internal.len() {
            candle_core::bail!("nccl: a group id has 128 bytes, got {}", id.len());
        }
        for (d, &s) in internal.iter_mut().zip(id) {
            *d = s as std::ffi::c_char;
        }
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, world, Id::uninit(internal))
            .map_err(nccl_err)?;
        Ok(Self {
            comm: Arc::new(Mutex::new(SendComm(comm))),
            device: device.clone(),
            rank,
            world,
        })
    }

    fn run(&self, t: &Tensor, kind: Kind) -> Result<Tensor> {
        let dtype = t.dtype();
        let x = t.to_dtype(DType::F32)?.contiguous()?;
        let op = NcclOp {
            comm: self.comm.clone(),
            world: self.world,
            kind,
        };
        x.apply_op1_no_bwd(&op)?.to_dtype(dtype)
    }
}

#[derive(Clone)]
enum Kind {
    Reduce,
    /// Every rank sends the same number of elements.
    Gather,
    Broadcast(usize),
    /// Elements sent to and received from each rank.
    Exchange {
        send: Vec<usize>,
        recv: Vec<usize>,
    },
}

struct NcclOp {
    comm: Arc<Mutex<SendComm>>,
    world: usize,
    kind: Kind,
}

impl CustomOp1 for NcclOp {
    fn name(&self) -> &'static str {
        "nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("nccl: the tensor is on the CPU, NCCL works on CUDA devices")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("nccl: input not contiguous".into()))?;
        let src = s.as_cuda_slice::<f32>()?.slice(start..end);
        let dev: CudaDevice = s.device().clone();
        let n = end - start;
        let comm = self.comm.lock().unwrap_or_else(PoisonError::into_inner);
        let comm = &comm.0;
        let mut dims = l.shape().dims().to_vec();
        let (out, total) = match &self.kind {
            Kind::Reduce => {
                let mut dst = dev.alloc_zeros::<f32>(n)?;
                comm.all_reduce(&src, &mut dst, &ReduceOp::Sum)
                    .map_err(nccl_err)?;
                (dst, n)
            }
            Kind::Gather => {
                let mut dst = dev.alloc_zeros::<f32>(n * self.world)?;
                comm.all_gather(&src, &mut dst).map_err(nccl_err)?;
                if let Some(first) = dims.first_mut() {
                    *first *= self.world;
                }
                (dst, n * self.world)
            }
            Kind::Broadcast(root) => {
                let mut dst = dev.alloc_zeros::<f32>(n)?;
                comm.broadcast(Some(&src), &mut dst, *root as i32)
                    .map_err(nccl_err)?;
                (dst, n)
            }
            Kind::Exchange { send, recv } => {
                let total: usize = recv.iter().sum();
                let mut dst = dev.alloc_zeros::<f32>(total)?;
                group_start().map_err(nccl_err)?;
                let (mut s_at, mut r_at) = (0usize, 0usize);
                for peer in 0..self.world {
                    let (sn, rn) = (send[peer], recv[peer]);
                    if sn > 0 {
                        comm.send(&src.slice(s_at..s_at + sn), peer as i32)
                            .map_err(nccl_err)?;
                    }
                    if rn > 0 {
                        comm.recv(&mut dst.slice_mut(r_at..r_at + rn), peer as i32)
                            .map_err(nccl_err)?;
                    }
                    s_at += sn;
                    r_at += rn;
                }
                group_end().map_err(nccl_err)?;
                (dst, total)
            }
        };
        let per_row: usize = l.shape().dims().iter().skip(1).product();
        if let (Kind::Exchange { .. }, Some(first)) = (&self.kind, dims.first_mut()) {
            *first = total.checked_div(per_row).unwrap_or(0);
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(dims)))
    }
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce(&self, t: &Tensor) -> Result<Tensor> {
        self.run(t, Kind::Reduce)
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        // NCCL gathers equal sizes: every rank's rows padded to the most any rank has.
        let rows = t.dims().first().copied().unwrap_or(1);
        let counts = self.run(&Tensor::new(&[rows as f32], t.device())?, Kind::Gather)?;
        let counts: Vec<usize> = counts
            .to_vec1::<f32>()?
            .iter()
            .map(|&c| c as usize)
            .collect();
        let most = counts.iter().copied().max().unwrap_or(0);
        let padded = if most > rows {
            let mut pad = t.dims().to_vec();
            pad[0] = most - rows;
            Tensor::cat(&[t, &Tensor::zeros(pad, t.dtype(), t.device())?], 0)?
        } else {
            t.clone()
        };
        let all = self.run(&padded, Kind::Gather)?;
        let parts = counts
            .iter()
            .enumerate()
            .map(|(r, &c)| all.narrow(0, r * most, c))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }

    fn all_to_all(&self, t: &Tensor, send: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        check_counts(t, send, self.world)?;
        let per_row = row_len(t);
        let mine: Vec<f32> = send.iter().map(|&c| c as f32).collect();
        let matrix = self.run(
            &Tensor::new(mine.as_slice(), t.device())?.reshape((1, self.world))?,
            Kind::Gather,
        )?;
        let recv: Vec<usize> = matrix
            .narrow(1, self.rank, 1)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|&c| c as usize)
            .collect();
        let kind = Kind::Exchange {
            send: send.iter().map(|&c| c * per_row).collect(),
            recv: recv.iter().map(|&c| c * per_row).collect(),
        };
        Ok((self.run(t, kind)?, recv))
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.world {
            candle_core::bail!("broadcast from rank {root} of {}", self.world);
        }
        self.run(t, Kind::Broadcast(root))
    }

    /// An all-reduce of one element, read back: returns once every rank's has completed.
    fn barrier(&self) -> Result<()> {
        let one = Tensor::new(&[1f32], &self.device)?;
        self.all_reduce(&one)?.to_vec1::<f32>()?;
        Ok(())
    }
}
