//! Checkpoints for patchwork: where a module under construction gets its weights.
//!
//! A [`Weights`] handle is the path-scoped view a layer pulls its tensors from (like candle's
//! `VarBuilder`, which it can also hand out). Behind it sits a [`WeightSource`]: in-memory
//! tensors ([`TensorMap`]) or seeded random initialisation ([`RandomInit`]). Every tensor handed out is recorded in the
//! handle's [`ParamStore`], which is what saving and parameter counts read.
//!
//! [`Transform`]s ([`WeightRenaming`], [`WeightConverter`]) describe how a checkpoint's layout
//! maps to the layout the built modules ask for; a replacement module can carry its own,
//! scoped to the path it is built at ([`Weights::with_transforms`]).

mod checkpoint;
mod error;
mod source;
mod transform;
mod weights;

pub use checkpoint::{Checkpoint, CheckpointSource};
pub use error::{Error, Result};
pub use source::{RandomInit, TensorMap};
pub use transform::{Op, Transform, WeightConverter, WeightRenaming};
pub use weights::{ParamStore, TransformScope, WeightRequest, WeightSource, Weights};

/// Initialisation hints, as candle-nn defines them (used by random sources only).
pub use candle_nn::Init;
