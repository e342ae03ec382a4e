//! A crate of patches that the test binaries link but never reference: the linker drops it,
//! so its `#[patch]` contributes nothing. The fix is one line in the binary:
//! `use unreferenced_patches as _;`.

use candle_core::Tensor;
use patch_core::{Build, Builder, Result, patch};
use toy_model::{Norm, ToyConfig};

/// Would replace every `ToyRMSNorm`, if the crate were referenced.
#[patch("ToyRMSNorm")]
pub struct UnreferencedNorm;

impl Build for UnreferencedNorm {
    type Slot = dyn Norm;
    fn build(_: &Builder, _: &ToyConfig) -> Result<Box<dyn Norm>> {
        Ok(Box::new(UnreferencedNorm))
    }
}

impl Norm for UnreferencedNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(x.clone())
    }
}
