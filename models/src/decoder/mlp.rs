//! The MLP slot and the gated MLP (`down(act(gate(x)) * up(x))`) of the Llama-style families.

use candle_core::Tensor;
use candle_nn::{Linear, Module as _};
use patch_core::{Builder, Module, Result, Slot};

use crate::decoder::config::{DecoderConfig, HiddenAct};
use crate::decoder::linear::linear;

/// The MLP slot: a position-wise feed-forward network, `[..., hidden] -> [..., hidden]`.
pub trait Mlp: Module {
    /// Applies the MLP to `x`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
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

impl Slot for dyn Mlp {
    const NAME: &'static str = "Mlp";
    type Args<'a> = MlpArgs<'a>;
}

/// `down_proj(act(gate_proj(x)) * up_proj(x))`.
#[derive(Clone, Debug)]
pub struct GatedMlp {
    /// `[intermediate, hidden]`.
    pub gate_proj: Linear,
    /// `[intermediate, hidden]`.
    pub up_proj: Linear,
    /// `[hidden, intermediate]`.
    pub down_proj: Linear,
    /// The activation.
    pub act: HiddenAct,
}

impl GatedMlp {
    /// Loads `gate_proj`, `up_proj` and `down_proj` under `b` (biases when `mlp_bias`).
    pub fn load(b: &Builder, args: MlpArgs<'_>) -> Result<Self> {
        let c = args.config;
        let (h, i, std) = (c.hidden_size, args.intermediate_size, c.initializer_range);
        Ok(Self {
            gate_proj: linear(b, "gate_proj", h, i, c.mlp_bias, std)?,
            up_proj: linear(b, "up_proj", h, i, c.mlp_bias, std)?,
            down_proj: linear(b, "down_proj", i, h, c.mlp_bias, std)?,
            act: c.hidden_act,
        })
    }

    /// Applies the MLP.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = self.act.apply(&self.gate_proj.forward(x)?)?;
        let up = self.up_proj.forward(x)?;
        self.down_proj.forward(&(gate * up)?)
    }
}
