//! A crate of patches that registers them at link time with `#[patch]`: a binary that links it
//! and references it (`use linked_patches as _;`) gets its MLP replaced everywhere, with no
//! run-time call.

use candle_core::Tensor;
use patch_core::{Build, Builder, Result, patch};
use toy_model::{LayerArgs, Mlp};

/// Replaces every `ToyMLP`: outputs its input negated, reads no weights.
#[patch("ToyMLP", name = "negating MLP")]
pub struct LinkedMlp;

impl Build for LinkedMlp {
    type Slot = dyn Mlp;
    fn build(_: &Builder, _: LayerArgs<'_>) -> Result<Box<dyn Mlp>> {
        Ok(Box::new(LinkedMlp))
    }
}

impl Mlp for LinkedMlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.neg()
    }
}
