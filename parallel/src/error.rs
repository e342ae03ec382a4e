//! What can go wrong setting up a parallel run.

/// The environment variables a launcher sets in the processes it starts (Open MPI's `mpirun`,
/// MPICH's and Intel MPI's `mpiexec`, Slurm's `srun` through PMI/PMIx).
pub const LAUNCHER_VARS: [&str; 5] = [
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "PMIX_RANK",
    "PMI_RANK",
    "SLURM_NTASKS",
];

/// What can go wrong setting up or describing a parallel run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A parallel run was asked for in a process no launcher started.
    #[error(
        "this process was not started by an MPI launcher (none of {} is set): run it as `mpirun -n 2 ...`",
        LAUNCHER_VARS.join(", ")
    )]
    NotLaunched,
    /// A size of the model does not divide across the ranks.
    #[error("{key} = {value} does not divide across {world} ranks{hint}")]
    Divide {
        /// The config key (`num_attention_heads`, `num_experts`, `intermediate_size`).
        key: &'static str,
        /// Its value.
        value: usize,
        /// The number of ranks.
        world: usize,
        /// What would work, starting with a separator.
        hint: String,
    },
    /// A config's `base_model_tp_plan` asks for what this crate does not compute.
    #[error("{0}")]
    Plan(String),
    /// A plan's name is not one this crate knows (`--parallel`).
    #[error("unknown parallel plan {0:?}: expected tp, ep or tp+ep")]
    UnknownPlan(String),
    /// The backend failed to start.
    #[error("parallel backend: {0}")]
    Backend(String),
    /// Registering the plan's patches failed.
    #[error(transparent)]
    Patch(#[from] patch_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A plan's error as a build error (its message names the key, value and ranks).
pub(crate) fn other(e: Error) -> patch_core::Error {
    patch_core::Error::other(e.to_string())
}

/// The error of a plan's type registered alone.
pub(crate) fn alone(what: &str, b: &patch_core::Builder) -> patch_core::Error {
    patch_core::Error::other(format!(
        "{what} at {:?} is built by ParallelPlan::patches(), which carries the communicator; it has no default",
        b.path()
    ))
}
