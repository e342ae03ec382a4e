//! Linear projections: the [`Linear`] layer every family here uses (computing with
//! [`crate::ops::linear`]), loading with the initialisation transformers uses (so a checkpoint
//! and a seeded random model go through the same code), and fused projections that keep the
//! checkpoint's separate tensors as views.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};

use crate::kernels::q8_0::Q8_0Matrix;
use candle_core::{DType, Tensor};
use candle_nn::Init;
use patch_core::{Builder, Result};

use crate::decoder::config::DecoderConfig;
use crate::decoder::quantization::Quantization;

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
    Quantized {
        weight: Arc<QuantizedWeight>,
        bias: Option<Tensor>,
        format: Quantization,
        /// `[out, in]`.
        shape: (usize, usize),
    },
}

/// A quantized weight: Q8_0 in this crate's own blocks (integer dot-product kernels), other
/// formats in candle's `QMatMul`.
#[derive(Debug)]
enum QuantizedWeight {
    Q8_0(Q8_0Matrix),
    Candle(QMatMul),
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

    /// The weight, `[out, in]` (for a layer of parts, their rows concatenated now; for a
    /// quantized layer, dequantized to f32 now).
    pub fn weight(&self) -> candle_core::Result<Tensor> {
        match &self.params {
            Params::One { weight, .. } => Ok(weight.clone()),
            Params::Quantized { weight, shape, .. } => match weight.as_ref() {
                QuantizedWeight::Q8_0(q) => {
                    Tensor::from_vec(q.dequantize(), *shape, &candle_core::Device::Cpu)
                }
                QuantizedWeight::Candle(QMatMul::QTensor(q)) => {
                    q.dequantize(&candle_core::Device::Cpu)
                }
                QuantizedWeight::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                    Ok(t.clone())
                }
            },
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
            Params::One { bias, .. } | Params::Quantized { bias, .. } => Ok(bias.clone()),
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
            Params::Quantized {
                weight,
                bias,
                shape,
                ..
            } => match weight.as_ref() {
                QuantizedWeight::Q8_0(q) => crate::ops::q8_0_linear(x, q, bias.as_ref()),
                QuantizedWeight::Candle(q) => {
                    crate::ops::quantized_linear(x, q, *shape, bias.as_ref())
                }
            },
        }
    }

    /// The format the weight is quantized in, if it is.
    pub fn quantization(&self) -> Option<Quantization> {
        match &self.params {
            Params::Quantized { format, .. } => Some(*format),
            _ => None,
        }
    }

    /// Stores the weight in `format` from now on, quantized from the current weight (Q8_0 in
    /// [`Q8_0Matrix`] blocks, Q4_K in candle's `QMatMul`; the bias stays float). Inference only: an error for a layer whose
    /// weight tracks gradients, or whose input width is not a multiple of the format's block
    /// (32 for `q8_0`, 256 for `q4k`); the error names both.
    pub fn quantize(&mut self, format: Quantization) -> candle_core::Result<()> {
        let weight = self.weight()?;
        if weight.is_variable() || matches!(self.params, Params::Rows(_)) {
            return Err(candle_core::Error::Msg(
                "quantizing a trainable layer: quantized weights are for inference (load without trainable())"
                    .to_string(),
            ));
        }
        let (out, inp) = weight.dims2()?;
        if !inp.is_multiple_of(format.block_size()) {
            return Err(candle_core::Error::Msg(format!(
                "{format} quantizes rows in blocks of {}, and this layer's weight [{out}, {inp}] has {inp} inputs",
                format.block_size()
            )));
        }
        if !weight.device().is_cpu() {
            return Err(candle_core::Error::Msg(format!(
                "{format} layers run on the CPU; this weight is on {:?}",
                weight.device()
            )));
        }
        let bias = self.bias()?;
        // The values copied out: candle quantizes a tensor's storage from its start, so a view
        // at an offset (one expert of a stack) would be read wrong.
        let values = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let weight = match format {
            Quantization::Q8_0 => QuantizedWeight::Q8_0(Q8_0Matrix::quantize(&values, out, inp)),
            Quantization::Q4K => {
                let weight = Tensor::from_vec(values, (out, inp), weight.device())?;
                QuantizedWeight::Candle(QMatMul::from_qtensor(QTensor::quantize(
                    &weight,
                    format.ggml(),
                )?)?)
            }
        };
        self.params = Params::Quantized {
            weight: Arc::new(weight),
            bias,
            format,
            shape: (out, inp),
        };
        Ok(())
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn vec2(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2().unwrap()
    }

    /// Quantizing keeps every weight within its block's step, and the product differs from
    /// the product with the dequantized weights only by the rounding of `x` to 8 bits per
    /// block (candle's kernels): both bounds are tight enough that a wrong scale, block or
    /// offset fails them.
    #[test]
    fn quantized_weights_and_products_stay_within_the_format_bounds() {
        let dev = Device::Cpu;
        for format in Quantization::ALL {
            let (n, k, m) = (24, 2 * format.block_size(), 5);
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let mut layer = Linear::new(w.clone(), Some(b.clone()));
            layer.quantize(format).unwrap();
            assert_eq!(layer.quantization(), Some(format));
            let deq = layer.weight().unwrap();
            // Weights: Q8_0 rounds to amax/127 steps of 32-weight blocks (half a step off at
            // most, plus up to 127 steps' share of the f16 rounding of the step); Q4_K to (max - min)/15 steps of 32-weight sub-blocks, with 6-bit scales
            // (a step off at most).
            let sub = 32;
            for (row, drow) in vec2(&w).iter().zip(vec2(&deq)) {
                for (block, dblock) in row.chunks(sub).zip(drow.chunks(sub)) {
                    let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let (lo, hi) = block
                        .iter()
                        .fold((0f32, 0f32), |(l, h), v| (l.min(*v), h.max(*v)));
                    let bound = match format {
                        Quantization::Q8_0 => amax / 127.0 * (0.5 + 127.0 / 2048.0) * 1.01,
                        Quantization::Q4K => (hi - lo) / 15.0 * 1.1,
                    };
                    for (v, d) in block.iter().zip(dblock) {
                        assert!(
                            (v - d).abs() <= bound,
                            "{format}: {v} -> {d} (bound {bound})"
                        );
                    }
                }
            }
            // Products: |x W^T - x deq^T| <= sum_i |deq_i| * (amax of x's block) / 254.
            let y = layer.forward(&x).unwrap();
            let want = x
                .matmul(&deq.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let (y, want, xs, ds) = (vec2(&y), vec2(&want), vec2(&x), vec2(&deq));
            for t in 0..m {
                for j in 0..n {
                    let bound: f32 = xs[t]
                        .chunks(32)
                        .zip(ds[j].chunks(32))
                        .map(|(xb, db)| {
                            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                            db.iter().map(|d| d.abs()).sum::<f32>() * amax / 254.0
                        })
                        .sum::<f32>()
                        * 1.05
                        + 1e-4;
                    let err = (y[t][j] - want[t][j]).abs();
                    assert!(
                        err <= bound,
                        "{format}: [{t},{j}] off by {err} (bound {bound})"
                    );
                }
            }
            // Widths that are not a multiple of the block are refused, naming both.
            let mut odd = Linear::new(
                Tensor::zeros((4, format.block_size() + 16), DType::F32, &dev).unwrap(),
                None,
            );
            let e = odd.quantize(format).unwrap_err().to_string();
            assert!(
                e.contains(&format!("blocks of {}", format.block_size())),
                "{e}"
            );
        }
    }
}
