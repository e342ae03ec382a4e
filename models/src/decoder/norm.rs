//! The norm slot: a shape-preserving normalisation of the last dimension.

use candle_core::Tensor;
use patch_core::{Module, Observed, ObservedSite, Slot};

use crate::decoder::capture::PassContext;
use crate::decoder::config::DecoderConfig;

/// The norm slot: a shape-preserving normalisation of the last dimension.
pub trait Norm: Module {
    /// Normalises `x` (`[..., dim]`).
    fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor>;
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

    fn observe(module: Box<Self>, site: ObservedSite) -> Box<Self> {
        Box::new(Observed::new(module, site))
    }
}
