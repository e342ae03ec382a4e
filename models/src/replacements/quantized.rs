//! Quantized replacements: attention, MLP and routed-experts sites whose projections hold
//! candle's quantized weights (`QMatMul`, Q8_0 or Q4_K), quantized at load from the float
//! checkpoint. Each wraps whatever its site builds ([`Builder::build_original`]), so one pattern
//! covers every family, and a user's replacement that exposes its projections (or stacked
//! expert weights) is quantized the same way.

use std::marker::PhantomData;

use candle_core::Tensor;
use patch_core::{Build, Builder, PatchSet, Replacement, Result};

use crate::decoder::{
    Attention, AttentionArgs, Experts, HiddenAct, LayerContext, Linear, Mlp, MlpArgs, MoeArgs,
    Norm, PassContext, Quantization,
};

/// A quantization format as a type, so each format's replacements are types of their own
/// (what `explain` shows, and what a patch names).
pub trait QuantFormat: Send + Sync + 'static {
    /// The format.
    const FORMAT: Quantization;
}

/// [`Quantization::Q8_0`] as a type.
pub struct Q8_0;
impl QuantFormat for Q8_0 {
    const FORMAT: Quantization = Quantization::Q8_0;
}

/// [`Quantization::Q4K`] as a type.
pub struct Q4K;
impl QuantFormat for Q4K {
    const FORMAT: Quantization = Quantization::Q4K;
}

/// Quantizes every projection of `module` (`what` names it in errors).
fn quantize_all(
    b: &Builder,
    what: &str,
    format: Quantization,
    projections: Vec<(&'static str, &mut Linear)>,
) -> Result<()> {
    if projections.is_empty() {
        return Err(patch_core::Error::other(format!(
            "{format} at {:?}: the {what} built there exposes no projections to quantize \
             (implement projections_mut on its slot)",
            b.path()
        )));
    }
    if b.weights().is_trainable() {
        return Err(patch_core::Error::other(format!(
            "{format} at {:?}: quantized weights are for inference; load without trainable()",
            b.path()
        )));
    }
    for (name, linear) in projections {
        linear
            .quantize(format)
            .map_err(|e| patch_core::Error::other(format!("{name}: {e}")))?;
    }
    Ok(())
}

/// The attention its site builds, with `qkv_proj` and `o_proj` (or whatever projections it
/// exposes) quantized in format `Q`.
pub struct QuantizedAttention<Q: QuantFormat> {
    inner: Box<dyn Attention>,
    format: PhantomData<Q>,
}

impl<Q: QuantFormat> Build for QuantizedAttention<Q> {
    type Slot = dyn Attention;

    fn build(b: &Builder, args: AttentionArgs<'_>) -> Result<Box<dyn Attention>> {
        let mut inner = b.build_original::<dyn Attention>(args)?;
        quantize_all(b, "attention", Q::FORMAT, inner.projections_mut())?;
        Ok(Box::new(Self {
            inner,
            format: PhantomData,
        }))
    }
}

impl<Q: QuantFormat> Attention for QuantizedAttention<Q> {
    fn forward(
        &self,
        hidden_states: &Tensor,
        ctx: &mut LayerContext<'_>,
    ) -> candle_core::Result<Tensor> {
        self.inner.forward(hidden_states, ctx)
    }

    fn q_norm(&self) -> Option<&dyn Norm> {
        self.inner.q_norm()
    }

    fn k_norm(&self) -> Option<&dyn Norm> {
        self.inner.k_norm()
    }

    fn projections_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        self.inner.projections_mut()
    }
}

/// The MLP its site builds (a dense layer's, a shared expert's, a ModuleList expert's), with
/// `gate_up_proj` and `down_proj` quantized in format `Q`.
pub struct QuantizedMlp<Q: QuantFormat> {
    inner: Box<dyn Mlp>,
    format: PhantomData<Q>,
}

impl<Q: QuantFormat> Build for QuantizedMlp<Q> {
    type Slot = dyn Mlp;

    fn build(b: &Builder, args: MlpArgs<'_>) -> Result<Box<dyn Mlp>> {
        let mut inner = b.build_original::<dyn Mlp>(args)?;
        quantize_all(b, "MLP", Q::FORMAT, inner.projections_mut())?;
        Ok(Box::new(Self {
            inner,
            format: PhantomData,
        }))
    }
}

impl<Q: QuantFormat> Mlp for QuantizedMlp<Q> {
    fn forward(&self, x: &Tensor, pass: &PassContext) -> candle_core::Result<Tensor> {
        self.inner.forward(x, pass)
    }

    fn projections_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        self.inner.projections_mut()
    }
}

/// The routed experts its site builds, each expert's `gate_up_proj` and `down_proj` quantized
/// in format `Q` from the stacked weights the site exposes
/// ([`Experts::stacked_weights`]); the float experts are not kept.
pub struct QuantizedExperts<Q: QuantFormat> {
    /// Per expert: `gate_up_proj` `[2I, H]` and `down_proj` `[H, I]`.
    experts: Vec<(Linear, Linear)>,
    act: HiddenAct,
    format: PhantomData<Q>,
}

impl<Q: QuantFormat> Build for QuantizedExperts<Q> {
    type Slot = dyn Experts;

    fn build(b: &Builder, args: MoeArgs<'_>) -> Result<Box<dyn Experts>> {
        let inner = b.build_original::<dyn Experts>(args)?;
        let format = Q::FORMAT;
        let Some(stacked) = inner.stacked_weights() else {
            return Err(patch_core::Error::other(format!(
                "{format} at {:?}: the experts built there expose no stacked weights to quantize \
                 (implement stacked_weights on its slot, or expose per-expert MLPs)",
                b.path()
            )));
        };
        let (count, _, _) = stacked.gate_up_proj.dims3()?;
        let mut experts = Vec::with_capacity(count);
        for e in 0..count {
            let mut pair = (
                Linear::new(stacked.gate_up_proj.get(e)?, None),
                Linear::new(stacked.down_proj.get(e)?, None),
            );
            quantize_all(
                b,
                "experts",
                format,
                vec![("gate_up_proj", &mut pair.0), ("down_proj", &mut pair.1)],
            )?;
            experts.push(pair);
        }
        Ok(Box::new(Self {
            experts,
            act: stacked.act,
            format: PhantomData,
        }))
    }
}

impl<Q: QuantFormat> Experts for QuantizedExperts<Q> {
    fn forward(
        &self,
        x: &Tensor,
        indices: &Tensor,
        weights: &Tensor,
        _pass: &PassContext,
    ) -> candle_core::Result<Tensor> {
        crate::ops::per_expert(x, indices, weights, self.experts.len(), |e, xs| {
            let Some((gate_up, down)) = self.experts.get(e) else {
                candle_core::bail!(
                    "experts: a token chose expert {e}, but there are {}",
                    self.experts.len()
                );
            };
            down.forward(&crate::ops::gated(&gate_up.forward(xs)?, self.act)?)
        })
    }
}

/// The patches that quantize a model in `format`: every attention site (`".*Attention"`),
/// every MLP site (`".*MLP"`) and every routed-experts site (`".*Experts"`). `LoadOptions::with_quantization` adds them to the patches a
/// load builds with, and quantizes the output head.
pub fn quantized_patches(format: Quantization) -> Vec<(&'static str, Replacement)> {
    match format {
        Quantization::Q8_0 => vec![
            (".*Attention", Replacement::of::<QuantizedAttention<Q8_0>>()),
            (".*MLP", Replacement::of::<QuantizedMlp<Q8_0>>()),
            (".*Experts", Replacement::of::<QuantizedExperts<Q8_0>>()),
        ],
        Quantization::Q4K => vec![
            (".*Attention", Replacement::of::<QuantizedAttention<Q4K>>()),
            (".*MLP", Replacement::of::<QuantizedMlp<Q4K>>()),
            (".*Experts", Replacement::of::<QuantizedExperts<Q4K>>()),
        ],
    }
}

/// `patches` with [`quantized_patches`] added; an error when one of its keys is taken.
pub fn with_quantized_patches(patches: &PatchSet, format: Quantization) -> crate::Result<PatchSet> {
    let mut set = patches.clone();
    set.register_patch_mapping(quantized_patches(format), false)
        .map_err(|e| {
            crate::Error::input(
                "quantization",
                format!(
                    "{format}: the patches already hold a key the quantized replacements use ({e}); \
                     register your patch under another key, or quantize inside it"
                ),
            )
        })?;
    Ok(set)
}
