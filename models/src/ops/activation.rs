//! The gated activation of the MLPs and experts: `act(gate) * up`.

use candle_core::{D, Tensor};

use super::cpu::{cpu_tensor, read};
use super::{cpu_f32, tracks_gradients};
use crate::decoder::HiddenAct;
use crate::kernels::Isa;
use crate::kernels::activation::swiglu;

/// `act(gate) * up` for `gate_up` `[..., 2 * inter]` (gate columns first); returns
/// `[..., inter]`.
///
/// Kernel path: SiLU on CPU float32, the fused SwiGLU kernel; otherwise candle's ops.
pub fn gated(gate_up: &Tensor, act: HiddenAct) -> candle_core::Result<Tensor> {
    let two_i = gate_up.dim(D::Minus1)?;
    if two_i % 2 != 0 {
        candle_core::bail!(
            "gated activation: {two_i} columns cannot split into gate and up halves"
        );
    }
    let inter = two_i / 2;
    if act == HiddenAct::Silu && cpu_f32(gate_up) && !tracks_gradients(&[gate_up]) {
        let mut dims = gate_up.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = inter;
        }
        let gu = gate_up.contiguous()?;
        if let Some(out) = read::<f32, _>(&gu, |gu| {
            let mut out = vec![0f32; gu.len() / 2];
            swiglu(Isa::detect(), gu, inter, &mut out);
            out
        }) {
            return cpu_tensor(out, dims);
        }
    }
    let last = gate_up.rank() - 1;
    let gate = act.apply(&gate_up.narrow(last, 0, inter)?)?;
    gate * gate_up.narrow(last, inter, inter)?
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn kernel_and_graph_paths_agree() {
        let gu = Tensor::randn(0f32, 2.0, (3, 5, 2 * 24), &Device::Cpu).unwrap();
        let fast = gated(&gu, HiddenAct::Silu).unwrap();
        let var = Var::from_tensor(&gu).unwrap();
        let graph = gated(var.as_tensor(), HiddenAct::Silu).unwrap();
        assert!(graph.track_op() && !fast.track_op());
        let d = crate::ops::max_diff(&fast, &graph);
        assert!(d < 1e-5, "{d}");
        let grads = graph.sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get(var.as_tensor()).unwrap().dims(), &[3, 5, 48]);
    }
}
