//! Borrowing the elements of CPU tensors, for the kernel side of the operations.

use std::ops::Range;

use candle_core::{Storage, StorageRef, Tensor, WithDType};

/// The elements of a contiguous CPU tensor, borrowed (a read lock on its storage) for as long
/// as this value lives: what the slice-level kernels read.
pub(crate) struct CpuSlice<'a> {
    storage: StorageRef<'a>,
    range: Range<usize>,
}

impl<'a> CpuSlice<'a> {
    /// `None` unless `t` is a contiguous tensor in CPU memory.
    pub(crate) fn of(t: &'a Tensor) -> Option<Self> {
        let (storage, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        matches!(&*storage, Storage::Cpu(_)).then_some(Self {
            storage,
            range: start..end,
        })
    }

    /// The elements as `T`; `None` if the tensor holds another dtype.
    pub(crate) fn get<T: WithDType>(&self) -> Option<&[T]> {
        let Storage::Cpu(cpu) = &*self.storage else {
            return None;
        };
        cpu.as_slice::<T>()
            .ok()
            .and_then(|all| all.get(self.range.clone()))
    }
}

/// Runs `f` on the elements of `t` when it is a contiguous CPU tensor of `T`; `None`
/// otherwise.
pub(crate) fn read<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Option<R> {
    let slice = CpuSlice::of(t)?;
    Some(f(slice.get::<T>()?))
}

/// A CPU float32 tensor of `shape` holding `data` (what a kernel wrote).
pub(crate) fn cpu_tensor(
    data: Vec<f32>,
    shape: impl Into<candle_core::Shape>,
) -> candle_core::Result<Tensor> {
    Tensor::from_vec(data, shape, &candle_core::Device::Cpu)
}
