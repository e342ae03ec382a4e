//! The `patchwork` binary on GGUF files made by llama.cpp's converter and quantizer
//! (fixtures/gguf): forward and generate against transformers' outputs on the same files,
//! inspect's per-path formats, and resave to a transformers folder that loads back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

fn gguf(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/gguf")
        .join(name)
}

fn patchwork(args: &[&str]) -> String {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_patchwork"))
        .args(args)
        .output()
        .unwrap();
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

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// The logits `patchwork forward MODEL EXTRA..` writes for `input_ids`.
fn forward(model: &Path, extra: &[&str], input_ids: &Tensor, dir: &Path) -> Tensor {
    let inputs = dir.join("inputs.safetensors");
    let out = dir.join("out.safetensors");
    let tensors = HashMap::from([("input_ids".to_string(), input_ids.clone())]);
    candle_core::safetensors::save(&tensors, &inputs).unwrap();
    let mut args = vec!["forward", model.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend([
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    patchwork(&args);
    load(&out)["logits"].clone()
}

/// `max |a - b| <= 1e-4 * max(1, max |b|)`, and no NaN on either side.
fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    patchwork_testing::assert_close(a, b, patchwork_testing::LOGITS, what);
}

#[test]
fn forward_and_generate_match_transformers_on_the_dequantized_file() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["qwen2-tiny-Q8_0", "llama-odd-Q4_K_M"] {
        let file = gguf(&format!("{name}.gguf"));
        let r = load(&gguf(&format!("{name}.reference.safetensors")));
        let logits = forward(&file, &["--dequantize"], &r["input_ids"], dir.path());
        assert_close(name, &logits, &r["logits"]);

        let prompt: Vec<String> =
            values(&r["gen_prompt"].to_dtype(candle_core::DType::F32).unwrap())
                .iter()
                .map(|x| (*x as i64).to_string())
                .collect();
        let expected: Vec<String> =
            values(&r["gen_output"].to_dtype(candle_core::DType::F32).unwrap())
                .iter()
                .map(|x| (*x as i64).to_string())
                .collect();
        let new = (expected.len() - prompt.len()).to_string();
        let text = patchwork(&[
            "generate",
            file.to_str().unwrap(),
            "--dequantize",
            "--prompt-ids",
            &prompt.join(","),
            "--max-new-tokens",
            &new,
            "--ignore-eos",
        ]);
        assert_eq!(text.lines().last().unwrap(), expected.join(","), "{name}");
    }
}

#[test]
fn a_packed_file_chats_and_inspect_names_each_stored_format() {
    let file = gguf("qwen2-tiny-Q4_0.gguf");
    let text = patchwork(&[
        "generate",
        file.to_str().unwrap(),
        "--chat",
        "--prompt",
        "hi",
        "--max-new-tokens",
        "3",
        "--ignore-eos",
    ]);
    let ids = text.lines().last().unwrap().split(',').count();
    assert!(ids > 3, "{text}");

    let text = patchwork(&["inspect", file.to_str().unwrap()]);
    for line in [
        "model_type: qwen2",
        "model.layers.0-1.self_attn.q_proj          Linear                GgufLinear by exact \"Linear\"; q4_0 (as stored)",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }
}

#[test]
fn resave_writes_a_folder_that_loads_to_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let ids = Tensor::new(&[[3i64, 17, 42, 99, 5, 250, 7, 64]], &Device::Cpu).unwrap();
    for name in [
        "qwen2-tiny-Q8_0",
        "qwen2-moe-allmoe-Q4_0",
        "qwen3-moe-allmoe-Q8_0",
        "llama-odd-Q4_K_M",
    ] {
        let file = gguf(&format!("{name}.gguf"));
        let folder = dir.path().join(name);
        let text = patchwork(&["resave", file.to_str().unwrap(), folder.to_str().unwrap()]);
        assert!(
            text.contains("config.json, tokenizer.json and tokenizer_config.json"),
            "{text}"
        );
        for f in [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "model.safetensors",
        ] {
            assert!(folder.join(f).exists(), "{name}: no {f}");
        }
        // Loaded strictly (every tensor asked for, none missing), the folder computes what
        // the file computes dequantized: the same floats.
        let from_folder = forward(&folder, &[], &ids, dir.path());
        let from_file = forward(&file, &["--dequantize"], &ids, dir.path());
        assert_eq!(values(&from_folder), values(&from_file), "{name}");
        assert!(values(&from_file).iter().all(|x| x.is_finite()), "{name}");
    }
}

#[test]
fn a_folder_with_two_gguf_files_asks_which() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["qwen2-tiny-Q8_0.gguf", "qwen2-tiny-Q4_0.gguf"] {
        std::fs::copy(gguf(f), dir.path().join(f)).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_patchwork"))
        .args(["inspect", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("qwen2-tiny-Q4_0.gguf")
            && stderr.contains("qwen2-tiny-Q8_0.gguf")
            && stderr.contains("--gguf-file"),
        "{stderr}"
    );
    let text = patchwork(&[
        "inspect",
        dir.path().to_str().unwrap(),
        "--gguf-file",
        "qwen2-tiny-Q8_0.gguf",
    ]);
    assert!(text.contains("q8_0 (as stored)"), "{text}");
}
