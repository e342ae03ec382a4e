//! Linear projections: the [`Linear`] layer every family here uses (computing with
//! [`crate::ops::linear`]), loading with the initialisation transformers uses (so a checkpoint
//! and a seeded random model go through the same code), and fused projections that keep the
//! checkpoint's separate tensors as views.

use candle_core::{DType, Tensor};
use candle_nn::Init;
use patch_core::{Builder, Result};

use crate::decoder::config::DecoderConfig;

/// `y = x W^T + b` with the weight stored `[out, in]` as in checkpoints.
///
/// The weight may be kept in bfloat16 while computing in float32 (the CPU kernels widen it as
/// they read). A fused layer built from trainable parts ([`Linear::from_rows`]) concatenates
/// its parts at each call, so every part stays its own variable and an optimiser's update of
/// one is seen at once.
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
    /// each call (what [`fused_projection`] builds from trainable weights).
    pub fn from_rows(parts: Vec<Linear>) -> Self {
        Self {
            params: Params::Rows(parts),
        }
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

    /// Applies the layer to `x` (`[..., in]`), returning `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.params {
            Params::One { weight, bias } => crate::ops::linear(x, weight, bias.as_ref()),
            Params::Rows(_) => crate::ops::linear(x, &self.weight()?, self.bias()?.as_ref()),
        }
    }
}

impl candle_core::Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Linear::forward(self, x)
    }
}

/// The linear layer `name` under `b` (`name.weight` `[out, in]`, and `name.bias` `[out]` when
/// `bias`) in the compute dtype: random sources draw the weight from N(0, `std`) and zero the
/// bias, as transformers' `_init_weights` does.
pub fn linear(
    b: &Builder,
    name: &str,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    std: f64,
) -> Result<Linear> {
    load(b, name, in_dim, out_dim, bias, std, None)
}

/// Like [`linear`], keeping the weight in `config.weight_dtype` when it is set (bf16
/// checkpoints kept in bf16 on CPU: half the bytes per product, widened exactly as read).
pub fn projection(
    b: &Builder,
    config: &DecoderConfig,
    name: &str,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
) -> Result<Linear> {
    load(
        b,
        name,
        in_dim,
        out_dim,
        bias,
        config.initializer_range,
        config.weight_dtype,
    )
}

fn load(
    b: &Builder,
    name: &str,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    std: f64,
    weight_dtype: Option<DType>,
) -> Result<Linear> {
    let b = b.pp(name);
    let init = Init::Randn {
        mean: 0.0,
        stdev: std,
    };
    let weight = match weight_dtype {
        Some(dtype) if dtype != b.dtype() => {
            b.weights()
                .with_dtype(dtype)
                .get_with_init((out_dim, in_dim), "weight", init)?
        }
        _ => b.get_with_init((out_dim, in_dim), "weight", init)?,
    };
    let bias = if bias {
        Some(b.get_with_init(out_dim, "bias", Init::Const(0.0))?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

/// Loads the projections `parts` (`(name, out_dim)`, e.g. `q_proj`, `k_proj`, `v_proj`) under
/// `b` as [`projection`] does, and fuses them into one layer whose output rows are the parts'
/// in order: one product instead of several.
///
/// The fused weight (and bias) is the only copy: the parts come back as views of its rows, and
/// the weights record (the state dict saving reads) holds those views under the parts' own
/// names, so the checkpoint layout is unchanged and memory is not doubled.
pub fn fused_projection(
    b: &Builder,
    config: &DecoderConfig,
    parts: &[(&str, usize)],
    in_dim: usize,
    bias: bool,
) -> Result<(Linear, Vec<Linear>)> {
    let loaded = parts
        .iter()
        .map(|(name, out)| projection(b, config, name, in_dim, *out, bias))
        .collect::<Result<Vec<_>>>()?;
    if b.weights().is_trainable() {
        // Each part stays the variable the optimiser updates; the fused layer reads them.
        return Ok((Linear::from_rows(loaded.clone()), loaded));
    }
    let err = patch_core::Error::other;
    let weights = loaded
        .iter()
        .map(Linear::weight)
        .collect::<candle_core::Result<Vec<_>>>()
        .map_err(err)?;
    let weight = Tensor::cat(&weights, 0).map_err(err)?;
    let fused_bias = if bias {
        let biases = loaded
            .iter()
            .filter_map(|l| l.bias().transpose())
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(err)?;
        Some(Tensor::cat(&biases, 0).map_err(err)?)
    } else {
        None
    };
    let params = b.weights().params();
    let mut views = Vec::with_capacity(parts.len());
    let mut row = 0;
    for (name, out) in parts {
        let narrow = |t: &Tensor| t.narrow(0, row, *out).map_err(err);
        let w = narrow(&weight)?;
        let path = b.pp(name);
        params.set(&format!("{}.weight", path.path()), w.clone());
        let bv = match &fused_bias {
            Some(fb) => {
                let v = narrow(fb)?;
                params.set(&format!("{}.bias", path.path()), v.clone());
                Some(v)
            }
            None => None,
        };
        views.push(Linear::new(w, bv));
        row += out;
    }
    Ok((Linear::new(weight, fused_bias), views))
}

/// A norm weight `[dim]` under `b`, initialised to ones by random sources.
pub fn norm_weight(b: &Builder, dim: usize) -> Result<Tensor> {
    b.get_with_init(dim, "weight", Init::Const(1.0))
}
