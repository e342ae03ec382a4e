//! Replacements that ship with the models, registered like any user's: the fused-QKV
//! attention (the upstream page's "fused layers" motivation), and the named patch sets the CLI
//! builds with (`patchwork compare --patch-set NAME`). Quantized projections and experts ship
//! in a crate of their own (`patchwork-quant`), built on this crate's public API as a user's
//! crate of patches would be.

mod fused_qkv;

pub use fused_qkv::FusedQkvAttention;

use patch_core::{PatchSet, Replacement};

use crate::{Error, Result};

/// The names [`patch_set`] knows.
pub const PATCH_SETS: &[&str] = &["fused-qkv"];

/// The patch set named `name`: `fused-qkv` replaces every family's attention
/// (`".*Attention"`) with [`FusedQkvAttention`]. An error lists the known names.
pub fn patch_set(name: &str) -> Result<PatchSet> {
    match name {
        "fused-qkv" => Ok(PatchSet::from_mapping([(
            ".*Attention",
            Replacement::of::<FusedQkvAttention>(),
        )])?),
        other => Err(Error::input(
            "patch set",
            format!(
                "unknown patch set {other:?} (known: {})",
                PATCH_SETS.join(", ")
            ),
        )),
    }
}
