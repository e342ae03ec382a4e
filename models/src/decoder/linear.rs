//! Loading linear projections with the initialisation transformers uses, so a checkpoint and
//! a seeded random model (`from_config`) go through the same code.

use candle_core::Tensor;
use candle_nn::{Init, Linear};
use patch_core::{Builder, Result};

/// The linear layer `name` under `b` (`name.weight` `[out, in]`, and `name.bias` `[out]` when
/// `bias`): random sources draw the weight from N(0, `std`) and zero the bias, as
/// transformers' `_init_weights` does.
pub fn linear(
    b: &Builder,
    name: &str,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    std: f64,
) -> Result<Linear> {
    let b = b.pp(name);
    let weight = b.get_with_init(
        (out_dim, in_dim),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: std,
        },
    )?;
    let bias = if bias {
        Some(b.get_with_init(out_dim, "bias", Init::Const(0.0))?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

/// A norm weight `[dim]` under `b`, initialised to ones by random sources.
pub fn norm_weight(b: &Builder, dim: usize) -> Result<Tensor> {
    b.get_with_init(dim, "weight", Init::Const(1.0))
}
