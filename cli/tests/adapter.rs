//! The CLI contract for LoRA adapters: every command that loads takes `--adapter [NAME=]DIR`
//! (repeatable, the last active); `forward --adapter DIR --grads` writes `grad.KEY` for every
//! key of the adapter's `adapter_model.safetensors` (f32, that tensor's shape), against PEFT's
//! references (fixtures/lora).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use patchwork_testing::{LOGITS, assert_close, check_gradient};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patchwork"))
        .args(args)
        .output()
        .unwrap()
}

fn patchwork(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "patchwork {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// `forward` on `case`'s inputs (and labels), with `extra` arguments: what it wrote.
fn forward(base: &str, case: &str, extra: &[&str], dir: &Path) -> HashMap<String, Tensor> {
    let reference = load(
        &fixtures()
            .join("lora")
            .join(case)
            .join("reference.safetensors"),
    );
    let inputs = dir.join("inputs.safetensors");
    let out = dir.join("out.safetensors");
    let tensors = HashMap::from([
        ("input_ids".to_string(), reference["input_ids"].clone()),
        ("labels".to_string(), reference["labels"].clone()),
    ]);
    candle_core::safetensors::save(&tensors, &inputs).unwrap();
    let model = fixtures().join(base);
    let mut args = vec!["forward", model.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend([
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    patchwork(&args);
    load(&out)
}

#[test]
fn forward_with_an_adapter_gives_pefts_logits_and_adapter_gradients() {
    for (base, case) in [("llama-tiny", "llama-qv"), ("qwen2-moe-tiny", "qwen2-moe")] {
        let dir = tempfile::tempdir().unwrap();
        let adapter = fixtures().join("lora").join(case);
        let reference = load(&adapter.join("reference.safetensors"));
        let out = forward(
            base,
            case,
            &["--adapter", adapter.to_str().unwrap(), "--grads"],
            dir.path(),
        );
        assert_close(&out["logits"], &reference["logits"], LOGITS, case);
        assert_close(&out["loss"], &reference["loss"], LOGITS, case);
        let keys = load(&adapter.join("adapter_model.safetensors"));
        let grads: Vec<&String> = out.keys().filter(|k| k.starts_with("grad.")).collect();
        assert_eq!(
            grads.len(),
            keys.len(),
            "{case}: one gradient per adapter tensor"
        );
        for (key, tensor) in &keys {
            let g = &out[&format!("grad.{key}")];
            assert_eq!(g.dims(), tensor.dims(), "{key}");
            assert_eq!(g.dtype(), candle_core::DType::F32);
            check_gradient(key, g, &reference[&format!("grad.{key}")]).unwrap();
        }
    }
}

#[test]
fn several_adapters_the_last_one_active() {
    let dir = tempfile::tempdir().unwrap();
    let qv = fixtures().join("lora/llama-qv");
    let regex = fixtures().join("lora/llama-regex");
    let named = format!("mine={}", regex.display());
    let out = forward(
        "llama-tiny",
        "llama-regex",
        &["--adapter", qv.to_str().unwrap(), "--adapter", &named],
        dir.path(),
    );
    let reference = load(&regex.join("reference.safetensors"));
    assert_close(
        &out["logits"],
        &reference["logits"],
        LOGITS,
        "the last adapter",
    );
}

#[test]
fn inspect_shows_which_paths_carry_which_adapter() {
    let qv = fixtures().join("lora/llama-qv");
    let model = fixtures().join("llama-tiny");
    let text = patchwork(&[
        "inspect",
        model.to_str().unwrap(),
        "--adapter",
        qv.to_str().unwrap(),
    ]);
    let line = text
        .lines()
        .find(|l| l.contains(".self_attn.v_proj"))
        .unwrap_or_else(|| panic!("no v_proj line:\n{text}"));
    assert!(line.contains("adapter llama-qv: r=4"), "{line}");
    let k = text
        .lines()
        .find(|l| l.contains(".self_attn.k_proj"))
        .unwrap();
    assert!(!k.contains("adapter"), "{k}");
}

#[test]
fn a_bad_adapter_is_an_error_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixtures().join("lora/llama-qv");
    let text = std::fs::read_to_string(source.join("adapter_config.json")).unwrap();
    let text = text.replace("\"use_dora\": false", "\"use_dora\": true");
    std::fs::write(dir.path().join("adapter_config.json"), text).unwrap();
    std::fs::copy(
        source.join("adapter_model.safetensors"),
        dir.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let model = fixtures().join("llama-tiny");
    let out = run(&[
        "inspect",
        model.to_str().unwrap(),
        "--adapter",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("adapter_config.json") && err.contains("use_dora"),
        "{err}"
    );
}

#[test]
fn resave_reads_adapters_against_the_model_and_writes_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let qv = fixtures().join("lora/llama-qv");
    let model = fixtures().join("llama-tiny");
    let dst = dir.path().join("out");
    let text = patchwork(&[
        "resave",
        model.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--adapter",
        qv.to_str().unwrap(),
    ]);
    assert!(text.contains("adapter llama-qv: 4 paths"), "{text}");
    let original = load(&qv.join("adapter_model.safetensors"));
    let saved = load(&dst.join("llama-qv/adapter_model.safetensors"));
    assert_eq!(original.len(), saved.len());
    for (key, t) in &original {
        assert_close(
            &saved[key],
            t,
            patchwork_testing::Tolerance::absolute(0.0),
            key,
        );
    }
    assert!(dst.join("llama-qv/adapter_config.json").is_file());
}
