//! The safetensors header, parsed and checked as untrusted input: every error names the file,
//! the tensor and the byte offset or value at fault, and no size is computed without a check.
//!
//! Layout: an 8-byte little-endian header length `n`, `n` bytes of JSON (an object mapping
//! tensor names to `{"dtype", "shape", "data_offsets": [start, end]}`, plus an optional
//! `"__metadata__"` object of strings), then the data; offsets are relative to the data's
//! start, and the tensors cover it exactly, without gaps or overlaps.

use std::fmt;
use std::path::Path;

use safetensors::Dtype;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::Result;
use crate::files::malformed;

/// The largest header read (100 MB, the safetensors crate's own limit).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Where one tensor lives in a file.
#[derive(Clone, Debug)]
pub(crate) struct TensorMeta {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range in the file (absolute).
    pub start: usize,
    pub end: usize,
}

impl TensorMeta {
    /// Bytes of data.
    pub fn len(&self) -> usize {
        self.end - self.start
    }
}

/// The header's entries in file order, duplicates kept (serde_json's map would drop them).
struct Entries(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses the header of the safetensors file `path` whose bytes are `file`; returns the
/// tensors in file order (by data offset) with absolute byte ranges.
pub(crate) fn parse(path: &Path, file: &[u8]) -> Result<Vec<(String, TensorMeta)>> {
    let bad = |message: String| malformed(path, message);
    let total = file.len() as u64;
    let Some(length) = file.get(..8) else {
        return Err(bad(format!(
            "is {total} bytes long: a safetensors file starts with an 8-byte header length"
        )));
    };
    let mut le = [0u8; 8];
    le.copy_from_slice(length);
    let n = u64::from_le_bytes(le);
    if n > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "header length (bytes 0..8) is {n}, over the {MAX_HEADER_BYTES}-byte limit: not a safetensors file, or a corrupt one"
        )));
    }
    if n > total - 8 {
        return Err(bad(format!(
            "header length (bytes 0..8) is {n}, but only {} bytes follow: the file is truncated",
            total - 8
        )));
    }
    // n <= 100 MB and n <= file length: both fit in usize.
    let data_start = 8 + n as usize;
    let header = &file[8..data_start];
    let entries: Entries = serde_json::from_slice(header).map_err(|e| {
        let at = if e.line() == 1 {
            format!("at byte {}", 8 + e.column().saturating_sub(1))
        } else {
            format!("at line {}, column {} of the header", e.line(), e.column())
        };
        bad(format!("header is not valid JSON {at}: {e}"))
    })?;
    let data_len = file.len() - data_start;
    let mut tensors: Vec<(String, TensorMeta)> = Vec::with_capacity(entries.0.len());
    let mut seen = std::collections::HashSet::with_capacity(entries.0.len());
    let mut metadata_seen = false;
    for (name, value) in entries.0 {
        if name == "__metadata__" {
            if std::mem::replace(&mut metadata_seen, true) {
                return Err(bad("header has two \"__metadata__\" entries".into()));
            }
            let ok = value
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string));
            if !ok {
                return Err(bad(format!(
                    "header's \"__metadata__\" must map names to strings, found {}",
                    truncated(&value)
                )));
            }
            continue;
        }
        if !seen.insert(name.clone()) {
            return Err(bad(format!("tensor {name:?} appears twice in the header")));
        }
        let meta = tensor_entry(&name, &value, data_start, data_len).map_err(bad)?;
        tensors.push((name, meta));
    }
    tensors.sort_by_key(|(_, m)| (m.start, m.end));
    let mut covered = data_start;
    for (name, meta) in &tensors {
        if meta.start > covered {
            return Err(bad(format!(
                "tensor {name:?} starts at data offset {}, but the tensors before it end at {}: the data has a gap",
                meta.start - data_start,
                covered - data_start
            )));
        }
        if meta.start < covered {
            let other = tensors
                .iter()
                .find(|(n, m)| n != name && m.start < meta.end && meta.start < m.end)
                .map_or("another tensor", |(n, _)| n.as_str());
            return Err(bad(format!(
                "tensor {name:?} (data offsets {}..{}) overlaps {other:?}",
                meta.start - data_start,
                meta.end - data_start
            )));
        }
        covered = meta.end;
    }
    if covered != file.len() {
        return Err(bad(format!(
            "the tensors end at data offset {}, but {data_len} bytes of data follow the header: the file has trailing bytes",
            covered - data_start
        )));
    }
    Ok(tensors)
}

/// One header entry, checked: a known dtype, a shape whose byte size fits, offsets that
/// match the size and lie in the file.
fn tensor_entry(
    name: &str,
    value: &Value,
    data_start: usize,
    data_len: usize,
) -> std::result::Result<TensorMeta, String> {
    let field = |key: &str| {
        value.get(key).ok_or_else(|| {
            format!(
                "tensor {name:?}: no {key:?} in its header entry {}",
                truncated(value)
            )
        })
    };
    let dtype_value = field("dtype")?;
    let dtype: Dtype = serde_json::from_value(dtype_value.clone())
        .map_err(|_| format!("tensor {name:?}: unknown dtype {}", truncated(dtype_value)))?;
    let shape_value = field("shape")?;
    let shape: Vec<usize> = shape_value
        .as_array()
        .and_then(|dims| {
            dims.iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect()
        })
        .ok_or_else(|| {
            format!(
                "tensor {name:?}: shape must be a list of non-negative integers, found {}",
                truncated(shape_value)
            )
        })?;
    let offsets_value = field("data_offsets")?;
    let offsets: Option<Vec<u64>> = offsets_value
        .as_array()
        .filter(|o| o.len() == 2)
        .and_then(|o| o.iter().map(Value::as_u64).collect());
    let Some([start, end]) = offsets.as_deref().map(|o| [o[0], o[1]]) else {
        return Err(format!(
            "tensor {name:?}: data_offsets must be [start, end], found {}",
            truncated(offsets_value)
        ));
    };
    let elements = shape
        .iter()
        .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128))
        .filter(|&e| e <= usize::MAX as u128)
        .ok_or_else(|| {
            format!(
                "tensor {name:?}: shape {shape:?} has more elements than an address space holds"
            )
        })?;
    let bits = elements
        .checked_mul(dtype.bitsize() as u128)
        .ok_or_else(|| format!("tensor {name:?}: shape {shape:?} of {dtype:?} is too large"))?;
    if bits % 8 != 0 {
        return Err(format!(
            "tensor {name:?}: {elements} elements of {dtype:?} do not fill whole bytes"
        ));
    }
    let needed = bits / 8;
    if end < start {
        return Err(format!(
            "tensor {name:?}: data_offsets [{start}, {end}] end before they start"
        ));
    }
    if u128::from(end - start) != needed {
        return Err(format!(
            "tensor {name:?}: data_offsets [{start}, {end}] hold {} bytes, but shape {shape:?} of {dtype:?} needs {needed}",
            end - start
        ));
    }
    if end > data_len as u64 {
        return Err(format!(
            "tensor {name:?}: data_offsets [{start}, {end}] reach past the {data_len} bytes of data in the file: the file is truncated"
        ));
    }
    // end <= data_len: both offsets fit in usize, and so does data_start + end (the file length).
    Ok(TensorMeta {
        dtype,
        shape,
        start: data_start + start as usize,
        end: data_start + end as usize,
    })
}

/// A JSON value for a message, cut to 80 characters.
fn truncated(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.resize(v.len() + data, 0);
        v
    }

    fn err(header: &str, data: usize) -> String {
        parse(Path::new("f.safetensors"), &file(header, data))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_valid_header_parses_in_offset_order() {
        let h = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"__metadata__":{"format":"pt"}}"#;
        let t = parse(Path::new("f"), &file(h, 12)).unwrap();
        assert_eq!(t[0].0, "a");
        assert_eq!(t[1].1.shape, vec![2]);
        assert_eq!(t[1].1.start, 8 + h.len() + 4);
    }

    #[test]
    fn every_fault_names_the_tensor_and_the_place() {
        let one = |entry: &str| format!(r#"{{"w":{entry}}}"#);
        for (header, data, want) in [
            (one(r#"{"dtype":"F32","shape":[2],"data_offsets":[0,4]}"#), 4, "hold 4 bytes, but shape [2] of F32 needs 8"),
            (one(r#"{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#), 4, "reach past the 4 bytes"),
            (one(r#"{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#), 8, "trailing bytes"),
            (one(r#"{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}"#), 4, "unknown dtype \"Q9\""),
            (one(r#"{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}"#), 4, "non-negative integers"),
            (one(r#"{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}"#), 4, "more elements than"),
            (one(r#"{"dtype":"F32","shape":[1],"data_offsets":[4,0]}"#), 4, "end before they start"),
            (one(r#"{"dtype":"F32","shape":[1]}"#), 4, "no \"data_offsets\""),
            (one(r#"{"dtype":"F4","shape":[1],"data_offsets":[0,1]}"#), 1, "whole bytes"),
            (r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#.into(), 2, "\"w\" appears twice"),
            (r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#.into(), 3, "overlaps \"a\""),
            (r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#.into(), 2, "gap"),
            (r#"{"__metadata__":{"x":1}}"#.into(), 0, "map names to strings"),
            (r#"{"w": nope}"#.into(), 0, "not valid JSON at byte 15"),
            ("[1]".into(), 0, "not valid JSON"),
        ] {
            let e = err(&header, data);
            assert!(e.contains(want), "{header}: {e}");
            assert!(e.starts_with("f.safetensors: "), "{e}");
        }
        let short = parse(Path::new("f"), &[1, 2, 3]).unwrap_err().to_string();
        assert!(short.contains("is 3 bytes long"), "{short}");
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        let e = parse(Path::new("f"), &huge).unwrap_err().to_string();
        assert!(e.contains("over the 100000000-byte limit"), "{e}");
        let mut long = 100u64.to_le_bytes().to_vec();
        long.extend_from_slice(b"{}");
        let e = parse(Path::new("f"), &long).unwrap_err().to_string();
        assert!(e.contains("only 2 bytes follow"), "{e}");
    }
}
