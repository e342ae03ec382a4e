#![warn(missing_docs)]
//! Checkpoints for patchwork: where a module under construction gets its weights, and how they
//! are written back.
//!
//! - A [`Weights`] handle is the path-scoped view a layer pulls its tensors from (like candle's
//!   `VarBuilder`, which it can also hand out). Behind it sits a [`WeightSource`]: a
//!   [`CheckpointSource`] over a [`Checkpoint`] folder, in-memory tensors ([`TensorMap`]) or
//!   seeded random initialisation ([`RandomInit`]). Every tensor handed out is recorded in the
//!   handle's [`ParamStore`]: the state dict that saving and parameter counts read.
//! - [`Transform`]s ([`WeightRenaming`], [`WeightConverter`] with [`Op`] chains, upstream's
//!   names) map the checkpoint's layout to the one the built modules ask for. The registry
//!   ([`register_checkpoint_conversion_mapping`]) holds them per model type or class name; a
//!   replacement module can carry its own, scoped to the path it is built at
//!   ([`Weights::with_transforms`]).
//! - Loading is pull-based: a module asks for a tensor by its own name; the plan says which
//!   keys make it and how, and only those are read, one conversion unit at a time. Problems
//!   are collected and reported together by [`Weights::finish`] ([`Problem`]); a
//!   [`LoadReport`] says what happened.
//! - [`save_pretrained`] writes the weights back in the checkpoint's layout through the
//!   reverse ops, sharded above a size limit; [`resave`] does load-then-save for a folder.
//!
//! ```
//! use std::sync::Arc;
//! use candle_core::{DType, Device};
//! use patch_checkpoint::{Op, RandomInit, SaveOptions, Weights, WeightConverter, save_pretrained};
//!
//! # fn main() -> patch_checkpoint::Result<()> {
//! // A model built from its config: random weights, saved in the per-expert checkpoint layout.
//! let weights = Weights::new(RandomInit::new(0, 0.02), DType::F32, &Device::Cpu);
//! let experts = weights.pp("model.layers.0.mlp.experts");
//! experts.get((4, 2 * 8, 16), "gate_up_proj")?; // [E, 2I, H]
//! experts.get((4, 16, 8), "down_proj")?; // [E, H, I]
//! let dir = tempfile::tempdir().unwrap();
//! let config = serde_json::json!({"model_type": "qwen2_moe"});
//! save_pretrained(dir.path(), &config, &weights, &patch_checkpoint::mappings::qwen2_moe(), &SaveOptions::default())?;
//! let saved = patch_checkpoint::Checkpoint::open(dir.path())?;
//! assert_eq!(saved.tensors().len(), 3 * 4); // gate, up, down for each of 4 experts
//! # Ok(()) }
//! ```

mod accounting;
mod checkpoint;
mod claim;
mod compile;
mod convert;
mod deprecated;
mod error;
pub mod files;
pub mod mappings;
pub mod memory;
mod ops;
mod origin;
mod params;
mod pattern;
mod plan;
mod progress;
mod registry;
mod rename;
mod resave;
mod safetensors_header;
mod safetensors_io;
mod safetensors_write;
mod save;
mod session;
mod source;
mod transform;
mod var_builder;
mod weights;

pub use accounting::{FiredTransform, LoadReport, Problem, SHOWN_PROBLEMS, format_problems};
pub use checkpoint::Checkpoint;
#[allow(deprecated)]
pub use deprecated::MappingOrigin;
pub use error::{Error, Result};
pub use origin::Origin;
pub use params::{Param, ParamStore};
pub use progress::{Progress, ProgressEvent, Stage};
pub use registry::{
    ConversionEntry, ConversionRegistry, RegisteredAt, checkpoint_conversion_mapping_for,
    conversion_registry, get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping,
    unregister_checkpoint_conversion_mapping,
};
pub use resave::{ResaveReport, resave};
pub use safetensors_header::MAX_HEADER_BYTES;
pub use safetensors_io::{parse_safetensors, read_safetensors};
pub use safetensors_write::write_safetensors;
pub use save::{SaveOptions, SaveReport, save_pretrained, to_checkpoint_layout};
pub use session::{CheckpointSource, PlannedTensor};
pub use source::{RandomInit, TensorMap};
pub use transform::{Op, Transform, WeightConverter, WeightRenaming};
pub use weights::{
    Gather, Replicas, Shard, ShardRange, TransformScope, WeightRequest, WeightSource, Weights,
};

/// Initialisation hints, as candle-nn defines them (used by random sources only).
pub use candle_nn::Init;

#[doc(hidden)]
pub mod fuzzing;

/// Not public API: what the macros expand to.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
}
