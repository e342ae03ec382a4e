//! Writing safetensors files. Writing streams: the header is computed from names, dtypes and
//! shapes alone, then each tensor's bytes are produced and written one at a time, into a
//! temporary renamed into place once complete.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::files::PendingFile;
use crate::{Error, Result};

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
            return Err(Error::Save {
                name: String::new(),
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
    /// Bytes of data, or an error naming the tensor when they do not fit in a `u64`.
    pub fn nbytes(&self) -> Result<u64> {
        self.shape
            .iter()
            .try_fold(self.dtype.size_in_bytes() as u64, |acc, &d| {
                acc.checked_mul(d as u64)
            })
            .ok_or_else(|| Error::Save {
                name: self.name.clone(),
                message: format!("shape {:?} is too large to write", self.shape),
            })
    }
}

/// Writes a safetensors file holding `tensors` in this order (with `{"format": "pt"}` metadata,
/// as transformers writes), asking `produce` for each tensor's data when its turn comes. The
/// file is complete under a temporary name when this returns; committing it renames it into
/// place.
pub(crate) fn write_file(
    path: &Path,
    tensors: &[OutTensor],
    inputs: &[&Path],
    mut produce: impl FnMut(&OutTensor) -> Result<Tensor>,
) -> Result<PendingFile> {
    // Written field by field in the order the safetensors writer uses (metadata first, then
    // each tensor's dtype, shape and offsets), whatever order a JSON map would keep.
    let mut text = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut offset = 0u64;
    for t in tensors {
        let n = t.nbytes()?;
        let end = offset.checked_add(n).ok_or_else(|| Error::Save {
            name: t.name.clone(),
            message: "the file would be larger than 2^64 bytes".into(),
        })?;
        text.push(',');
        text.push_str(&json_text(&t.name, path)?);
        text.push_str(r#":{"dtype":"#);
        text.push_str(&json_text(dtype_name(t.dtype)?, path)?);
        text.push_str(r#","shape":"#);
        text.push_str(&json_text(&t.shape, path)?);
        text.push_str(&format!(r#","data_offsets":[{offset},{end}]}}"#));
        offset = end;
    }
    text.push('}');
    // Pad the header so the data starts 8-byte aligned, as the safetensors writer does.
    while !(text.len() + 8).is_multiple_of(8) {
        text.push(' ');
    }
    let mut file = PendingFile::create(path, inputs)?;
    file.write_all(&(text.len() as u64).to_le_bytes())?;
    file.write_all(text.as_bytes())?;
    for t in tensors {
        let tensor = produce(t)?;
        if tensor.dims() != t.shape.as_slice() || tensor.dtype() != t.dtype {
            return Err(Error::Save {
                name: t.name.clone(),
                message: format!(
                    "came out as {:?} {:?}, planned {:?} {:?}",
                    tensor.dtype(),
                    tensor.dims(),
                    t.dtype,
                    t.shape
                ),
            });
        }
        write_tensor(&mut file, &tensor)?;
    }
    Ok(file)
}

/// Writes `tensors` to the safetensors file `path` (names sorted), atomically: nothing
/// replaces `path` unless everything was written; a symbolic link, a non-regular file or one
/// of `inputs` at `path` is refused (see [`crate::files`]).
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &BTreeMap<String, Tensor>,
    inputs: &[&Path],
) -> Result<()> {
    let path = path.as_ref();
    let planned: Vec<OutTensor> = tensors
        .iter()
        .map(|(name, t)| OutTensor {
            name: name.clone(),
            dtype: t.dtype(),
            shape: t.dims().to_vec(),
        })
        .collect();
    write_file(path, &planned, inputs, |t| {
        tensors.get(&t.name).cloned().ok_or_else(|| Error::Save {
            name: t.name.clone(),
            message: "internal: tensor vanished".into(),
        })
    })?
    .commit()
}

/// Writes a tensor's elements, little-endian, row-major.
fn write_tensor(w: &mut PendingFile, t: &Tensor) -> Result<()> {
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
        other => {
            return Err(Error::Save {
                name: w.target().display().to_string(),
                message: format!("dtype {other:?} cannot be written"),
            });
        }
    }
    Ok(())
}

/// The JSON text of a header value.
fn json_text<T: serde::Serialize + ?Sized>(value: &T, path: &Path) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Save {
        name: path.display().to_string(),
        message: format!("header: {e}"),
    })
}
