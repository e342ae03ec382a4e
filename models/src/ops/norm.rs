//! RMS norm.

use candle_core::Tensor;

use super::tracks_gradients;

/// `weight * x / sqrt(mean(x^2) + eps)` over the last dimension (statistics in float32 for
/// half-precision inputs, as transformers computes them).
///
/// candle-nn's fused kernel, or (tracking gradients) the composed form: the fused one has no
/// backward pass.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    if tracks_gradients(&[x, weight]) {
        candle_nn::ops::rms_norm_slow(x, weight, eps as f32)
    } else {
        candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn fused_and_composed_agree() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.1, 16, &dev).unwrap();
        let fused = rms_norm(&x, &w, 1e-6).unwrap();
        let wv = Var::from_tensor(&w).unwrap();
        let graph = rms_norm(&x, wv.as_tensor(), 1e-6).unwrap();
        assert!(graph.track_op() && !fused.track_op());
        let d = crate::ops::max_diff(&fused, &graph);
        assert!(d < 1e-5, "{d}");
    }
}
