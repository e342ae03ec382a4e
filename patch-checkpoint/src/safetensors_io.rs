//! Reading and writing safetensors files.
//!
//! Reading memory-maps each file and copies a tensor out only when it is asked for. candle's
//! CPU storage is an owned `Vec`, so a tensor handed to a model cannot borrow the map:
//! zero-copy is impossible, and a tensor whose file dtype is the compute dtype is copied
//! exactly once. Right after the copy the mapped pages are released (`madvise(DONTNEED)` on
//! Unix): they stay in the kernel's page cache but no longer count in the process's resident
//! memory, so peak RSS stays near the size of the model itself.
//!
//! Writing streams: the header is computed from names, dtypes and shapes alone, then each
//! tensor's bytes are produced and written one at a time.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::Dtype;

use crate::{Error, Result};

#[cfg(target_endian = "big")]
compile_error!("patch-checkpoint reads and writes little-endian safetensors data in place");

/// Where one tensor lives in a file.
#[derive(Clone, Debug)]
pub(crate) struct TensorMeta {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range in the file (absolute).
    pub start: usize,
    pub end: usize,
}

/// An open, memory-mapped safetensors file.
#[derive(Debug)]
pub(crate) struct SafetensorsFile {
    pub path: PathBuf,
    mmap: Mmap,
    /// Tensors in file order.
    pub tensors: Vec<(String, TensorMeta)>,
}

pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl SafetensorsFile {
    /// Maps `path` and parses its header.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        // SAFETY: the map is read-only; like every mmap-based loader (candle's, safetensors')
        // this assumes the file is not truncated or rewritten while the checkpoint is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
        let (n, meta) = safetensors::SafeTensors::read_metadata(&mmap)
            .map_err(|e| io_err(path, format!("not a valid safetensors file: {e:?}")))?;
        let data_start = 8 + n;
        let mut tensors: Vec<(String, TensorMeta)> = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                (
                    name,
                    TensorMeta {
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: data_start + info.data_offsets.0,
                        end: data_start + info.data_offsets.1,
                    },
                )
            })
            .collect();
        tensors.sort_by_key(|(_, m)| m.start);
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            tensors,
        })
    }

    /// Loads one tensor into `dtype` on `device` (float tensors are converted; integer tensors
    /// keep their dtype), then releases the mapped pages it was read from.
    pub fn load(
        &self,
        name: &str,
        meta: &TensorMeta,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let file_dtype = candle_dtype(meta.dtype).ok_or_else(|| {
            io_err(
                &self.path,
                format!(
                    "tensor {name:?} has dtype {:?}, which candle cannot hold",
                    meta.dtype
                ),
            )
        })?;
        let bytes = self.mmap.get(meta.start..meta.end).ok_or_else(|| {
            io_err(
                &self.path,
                format!("tensor {name:?}: data range out of the file"),
            )
        })?;
        let t = Tensor::from_raw_buffer(bytes, file_dtype, &meta.shape, device)
            .map_err(|e| io_err(&self.path, format!("tensor {name:?}: {e}")))?;
        self.release(meta.start, meta.end - meta.start);
        let t = if file_dtype != dtype && file_dtype.is_float() && dtype.is_float() {
            t.to_dtype(dtype)?
        } else {
            t
        };
        Ok(t)
    }

    /// Drops the mapped pages of a byte range from this process's resident set.
    fn release(&self, offset: usize, len: usize) {
        #[cfg(unix)]
        {
            // SAFETY: the map is read-only and file-backed: after DONTNEED, a later access
            // faults the same bytes back in from the file (or page cache). No Rust reference
            // into the range outlives this call (the copy above is complete).
            let _ = unsafe {
                self.mmap
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
            };
        }
        #[cfg(not(unix))]
        {
            let _ = (offset, len);
        }
    }
}

/// candle's dtype for a safetensors dtype, if candle has one.
pub(crate) fn candle_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::U8 => DType::U8,
        Dtype::U32 => DType::U32,
        Dtype::I16 => DType::I16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        Dtype::BF16 => DType::BF16,
        Dtype::F16 => DType::F16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::F8_E4M3 => DType::F8E4M3,
        _ => return None,
    })
}

/// The safetensors name of a candle dtype.
pub(crate) fn dtype_name(d: DType) -> Result<&'static str> {
    Ok(match d {
        DType::U8 => "U8",
        DType::U32 => "U32",
        DType::I16 => "I16",
        DType::I32 => "I32",
        DType::I64 => "I64",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        DType::F32 => "F32",
        DType::F64 => "F64",
        DType::F8E4M3 => "F8_E4M3",
        other => {
            return Err(Error::Io {
                path: String::new(),
                message: format!("dtype {other:?} cannot be written to safetensors"),
            });
        }
    })
}

/// One tensor of a file about to be written.
#[derive(Clone, Debug)]
pub(crate) struct OutTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl OutTensor {
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_in_bytes()
    }
}

/// Writes a safetensors file holding `tensors` in this order (with `{"format": "pt"}` metadata,
/// as transformers writes), asking `produce` for each tensor's data when its turn comes. The
/// file is written under a temporary name and renamed into place at the end.
pub(crate) fn write_file(
    path: &Path,
    tensors: &[OutTensor],
    mut produce: impl FnMut(&OutTensor) -> Result<Tensor>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), "pt".into());
    header.insert("__metadata__".into(), meta.into());
    let mut offset = 0usize;
    for t in tensors {
        let n = t.nbytes();
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": dtype_name(t.dtype)?,
                "shape": t.shape,
                "data_offsets": [offset, offset + n],
            }),
        );
        offset += n;
    }
    let mut text = serde_json::to_string(&header).map_err(|e| io_err(path, e))?;
    // Pad the header so the data starts 8-byte aligned, as the safetensors writer does.
    while !(text.len() + 8).is_multiple_of(8) {
        text.push(' ');
    }
    let tmp = path.with_extension("safetensors.tmp");
    let file = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let write = |w: &mut BufWriter<File>, b: &[u8]| w.write_all(b).map_err(|e| io_err(&tmp, e));
    write(&mut w, &(text.len() as u64).to_le_bytes())?;
    write(&mut w, text.as_bytes())?;
    for t in tensors {
        let tensor = produce(t)?;
        if tensor.dims() != t.shape.as_slice() || tensor.dtype() != t.dtype {
            return Err(io_err(
                path,
                format!(
                    "tensor {:?} came out as {:?} {:?}, planned {:?} {:?}",
                    t.name,
                    tensor.dtype(),
                    tensor.dims(),
                    t.dtype,
                    t.shape
                ),
            ));
        }
        write_tensor(&mut w, &tensor)
            .map_err(|e| io_err(&tmp, format!("tensor {:?}: {e}", t.name)))?;
    }
    let file = w.into_inner().map_err(|e| io_err(&tmp, e.error()))?;
    file.sync_all().map_err(|e| io_err(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    Ok(())
}

/// Writes a tensor's elements, little-endian, row-major.
fn write_tensor(
    w: &mut impl Write,
    t: &Tensor,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let t = t.to_device(&Device::Cpu)?.flatten_all()?;
    match t.dtype() {
        DType::U8 => w.write_all(&t.to_vec1::<u8>()?)?,
        DType::U32 => w.write_all(bytemuck::cast_slice(&t.to_vec1::<u32>()?))?,
        DType::I16 => w.write_all(bytemuck::cast_slice(&t.to_vec1::<i16>()?))?,
        DType::I32 => w.write_all(bytemuck::cast_slice(&t.to_vec1::<i32>()?))?,
        DType::I64 => w.write_all(bytemuck::cast_slice(&t.to_vec1::<i64>()?))?,
        DType::BF16 => w.write_all(bytemuck::cast_slice(&t.to_vec1::<half::bf16>()?))?,
        DType::F16 => w.write_all(bytemuck::cast_slice(&t.to_vec1::<half::f16>()?))?,
        DType::F32 => w.write_all(bytemuck::cast_slice(&t.to_vec1::<f32>()?))?,
        DType::F64 => w.write_all(bytemuck::cast_slice(&t.to_vec1::<f64>()?))?,
        other => return Err(format!("dtype {other:?} cannot be written").into()),
    }
    Ok(())
}
