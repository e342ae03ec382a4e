//! The MPI backend: the collectives of the processes `mpirun` started, through the `mpi` crate
//! (Open MPI from Debian's packages). MPI's default error handler aborts the whole job when a
//! call fails or a rank dies, so a collective never waits forever on a rank that is gone.

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor};
use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives, Equivalence, Root};

use crate::comm::{Communicator, check_counts, row_len};
use crate::error::{Error, LAUNCHER_VARS};

/// The processes `mpirun` started, as a [`Communicator`] (`MPI_COMM_WORLD`).
///
/// MPI is initialised with `MPI_THREAD_SERIALIZED` and every call holds one lock, so the
/// communicator may be shared between threads; it is finalised when dropped or by
/// [`MpiCommunicator::finalize`], and [`MpiCommunicator::abort`] ends every rank at once (what a
/// rank that failed must call, so that the others do not wait for it). Tensors travel
/// through host memory: float32, float64 and u32 as they are, other dtypes as float32.
pub struct MpiCommunicator {
    inner: Mutex<Inner>,
    rank: usize,
    world: usize,
}

struct Inner {
    world: SimpleCommunicator,
    // Finalises MPI when dropped ([`MpiCommunicator::finalize`]); `None` once finalised.
    universe: Option<Universe>,
}

// SAFETY: MPI is initialised with MPI_THREAD_SERIALIZED, which allows calls from any thread as
// long as no two run at once; every call goes through `inner`'s lock.
unsafe impl Send for Inner {}

impl std::fmt::Debug for MpiCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiCommunicator")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .finish()
    }
}

impl MpiCommunicator {
    /// Initialises MPI for the processes a launcher (`mpirun`, `mpiexec`, `srun`) started;
    /// an error when this process was not started by one (none of its environment variables
    /// is set), or when MPI was initialised already.
    pub fn from_launcher() -> crate::Result<Self> {
        if !LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some()) {
            return Err(Error::NotLaunched);
        }
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| Error::Backend("MPI was initialised already".into()))?;
        if threading < Threading::Serialized {
            return Err(Error::Backend(format!(
                "this MPI gives {threading:?} threading, MPI_THREAD_SERIALIZED is needed"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank(), world.size());
        Ok(Self {
            inner: Mutex::new(Inner {
                world,
                universe: Some(universe),
            }),
            rank: usize::try_from(rank).map_err(|_| Error::Backend(format!("rank {rank}")))?,
            world: usize::try_from(size).map_err(|_| Error::Backend(format!("size {size}")))?,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&SimpleCommunicator) -> T) -> Result<T> {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.universe.is_none() {
            candle_core::bail!("MPI was finalised");
        }
        Ok(f(&inner.world))
    }

    /// Finalises MPI (`MPI_Finalize`, collective: every rank calls it once its work is done);
    /// later collectives are errors.
    pub fn finalize(&self) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(inner.universe.take());
    }

    /// Ends every rank of the job with `code` (`MPI_Abort`): what a rank that failed calls,
    /// so that the ranks waiting for it in a collective exit instead of waiting forever.
    pub fn abort(&self, code: i32) -> ! {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.universe.is_some() {
            inner.world.abort(code)
        }
        std::process::exit(code)
    }
}

/// The element type a dtype travels as.
fn wire(dtype: DType) -> DType {
    match dtype {
        DType::F32 | DType::F64 | DType::U32 => dtype,
        _ => DType::F32,
    }
}

/// `n` as an MPI count, or an error naming what it counts.
fn count(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| {
        candle_core::Error::Msg(format!(
            "{what}: {n} elements is more than one MPI call carries"
        ))
    })
}

/// Displacements of consecutive blocks of `counts`.
fn displacements(counts: &[i32]) -> Result<Vec<i32>> {
    let mut at = 0i32;
    counts
        .iter()
        .map(|&c| {
            let d = at;
            at = at
                .checked_add(c)
                .ok_or_else(|| candle_core::Error::Msg("collective larger than i32".into()))?;
            Ok(d)
        })
        .collect()
}

/// Runs `$body` with `$v: Vec<T>` holding `$t`'s values for `$t`'s wire type `T`, and
/// `$make(Vec<T>, shape)` to build the result tensor (in `$t`'s dtype).
macro_rules! on_wire {
    ($t:expr, |$v:ident, $ty:ident| $body:expr) => {{
        let t: &Tensor = $t;
        let dtype = t.dtype();
        let flat = t.to_dtype(wire(dtype))?.flatten_all()?;
        let out: Tensor = match wire(dtype) {
            DType::F64 => {
                type $ty = f64;
                let $v = flat.to_vec1::<f64>()?;
                $body
            }
            DType::U32 => {
                type $ty = u32;
                let $v = flat.to_vec1::<u32>()?;
                $body
            }
            _ => {
                type $ty = f32;
                let $v = flat.to_vec1::<f32>()?;
                $body
            }
        };
        out.to_dtype(dtype)?.to_device(t.device())
    }};
}

fn tensor<T: candle_core::WithDType>(v: Vec<T>, dims: Vec<usize>) -> Result<Tensor> {
    Tensor::from_vec(v, dims, &Device::Cpu)
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn all_reduce(&self, t: &Tensor) -> Result<Tensor> {
        let dims = t.dims().to_vec();
        on_wire!(t, |v, T| {
            count(v.len(), "all_reduce")?;
            let mut out = vec![T::default(); v.len()];
            self.with(|w| w.all_reduce_into(&v[..], &mut out[..], SystemOperation::sum()))?;
            tensor(out, dims)?
        })
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        let mut dims = t.dims().to_vec();
        let rows = dims.first().copied().unwrap_or(1);
        let per_row = row_len(t);
        let all_rows = self.gather_counts(rows)?;
        let total_rows = all_rows.iter().sum::<usize>();
        let counts = all_rows
            .iter()
            .map(|&r| count(r.saturating_mul(per_row), "all_gather"))
            .collect::<Result<Vec<_>>>()?;
        let displs = displacements(&counts)?;
        if let Some(first) = dims.first_mut() {
            *first = total_rows;
        }
        on_wire!(t, |v, T| {
            let mut out = vec![T::default(); total_rows.saturating_mul(per_row)];
            self.with(|w| {
                let mut part = PartitionMut::new(&mut out[..], &counts[..], &displs[..]);
                w.all_gather_varcount_into(&v[..], &mut part)
            })?;
            tensor(out, dims.clone())?
        })
    }

    fn all_to_all(&self, t: &Tensor, send: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        check_counts(t, send, self.world)?;
        let mut dims = t.dims().to_vec();
        let per_row = row_len(t);
        let recv = self.exchange_counts(send)?;
        let total: usize = recv.iter().sum();
        let scount = send
            .iter()
            .map(|&r| count(r.saturating_mul(per_row), "all_to_all"))
            .collect::<Result<Vec<_>>>()?;
        let rcount = recv
            .iter()
            .map(|&r| count(r.saturating_mul(per_row), "all_to_all"))
            .collect::<Result<Vec<_>>>()?;
        let (sdispl, rdispl) = (displacements(&scount)?, displacements(&rcount)?);
        if let Some(first) = dims.first_mut() {
            *first = total;
        }
        let out = on_wire!(t, |v, T| {
            let mut out = vec![T::default(); total.saturating_mul(per_row)];
            self.with(|w| {
                let part = Partition::new(&v[..], &scount[..], &sdispl[..]);
                let mut into = PartitionMut::new(&mut out[..], &rcount[..], &rdispl[..]);
                w.all_to_all_varcount_into(&part, &mut into)
            })?;
            tensor(out, dims.clone())?
        })?;
        Ok((out, recv))
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        let root = i32::try_from(root)
            .ok()
            .filter(|&r| (r as usize) < self.world)
            .ok_or_else(|| candle_core::Error::Msg(format!("broadcast from rank {root}")))?;
        let dims = t.dims().to_vec();
        on_wire!(t, |v, T| {
            let mut buf: Vec<T> = v;
            count(buf.len(), "broadcast")?;
            self.with(|w| w.process_at_rank(root).broadcast_into(&mut buf[..]))?;
            tensor(buf, dims)?
        })
    }

    fn barrier(&self) -> Result<()> {
        self.with(|w| w.barrier())
    }
}

impl MpiCommunicator {
    /// Every rank's `n`, in rank order.
    fn gather_counts(&self, n: usize) -> Result<Vec<usize>> {
        let mine = u64::try_from(n).map_err(|_| candle_core::Error::Msg("count".into()))?;
        let mut all = vec![0u64; self.world];
        self.with(|w| w.all_gather_into(&mine, &mut all[..]))?;
        all.into_iter()
            .map(|c| usize::try_from(c).map_err(|_| candle_core::Error::Msg("count".into())))
            .collect()
    }

    /// How many rows each rank sends this one, given how many this one sends each.
    fn exchange_counts(&self, send: &[usize]) -> Result<Vec<usize>> {
        let mine = send
            .iter()
            .map(|&c| u64::try_from(c).map_err(|_| candle_core::Error::Msg("count".into())))
            .collect::<Result<Vec<u64>>>()?;
        let mut recv = vec![0u64; self.world];
        self.with(|w| w.all_to_all_into(&mine[..], &mut recv[..]))?;
        recv.into_iter()
            .map(|c| usize::try_from(c).map_err(|_| candle_core::Error::Msg("count".into())))
            .collect()
    }
}

// The wire types carry over MPI as themselves.
const _: fn() = || {
    fn is_equivalence<T: Equivalence>() {}
    is_equivalence::<f32>();
    is_equivalence::<f64>();
    is_equivalence::<u32>();
    is_equivalence::<u64>();
};
