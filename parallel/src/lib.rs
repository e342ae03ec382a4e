#![warn(missing_docs)]
//! Tensor and expert parallelism for patchwork's models, as patch sets: a model split across
//! processes is the same model with a few sites replaced, built on the models' public API as a
//! user's crate of patches would be.
//!
//! - A [`Communicator`] carries the collectives (all-reduce, all-gather, all-to-all with
//!   counts, broadcast, barrier): [`MpiCommunicator`] between the processes `mpirun` started
//!   (feature `mpi`, on by default), `NcclCommunicator` between GPUs (feature `nccl`), or
//!   [`SingleProcess`]. [`ops`] are the same collectives with their backward, for training.
//! - A [`ParallelPlan`] (`tp`, `ep`, `tp+ep`) is a patch set: attention and MLP sites built
//!   with this rank's heads and intermediate width, their projections split by columns or
//!   rows ([`ParallelLinear`]), routed experts split across ranks ([`ExpertParallel`]).
//! - Each rank reads only its slice of each tensor
//!   (`patch_checkpoint::Weights::get_shard`); gradients by checkpoint key and saving gather
//!   the full tensors back ([`AllGather`]), so every rank sees the checkpoint's layout.
//! - Training: [`sync_gradients`] before each optimiser step adds up the gradients of what
//!   several ranks hold (per-head norms, replicated key/value heads).
//!
//! ```
//! use std::sync::Arc;
//! use patchwork_models::{AutoModelForCausalLM, LoadOptions};
//! use patchwork_parallel::{ParallelPlan, SingleProcess};
//!
//! // Under mpirun this would be `MpiCommunicator::from_launcher()?`.
//! let plan: ParallelPlan = "tp".parse()?;
//! let options = LoadOptions::default().with_added_patches(plan.patches(Arc::new(SingleProcess))?);
//! let config = serde_json::json!({"model_type": "llama", "vocab_size": 64, "hidden_size": 64,
//!     "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2});
//! let model = AutoModelForCausalLM::from_config(&config, &options)?;
//! let o = model.report().at("model.layers.0.self_attn.o_proj").unwrap();
//! assert!(o.built::<patchwork_parallel::ParallelLinear>());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod comm;
mod error;
mod experts;
mod gather;
mod layout;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
pub mod ops;
mod plan;
mod projection;
mod tensor_parallel;
mod tensor_parallel_experts;
mod tp_plan;
mod training;

pub use comm::{Communicator, SingleProcess};
pub use error::{Error, LAUNCHER_VARS, Result};
pub use experts::ExpertParallel;
pub use gather::AllGather;
pub use layout::{Slice, Split};
#[cfg(feature = "mpi")]
pub use mpi::MpiCommunicator;
#[cfg(feature = "nccl")]
pub use nccl::NcclCommunicator;
pub use plan::{PRIORITY, ParallelPlan, TP_PROJECTIONS};
pub use projection::ParallelLinear;
pub use tensor_parallel::{TensorParallelAttention, TensorParallelMlp};
pub use tensor_parallel_experts::TensorParallelExperts;
pub use tp_plan::DEFAULT_TP_PLAN;
pub use training::{save_pretrained, sync_gradients};

/// Whether this process was started by an MPI launcher (one of [`LAUNCHER_VARS`] is set).
pub fn launched() -> bool {
    LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some())
}
