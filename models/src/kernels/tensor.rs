//! Reading CPU tensors as slices, for the tensor-level wrappers of the kernels.

use candle_core::{Storage, Tensor, WithDType};

/// Runs `f` on the elements of `t` when it is a contiguous CPU tensor of `T`; `None`
/// otherwise (another device or dtype, or a strided view), for the caller to fall back to
/// candle's ops.
pub(crate) fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return None;
    };
    let (start, end) = layout.contiguous_offsets()?;
    let all: &[T] = cpu.as_slice::<T>().ok()?;
    Some(f(&all[start..end]))
}

/// A CPU f32 tensor of `shape` holding `data`.
pub(crate) fn cpu_tensor(
    data: Vec<f32>,
    shape: impl Into<candle_core::Shape>,
) -> candle_core::Result<Tensor> {
    Tensor::from_vec(data, shape, &candle_core::Device::Cpu)
}

/// `a + b * scale` for tensors of one shape, with `scale` `[..., 1]` broadcast over the last
/// dimension when given: on CPU float32 in one pass on the calling thread (candle 0.11 runs
/// element-wise ops of 64K elements and more on a pool of its own whose spinning workers
/// compete with the kernels' threads on small machines); candle's ops otherwise.
pub(crate) fn add_scaled(
    a: &Tensor,
    b: &Tensor,
    scale: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let fast = a.device().is_cpu()
        && a.dtype() == candle_core::DType::F32
        && b.dtype() == candle_core::DType::F32
        && a.dims() == b.dims()
        && scale.is_none_or(|s| {
            s.dtype() == candle_core::DType::F32
                && s.elem_count() * a.dim(candle_core::D::Minus1).unwrap_or(0) == a.elem_count()
        });
    if fast {
        let (a2, b2) = (a.contiguous()?, b.contiguous()?);
        let s2 = scale.map(Tensor::contiguous).transpose()?;
        let n = a.dim(candle_core::D::Minus1)?.max(1);
        let out = with_slice::<f32, _>(&a2, |xa| {
            with_slice::<f32, _>(&b2, |xb| {
                let mut out = xa.to_vec();
                match &s2 {
                    Some(s) => with_slice::<f32, _>(s, |xs| {
                        for ((o, bb), sc) in out.chunks_mut(n).zip(xb.chunks(n)).zip(xs) {
                            o.iter_mut().zip(bb).for_each(|(o, b)| *o += b * sc);
                        }
                        out
                    }),
                    None => {
                        out.iter_mut().zip(xb).for_each(|(o, b)| *o += b);
                        Some(out)
                    }
                }
            })
        })
        .flatten()
        .flatten();
        if let Some(out) = out {
            return cpu_tensor(out, a.shape().clone());
        }
    }
    match scale {
        Some(s) => a + b.broadcast_mul(s)?,
        None => a + b,
    }
}
