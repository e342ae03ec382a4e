//! `x W^T + b`: the projection every layer runs.

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Module as _, Tensor};

use super::cpu::{CpuSlice, cpu_tensor};
use super::{cpu_f32, tracks_gradients};
use crate::kernels::q8_0::Q8_0Matrix;
use crate::kernels::{BlockMatrix, Isa, WeightElem, bf16, gemm};

/// `x W^T + bias` for `x` `[..., in]`, `w` `[out, in]` (as checkpoints store it) and `bias`
/// `[out]`; returns `[..., out]`.
///
/// Kernel path: float32 `x` on CPU and a float32 or bfloat16 `w`, read in place
/// ([`crate::kernels::gemm::matmul_t`], a matrix-vector product for one token), the bias added
/// in the same pass. Otherwise candle's matmul, with a `w` of another dtype converted to `x`'s.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
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
    if let Some(b) = bias
        && b.dims() != [n]
    {
        candle_core::bail!(
            "linear: bias {:?} does not match the weight's {n} outputs",
            b.shape()
        );
    }
    let m: usize = dims.iter().product();
    dims.push(n);
    let operands: Vec<&Tensor> = [x, w].into_iter().chain(bias).collect();
    let fits = cpu_f32(x) && w.device().is_cpu() && bias.is_none_or(cpu_f32) && m > 0;
    if fits
        && !tracks_gradients(&operands)
        && let Some(out) = kernel(x, m, w, n, bias)?
    {
        return cpu_tensor(out, dims);
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

/// `x W^T + b` for a weight held quantized (`shape` `[out, in]`): candle's quantized matmul,
/// which quantizes `x` to 8 bits per block as it multiplies. `x` in another dtype than f32 is
/// converted for the product and the result converted back.
pub fn quantized_linear(
    x: &Tensor,
    w: &QMatMul,
    shape: (usize, usize),
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (n, k) = shape;
    let mut dims = x.dims().to_vec();
    if dims.pop() != Some(k) {
        candle_core::bail!(
            "linear: input {:?} does not end in the quantized weight's {k} inputs",
            x.shape()
        );
    }
    let m: usize = dims.iter().product();
    dims.push(n);
    let x2 = x.reshape((m, k))?.to_dtype(DType::F32)?.contiguous()?;
    let y = match w {
        // Many tokens on the CPU, in the legacy 32-weight formats of a `QMatMul` handed here
        // (`patchwork-quant` keeps its Q4_1 and Q5_1 weights in the kernels' own blocks
        // instead): the weight dequantized once for this call and multiplied by the float GEMM
        // (2.1x candle's product on a 64-token Q4_0 prefill; the k-quants stay candle's, which
        // is faster there: PERFORMANCE.md).
        QMatMul::QTensor(q)
            if m >= crate::kernels::q8_0::WIDEN_TOKENS
                && x2.device().is_cpu()
                && matches!(q.dtype(), GgmlDType::Q4_1 | GgmlDType::Q5_1) =>
        {
            linear(&x2, &q.dequantize(x2.device())?, None)?
        }
        _ => w.forward(&x2)?,
    };
    let y = match bias {
        Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?)?,
        None => y,
    };
    y.to_dtype(x.dtype())?.reshape(dims)
}

/// `x W^T + b` for a weight held in Q8_0 blocks: [`Q8_0Matrix::matmul_t`], which quantizes
/// each token to 8 bits per block as it multiplies. `x` is read as f32 (converted when it is
/// not), and the result converted back to `x`'s dtype.
pub fn q8_0_linear(
    x: &Tensor,
    w: &Q8_0Matrix,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    q8_0_linear_many(x, &[w], bias)
}

/// `x [W_0; W_1; ...]^T + b` for sibling weights of one input held in Q8_0 blocks (q/k/v,
/// gate/up): their outputs side by side along the last dimension, computed in one pass
/// ([`Q8_0Matrix::matmul_t_many`]); `bias`, when given, spans all of them.
pub fn q8_0_linear_many(
    x: &Tensor,
    parts: &[&Q8_0Matrix],
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    block_linear_many(x, parts, bias)
}

/// `x [W_0; W_1; ...]^T + b` for sibling weights of one input held in one of the kernels'
/// block formats (Q8_0, Q4_0: [`BlockMatrix`]), their outputs side by side along the last
/// dimension, computed in one pass; `bias`, when given, spans all of them. `x` is read as
/// f32 (converted when it is not), the result converted back to `x`'s dtype; CPU only.
pub fn block_linear_many<M: BlockMatrix>(
    x: &Tensor,
    parts: &[&M],
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let k = parts.first().map_or(0, |p| p.shape().1);
    if let Some(p) = parts.iter().find(|p| p.shape().1 != k) {
        candle_core::bail!(
            "linear: stacked {} weights of {k} and {} inputs",
            M::FORMAT,
            p.shape().1
        );
    }
    let n: usize = parts.iter().map(|p| p.shape().0).sum();
    let mut dims = x.dims().to_vec();
    if dims.pop() != Some(k) {
        candle_core::bail!(
            "linear: input {:?} does not end in the quantized weight's {k} inputs",
            x.shape()
        );
    }
    if !x.device().is_cpu() {
        candle_core::bail!(
            "{} layers run on the CPU; the input is on {:?}",
            M::FORMAT,
            x.device()
        );
    }
    let m: usize = dims.iter().product();
    dims.push(n);
    let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; m * n];
    M::matmul_t_many(Isa::detect(), parts, &xs, m, &mut out);
    let y = cpu_tensor(out, (m, n))?;
    let y = match bias {
        Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?)?,
        None => y,
    };
    y.to_dtype(x.dtype())?.reshape(dims)
}

/// The kernel path; `None` when a tensor is not readable as the kernels need it.
fn kernel(
    x: &Tensor,
    m: usize,
    w: &Tensor,
    n: usize,
    bias: Option<&Tensor>,
) -> candle_core::Result<Option<Vec<f32>>> {
    let x = x.contiguous()?;
    let bias = bias.map(Tensor::contiguous).transpose()?;
    let (rx, rw) = (CpuSlice::of(&x), CpuSlice::of(w));
    let rb = bias.as_ref().and_then(CpuSlice::of);
    let (Some(xs), Some(rw)) = (rx.as_ref().and_then(CpuSlice::get::<f32>), rw) else {
        return Ok(None);
    };
    let bs = match &bias {
        None => None,
        Some(_) => match rb.as_ref().and_then(CpuSlice::get::<f32>) {
            Some(b) => Some(b),
            None => return Ok(None),
        },
    };
    let isa = Isa::detect();
    Ok(match w.dtype() {
        DType::F32 => rw.get::<f32>().map(|ws| run(isa, xs, m, ws, n, bs)),
        DType::BF16 => rw.get::<bf16>().map(|ws| run(isa, xs, m, ws, n, bs)),
        _ => None,
    })
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::ops::max_diff;

    #[test]
    fn kernel_and_graph_paths_agree_for_f32_and_bf16_weights() {
        let dev = Device::Cpu;
        for (m, n, k) in [(1, 7, 13), (3, 17, 33), (12, 40, 100)] {
            let x = Tensor::randn(0f32, 1.0, (2, m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            for w in [w.clone(), w.to_dtype(DType::BF16).unwrap()] {
                let got = linear(&x, &w, Some(&b)).unwrap();
                let w32 = w.to_dtype(DType::F32).unwrap();
                let want = x
                    .broadcast_matmul(&w32.t().unwrap())
                    .unwrap()
                    .broadcast_add(&b)
                    .unwrap();
                assert_eq!(got.dims(), want.dims());
                assert!(max_diff(&got, &want) < 1e-4, "{m}x{n}x{k} {:?}", w.dtype());
                assert!(!got.track_op(), "the kernel path records no graph");
            }
            let wv = Var::from_tensor(&w).unwrap();
            let graph = linear(&x, wv.as_tensor(), Some(&b)).unwrap();
            assert!(graph.track_op());
            assert!(max_diff(&graph, &linear(&x, &w, Some(&b)).unwrap()) < 1e-4);
            // d sum(x W^T) / dW = column sums of x, for every output row.
            let grads = graph.sum_all().unwrap().backward().unwrap();
            let g = grads.get(wv.as_tensor()).unwrap();
            let want = x.reshape((2 * m, k)).unwrap().sum_keepdim(0).unwrap();
            assert!(max_diff(g, &want.broadcast_as((n, k)).unwrap()) < 1e-4);
        }
    }
}
