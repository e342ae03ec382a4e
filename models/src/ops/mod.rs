//! The tensor operations every layer computes with: projections, the gated activation, the
//! residual add, RMS norm, rotary embedding, softmax, attention and routed experts.
//!
//! Each operation chooses its execution path in one place, by one rule
//! ([`tracks_gradients`]): when no operand tracks gradients and the fused CPU kernels of
//! [`crate::kernels`] apply (CPU, float32 activations), the kernels run; otherwise candle's ops
//! run, which record the autograd graph (training, RL replay under a recorded routing) and
//! work on every device and dtype. Layers call these functions and never choose a path
//! themselves, so a layer's maths is written once and serves both.

pub(crate) mod cpu;

mod activation;
mod attention;
mod experts;
mod linear;
mod mask;
mod norm;
mod rope;

use candle_core::{D, DType, Tensor};

pub use activation::gated;
pub use attention::{KeyValues, attention, eager_attention};
pub use experts::{
    ExpertTokens, experts_per_expert_loop, per_expert, routed_experts, tokens_per_expert,
};
pub use linear::{block_linear_many, linear, q8_0_linear, q8_0_linear_many, quantized_linear};
pub use mask::AttentionMask;
pub use norm::rms_norm;
pub use rope::rope;

use cpu::{CpuSlice, cpu_tensor};

/// Whether a computation over `operands` must record the autograd graph: some operand is a
/// trainable variable, or was computed from one. The one rule every operation here uses to
/// pick candle's differentiable ops over the kernels.
pub fn tracks_gradients(operands: &[&Tensor]) -> bool {
    operands.iter().any(|t| t.track_op())
}

/// Whether `t` lives in CPU memory as float32: what the kernels compute on.
fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// `a + b * scale` for tensors of one shape, with `scale` `[..., 1]` broadcast over the last
/// dimension when given (the residual add, and the shared expert's gated add).
///
/// Kernel path: one pass on the calling thread (candle 0.11 runs element-wise ops of 64K
/// elements and more on a pool of its own, whose spinning workers compete with the kernels'
/// threads on small machines).
pub fn add_scaled(a: &Tensor, b: &Tensor, scale: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let operands: Vec<&Tensor> = [a, b].into_iter().chain(scale).collect();
    let last = a.dim(D::Minus1)?;
    let fits = cpu_f32(a)
        && cpu_f32(b)
        && a.dims() == b.dims()
        && scale.is_none_or(|s| cpu_f32(s) && s.elem_count() * last == a.elem_count());
    if fits && !tracks_gradients(&operands) {
        let (a2, b2) = (a.contiguous()?, b.contiguous()?);
        let s2 = scale.map(Tensor::contiguous).transpose()?;
        let (ra, rb) = (CpuSlice::of(&a2), CpuSlice::of(&b2));
        let rs = s2.as_ref().and_then(CpuSlice::of);
        let xs = rs.as_ref().and_then(CpuSlice::get::<f32>);
        if let Some(xa) = ra.as_ref().and_then(CpuSlice::get::<f32>)
            && let Some(xb) = rb.as_ref().and_then(CpuSlice::get::<f32>)
            && (scale.is_none() || xs.is_some())
        {
            let mut out = xa.to_vec();
            match xs {
                Some(xs) => {
                    let n = last.max(1);
                    for ((o, bb), sc) in out.chunks_mut(n).zip(xb.chunks(n)).zip(xs) {
                        o.iter_mut().zip(bb).for_each(|(o, b)| *o += b * sc);
                    }
                }
                None => out.iter_mut().zip(xb).for_each(|(o, b)| *o += b),
            }
            return cpu_tensor(out, a.shape().clone());
        }
    }
    match scale {
        Some(s) => a + b.broadcast_mul(s)?,
        None => a + b,
    }
}

/// Softmax over the last dimension: candle-nn's fused kernel, or (tracking gradients) the
/// composed, differentiable form (the fused one has no backward pass).
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if tracks_gradients(&[x]) {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// `max |a - b|` over all entries (float32), for the tests of both paths of each operation:
/// NaN when either has a NaN, infinite on a shape mismatch, so `max_diff(..) < tol` fails then.
#[cfg(test)]
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    patchwork_testing::max_abs_diff(a, b).unwrap_or(f32::INFINITY)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn the_switch_follows_the_operands() {
        let dev = Device::Cpu;
        let plain = Tensor::randn(0f32, 1.0, (3, 4), &dev).unwrap();
        assert!(!tracks_gradients(&[&plain]));
        let var = Var::from_tensor(&plain).unwrap();
        assert!(tracks_gradients(&[&plain, var.as_tensor()]));
        let derived = (var.as_tensor() * 2.0).unwrap();
        assert!(tracks_gradients(&[&derived]));
        assert!(!tracks_gradients(&[&derived.detach()]));
    }

    #[test]
    fn both_paths_of_add_and_softmax_agree_and_the_graph_path_has_gradients() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap();
        let s = Tensor::randn(0f32, 1.0, (2, 3, 1), &dev).unwrap();
        let fast = add_scaled(&a, &b, Some(&s)).unwrap();
        let var = Var::from_tensor(&b).unwrap();
        let graph = add_scaled(&a, var.as_tensor(), Some(&s)).unwrap();
        assert!(graph.track_op());
        assert!(max_diff(&fast, &graph) < 1e-6);
        let grads = graph.sum_all().unwrap().backward().unwrap();
        let g = grads.get(var.as_tensor()).unwrap();
        assert!(max_diff(g, &s.broadcast_as((2, 3, 8)).unwrap()) < 1e-6);

        let fast = softmax_last_dim(&a).unwrap();
        let va = Var::from_tensor(&a).unwrap();
        let graph = softmax_last_dim(va.as_tensor()).unwrap();
        assert!(max_diff(&fast, &graph) < 1e-6);
        assert!(graph.track_op());
    }
}
