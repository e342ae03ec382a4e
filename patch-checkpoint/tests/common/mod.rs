//! Helpers shared by the integration tests: writing checkpoints with an independent writer
//! (candle's, on top of the safetensors crate) and reading every stored tensor's raw bytes.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use patch_checkpoint::{
    Checkpoint, CheckpointSource, Error, Op, Problem, Transform, WeightConverter, Weights,
};

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

/// The checkpoint at `dir` opened with `transforms`, and its weights as float32 on the CPU.
pub fn load(dir: &std::path::Path, transforms: Vec<Transform>) -> (Arc<CheckpointSource>, Weights) {
    let source = Arc::new(Checkpoint::open(dir).unwrap().source(transforms).unwrap());
    let weights = Weights::from_arc(source.clone(), DType::F32, &Device::Cpu);
    (source, weights)
}

pub fn problems(err: Error) -> Vec<Problem> {
    match err {
        Error::Accounting { problems, .. } => problems,
        other => panic!("expected an accounting error, got {other}"),
    }
}

pub fn bytemuck_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Builds llama-tiny as a model with a fused-QKV replacement would, optionally asking for one
/// tensor the checkpoint does not have (per layer).
pub fn build_fused_llama(bogus: bool) -> (Arc<CheckpointSource>, Weights) {
    // llama-tiny has GQA: q [64, 64], k and v [32, 64]; the fused tensor is [128, 64].
    let dir = fixture("llama-tiny");
    let raw = read_all(&dir);
    let (source, w) = load(&dir, Vec::new());
    let fused = vec![Transform::from(WeightConverter::new(
        ["q_proj", "k_proj", "v_proj"],
        ["qkv_proj"],
        [Op::Concatenate { dim: 0 }],
    ))];
    for layer in 0..2 {
        let attn = w
            .pp(format!("model.layers.{layer}.self_attn"))
            .with_transforms("FusedQkv", fused.clone());
        let qkv = attn.get((128, 64), "qkv_proj.weight").unwrap();
        let mut expected = Vec::new();
        for p in ["q_proj", "k_proj", "v_proj"] {
            expected.extend(bytemuck_f32(
                &raw[&format!("model.layers.{layer}.self_attn.{p}.weight")].2,
            ));
        }
        assert_eq!(values(&qkv), expected);
        attn.get((64, 64), "o_proj.weight").unwrap();
        // Through candle-nn too.
        let vb = w.pp(format!("model.layers.{layer}")).var_builder();
        if bogus {
            // A name the checkpoint does not have: a placeholder, reported by `finish`.
            let l = candle_nn::linear_no_bias(64, 64, vb.pp("input_layernorm_as_linear")).unwrap();
            assert_eq!(l.weight().dims(), &[64, 64]);
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            vb.pp(n).get(64, "weight").unwrap();
        }
        let mlp = vb.pp("mlp");
        candle_nn::linear_no_bias(64, 160, mlp.pp("gate_proj")).unwrap();
        candle_nn::linear_no_bias(64, 160, mlp.pp("up_proj")).unwrap();
        candle_nn::linear_no_bias(160, 64, mlp.pp("down_proj")).unwrap();
    }
    w.get((256, 64), "model.embed_tokens.weight").unwrap();
    w.get(64, "model.norm.weight").unwrap();
    w.tie("lm_head.weight", "model.embed_tokens.weight");
    (source, w)
}
