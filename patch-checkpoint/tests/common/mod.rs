//! Helpers shared by the integration tests: writing checkpoints with an independent writer
//! (candle's, on top of the safetensors crate) and reading every stored tensor's raw bytes.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// A stored tensor: dtype name, shape, raw little-endian bytes.
pub type Raw = (String, Vec<usize>, Vec<u8>);

/// Every tensor of a checkpoint folder (single file or sharded), by key.
pub fn read_all(dir: &Path) -> BTreeMap<String, Raw> {
    let single = dir.join("model.safetensors");
    let files: Vec<PathBuf> = if single.exists() {
        vec![single]
    } else {
        let index: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
        )
        .unwrap();
        let mut names: Vec<String> = index["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        names.sort();
        names.dedup();
        names.into_iter().map(|n| dir.join(n)).collect()
    };
    let mut out = BTreeMap::new();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let prev = out.insert(
                name.clone(),
                (
                    format!("{:?}", view.dtype()),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ),
            );
            assert!(prev.is_none(), "{name} stored twice");
        }
    }
    out
}

/// Asserts two checkpoints hold the same tensors bit for bit (names, dtypes, shapes, bytes).
pub fn assert_same_tensors(a: &Path, b: &Path) {
    let (x, y) = (read_all(a), read_all(b));
    let kx: Vec<&String> = x.keys().collect();
    let ky: Vec<&String> = y.keys().collect();
    assert_eq!(kx, ky, "different keys");
    for (k, (dt, shape, bytes)) in &x {
        let (dt2, shape2, bytes2) = &y[k];
        assert_eq!((dt, shape), (dt2, shape2), "{k}: dtype/shape differ");
        assert!(bytes == bytes2, "{k}: bytes differ");
    }
}

/// Writes `tensors` as `dir/model.safetensors` with `config`.
pub fn write_checkpoint(dir: &Path, config: serde_json::Value, tensors: Vec<(&str, Tensor)>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    let map: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| (k.to_string(), t))
        .collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
}

/// A tensor of `shape` with distinct, exactly representable values starting at `start`.
pub fn ramp(shape: &[usize], start: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|i| start + i as f32 * 0.25).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Row-major f32 values of a tensor.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The reference checkpoints shipped in the repository.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
        .join(name)
}
