//! The rotary embedding slot: turns the positions of a forward pass into cos/sin tables, once
//! per pass, for every layer.

use candle_core::{DType, Device};
use patch_core::{Builder, Module, Result, Slot};

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
}

impl RopeConfig {
    /// The rope parameters of the config (what the rotary sites here compute their tables
    /// from).
    pub fn load(_: &Builder, args: RotaryArgs<'_>) -> Result<Self> {
        Ok(args.config.rope.clone())
    }
}
