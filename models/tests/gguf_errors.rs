//! GGUF files a user can get wrong: each is an error naming the file and what is wrong in it,
//! never a panic. The files are rewritten from a fixture made by llama.cpp's converter.

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::{self, Value};
use patchwork_models::{AutoModelForCausalLM, LoadOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/gguf")
        .join(name)
}

/// A GGUF file's metadata and tensors, each by name.
type Parts = (Vec<(String, Value)>, Vec<(String, QTensor)>);

/// The fixture's metadata (sorted by key) and tensors (in file order).
fn read(name: &str) -> Parts {
    let path = fixture(name);
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut metadata: Vec<(String, Value)> = content.metadata.clone().into_iter().collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    let tensors = names
        .into_iter()
        .map(|n| {
            let t = content.tensor(&mut file, n, &Device::Cpu).unwrap();
            (n.clone(), t)
        })
        .collect();
    (metadata, tensors)
}

/// Writes a GGUF file of `metadata` and `tensors` to `path`.
fn write(path: &Path, metadata: &[(String, Value)], tensors: &[(String, QTensor)]) {
    let mut out = std::fs::File::create(path).unwrap();
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut out, &metadata, &tensors).unwrap();
}

/// The error loading `path` gives, as text.
fn load_error(path: &Path) -> String {
    match AutoModelForCausalLM::from_pretrained(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(text: &str, fragments: &[&str]) {
    for f in fragments {
        assert!(text.contains(f), "{f:?} not in: {text}");
    }
}

#[test]
fn a_rewritten_fixture_loads_so_each_edit_below_is_what_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("same.gguf");
    let (metadata, tensors) = read("llama-tiny-Q8_0.gguf");
    write(&path, &metadata, &tensors);
    AutoModelForCausalLM::from_pretrained(&path, &LoadOptions::default()).unwrap();
}

#[test]
fn an_unsupported_architecture_is_named_with_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt2.gguf");
    let (mut metadata, tensors) = read("llama-tiny-Q8_0.gguf");
    for (k, v) in &mut metadata {
        if k == "general.architecture" {
            *v = Value::String("gpt2".into());
        }
    }
    write(&path, &metadata, &tensors);
    let err = load_error(&path);
    assert_mentions(
        &err,
        &[
            "gpt2.gguf",
            "\"gpt2\"",
            "not supported",
            "llama",
            "qwen3moe",
        ],
    );
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.gguf");
    let (metadata, mut tensors) = read("llama-tiny-Q8_0.gguf");
    tensors.retain(|(n, _)| n != "blk.1.ffn_up.weight");
    write(&path, &metadata, &tensors);
    let err = load_error(&path);
    assert_mentions(&err, &["missing.gguf", "model.layers.1.mlp.up_proj.weight"]);
}

#[test]
fn an_unknown_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extra.gguf");
    let (metadata, mut tensors) = read("llama-tiny-Q8_0.gguf");
    let extra = tensors[0].1.dequantize(&Device::Cpu).unwrap();
    tensors.push((
        "blk.0.mystery.weight".into(),
        QTensor::quantize(&extra, candle_core::quantized::GgmlDType::F32).unwrap(),
    ));
    write(&path, &metadata, &tensors);
    let err = load_error(&path);
    assert_mentions(&err, &["extra.gguf", "blk.0.mystery.weight"]);
}

#[test]
fn a_wrong_shape_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shape.gguf");
    let (mut metadata, tensors) = read("llama-tiny-Q8_0.gguf");
    for (k, v) in &mut metadata {
        if k == "llama.feed_forward_length" {
            *v = Value::U32(128);
        }
    }
    write(&path, &metadata, &tensors);
    let err = load_error(&path);
    assert_mentions(
        &err,
        &[
            "shape.gguf",
            "6 problems (6 mis-shaped)",
            "model.layers.1.mlp.down_proj.weight: the module asked for [64, 128], the checkpoint gives [64, 160]: GGUF tensor blk.1.ffn_down.weight",
        ],
    );
}

#[test]
fn missing_metadata_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nometa.gguf");
    let (mut metadata, tensors) = read("llama-tiny-Q8_0.gguf");
    metadata.retain(|(k, _)| k != "llama.block_count");
    write(&path, &metadata, &tensors);
    let err = load_error(&path);
    assert_mentions(&err, &["nometa.gguf", "llama.block_count"]);
}

#[test]
fn a_truncated_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("llama-tiny-Q8_0.gguf")).unwrap();
    for (name, keep) in [
        ("header.gguf", 10),
        ("metadata.gguf", 2000),
        ("tensors.gguf", bytes.len() - 100),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let err = load_error(&path);
        assert_mentions(&err, &[name]);
    }
}

#[test]
fn not_a_gguf_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, b"this is not a gguf file at all, only some text").unwrap();
    let err = load_error(&path);
    assert_mentions(&err, &["model.gguf"]);
}
