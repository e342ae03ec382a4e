//! Rotary position embedding (the rotate-half convention of transformers).

use candle_core::{D, Tensor};

use super::tracks_gradients;

/// Rotates `x` `[batch, seq, heads, head_dim]` by the angles whose `cos` and `sin` are given
/// `[batch, seq, head_dim / 2]`: `x * cos + rotate_half(x) * sin`, cos/sin repeated over both
/// halves.
///
/// candle-nn's fused kernel for this layout, or (tracking gradients) the composed form: the
/// fused one has no backward pass.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    if !tracks_gradients(&[x, cos, sin]) {
        return candle_nn::rotary_emb::rope_thd(&x.contiguous()?, cos, sin);
    }
    let (b, t, _, d) = x.dims4()?;
    let half = d / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.reshape((b, t, 1, d))?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.reshape((b, t, 1, d))?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, d - half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn fused_and_composed_agree() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 3, 8), &dev).unwrap();
        let angles = Tensor::randn(0f32, 3.0, (2, 5, 4), &dev).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let fused = rope(&x, &cos, &sin).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        let graph = rope(xv.as_tensor(), &cos, &sin).unwrap();
        assert!(graph.track_op() && !fused.track_op());
        let d = crate::ops::max_diff(&fused, &graph);
        assert!(d < 1e-5, "{d}");
    }
}
