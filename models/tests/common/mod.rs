//! Shared helpers of the models crate's integration tests: the reference checkpoints and the
//! parity tolerance.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub mod llama;
pub mod qwen2_moe;
pub mod training;

/// The repository's reference checkpoints folder.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// One reference checkpoint: a Hub-style folder plus what transformers computed on it.
pub struct Fixture {
    /// Folder name (`llama-tiny`).
    pub name: String,
    /// The folder.
    pub dir: PathBuf,
    /// `reference.safetensors`.
    pub reference: HashMap<String, Tensor>,
    /// `config.json`.
    pub config: serde_json::Value,
}

impl Fixture {
    /// The reference tensor `key`.
    pub fn get(&self, key: &str) -> &Tensor {
        self.reference
            .get(key)
            .unwrap_or_else(|| panic!("{}: reference.safetensors has no {key:?}", self.name))
    }

    /// The config's `model_type`.
    pub fn model_type(&self) -> &str {
        self.config["model_type"].as_str().expect("model_type")
    }
}

/// Every folder of `fixtures/` that holds a `reference.safetensors`, sorted by name: adding a
/// fixture folder adds it to every parity check.
pub fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixtures_dir()).expect("fixtures dir") {
        let dir = entry.expect("entry").path();
        let reference = dir.join("reference.safetensors");
        if !reference.exists() {
            continue;
        }
        let config = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
        out.push(Fixture {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            reference: candle_core::safetensors::load(&reference, &Device::Cpu).expect("reference"),
            config: serde_json::from_str(&config).expect("config json"),
            dir,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        !out.is_empty(),
        "no reference checkpoints in {}",
        fixtures_dir().display()
    );
    out
}

/// Compares `ours` with `reference` (same shape) over the entries `keep` selects (by flat
/// index; all when `None`) with the fixtures' tolerance,
/// `max |ours - ref| <= 1e-4 * max(1, max |ref|)` ([`patchwork_testing::LOGITS`]); a NaN or
/// infinity at a compared entry of either fails it. Returns the max difference, or an error
/// describing the worst entry.
pub fn check_close(
    what: &str,
    ours: &Tensor,
    reference: &Tensor,
    keep: Option<&dyn Fn(usize) -> bool>,
) -> Result<f32, String> {
    let report =
        patchwork_testing::compare(what, ours, reference, patchwork_testing::LOGITS, keep)?;
    Ok(report.max_abs_diff)
}

/// Integer tensor as i64 values.
pub fn ids(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Every tensor of the checkpoint folder `dir` (all its safetensors weight files), by key,
/// with its dtype, shape and raw bytes.
pub fn checkpoint_tensors(
    dir: &Path,
) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("checkpoint dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("model") && name.ends_with(".safetensors") {
            let bytes = std::fs::read(&path).expect("weights file");
            let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
            for (key, view) in st.tensors() {
                out.insert(
                    key,
                    (
                        format!("{:?}", view.dtype()),
                        view.shape().to_vec(),
                        view.data().to_vec(),
                    ),
                );
            }
        }
    }
    out
}

/// Whether two checkpoint folders hold the same tensors, bit for bit; the error names the
/// first difference.
pub fn same_checkpoint(original: &Path, saved: &Path) -> Result<usize, String> {
    let a = checkpoint_tensors(original);
    let b = checkpoint_tensors(saved);
    let keys_a: Vec<&String> = a.keys().collect();
    let keys_b: Vec<&String> = b.keys().collect();
    if keys_a != keys_b {
        let missing: Vec<_> = keys_a.iter().filter(|k| !b.contains_key(**k)).collect();
        let extra: Vec<_> = keys_b.iter().filter(|k| !a.contains_key(**k)).collect();
        return Err(format!(
            "saved keys differ: missing {missing:?}, extra {extra:?}"
        ));
    }
    for (key, (dtype, shape, data)) in &a {
        let (d2, s2, data2) = &b[key];
        if dtype != d2 || shape != s2 || data != data2 {
            return Err(format!(
                "{key}: saved {d2} {s2:?} differs from the original {dtype} {shape:?}"
            ));
        }
    }
    Ok(a.len())
}
