//! The gated MLP (`down(act(gate(x)) * up(x))`) of every family here, also each expert's maths.

use candle_core::Tensor;
use patch_core::{Builder, Module, Result};

use crate::decoder::activation::HiddenAct;
use crate::decoder::capture::PassContext;
use crate::decoder::children::Children;
use crate::decoder::fused::FusedProjections;
use crate::decoder::linear::projection;
use crate::decoder::mlp::MlpArgs;
use crate::decoder::projection::Projection;

const GATE_UP: [&str; 2] = ["gate_proj", "up_proj"];

/// `down_proj(act(gate_proj(x)) * up_proj(x))`.
///
/// Each projection is a site at its path. When nothing replaces gate or up they run as one
/// fused product (gate rows first, [`FusedProjections`]) followed by [`crate::ops::gated`];
/// otherwise each computes on its own.
pub struct GatedMlp {
    /// `gate_proj` and `up_proj`, fused when neither is replaced.
    pub gate_up: FusedProjections,
    /// `[hidden, intermediate]`.
    pub down_proj: Box<dyn Projection>,
    /// The activation.
    pub act: HiddenAct,
}

impl GatedMlp {
    /// Builds `gate_proj`, `up_proj` and `down_proj` under `b` as projection sites (biases
    /// when `mlp_bias`).
    pub fn load(b: &Builder, args: MlpArgs<'_>) -> Result<Self> {
        let c = args.config;
        let (h, i) = (c.hidden_size, args.intermediate_size);
        let parts = GATE_UP
            .iter()
            .map(|name| projection(b, c, name, h, i, c.mlp_bias))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            gate_up: FusedProjections::new(b, &GATE_UP, parts)?,
            down_proj: projection(b, c, "down_proj", i, h, c.mlp_bias)?,
            act: c.hidden_act,
        })
    }

    /// `gate_proj`.
    pub fn gate_proj(&self) -> &dyn Projection {
        &*self.gate_up.parts()[0]
    }

    /// `up_proj`.
    pub fn up_proj(&self) -> &dyn Projection {
        &*self.gate_up.parts()[1]
    }

    /// Applies the MLP outside a model's pass (nothing recorded).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(x, &PassContext::default())
    }

    /// Applies the MLP within `pass` (its projections record their outputs when the pass
    /// asks, and see its options).
    pub fn forward_with(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor> {
        let gate_up = self.gate_up.forward_stacked(x, pass)?;
        let hidden = crate::ops::gated(&gate_up, self.act)?;
        self.down_proj.forward(&hidden, pass)
    }
}

impl Children for GatedMlp {
    fn children<'a>(&'a self, visit: &mut dyn FnMut(&str, &'a dyn Module)) {
        self.gate_up.children(&GATE_UP, visit);
        visit("down_proj", &*self.down_proj);
    }
}
