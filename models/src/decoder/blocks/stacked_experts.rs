//! Routed experts with stacked weights, transformers v5's layout.

use candle_core::Tensor;
use patch_core::{Builder, Result};

use crate::decoder::activation::HiddenAct;
use crate::decoder::capture::PassContext;
use crate::decoder::children::Children;
use crate::decoder::moe::MoeArgs;
use crate::implementations::{ExpertsInput, experts};

/// Routed experts with stacked weights (transformers v5's layout): `gate_up_proj`
/// `[E, 2I, H]` (gate rows first) and `down_proj` `[E, H, I]`.
///
/// Dispatch is grouped ([`crate::ops::routed_experts`]): each active expert runs once over the
/// tokens routed to it; experts no token chose are never touched.
#[derive(Clone, Debug)]
pub struct StackedExperts {
    /// `[E, 2I, H]`.
    pub gate_up_proj: Tensor,
    /// `[E, H, I]`.
    pub down_proj: Tensor,
    /// The activation of the gate.
    pub act: HiddenAct,
}

impl StackedExperts {
    /// Loads `gate_up_proj` and `down_proj` under `b` (random sources: N(0, std)).
    pub fn load(b: &Builder, args: MoeArgs<'_>) -> Result<Self> {
        let c = args.config;
        let moe = c.moe()?;
        let (e, i, h) = (moe.num_experts, moe.moe_intermediate_size, c.hidden_size);
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: c.initializer_range,
        };
        // Expert weights are kept in `weight_dtype` when set, as the projections are.
        let weights = match c.weight_dtype {
            Some(dtype) => b.weights().with_dtype(dtype),
            None => b.weights().clone(),
        };
        let get =
            |shape: (usize, usize, usize), name: &str| weights.get_with_init(shape, name, init);
        Ok(Self {
            gate_up_proj: get((e, 2 * i, h), "gate_up_proj")?,
            down_proj: get((e, h, i), "down_proj")?,
            act: c.hidden_act,
        })
    }

    /// See [`Experts::forward`](crate::decoder::Experts::forward): the pass's experts
    /// implementation over the stacked weights (`"grouped_mm"` by default; `"eager"` when the
    /// pass tracks gradients and the selected one does not support them).
    pub fn forward(
        &self,
        x: &Tensor,
        indices: &Tensor,
        weights: &Tensor,
        pass: &PassContext,
    ) -> candle_core::Result<Tensor> {
        let imp = experts::for_pass(pass.experts_implementation(), pass.tracks_gradients());
        (imp.function)(&ExpertsInput {
            x,
            indices,
            weights,
            gate_up: &self.gate_up_proj,
            down: &self.down_proj,
            act: self.act,
        })
    }
}

impl Children for StackedExperts {}
