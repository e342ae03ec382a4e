//! Reading safetensors files (writing is in `safetensors_write.rs`).
//!
//! Reading memory-maps each file and copies a tensor out only when it is asked for. candle's
//! CPU storage is an owned `Vec`, so a tensor handed to a model cannot borrow the map:
//! zero-copy is impossible, and a tensor whose file dtype is the compute dtype is copied
//! exactly once. Right after the copy the mapped pages are released (`madvise(DONTNEED)` on
//! Unix): they stay in the kernel's page cache but no longer count in the process's resident
//! memory, so peak RSS stays near the size of the model itself.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::Dtype;

use crate::Result;
use crate::files::{io_error, malformed, open_regular};
pub(crate) use crate::safetensors_header::TensorMeta;

#[cfg(target_endian = "big")]
compile_error!("patch-checkpoint reads and writes little-endian safetensors data in place");

/// An open, memory-mapped safetensors file.
#[derive(Debug)]
pub(crate) struct SafetensorsFile {
    pub path: PathBuf,
    mmap: Mmap,
    /// Tensors in file order.
    pub tensors: Vec<(String, TensorMeta)>,
}

impl SafetensorsFile {
    /// Maps `path` (a regular file) and parses and checks its header.
    pub fn open(path: &Path) -> Result<Self> {
        let (file, _) = open_regular(path)?;
        // SAFETY: the map is read-only; like every mmap-based loader (candle's, safetensors')
        // this assumes the file is not truncated or rewritten while the checkpoint is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| io_error(path, "cannot map", e))?;
        let tensors = crate::safetensors_header::parse(path, &mmap)?;
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
        let t = decode_tensor(&self.path, &self.mmap, name, meta, dtype, device)?;
        self.release(meta.start, meta.len());
        Ok(t)
    }

    /// Loads one tensor as [`SafetensorsFile::load`] does, in chunks of at most `rows` entries
    /// of its first dimension handed to `each` in order, each chunk's mapped pages released
    /// before the next is read: a caller that converts the values (quantizes them) holds one
    /// chunk of floats at a time. With `range`, only those entries are read (one process's
    /// share of a tensor split across processes). A chunk the file cannot give (a NaN, a range out of the
    /// file) is [`ChunkError::Read`]; an error of `each` is [`ChunkError::Consumer`].
    pub fn load_chunks(
        &self,
        name: &str,
        meta: &TensorMeta,
        (dtype, device): (DType, &Device),
        rows: usize,
        range: Option<Range<usize>>,
        each: &mut dyn FnMut(Tensor) -> Result<()>,
    ) -> std::result::Result<(), ChunkError> {
        let total = meta.shape.first().copied().unwrap_or(1);
        let row_bytes = meta.len() / total.max(1);
        let range = range.unwrap_or(0..total);
        let (mut start, total) = (range.start.min(total), range.end.min(total));
        if start >= total {
            return Ok(());
        }
        loop {
            let end = total.min(start.saturating_add(rows.max(1)));
            let t = decode_rows(
                &self.path,
                &self.mmap,
                name,
                meta,
                (dtype, device),
                start..end,
            )
            .map_err(ChunkError::Read)?;
            self.release(meta.start + start * row_bytes, (end - start) * row_bytes);
            each(t).map_err(ChunkError::Consumer)?;
            start = end;
            if start >= total {
                return Ok(());
            }
        }
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

/// Why a chunked read stopped.
#[derive(Debug)]
pub(crate) enum ChunkError {
    /// The file could not give the chunk.
    Read(crate::Error),
    /// The consumer of the chunks failed.
    Consumer(crate::Error),
}

/// Tensor `name` of the safetensors file `path` whose bytes are `file`, into `dtype` on
/// `device`: float tensors are converted; integer tensors keep their dtype and are refused
/// where a float one is asked for; NaN and infinite values are refused.
pub(crate) fn decode_tensor(
    path: &Path,
    file: &[u8],
    name: &str,
    meta: &TensorMeta,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let rows = meta.shape.first().copied().unwrap_or(1);
    decode_rows(path, file, name, meta, (dtype, device), 0..rows)
}

/// Entries `rows` of the first dimension of tensor `name` (all of a scalar), decoded and
/// checked as [`decode_tensor`] does.
fn decode_rows(
    path: &Path,
    file: &[u8],
    name: &str,
    meta: &TensorMeta,
    (dtype, device): (DType, &Device),
    rows: std::ops::Range<usize>,
) -> Result<Tensor> {
    let file_dtype = candle_dtype(meta.dtype).ok_or_else(|| {
        malformed(
            path,
            format!(
                "tensor {name:?} has dtype {:?}, which candle cannot hold",
                meta.dtype
            ),
        )
    })?;
    if dtype.is_float() && !file_dtype.is_float() {
        return Err(malformed(
            path,
            format!(
                "tensor {name:?} is stored as {:?}, but the model computes in {dtype:?}: a weight must be a float tensor",
                meta.dtype
            ),
        ));
    }
    // The header check made `end - start` the shape's size in the stored dtype.
    let total = meta.shape.first().copied().unwrap_or(1);
    let row_bytes = meta.len() / total.max(1);
    let mut shape = meta.shape.clone();
    if let Some(first) = shape.first_mut() {
        *first = rows.len();
    }
    let bytes = file
        .get(meta.start + rows.start * row_bytes..meta.start + rows.end * row_bytes)
        .filter(|_| rows.end <= total)
        .ok_or_else(|| malformed(path, format!("tensor {name:?}: data range out of the file")))?;
    crate::memory::check(
        crate::memory::bytes_of(
            shape.iter().map(|&d| d as u128).product(),
            dtype.size_in_bytes().max(file_dtype.size_in_bytes()),
        ),
        || format!("{}: tensor {name:?}", path.display()),
        "",
    )?;
    if let Some(at) = first_non_finite(bytes, meta.dtype) {
        let at = at + rows.start * (row_bytes / file_dtype.size_in_bytes().max(1));
        return Err(malformed(
            path,
            format!(
                "tensor {name:?} holds a NaN or infinite value (element {at} of shape {:?}): a weight must be finite",
                meta.shape
            ),
        ));
    }
    let t = Tensor::from_raw_buffer(bytes, file_dtype, &shape, device)?;
    Ok(
        if file_dtype != dtype && file_dtype.is_float() && dtype.is_float() {
            t.to_dtype(dtype)?
        } else {
            t
        },
    )
}

/// The index of the first NaN or infinite element of little-endian `bytes` of `dtype` (an
/// all-ones exponent; float dtypes with infinities and NaNs only), if any.
pub(crate) fn first_non_finite(bytes: &[u8], dtype: Dtype) -> Option<usize> {
    fn scan<const N: usize>(bytes: &[u8], bad: impl Fn([u8; N]) -> bool) -> Option<usize> {
        bytes.chunks_exact(N).position(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            bad(a)
        })
    }
    match dtype {
        Dtype::F32 => scan::<4>(bytes, |b| {
            u32::from_le_bytes(b) & 0x7f80_0000 == 0x7f80_0000
        }),
        Dtype::BF16 => scan::<2>(bytes, |b| u16::from_le_bytes(b) & 0x7f80 == 0x7f80),
        Dtype::F16 => scan::<2>(bytes, |b| u16::from_le_bytes(b) & 0x7c00 == 0x7c00),
        Dtype::F64 => scan::<8>(bytes, |b| {
            u64::from_le_bytes(b) & 0x7ff0_0000_0000_0000 == 0x7ff0_0000_0000_0000
        }),
        _ => None,
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

/// Reads every tensor of the safetensors file `path` onto `device`, in its stored dtype: the
/// checked reader of checkpoints, for input files (token ids, masks, routings).
pub fn read_safetensors(
    path: impl AsRef<Path>,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let file = SafetensorsFile::open(path.as_ref())?;
    tensors_of(&file.path, &file.mmap, &file.tensors, device)
}

/// Reads every tensor of `bytes`, a safetensors file's contents, with the checks of
/// [`read_safetensors`]; `name` stands for the file in errors.
pub fn parse_safetensors(
    name: impl AsRef<Path>,
    bytes: &[u8],
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let path = name.as_ref();
    let tensors = crate::safetensors_header::parse(path, bytes)?;
    tensors_of(path, bytes, &tensors, device)
}

/// Every tensor of a parsed file, in its stored dtype.
fn tensors_of(
    path: &Path,
    bytes: &[u8],
    tensors: &[(String, TensorMeta)],
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (name, meta) in tensors {
        let dtype = candle_dtype(meta.dtype).ok_or_else(|| {
            malformed(
                path,
                format!(
                    "tensor {name:?} has dtype {:?}, which candle cannot hold",
                    meta.dtype
                ),
            )
        })?;
        out.insert(
            name.clone(),
            decode_tensor(path, bytes, name, meta, dtype, device)?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_are_found_in_every_float_dtype() {
        let f32s: Vec<u8> = [1.0f32, f32::NAN]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(first_non_finite(&f32s, Dtype::F32), Some(1));
        let inf: Vec<u8> = [half::bf16::INFINITY, half::bf16::ONE]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(first_non_finite(&inf, Dtype::BF16), Some(0));
        let f16s: Vec<u8> = [half::f16::MAX, half::f16::NEG_INFINITY]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(first_non_finite(&f16s, Dtype::F16), Some(1));
        let f64s: Vec<u8> = [f64::MAX, -0.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(first_non_finite(&f64s, Dtype::F64), None);
        assert_eq!(first_non_finite(&[0xff; 4], Dtype::I32), None);
    }
}
