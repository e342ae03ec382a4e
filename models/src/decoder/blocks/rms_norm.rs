//! The RMS norm every family here uses.

use candle_core::Tensor;
use patch_core::{Builder, Result};

use crate::decoder::children::Children;
use crate::decoder::linear::norm_weight;
use crate::decoder::norm::NormArgs;

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

impl Children for RmsNorm {}
