//! One GGUF file, memory-mapped: its metadata, and its tensors checked against the file's
//! size before any is read.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor, ggml_file};
use memmap2::Mmap;
use patch_checkpoint::Result;
use patch_checkpoint::files::{io_error, malformed, open_regular};

/// Where a tensor's blocks are in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMeta {
    /// The ggml type of its elements or blocks.
    pub dtype: GgmlDType,
    /// Its shape, row-major (`[rows, cols]` for a matrix: ggml's dimensions reversed).
    pub dims: Vec<usize>,
    /// Byte range in the file.
    pub start: usize,
    /// Number of bytes.
    pub len: usize,
}

impl TensorMeta {
    /// Bytes of one row (the last dimension) in its blocks.
    pub fn row_bytes(&self) -> usize {
        let cols = self.dims.last().copied().unwrap_or(0);
        cols / self.dtype.block_size() * self.dtype.type_size()
    }
}

/// A GGUF file, memory-mapped, with its header parsed and every tensor's byte range checked.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    metadata: HashMap<String, Value>,
    tensors: HashMap<String, TensorMeta>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps the regular file `path` and parses its header: metadata, tensor infos, each
    /// tensor's byte range (computed without overflow, inside the file). No tensor is read.
    pub fn open(path: &Path) -> Result<Self> {
        let (file, _) = open_regular(path)?;
        // SAFETY: the map is read-only; like every mmap-based loader this assumes the file is
        // not truncated or rewritten while it is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| io_error(path, "cannot map", e))?;
        let content = Content::read(&mut Cursor::new(&mmap[..]))
            .map_err(|e| malformed(path, format!("not a readable GGUF file: {e}")))?;
        let mut tensors = HashMap::with_capacity(content.tensor_infos.len());
        for (name, info) in &content.tensor_infos {
            let dims = info.shape.dims().to_vec();
            let (block, size) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
            let bad = |what: String| malformed(path, format!("tensor {name:?}: {what}"));
            let elems = dims
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .ok_or_else(|| bad(format!("shape {dims:?} overflows")))?;
            let cols = dims.last().copied().unwrap_or(0);
            if block == 0 || !cols.is_multiple_of(block) || !elems.is_multiple_of(block) {
                return Err(bad(format!(
                    "shape {dims:?} does not fit {:?} blocks of {block}",
                    info.ggml_dtype
                )));
            }
            let len = (elems / block)
                .checked_mul(size)
                .ok_or_else(|| bad("byte size overflows".into()))?;
            let start = content
                .tensor_data_offset
                .checked_add(info.offset)
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| bad("data offset overflows".into()))?;
            let end = start
                .checked_add(len)
                .filter(|&e| e <= mmap.len())
                .ok_or_else(|| {
                    bad(format!(
                        "{len} bytes at offset {start} run past the end of the file ({} bytes)",
                        mmap.len()
                    ))
                })?;
            debug_assert!(end <= mmap.len());
            tensors.insert(
                name.clone(),
                TensorMeta {
                    dtype: info.ggml_dtype,
                    dims,
                    start,
                    len,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            metadata: content.metadata,
            tensors,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes.
    pub fn size(&self) -> usize {
        self.mmap.len()
    }

    /// Every metadata entry.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.metadata
    }

    /// The tensors, by GGUF name.
    pub fn tensors(&self) -> &HashMap<String, TensorMeta> {
        &self.tensors
    }

    /// The tensor `name`'s place in the file.
    pub fn tensor(&self, name: &str) -> Option<&TensorMeta> {
        self.tensors.get(name)
    }

    /// An error naming this file.
    pub fn error(&self, message: impl Into<String>) -> patch_checkpoint::Error {
        malformed(&self.path, message)
    }

    /// Metadata `key` as a string, if present (an error naming the key when it is another
    /// type).
    pub fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.error(format!(
                "metadata {key:?} is {:?}, not a string",
                other.value_type()
            ))),
        }
    }

    /// Metadata `key` as an unsigned integer, if present (any integer type that fits).
    pub fn uint(&self, key: &str) -> Result<Option<u64>> {
        let Some(v) = self.metadata.get(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::U8(x) => Some(*x as u64),
            Value::U16(x) => Some(*x as u64),
            Value::U32(x) => Some(*x as u64),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.map(Some).ok_or_else(|| {
            self.error(format!(
                "metadata {key:?} is {v:?}, not an unsigned integer"
            ))
        })
    }

    /// Metadata `key` as a float, if present (any numeric type).
    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.metadata.get(key) else {
            return Ok(None);
        };
        match v {
            Value::F32(x) => Ok(Some(*x as f64)),
            Value::F64(x) => Ok(Some(*x)),
            _ => self
                .uint(key)
                .map(|n| n.map(|n| n as f64))
                .map_err(|_| self.error(format!("metadata {key:?} is {v:?}, not a number"))),
        }
    }

    /// Metadata `key` as a boolean, if present.
    pub fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.error(format!("metadata {key:?} is {other:?}, not a boolean"))),
        }
    }

    /// Metadata `key` as an array, if present.
    pub fn array(&self, key: &str) -> Result<Option<&[Value]>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => Err(self.error(format!(
                "metadata {key:?} is {:?}, not an array",
                other.value_type()
            ))),
        }
    }

    /// The bytes of tensor `name` as stored.
    pub fn bytes(&self, meta: &TensorMeta) -> &[u8] {
        &self.mmap[meta.start..meta.start + meta.len]
    }

    /// Tensor `name` as stored, copied into candle's blocks (`rows` reordered by `order` when
    /// given: `order[i]` is the stored row that becomes row `i`), then the mapped pages released.
    pub fn qtensor(&self, name: &str, order: Option<&[usize]>) -> Result<QTensor> {
        let meta = self
            .tensor(name)
            .ok_or_else(|| self.error(format!("no tensor {name:?}")))?;
        let stored = self.bytes(meta);
        let q = match order {
            None => {
                ggml_file::qtensor_from_ggml(meta.dtype, stored, meta.dims.clone(), &Device::Cpu)
            }
            Some(order) => {
                let row = meta.row_bytes();
                // Eight-byte aligned scratch: candle reads the blocks in place.
                let mut words = vec![0u64; meta.len.div_ceil(8)];
                let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..meta.len];
                for (i, &from) in order.iter().enumerate() {
                    bytes[i * row..(i + 1) * row]
                        .copy_from_slice(&stored[from * row..(from + 1) * row]);
                }
                ggml_file::qtensor_from_ggml(meta.dtype, bytes, meta.dims.clone(), &Device::Cpu)
            }
        }
        .map_err(|e| self.error(format!("tensor {name:?}: {e}")))?;
        self.release(meta);
        Ok(q)
    }

    /// Two stacked tensors `[n, rows, cols]` of one type as one `[n, 2 * rows, cols]`: each
    /// matrix of `a` followed by the same one of `b` (an expert bank's gate then up rows), the
    /// blocks copied as they are, then the mapped pages released.
    pub fn qtensor_stacked(&self, a: &str, b: &str) -> Result<QTensor> {
        let get = |n: &str| {
            self.tensor(n)
                .ok_or_else(|| self.error(format!("no tensor {n:?}")))
        };
        let (ma, mb) = (get(a)?, get(b)?);
        if ma.dtype != mb.dtype || ma.dims != mb.dims || ma.dims.len() != 3 {
            return Err(self.error(format!(
                "tensors {a:?} ({:?} {:?}) and {b:?} ({:?} {:?}) do not stack",
                ma.dtype, ma.dims, mb.dtype, mb.dims
            )));
        }
        let n = ma.dims[0];
        let part = ma.len / n.max(1);
        let (sa, sb) = (self.bytes(ma), self.bytes(mb));
        let total = ma.len + mb.len;
        let mut words = vec![0u64; total.div_ceil(8)];
        let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..total];
        for e in 0..n {
            bytes[2 * e * part..(2 * e + 1) * part].copy_from_slice(&sa[e * part..(e + 1) * part]);
            bytes[(2 * e + 1) * part..(2 * e + 2) * part]
                .copy_from_slice(&sb[e * part..(e + 1) * part]);
        }
        let dims = vec![n, 2 * ma.dims[1], ma.dims[2]];
        let q = ggml_file::qtensor_from_ggml(ma.dtype, bytes, dims, &Device::Cpu)
            .map_err(|e| self.error(format!("tensors {a:?} and {b:?}: {e}")))?;
        self.release(ma);
        self.release(mb);
        Ok(q)
    }

    /// Drops the mapped pages of `meta`'s bytes from this process's resident set (they stay in
    /// the page cache; a later read faults them back in).
    fn release(&self, meta: &TensorMeta) {
        #[cfg(unix)]
        {
            // SAFETY: the map is read-only and file-backed: after DONTNEED a later access
            // reads the same bytes from the file again. No reference into the range outlives
            // this call (the copy is complete).
            let _ = unsafe {
                self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    meta.start,
                    meta.len,
                )
            };
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
        }
    }
}
