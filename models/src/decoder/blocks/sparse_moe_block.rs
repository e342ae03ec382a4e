//! The sparse MoE block of the Qwen-MoE families: routed experts, plus a shared expert scaled
//! by a sigmoid gate where the family has one.

use candle_core::Tensor;
use patch_core::{Builder, Module, Result};

use crate::decoder::children::Children;
use crate::decoder::context::LayerContext;
use crate::decoder::linear::projection;
use crate::decoder::mlp::{Mlp, MlpArgs};
use crate::decoder::moe::{Experts, MoeArgs, Router};
use crate::decoder::outputs::MoeOutput;
use crate::decoder::projection::Projection;
use crate::decoder::sites::MoeSites;

/// `experts(x, router(x)) + sigmoid(shared_expert_gate(x)) * shared_expert(x)`, the shared
/// part present when `shared_expert_intermediate_size > 0` (Qwen2-MoE; Qwen3-MoE has none).
pub struct SparseMoeBlock {
    /// The router (`mlp.gate.weight`).
    pub gate: Box<dyn Router>,
    /// The routed experts.
    pub experts: Box<dyn Experts>,
    /// The shared expert, when `shared_expert_intermediate_size > 0`.
    pub shared_expert: Option<Box<dyn Mlp>>,
    /// Its gate `[1, hidden]`, present with it.
    pub shared_expert_gate: Option<Box<dyn Projection>>,
}

impl SparseMoeBlock {
    /// Builds the shared expert (if any) and its gate, then `gate` and `experts`, under `b` as
    /// `S`'s sites.
    pub fn load<S: MoeSites>(b: &Builder, args: MoeArgs<'_>) -> Result<Self> {
        let c = args.config;
        let shared = c.moe()?.shared_expert_intermediate_size;
        let (shared_expert, shared_expert_gate) = if shared > 0 {
            let mlp = b.pp("shared_expert").build::<S::Mlp>(MlpArgs {
                config: c,
                intermediate_size: shared,
            })?;
            let gate = projection(b, c, "shared_expert_gate", c.hidden_size, 1, false)?;
            (Some(mlp), Some(gate))
        } else {
            (None, None)
        };
        Ok(Self {
            gate: b.pp("gate").build::<S::Router>(args)?,
            experts: b.pp("experts").build::<S::Experts>(args)?,
            shared_expert,
            shared_expert_gate,
        })
    }

    /// Applies the block to `x` (`[batch, seq, hidden]`).
    pub fn forward(&self, x: &Tensor, ctx: &LayerContext<'_>) -> candle_core::Result<MoeOutput> {
        let (b, t, h) = x.dims3()?;
        let flat = x.reshape((b * t, h))?;
        let router = self.gate.forward(&flat, ctx)?;
        let mut out = self
            .experts
            .forward(&flat, &router.indices, &router.weights, ctx.pass)?;
        if let (Some(shared), Some(gate)) = (&self.shared_expert, &self.shared_expert_gate) {
            let scale = candle_nn::ops::sigmoid(&gate.forward(&flat, ctx.pass)?)?;
            out = crate::ops::add_scaled(&out, &shared.forward(&flat, ctx.pass)?, Some(&scale))?;
        }
        Ok(MoeOutput {
            hidden_states: out.reshape((b, t, h))?,
            router,
        })
    }
}

impl Children for SparseMoeBlock {
    fn children<'a>(&'a self, visit: &mut dyn FnMut(&str, &'a dyn Module)) {
        if let Some(shared) = &self.shared_expert {
            visit("shared_expert", &**shared);
        }
        if let Some(gate) = &self.shared_expert_gate {
            visit("shared_expert_gate", &**gate);
        }
        visit("gate", &*self.gate);
        visit("experts", &*self.experts);
    }
}
