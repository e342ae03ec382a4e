//! The norm slot and the RMS norm every family here uses.

use candle_core::Tensor;
use patch_core::{Builder, Module, Result, Slot};

use crate::decoder::config::DecoderConfig;
use crate::decoder::linear::norm_weight;

/// The norm slot: a shape-preserving normalisation of the last dimension.
pub trait Norm: Module {
    /// Normalises `x` (`[..., dim]`).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
}

/// What every norm constructor receives.
#[derive(Clone, Copy, Debug)]
pub struct NormArgs<'a> {
    /// The model's config view (epsilon: `rms_norm_eps`).
    pub config: &'a DecoderConfig,
    /// Width of the normalised dimension.
    pub dim: usize,
}

impl Slot for dyn Norm {
    const NAME: &'static str = "Norm";
    type Args<'a> = NormArgs<'a>;
}

/// `weight * x / sqrt(mean(x^2) + eps)` ([`crate::ops::rms_norm`]).
#[derive(Clone, Debug)]
pub struct RmsNorm {
    /// The learned scale `[dim]`.
    pub weight: Tensor,
    /// Epsilon.
    pub eps: f64,
}

impl RmsNorm {
    /// Loads `weight` under `b`.
    pub fn load(b: &Builder, args: NormArgs<'_>) -> Result<Self> {
        Ok(Self {
            weight: norm_weight(b, args.dim)?,
            eps: args.config.rms_norm_eps,
        })
    }

    /// Normalises `x`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::ops::rms_norm(x, &self.weight, self.eps)
    }
}
