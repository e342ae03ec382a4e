//! `QuantizedExperts`: routed experts whose stacked banks are held per expert in quantized
//! formats, and how the topology's replacement builds them at an experts site.

use candle_core::Tensor;
use candle_nn::Init;
use patch_core::{Build, Builder, Result};
use patchwork_models::decoder::{Experts, HiddenAct, MoeArgs, PassContext};

use crate::weight::QuantizedWeight;
use crate::{Format, Topology};

/// Routed experts with each expert's stacked gate and up projections (`[2I, H]`, gate rows
/// first) and `down_proj` (`[H, I]`) held quantized, computed one active expert at a time over
/// the tokens routed to it.
#[derive(Clone, Debug)]
pub struct QuantizedExperts {
    /// Per expert: its stacked gate and up projections, and `down_proj`.
    experts: Vec<(QuantizedWeight, QuantizedWeight)>,
    act: HiddenAct,
}

impl QuantizedExperts {
    /// Builds the experts at `b`'s path with each bank (`experts.gate_up_proj`,
    /// `experts.down_proj`: the paths the topology matches) in the format `topology` gives it,
    /// or what the site builds without this replacement where it gives both float. The
    /// stacked float banks are requested unkept and freed once quantized.
    pub fn build_with(
        topology: &Topology,
        b: &Builder,
        args: MoeArgs<'_>,
    ) -> Result<Box<dyn Experts>> {
        let c = args.config;
        let moe = c.moe()?;
        let (e, i, h) = (moe.num_experts, moe.moe_intermediate_size, c.hidden_size);
        let path = |name: &str| format!("{}.{name}", b.path());
        let gate_up = topology.choose(&path("gate_up_proj"), h);
        let down = topology.choose(&path("down_proj"), i);
        b.describe(format!(
            "gate_up_proj {}; down_proj {}",
            gate_up.reason, down.reason
        ));
        let (Some(gate_up), Some(down)) = (gate_up.format, down.format) else {
            return b.build_original(args);
        };
        if b.weights().is_trainable() {
            return Err(patch_core::Error::other(format!(
                "quantized experts at {:?}: quantized weights are for inference; load without trainable()",
                b.path()
            )));
        }
        let init = Init::Randn {
            mean: 0.0,
            stdev: c.initializer_range,
        };
        // One expert's matrix read at a time, quantized, and its floats dropped.
        let bank = |shape: (usize, usize, usize),
                    name: &str,
                    format: Format|
         -> Result<Vec<QuantizedWeight>> {
            let mut out = Vec::with_capacity(shape.0);
            b.weights()
                .get_unkept_chunks(shape, name, init, 1, &mut |chunk| {
                    for x in 0..chunk.dim(0)? {
                        out.push(QuantizedWeight::quantize(&chunk.get(x)?, format)?);
                    }
                    Ok(())
                })
                .map_err(|err| {
                    patch_core::Error::other(format!(
                        "{format} at {:?} expert {}: {err}",
                        path(name),
                        out.len()
                    ))
                })?;
            Ok(out)
        };
        let gate_ups = bank((e, 2 * i, h), "gate_up_proj", gate_up)?;
        let downs = bank((e, h, i), "down_proj", down)?;
        Ok(Box::new(Self {
            experts: gate_ups.into_iter().zip(downs).collect(),
            act: c.hidden_act,
        }))
    }

    /// Experts from each one's stacked gate/up (`[2I, H]`, gate rows first) and down weights,
    /// in expert order (a GGUF file's banks, split per expert).
    pub fn stacked(
        gate_ups: Vec<QuantizedWeight>,
        downs: Vec<QuantizedWeight>,
        act: HiddenAct,
    ) -> Self {
        let experts = gate_ups.into_iter().zip(downs).collect();
        Self { experts, act }
    }

    /// The experts' formats: the gate's (and up's) and `down_proj`'s.
    pub fn formats(&self) -> Option<(Format, Format)> {
        self.experts.first().map(|(g, d)| (g.format(), d.format()))
    }
}

impl Build for QuantizedExperts {
    type Slot = dyn Experts;

    /// Built alone (registered by type, not through a topology): every bank in Q8_0.
    fn build(b: &Builder, args: MoeArgs<'_>) -> Result<Box<dyn Experts>> {
        Self::build_with(&Topology::new(Some(Format::Q8_0)), b, args)
    }
}

impl Experts for QuantizedExperts {
    fn forward(
        &self,
        x: &Tensor,
        indices: &Tensor,
        weights: &Tensor,
        _pass: &PassContext,
    ) -> candle_core::Result<Tensor> {
        patchwork_models::ops::per_expert(x, indices, weights, self.experts.len(), |e, xs| {
            let Some((gate_up, down)) = self.experts.get(e) else {
                candle_core::bail!(
                    "experts: a token chose expert {e}, but there are {}",
                    self.experts.len()
                );
            };
            let hidden = patchwork_models::ops::gated(&gate_up.forward(xs, None)?, self.act)?;
            down.forward(&hidden, None)
        })
    }
}
