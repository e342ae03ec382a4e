//! `--parallel PLAN`: the model split across the processes an MPI launcher started. Every rank
//! runs the same command; rank 0 alone prints and writes. A rank that fails ends the whole job
//! (`MPI_Abort`), so no rank waits forever for it.

use std::sync::Arc;
#[cfg(feature = "mpi")]
use std::sync::{Mutex, PoisonError};

use patchwork_parallel::{Communicator, ParallelPlan};

#[cfg(feature = "mpi")]
static MPI: Mutex<Option<Arc<patchwork_parallel::MpiCommunicator>>> = Mutex::new(None);

/// `--parallel`'s value.
pub fn parse_plan(s: &str) -> Result<ParallelPlan, String> {
    s.parse()
        .map_err(|e: patchwork_parallel::Error| e.to_string())
}

/// MPI between the processes of this job, started on first use.
#[cfg(feature = "mpi")]
fn mpi() -> Result<Arc<patchwork_parallel::MpiCommunicator>, String> {
    let mut mpi = MPI.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(comm) = mpi.as_ref() {
        return Ok(comm.clone());
    }
    let comm = Arc::new(
        patchwork_parallel::MpiCommunicator::from_launcher()
            .map_err(|e| format!("--parallel: {e}"))?,
    );
    *mpi = Some(comm.clone());
    Ok(comm)
}

/// The communicator of this job for a model on `device`: NCCL between the ranks' GPUs when
/// `device` is a CUDA device and this build has the `nccl` feature (its group id handed from
/// rank 0 to the others over MPI), MPI otherwise.
#[cfg(feature = "mpi")]
pub fn communicator(device: &candle_core::Device) -> Result<Arc<dyn Communicator>, String> {
    let mpi = mpi()?;
    #[cfg(feature = "nccl")]
    if device.is_cuda() {
        use patchwork_parallel::NcclCommunicator;
        let nccl = |e: candle_core::Error| format!("--parallel over NCCL: {e}");
        let id = match mpi.rank() {
            0 => NcclCommunicator::new_id().map_err(nccl)?,
            _ => vec![0u8; 128],
        };
        let id = candle_core::Tensor::new(id.as_slice(), &candle_core::Device::Cpu)
            .and_then(|t| t.to_dtype(candle_core::DType::U32))
            .and_then(|t| mpi.broadcast(&t, 0))
            .and_then(|t| t.to_vec1::<u32>())
            .map_err(nccl)?;
        let id: Vec<u8> = id.into_iter().map(|b| b as u8).collect();
        let comm = NcclCommunicator::join(device, mpi.rank(), mpi.world(), &id).map_err(nccl)?;
        return Ok(Arc::new(comm));
    }
    let _ = device;
    Ok(mpi)
}

/// The communicator of this job: this build has no backend.
#[cfg(not(feature = "mpi"))]
pub fn communicator(_device: &candle_core::Device) -> Result<Arc<dyn Communicator>, String> {
    Err("--parallel: this patchwork was built without the `mpi` feature".into())
}

/// The device of this rank for `--device DEVICE` under `--parallel`: `cuda` names the GPU of
/// this rank's index on its machine (`OMPI_COMM_WORLD_LOCAL_RANK`, or MPICH's and Slurm's), one
/// GPU per rank; other devices are every rank's.
pub fn rank_device(device: candle_core::Device) -> Result<candle_core::Device, String> {
    if !device.is_cuda() {
        return Ok(device);
    }
    let local = [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
    .unwrap_or(0);
    candle_core::Device::new_cuda(local)
        .map_err(|e| format!("--device cuda for the rank of local index {local}: {e}"))
}

/// This process's rank and the number of ranks, when it runs a parallel command.
pub fn rank() -> Option<(usize, usize)> {
    #[cfg(feature = "mpi")]
    if let Some(comm) = MPI.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
        return Some((comm.rank(), comm.world()));
    }
    None
}

/// Whether this process prints and writes: always, except on ranks other than 0.
pub fn is_root() -> bool {
    rank().is_none_or(|(rank, _)| rank == 0)
}

/// Ends the parallel run, if any: MPI finalised when the command succeeded, every rank
/// aborted with `code` when it failed here.
pub fn finish(failed: Option<i32>) {
    #[cfg(feature = "mpi")]
    if let Some(comm) = MPI.lock().unwrap_or_else(PoisonError::into_inner).take() {
        match failed {
            Some(code) => comm.abort(code),
            None => comm.finalize(),
        }
    }
    let _ = failed;
}

/// `println!` on rank 0 only (every process when not parallel).
macro_rules! say {
    ($($t:tt)*) => {
        if crate::parallel::is_root() {
            println!($($t)*);
        }
    };
}
pub(crate) use say;
