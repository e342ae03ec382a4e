//! The communicator: the collectives a parallel plan needs, on candle tensors, whatever
//! carries them (MPI between processes, NCCL between GPUs, or nothing in one process).

use candle_core::{Result, Tensor};

/// The collectives of a group of processes (ranks `0..world`), each a blocking call every rank
/// makes in the same order. Tensors are split and concatenated along their first dimension.
///
/// Implementations: [`SingleProcess`] (a group of one), `MpiCommunicator` (feature `mpi`),
/// `NcclCommunicator` (feature `nccl`). The autograd-aware forms a plan computes with, each
/// with its backward, are in [`crate::ops`].
pub trait Communicator: Send + Sync + 'static {
    /// This process's rank.
    fn rank(&self) -> usize;

    /// How many processes the group has.
    fn world(&self) -> usize;

    /// What carries the collectives (`"mpi"`, `"nccl"`, `"single process"`).
    fn backend(&self) -> &'static str;

    /// The sum of every rank's `t` (same shape on every rank), on every rank.
    fn all_reduce(&self, t: &Tensor) -> Result<Tensor>;

    /// Every rank's `t` concatenated along the first dimension in rank order; the ranks' first
    /// dimensions may differ, the other dimensions may not.
    fn all_gather(&self, t: &Tensor) -> Result<Tensor>;

    /// `t`'s rows (first dimension) split into consecutive blocks of `send[r]` rows, block `r`
    /// sent to rank `r`; returns the rows received, concatenated in rank order, and how many
    /// came from each rank.
    fn all_to_all(&self, t: &Tensor, send: &[usize]) -> Result<(Tensor, Vec<usize>)>;

    /// Rank `root`'s `t` on every rank (`t` has the same shape and dtype on every rank).
    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
}

/// A group of one process: every collective is the identity. What a plan computes with when
/// it is run without a launcher, and what its unit tests use.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world(&self) -> usize {
        1
    }

    fn backend(&self) -> &'static str {
        "single process"
    }

    fn all_reduce(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }

    fn all_to_all(&self, t: &Tensor, send: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        check_counts(t, send, 1)?;
        Ok((t.clone(), send.to_vec()))
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        if root != 0 {
            candle_core::bail!("broadcast from rank {root} in a group of one process");
        }
        Ok(t.clone())
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// Checks that `send` has one count per rank and that they add up to `t`'s rows.
pub(crate) fn check_counts(t: &Tensor, send: &[usize], world: usize) -> Result<()> {
    let rows = t.dims().first().copied().unwrap_or(0);
    if send.len() != world || send.iter().try_fold(0usize, |a, &n| a.checked_add(n)) != Some(rows) {
        candle_core::bail!(
            "all_to_all: {} counts {send:?} for {world} ranks and {rows} rows",
            send.len()
        );
    }
    Ok(())
}

/// Elements in one row (first-dimension entry) of `t`, whatever its number of rows.
#[cfg(any(feature = "mpi", feature = "nccl"))]
pub(crate) fn row_len(t: &Tensor) -> usize {
    t.dims().iter().skip(1).product()
}
