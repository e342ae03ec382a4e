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

/// The communicator of this job, started on first use.
#[cfg(feature = "mpi")]
pub fn communicator() -> Result<Arc<dyn Communicator>, String> {
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

/// The communicator of this job: this build has no backend.
#[cfg(not(feature = "mpi"))]
pub fn communicator() -> Result<Arc<dyn Communicator>, String> {
    Err("--parallel: this patchwork was built without the `mpi` feature".into())
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
