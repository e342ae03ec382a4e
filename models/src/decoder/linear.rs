//! Linear projections: the [`Linear`] layer every family here uses (the CPU kernels of
//! [`crate::kernels`] for f32 and bf16 weights, candle's matmul elsewhere), loading with the
//! initialisation transformers uses (so a checkpoint and a seeded random model go through the
//! same code), and fused projections that keep the checkpoint's separate tensors as views.

use candle_core::{DType, Tensor};
use candle_nn::Init;
use patch_core::{Builder, Result};

use crate::decoder::config::DecoderConfig;
use crate::kernels::tensor::{cpu_tensor, with_slice};
use crate::kernels::{Isa, WeightElem, bf16, gemm};

/// `y = x W^T + b` with the weight stored `[out, in]` as in checkpoints.
///
/// On CPU with float32 activations, the product runs on [`crate::kernels::gemm::matmul_t`]
/// (a matrix-vector product for one token), reading the weight in place whether it is kept in
/// float32 or bfloat16; on other devices or dtypes it is candle's matmul (a bfloat16 weight is
/// then converted to the activations' dtype per call).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A layer from its weight `[out, in]` and optional bias `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `[out]`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Applies the layer to `x` (`[..., in]`), returning `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        affine(x, &self.weight, self.bias.as_ref())
    }
}

impl candle_core::Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Linear::forward(self, x)
    }
}

/// `x W^T` for `x` `[..., in]` and `w` `[out, in]`: the CPU kernels for float32 `x` and a
/// contiguous float32 or bfloat16 `w`, candle's matmul otherwise.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    affine(x, w, None)
}

/// `x W^T + bias` (see [`matmul_t`]); the bias is added in the same pass on CPU.
pub fn affine(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (n, k) = w.dims2()?;
    let mut dims = x.dims().to_vec();
    let last = dims.pop().unwrap_or(0);
    if last != k {
        candle_core::bail!(
            "linear: input {:?} does not end in the weight's {k} inputs (weight {:?})",
            x.shape(),
            w.shape()
        );
    }
    let m: usize = dims.iter().product();
    dims.push(n);
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if cpu_f32(x) && w.device().is_cpu() && bias.is_none_or(cpu_f32) && m > 0 {
        let x = x.contiguous()?;
        let bias = bias.map(Tensor::contiguous).transpose()?;
        let isa = Isa::detect();
        let out = with_slice::<f32, _>(&x, |xs| {
            let with_bias = |b: Option<&[f32]>| match w.dtype() {
                DType::F32 => with_slice::<f32, _>(w, |ws| run(isa, xs, m, ws, n, b)),
                DType::BF16 => with_slice::<bf16, _>(w, |ws| run(isa, xs, m, ws, n, b)),
                _ => None,
            };
            match &bias {
                Some(b) => with_slice::<f32, _>(b, |b| with_bias(Some(b))).flatten(),
                None => with_bias(None),
            }
        })
        .flatten();
        if let Some(out) = out {
            return cpu_tensor(out, dims);
        }
    }
    let w = if w.dtype() == x.dtype() {
        w.clone()
    } else {
        w.to_dtype(x.dtype())?
    };
    let y = x.reshape((m, k))?.matmul(&w.t()?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
        None => y,
    };
    y.reshape(dims)
}

fn run<E: WeightElem>(
    isa: Isa,
    x: &[f32],
    m: usize,
    w: &[E],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    gemm::matmul_t(isa, x, m, w, n, bias, &mut out);
    out
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
    let cat = |ts: Vec<&Tensor>| Tensor::cat(&ts, 0).map_err(patch_core::Error::other);
    let weight = cat(loaded.iter().map(|l| l.weight()).collect())?;
    let fused_bias = if bias {
        Some(cat(loaded.iter().filter_map(|l| l.bias()).collect())?)
    } else {
        None
    };
    let params = b.weights().params();
    let mut views = Vec::with_capacity(parts.len());
    let mut row = 0;
    for (name, out) in parts {
        let narrow = |t: &Tensor| t.narrow(0, row, *out).map_err(patch_core::Error::other);
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
    use candle_core::Device;

    use super::*;

    #[test]
    fn linear_matches_candle_matmul_for_f32_and_bf16_weights() {
        let dev = Device::Cpu;
        for (m, n, k) in [(1, 7, 13), (3, 17, 33), (12, 40, 100)] {
            let x = Tensor::randn(0f32, 1.0, (2, m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            for w in [w.clone(), w.to_dtype(DType::BF16).unwrap()] {
                let got = Linear::new(w.clone(), Some(b.clone())).forward(&x).unwrap();
                let w32 = w.to_dtype(DType::F32).unwrap();
                let want = x
                    .broadcast_matmul(&w32.t().unwrap())
                    .unwrap()
                    .broadcast_add(&b)
                    .unwrap();
                assert_eq!(got.dims(), want.dims());
                let diff = (got - want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(diff < 1e-4, "{m}x{n}x{k} {:?}: {diff}", w.dtype());
            }
        }
    }
}
