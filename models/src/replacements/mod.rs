//! Replacements that ship with the models, registered like any user's: the fused-QKV
//! attention (the upstream page's "fused layers" motivation), the quantized attention and MLP
//! (its "quantization compatibility" motivation), and the named patch sets the CLI builds with
//! (`patchwork compare --patch-set NAME`).

mod fused_qkv;
mod quantized;

pub use fused_qkv::FusedQkvAttention;
pub use quantized::{
    Q4K, Q8_0, QuantFormat, QuantizedAttention, QuantizedExperts, QuantizedMlp, quantized_patches,
    with_quantized_patches,
};

use patch_core::{PatchSet, Replacement};

use crate::{Error, Result};

/// The names [`patch_set`] knows.
pub const PATCH_SETS: &[&str] = &["fused-qkv", "q8_0", "q4k"];

/// The patch set named `name`: `fused-qkv` replaces every family's attention
/// (`".*Attention"`) with [`FusedQkvAttention`]; `q8_0` and `q4k` quantize every attention and
/// MLP site ([`quantized_patches`]; the output head stays float, as it is not a site). An
/// error lists the known names.
pub fn patch_set(name: &str) -> Result<PatchSet> {
    if let Some(format) = crate::Quantization::from_name(name) {
        return Ok(PatchSet::from_mapping(quantized_patches(format))?);
    }
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
