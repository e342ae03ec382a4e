//! Linear projections: [`Linear`], transformers' `nn.Linear` and the site every projection is
//! built as (computing with [`crate::ops::linear`]), loading with the initialisation
//! transformers uses, so a checkpoint and a seeded random model go through the same code.

use candle_core::{DType, Tensor};
use candle_nn::Init;
use patch_core::{Build, Builder, Result, patchable};

use crate::decoder::capture::PassContext;
use crate::decoder::config::DecoderConfig;
use crate::decoder::projection::{Projection, ProjectionArgs};

/// `y = x W^T + b` with the weight stored `[out, in]` as in checkpoints: transformers'
/// `nn.Linear`, the site (named `Linear`) of every projection the families build, so a patch
/// keyed `"Linear"` (restricted to paths, or not) replaces projections.
///
/// The weight may be kept in bfloat16 while computing in float32 (the CPU kernels widen it as
/// they read). A fused layer built from trainable parts ([`Linear::from_rows`]) concatenates
/// its parts at each call, so every part stays its own variable and an optimiser's update of
/// one is seen at once.
#[patchable]
#[derive(Clone, Debug)]
pub struct Linear {
    params: Params,
}

#[derive(Clone, Debug)]
enum Params {
    One {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    Rows(Vec<Linear>),
}

impl Linear {
    /// A layer from its weight `[out, in]` and optional bias `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            params: Params::One { weight, bias },
        }
    }

    /// The layer whose output rows are those of `parts`, in order, computed from the parts at
    /// each call (what fusing trainable projections builds).
    pub fn from_rows(parts: Vec<Linear>) -> Self {
        Self {
            params: Params::Rows(parts),
        }
    }

    /// Loads the projection `args` describes under `b` (`weight` `[out, in]`, and `bias`
    /// `[out]` when `args.bias`) in the compute dtype, the weight kept in the config's
    /// `weight_dtype` when set (bf16 checkpoints kept in bf16 on CPU); a tied projection
    /// uses the weight it is given. Random sources draw the weight from N(0,
    /// `initializer_range`) and zero the bias, as transformers' `_init_weights` does.
    pub fn load(b: &Builder, args: ProjectionArgs<'_>) -> Result<Self> {
        if let Some(embedding) = args.tied {
            let table = embedding.table().ok_or_else(|| {
                patch_core::Error::other(format!(
                    "the output head at {:?} is tied to the token embedding, and the embedding built ({}) gives no float table",
                    b.path(),
                    embedding.type_name()
                ))
            })?;
            return Ok(Self::new(table, None));
        }
        let c = args.config;
        let init = Init::Randn {
            mean: 0.0,
            stdev: c.initializer_range,
        };
        let shape = (args.out_features, args.in_features);
        let weight = match c.weight_dtype {
            Some(dtype) if dtype != b.dtype() => b
                .weights()
                .with_dtype(dtype)
                .get_with_init(shape, "weight", init)?,
            _ => b.get_with_init(shape, "weight", init)?,
        };
        let bias = if args.bias {
            Some(b.get_with_init(args.out_features, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self::new(weight, bias))
    }

    /// The weight, `[out, in]` (for a layer of parts, their rows concatenated now).
    pub fn weight(&self) -> candle_core::Result<Tensor> {
        match &self.params {
            Params::One { weight, .. } => Ok(weight.clone()),
            Params::Rows(parts) => {
                let ws = parts
                    .iter()
                    .map(Linear::weight)
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&ws, 0)
            }
        }
    }

    /// The bias, `[out]`, if the layer has one.
    pub fn bias(&self) -> candle_core::Result<Option<Tensor>> {
        match &self.params {
            Params::One { bias, .. } => Ok(bias.clone()),
            Params::Rows(parts) => {
                let bs = parts
                    .iter()
                    .map(Linear::bias)
                    .collect::<candle_core::Result<Option<Vec<_>>>>()?;
                bs.map(|bs| Tensor::cat(&bs, 0)).transpose()
            }
        }
    }

    /// `[out, in]`.
    pub fn dims(&self) -> (usize, usize) {
        match &self.params {
            Params::One { weight, .. } => {
                let d = weight.dims();
                (
                    d.first().copied().unwrap_or(0),
                    d.get(1).copied().unwrap_or(0),
                )
            }
            Params::Rows(parts) => (
                parts.iter().map(|p| p.dims().0).sum(),
                parts.first().map_or(0, |p| p.dims().1),
            ),
        }
    }

    /// The dtype the weight is stored in.
    pub fn weight_dtype(&self) -> DType {
        match &self.params {
            Params::One { weight, .. } => weight.dtype(),
            Params::Rows(parts) => parts.first().map_or(DType::F32, Linear::weight_dtype),
        }
    }

    /// Replaces the weight and bias (fusing makes them views of a fused layer's rows).
    pub fn set(&mut self, weight: Tensor, bias: Option<Tensor>) {
        self.params = Params::One { weight, bias };
    }

    /// Applies the layer to `x` (`[..., in]`), returning `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.params {
            Params::One { weight, bias } => crate::ops::linear(x, weight, bias.as_ref()),
            Params::Rows(_) => crate::ops::linear(x, &self.weight()?, self.bias()?.as_ref()),
        }
    }
}

impl Build for Linear {
    type Slot = dyn Projection;

    fn build(b: &Builder, args: ProjectionArgs<'_>) -> Result<Box<dyn Projection>> {
        Ok(Box::new(Self::load(b, args)?))
    }
}

impl Projection for Linear {
    fn forward(&self, x: &Tensor, _: &PassContext) -> candle_core::Result<Tensor> {
        Linear::forward(self, x)
    }

    fn in_features(&self) -> usize {
        self.dims().1
    }

    fn out_features(&self) -> usize {
        self.dims().0
    }
}

impl candle_core::Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Linear::forward(self, x)
    }
}

/// The linear layer `name` under `b` (`name.weight` `[out, in]`, and `name.bias` `[out]` when
/// `bias`) in the compute dtype, loaded directly (not as a site: nothing can replace it).
/// Random sources draw the weight from N(0, `std`) and zero the bias.
pub fn linear(
    b: &Builder,
    name: &str,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    std: f64,
) -> Result<Linear> {
    let b = b.pp(name);
    let init = Init::Randn {
        mean: 0.0,
        stdev: std,
    };
    let weight = b.get_with_init((out_dim, in_dim), "weight", init)?;
    let bias = if bias {
        Some(b.get_with_init(out_dim, "bias", Init::Const(0.0))?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

/// The projection `name` under `b`, built as a site ([`Linear`], or what a patch replaces it
/// with at that path): `in_dim` to `out_dim`, with a bias when `bias`.
pub fn projection(
    b: &Builder,
    config: &DecoderConfig,
    name: &str,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
) -> Result<Box<dyn Projection>> {
    b.pp(name)
        .build::<Linear>(ProjectionArgs::new(config, in_dim, out_dim, bias))
}

/// A norm weight `[dim]` under `b`, initialised to ones by random sources.
pub fn norm_weight(b: &Builder, dim: usize) -> Result<Tensor> {
    b.get_with_init(dim, "weight", Init::Const(1.0))
}
