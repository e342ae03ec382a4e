//! Rotary position embeddings: the parameters (`rope_theta`, `rope_scaling` /
//! `rope_parameters`), the frequencies each rope type defines, and the per-pass cos/sin tables.
//!
//! Tables are computed per forward pass for exactly the positions of its tokens, so left-padded
//! rows (whose positions start later) and dynamic scaling (which depends on the longest
//! position) need no cached state.

mod frequencies;
mod parameters;
mod tables;

pub use parameters::{RopeConfig, RopeScaling, SUPPORTED_ROPE_TYPES};
pub use tables::RopeTables;
