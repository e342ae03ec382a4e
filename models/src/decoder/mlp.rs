//! The MLP slot: a position-wise feed-forward network.

use candle_core::Tensor;
use patch_core::{Module, Observed, ObservedSite, Slot};

use crate::decoder::capture::PassContext;
use crate::decoder::config::DecoderConfig;

/// The MLP slot: a position-wise feed-forward network, `[..., hidden] -> [..., hidden]`.
pub trait Mlp: Module {
    /// Applies the MLP to `x`.
    fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor>;
}

/// What every MLP constructor receives.
#[derive(Clone, Copy, Debug)]
pub struct MlpArgs<'a> {
    /// The model's config view.
    pub config: &'a DecoderConfig,
    /// Intermediate width: `intermediate_size` for a dense layer, the shared expert's or one
    /// expert's size inside an MoE block.
    pub intermediate_size: usize,
}

impl<'a> MlpArgs<'a> {
    /// The arguments of one routed expert of `config`'s MoE layers (`moe_intermediate_size`).
    pub fn expert(config: &'a DecoderConfig) -> crate::Result<Self> {
        Ok(Self {
            config,
            intermediate_size: config.moe()?.moe_intermediate_size,
        })
    }
}

impl Slot for dyn Mlp {
    const NAME: &'static str = "Mlp";
    type Args<'a> = MlpArgs<'a>;

    fn observe(module: Box<Self>, site: ObservedSite) -> Box<Self> {
        Box::new(Observed::new(module, site))
    }
}
