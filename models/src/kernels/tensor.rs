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
