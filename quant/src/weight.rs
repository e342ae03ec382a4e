//! A weight matrix held in a quantized format, and its product with activations.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, ggml_file};
use candle_core::{DType, Device, Tensor};
use patchwork_kernels::q4_0::Q4_0Matrix;
use patchwork_kernels::q4_1::Q4_1Matrix;
use patchwork_kernels::q4_k::Q4KMatrix;
use patchwork_kernels::q5_0::Q5_0Matrix;
use patchwork_kernels::q5_1::Q5_1Matrix;
use patchwork_kernels::q6_k::Q6KMatrix;
use patchwork_kernels::q8_0::Q8_0Matrix;

use crate::Format;

/// A `[rows, cols]` weight in one [`Format`]: Q8_0, Q6_K, Q5_0, Q5_1, Q4_K, Q4_0 and Q4_1 in
/// this project's blocks (integer dot-product kernels), the other ggml block formats (Q5_K,
/// Q3_K, Q2_K) in candle's `QMatMul`, F16 as a float16 tensor.
#[derive(Clone, Debug)]
pub struct QuantizedWeight {
    stored: Arc<Stored>,
    format: Format,
    rows: usize,
    cols: usize,
}

/// How a weight is held, by format family.
#[derive(Debug)]
pub(crate) enum Stored {
    Q8_0(Q8_0Matrix),
    Q4_0(Q4_0Matrix),
    Q4_1(Q4_1Matrix),
    Q5_0(Q5_0Matrix),
    Q5_1(Q5_1Matrix),
    Q4K(Q4KMatrix),
    Q6K(Q6KMatrix),
    Ggml(QMatMul),
    F16(Tensor),
}

impl QuantizedWeight {
    /// `weight` (`[rows, cols]`, any float dtype, on the CPU) stored in `format`, whose
    /// blocks must fit the rows ([`Format::fits`]). [`crate::RowQuantizer`] gives the same
    /// weight from the rows a few at a time.
    pub fn quantize(weight: &Tensor, format: Format) -> candle_core::Result<Self> {
        let (rows, cols) = weight.dims2()?;
        let mut q = crate::RowQuantizer::new(format, rows, cols)?;
        q.push(weight)?;
        q.finish()
    }

    pub(crate) fn from_stored(stored: Stored, format: Format, rows: usize, cols: usize) -> Self {
        Self {
            stored: Arc::new(stored),
            format,
            rows,
            cols,
        }
    }

    /// A weight from blocks as a file stores them (a GGUF tensor, `[rows, cols]`), taken as
    /// they are: Q8_0, Q6_K, Q5_0, Q5_1, Q4_K, Q4_0 and Q4_1 into this project's blocks without
    /// rounding again, the other block formats into candle's `QMatMul`, float16 and bfloat16 as
    /// float tensors. An error names a type no kernel computes on.
    pub fn from_qtensor(q: Arc<QTensor>) -> candle_core::Result<Self> {
        let (rows, cols) = q.shape().dims2()?;
        let dtype = q.dtype();
        // This project's blocks from the file's, or an error naming the type and the shape.
        let lined_up = |name: &str, m: Option<Stored>| {
            m.ok_or_else(|| {
                candle_core::Error::Msg(format!("{name} blocks of [{rows}, {cols}] do not line up"))
            })
        };
        let bytes = || q.data();
        let (format, stored) = match dtype {
            GgmlDType::Q8_0 => {
                let m = Q8_0Matrix::from_ggml_blocks(&bytes()?, rows, cols).map(Stored::Q8_0);
                (Format::Q8_0, lined_up("Q8_0", m)?)
            }
            GgmlDType::Q4_0 => {
                let m = Q4_0Matrix::from_ggml_blocks(&bytes()?, rows, cols).map(Stored::Q4_0);
                (Format::Q4_0, lined_up("Q4_0", m)?)
            }
            GgmlDType::Q4_1 => {
                let m = Q4_1Matrix::from_ggml_blocks(&bytes()?, rows, cols).map(Stored::Q4_1);
                (Format::Q4_1, lined_up("Q4_1", m)?)
            }
            GgmlDType::Q5_0 => {
                let m = Q5_0Matrix::from_ggml_blocks(&bytes()?, rows, cols).map(Stored::Q5_0);
                (Format::Q5_0, lined_up("Q5_0", m)?)
            }
            GgmlDType::Q5_1 => {
                let m = Q5_1Matrix::from_ggml_blocks(&bytes()?, rows, cols).map(Stored::Q5_1);
                (Format::Q5_1, lined_up("Q5_1", m)?)
            }
            GgmlDType::Q4K => {
                let m = Q4KMatrix::from_ggml_blocks(&bytes()?, rows, cols).map(Stored::Q4K);
                (Format::Q4K, lined_up("Q4_K", m)?)
            }
            GgmlDType::Q6K => {
                let m = Q6KMatrix::from_ggml_blocks(&bytes()?, rows, cols).map(Stored::Q6K);
                (Format::Q6K, lined_up("Q6_K", m)?)
            }
            GgmlDType::F16 => (Format::F16, Stored::F16(q.dequantize_f16(&Device::Cpu)?)),
            GgmlDType::BF16 => (
                Format::Bf16,
                Stored::F16(q.dequantize(&Device::Cpu)?.to_dtype(DType::BF16)?),
            ),
            other => {
                let format = Format::ALL
                    .into_iter()
                    .find(|f| f.ggml() == other)
                    .ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "ggml type {other:?} has no kernel here (computed: {})",
                            Format::ALL.map(|f| f.name()).join(", ")
                        ))
                    })?;
                (format, Stored::Ggml(QMatMul::from_arc(q)?))
            }
        };
        Ok(Self {
            stored: Arc::new(stored),
            format,
            rows,
            cols,
        })
    }

    /// Splits stacked blocks `[n, rows, cols]` (an expert bank as a file stores it) into `n`
    /// weights of `[rows, cols]` ([`QuantizedWeight::from_qtensor`] each).
    pub fn split_qtensor(q: &QTensor) -> candle_core::Result<Vec<Self>> {
        let (n, rows, cols) = q.shape().dims3()?;
        let dtype = q.dtype();
        let data = q.data()?;
        if n == 0 || !data.len().is_multiple_of(n) {
            candle_core::bail!("{n} stacked matrices do not split {} bytes", data.len());
        }
        data.chunks_exact(data.len() / n)
            .map(|bytes| {
                let one =
                    ggml_file::qtensor_from_ggml(dtype, bytes, vec![rows, cols], &Device::Cpu)?;
                Self::from_qtensor(Arc::new(one))
            })
            .collect()
    }

    /// The format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// `(rows, cols)`: `[out, in]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The bytes the weight takes in its format.
    pub fn bytes(&self) -> usize {
        self.format
            .bytes(self.rows, self.cols)
            .unwrap_or(usize::MAX)
    }

    /// The weight dequantized to float32 `[rows, cols]`.
    pub fn dequantize(&self) -> candle_core::Result<Tensor> {
        match self.stored.as_ref() {
            Stored::Q8_0(q) => {
                Tensor::from_vec(q.dequantize(), (self.rows, self.cols), &Device::Cpu)
            }
            Stored::Q4_0(q) => {
                Tensor::from_vec(q.dequantize(), (self.rows, self.cols), &Device::Cpu)
            }
            Stored::Q5_0(q) => {
                Tensor::from_vec(q.dequantize(), (self.rows, self.cols), &Device::Cpu)
            }
            Stored::Q4_1(q) => {
                Tensor::from_vec(q.dequantize(), (self.rows, self.cols), &Device::Cpu)
            }
            Stored::Q5_1(q) => {
                Tensor::from_vec(q.dequantize(), (self.rows, self.cols), &Device::Cpu)
            }
            Stored::Q4K(q) => {
                Tensor::from_vec(q.dequantize(), (self.rows, self.cols), &Device::Cpu)
            }
            Stored::Q6K(q) => {
                Tensor::from_vec(q.dequantize(), (self.rows, self.cols), &Device::Cpu)
            }
            Stored::F16(t) => t.to_dtype(DType::F32),
            Stored::Ggml(QMatMul::QTensor(q)) => q.dequantize(&Device::Cpu),
            Stored::Ggml(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.to_dtype(DType::F32),
        }
    }

    /// The products of `x` with each of `parts` (weights of one format and width: sibling
    /// projections of one input), side by side along the last dimension, plus `bias` (all the
    /// parts' biases, stacked). The formats with kernels of ours compute them in one pass
    /// ([`patchwork_models::ops::block_linear_many`]); the other formats one product each.
    pub fn forward_many(
        parts: &[&QuantizedWeight],
        x: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        if !x.track_op() {
            // One pass over sibling parts held in one of the kernels' block formats.
            macro_rules! in_one_pass {
                ($($variant:ident),*) => {$(
                    if let Some(ms) = all(parts, |s| match s {
                        Stored::$variant(m) => Some(m),
                        _ => None,
                    }) {
                        return patchwork_models::ops::block_linear_many(x, &ms, bias);
                    }
                )*};
            }
            in_one_pass!(Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4K, Q6K);
        }
        let outs = parts
            .iter()
            .map(|p| p.forward(x, None))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let y = Tensor::cat(&outs, candle_core::D::Minus1)?;
        match bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }

    /// `x W^T + bias` for `x` `[..., cols]`: the activations are quantized per block as the
    /// format's kernels need (ours: 8 bits per 32; the ggml formats: candle's), F16 computes
    /// in float16. The result has `x`'s dtype. When `x` carries gradients (it was computed
    /// from trainable adapters), the dequantized weight multiplies it in candle's
    /// differentiable ops instead.
    pub fn forward(&self, x: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
        if x.track_op() {
            // Under gradients (adapters trained over a quantized base, QLoRA's setting): the
            // dequantized weight in candle's ops, so the gradient reaches `x` and every
            // adapter before this layer; the weight itself stays a constant. As bitsandbytes
            // computes a 4-bit layer, the activations are not quantized.
            let w = self.dequantize()?.to_dtype(x.dtype())?;
            let y = x.broadcast_matmul(&w.t()?)?;
            return match bias {
                Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
                None => Ok(y),
            };
        }
        let shape = (self.rows, self.cols);
        match self.stored.as_ref() {
            Stored::Q8_0(q) => patchwork_models::ops::block_linear_many(x, &[q], bias),
            Stored::Q4_0(q) => patchwork_models::ops::block_linear_many(x, &[q], bias),
            Stored::Q5_0(q) => patchwork_models::ops::block_linear_many(x, &[q], bias),
            Stored::Q4_1(q) => patchwork_models::ops::block_linear_many(x, &[q], bias),
            Stored::Q5_1(q) => patchwork_models::ops::block_linear_many(x, &[q], bias),
            Stored::Q4K(q) => patchwork_models::ops::block_linear_many(x, &[q], bias),
            Stored::Q6K(q) => patchwork_models::ops::block_linear_many(x, &[q], bias),
            Stored::Ggml(q) => patchwork_models::ops::quantized_linear(x, q, shape, bias),
            // bfloat16 weights: the kernels widen them as they read, from float32 activations.
            Stored::F16(w) if w.dtype() == DType::BF16 => {
                patchwork_models::ops::linear(&x.to_dtype(DType::F32)?, w, bias)?
                    .to_dtype(x.dtype())
            }
            Stored::F16(w) => {
                let y = patchwork_models::ops::linear(&x.to_dtype(DType::F16)?, w, None)?
                    .to_dtype(x.dtype())?;
                match bias {
                    Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
                    None => Ok(y),
                }
            }
        }
    }
}

/// Every part's matrix when `pick` finds one in each (all in one block format), else `None`.
fn all<'a, M>(
    parts: &[&'a QuantizedWeight],
    pick: impl Fn(&'a Stored) -> Option<&'a M>,
) -> Option<Vec<&'a M>> {
    parts.iter().map(|p| pick(p.stored.as_ref())).collect()
}
