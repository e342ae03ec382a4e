//! The gated MLP (`down(act(gate(x)) * up(x))`) of every family here, also each expert's maths.

use candle_core::Tensor;
use patch_core::{Builder, Result};

use crate::decoder::activation::HiddenAct;
use crate::decoder::linear::{Linear, fused_projection, projection};
use crate::decoder::mlp::MlpArgs;

/// `down_proj(act(gate_proj(x)) * up_proj(x))`.
///
/// Gate and up run as one fused projection (`gate_up_proj`, gate rows first, one product per
/// step) followed by [`crate::ops::gated`]; `gate_proj` and `up_proj` are views of its rows,
/// recorded under the checkpoint's names (see [`fused_projection`]).
#[derive(Clone, Debug)]
pub struct GatedMlp {
    /// Gate then up rows, `[2 * intermediate, hidden]`.
    pub gate_up_proj: Linear,
    /// `[intermediate, hidden]` (a view of `gate_up_proj`).
    pub gate_proj: Linear,
    /// `[intermediate, hidden]` (a view of `gate_up_proj`).
    pub up_proj: Linear,
    /// `[hidden, intermediate]`.
    pub down_proj: Linear,
    /// The activation.
    pub act: HiddenAct,
}

impl GatedMlp {
    /// Loads `gate_proj`, `up_proj` (fused) and `down_proj` under `b` (biases when `mlp_bias`).
    pub fn load(b: &Builder, args: MlpArgs<'_>) -> Result<Self> {
        let c = args.config;
        let (h, i) = (c.hidden_size, args.intermediate_size);
        let (gate_up_proj, parts) =
            fused_projection(b, c, &[("gate_proj", i), ("up_proj", i)], h, c.mlp_bias)?;
        let [gate_proj, up_proj]: [Linear; 2] = parts.try_into().map_err(|_| {
            patch_core::Error::other(candle_core::Error::Msg("gate/up: 2 parts".into()))
        })?;
        Ok(Self {
            gate_up_proj,
            gate_proj,
            up_proj,
            down_proj: projection(b, c, "down_proj", i, h, c.mlp_bias)?,
            act: c.hidden_act,
        })
    }

    /// The projections the forward pass computes with: `gate_up_proj` (the fused gate/up)
    /// and `down_proj`.
    pub fn projections_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        vec![
            ("gate_up_proj", &mut self.gate_up_proj),
            ("down_proj", &mut self.down_proj),
        ]
    }

    /// Applies the MLP.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate_up = self.gate_up_proj.forward(x)?;
        let hidden = crate::ops::gated(&gate_up, self.act)?;
        self.down_proj.forward(&hidden)
    }
}
