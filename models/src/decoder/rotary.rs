//! The rotary embedding slot: turns the positions of a forward pass into cos/sin tables, once
//! per pass, for every layer.

use candle_core::{DType, Device};
use patch_core::{Builder, Module, Observed, ObservedSite, Result, Slot};

use crate::decoder::capture::PassContext;
use crate::decoder::config::DecoderConfig;
use crate::decoder::positions::Positions;
use crate::decoder::rope::{RopeConfig, RopeTables};

/// The rotary embedding slot: turns the positions of a forward pass into cos/sin tables,
/// once per pass, for every layer.
pub trait RotaryEmbedding: Module {
    /// The tables for `positions`, in `dtype` on `device`.
    fn forward(
        &self,
        positions: &Positions,
        dtype: DType,
        device: &Device,
        pass: &PassContext,
    ) -> candle_core::Result<RopeTables>;
}

/// What every rotary embedding constructor receives.
#[derive(Clone, Copy, Debug)]
pub struct RotaryArgs<'a> {
    /// The model's config view.
    pub config: &'a DecoderConfig,
}

impl Slot for dyn RotaryEmbedding {
    const NAME: &'static str = "RotaryEmbedding";
    type Args<'a> = RotaryArgs<'a>;

    fn observe(module: Box<Self>, site: ObservedSite) -> Box<Self> {
        Box::new(Observed::new(module, site))
    }
}

impl RopeConfig {
    /// The rope parameters of the config (what the rotary sites here compute their tables
    /// from).
    pub fn load(_: &Builder, args: RotaryArgs<'_>) -> Result<Self> {
        Ok(args.config.rope.clone())
    }
}
