//! Which slice of each projection a rank holds: decided by the attention and MLP wrappers from
//! the full config (heads, intermediate size), read by the projections built under them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::comm::Communicator;
use crate::error::{Error, Result};

/// How a projection is split across ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Output rows (q/k/v, gate/up): each rank computes its rows of the output from the whole
    /// input.
    Columns,
    /// Input columns (o, down): each rank multiplies its share of the input, the partial
    /// products are summed over ranks.
    Rows,
}

/// One projection's share on this rank: `len` of `full` output rows ([`Split::Columns`]) or
/// input columns ([`Split::Rows`]) from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    /// Which dimension is split.
    pub split: Split,
    /// The full width of that dimension.
    pub full: usize,
    /// The first entry this rank holds.
    pub start: usize,
    /// How many it holds.
    pub len: usize,
}

/// The slices decided so far in one build, by module path, and the ranks they are for.
pub(crate) struct Layout {
    pub(crate) comm: Arc<dyn Communicator>,
    slices: Mutex<HashMap<String, Slice>>,
}

impl Layout {
    pub(crate) fn new(comm: Arc<dyn Communicator>) -> Self {
        Self {
            comm,
            slices: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn set(&self, path: String, slice: Slice) {
        self.slices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(path, slice);
    }

    pub(crate) fn get(&self, path: &str) -> Option<Slice> {
        self.slices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .copied()
    }

    /// `rank`'s equal share of `n` entries named `key`; an error when `n` does not divide.
    pub(crate) fn share(&self, key: &'static str, n: usize) -> Result<(usize, usize)> {
        let (rank, world) = (self.comm.rank(), self.comm.world());
        if !n.is_multiple_of(world) {
            return Err(Error::Divide {
                key,
                value: n,
                world,
                hint: format!(": run with a number of ranks that divides {n}"),
            });
        }
        let len = n / world;
        Ok((rank * len, len))
    }

    /// This rank's key/value heads of `kv` when the query heads are split evenly: an equal
    /// share when `kv` divides across the ranks, else (fewer heads than ranks, `world` a
    /// multiple of `kv`) the one head its query heads read, replicated on the ranks sharing it.
    pub(crate) fn kv_heads(&self, kv: usize) -> Result<(usize, usize)> {
        let (rank, world) = (self.comm.rank(), self.comm.world());
        if kv.is_multiple_of(world) {
            return Ok((rank * (kv / world), kv / world));
        }
        if kv > 0 && world.is_multiple_of(kv) {
            return Ok((rank / (world / kv), 1));
        }
        Err(Error::Divide {
            key: "num_key_value_heads",
            value: kv,
            world,
            hint: ": the ranks must divide the key/value heads, or be a multiple of them (heads then replicated)".into(),
        })
    }

    /// `rank N of W (backend)`, for the build report.
    pub(crate) fn who(&self) -> String {
        format!(
            "rank {} of {}, {}",
            self.comm.rank(),
            self.comm.world(),
            self.comm.backend()
        )
    }
}
