//! Reading typed values out of a GGUF file's metadata.

use candle_core::quantized::gguf_file::Value as Meta;
use patchwork_gguf::GgufFile;

use crate::{Error, Result};

pub(super) fn integer(v: &Meta) -> Option<i64> {
    match v {
        Meta::I8(x) => Some(i64::from(*x)),
        Meta::I16(x) => Some(i64::from(*x)),
        Meta::I32(x) => Some(i64::from(*x)),
        Meta::I64(x) => Some(*x),
        Meta::U8(x) => Some(i64::from(*x)),
        Meta::U16(x) => Some(i64::from(*x)),
        Meta::U32(x) => Some(i64::from(*x)),
        Meta::U64(x) => i64::try_from(*x).ok(),
        _ => None,
    }
}

/// Metadata `key` as a list of strings.
pub(super) fn strings(file: &GgufFile, key: &str) -> Result<Option<Vec<String>>> {
    let Some(a) = file.array(key)? else {
        return Ok(None);
    };
    a.iter()
        .map(|v| match v {
            Meta::String(s) => Ok(s.clone()),
            other => Err(Error::Tokenizer {
                path: file.path().display().to_string(),
                message: format!(
                    "metadata {key:?} holds {:?}, not a string",
                    other.value_type()
                ),
            }),
        })
        .collect::<Result<Vec<String>>>()
        .map(Some)
}

/// Metadata `key` as a list of numbers.
pub(super) fn floats(file: &GgufFile, key: &str) -> Result<Option<Vec<f64>>> {
    let Some(a) = file.array(key)? else {
        return Ok(None);
    };
    a.iter()
        .map(|v| match v {
            Meta::F32(x) => Ok(f64::from(*x)),
            Meta::F64(x) => Ok(*x),
            other => integer(other)
                .map(|i| i as f64)
                .ok_or_else(|| Error::Tokenizer {
                    path: file.path().display().to_string(),
                    message: format!(
                        "metadata {key:?} holds {:?}, not a number",
                        other.value_type()
                    ),
                }),
        })
        .collect::<Result<Vec<f64>>>()
        .map(Some)
}
