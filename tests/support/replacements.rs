//! Replacements the tests register. None carries `#[patch]`: linking this library registers
//! nothing, each test decides what it registers.

use candle_core::Tensor;
use patch_core::{Build, Builder, Result};
use toy_model::{Attention, BertSelfAttention, LayerArgs, Mlp, Norm, ToyConfig};

/// Wraps the original inner attention and doubles its output: fills the `Attention` slot.
pub struct DoubledAttention {
    inner: BertSelfAttention,
}
impl Build for DoubledAttention {
    type Slot = dyn Attention;
    fn build(b: &Builder, args: LayerArgs<'_>) -> Result<Box<dyn Attention>> {
        Ok(Box::new(DoubledAttention {
            inner: BertSelfAttention::new(b, args)?,
        }))
    }
}
impl Attention for DoubledAttention {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.inner.forward(x)? * 2.0
    }
}

/// An MLP that outputs zeros and reads no weights: fills the `Mlp` slot.
pub struct ZeroMlp;
impl Build for ZeroMlp {
    type Slot = dyn Mlp;
    fn build(_: &Builder, _: LayerArgs<'_>) -> Result<Box<dyn Mlp>> {
        Ok(Box::new(ZeroMlp))
    }
}
impl Mlp for ZeroMlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.zeros_like()
    }
}

/// Another MLP replacement, to tell winners apart.
pub struct IdentityMlp;
impl Build for IdentityMlp {
    type Slot = dyn Mlp;
    fn build(_: &Builder, _: LayerArgs<'_>) -> Result<Box<dyn Mlp>> {
        Ok(Box::new(IdentityMlp))
    }
}
impl Mlp for IdentityMlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(x.clone())
    }
}

/// A norm that does nothing: fills the `Norm` slot.
pub struct NoNorm;
impl Build for NoNorm {
    type Slot = dyn Norm;
    fn build(_: &Builder, _: &ToyConfig) -> Result<Box<dyn Norm>> {
        Ok(Box::new(NoNorm))
    }
}
impl Norm for NoNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(x.clone())
    }
}
