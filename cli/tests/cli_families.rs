//! The `patchwork` binary's output contracts, checked on the reference checkpoints: every command on every family, captured states, compare, quantization.

mod cli_support;

use cli_support::*;
use std::collections::HashMap;
use std::path::Path;

use candle_core::DType;

/// Every command runs on every family's reference checkpoint: `inspect` names it, `forward`
/// reproduces its logits, `generate` its greedy ids, `resave` its files, `bench` runs.
#[test]
fn every_command_runs_on_every_family() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("reference.safetensors").exists() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let r = reference(&name);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let model_type = config["model_type"].as_str().unwrap();
        let text = stdout(&patchwork(&["inspect", dir.to_str().unwrap()]));
        assert!(
            text.starts_with(&format!("model_type: {model_type}\n")),
            "{text}"
        );

        let written = forward(
            &name,
            HashMap::from([("input_ids".to_string(), r["input_ids"].clone())]),
            &[],
        );
        assert_close(
            &format!("{name} logits"),
            &written["logits"],
            &r["logits"],
            |_| true,
        );

        let prompt: Vec<i64> = r["gen_prompt"].flatten_all().unwrap().to_vec1().unwrap();
        let expected: Vec<i64> = r["gen_output"].flatten_all().unwrap().to_vec1().unwrap();
        let prompt_arg: Vec<String> = prompt.iter().map(i64::to_string).collect();
        let new = (expected.len() - prompt.len()).to_string();
        let text = stdout(&patchwork(&[
            "generate",
            dir.to_str().unwrap(),
            "--prompt-ids",
            &prompt_arg.join(","),
            "--max-new-tokens",
            &new,
            "--ignore-eos",
        ]));
        let expected: Vec<String> = expected.iter().map(i64::to_string).collect();
        assert_eq!(text.lines().last().unwrap(), expected.join(","), "{name}");

        let out = tempfile::tempdir().unwrap();
        stdout(&patchwork(&[
            "resave",
            dir.to_str().unwrap(),
            out.path().to_str().unwrap(),
        ]));
        let original = std::fs::read(dir.join("model.safetensors")).unwrap();
        let saved = std::fs::read(out.path().join("model.safetensors")).unwrap();
        let tensors = |b: &[u8]| {
            let st = safetensors::SafeTensors::deserialize(b).unwrap();
            let mut t: Vec<(String, Vec<u8>)> = st
                .tensors()
                .into_iter()
                .map(|(k, v)| (k, v.data().to_vec()))
                .collect();
            t.sort();
            t
        };
        assert!(
            tensors(&original) == tensors(&saved),
            "{name}: resave is bit-exact"
        );

        let text = stdout(&patchwork(&[
            "bench",
            dir.to_str().unwrap(),
            "--prompt-len",
            "8",
            "--decode",
            "4",
            "--repeats",
            "1",
        ]));
        assert!(
            text.lines().last().unwrap().starts_with("prefill_tok_s="),
            "{text}"
        );
        seen.push(model_type.to_string());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["llama", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe"]);
}

#[test]
fn forward_writes_hidden_states_and_attentions_matching_transformers() {
    for name in ["llama-tiny", "qwen3-tiny"] {
        let r = training_reference(name);
        let out = forward(
            name,
            HashMap::from([("input_ids".to_string(), r["input_ids"].clone())]),
            &["--output-hidden-states", "--output-attentions"],
        );
        let hidden: Vec<&String> = r
            .keys()
            .filter(|k| k.starts_with("hidden_states."))
            .collect();
        let attentions: Vec<&String> = r.keys().filter(|k| k.starts_with("attentions.")).collect();
        assert!(!hidden.is_empty() && !attentions.is_empty());
        for key in hidden.into_iter().chain(attentions) {
            assert_eq!(out[key].dtype(), DType::F32, "{name} {key}");
            assert_close(&format!("{name} {key}"), &out[key], &r[key], |_| true);
        }
        let plain = forward(
            name,
            HashMap::from([("input_ids".to_string(), r["input_ids"].clone())]),
            &[],
        );
        assert!(
            !plain
                .keys()
                .any(|k| k.starts_with("hidden_states.") || k.starts_with("attentions."))
        );
    }
}

#[test]
fn compare_reports_every_site_and_passes_for_the_fused_qkv_patch_set() {
    for name in ["qwen2-moe-tiny", "qwen3-tiny"] {
        let text = stdout(&patchwork(&["compare", fixture(name).to_str().unwrap()]));
        assert!(
            text.contains("model.layers.0.self_attn") && text.contains("model.norm"),
            "{text}"
        );
        assert!(
            text.lines()
                .last()
                .unwrap()
                .starts_with("every site within"),
            "{text}"
        );
    }
    let bad = patchwork(&[
        "compare",
        fixture("llama-tiny").to_str().unwrap(),
        "--patch-set",
        "nope",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("nope") && err.contains("fused-qkv"), "{err}");
}

#[test]
fn every_command_quantizes_with_quantize() {
    let dir = fixture("qwen3-tiny");
    let d = dir.to_str().unwrap();
    let text = stdout(&patchwork(&["inspect", d, "--quantize", "q8_0"]));
    // The topology's patches at the projection and embedding sites, and each path's format,
    // layers folded.
    let site_row = |site: &str, builds: &str, rule: &str| {
        text.lines().any(|l| {
            let cols: Vec<&str> = l
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            cols.first() == Some(&site) && cols.contains(&builds) && cols.contains(&rule)
        })
    };
    assert!(
        site_row(
            "Linear",
            "QuantizedLinear (q8_0)",
            r#"exact "Linear" (run time)"#
        ),
        "{text}"
    );
    assert!(
        site_row(
            "Embedding",
            "QuantizedEmbedding (q8_0)",
            r#"pattern "^Embedding$" (run time)"#
        ),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l
            .trim_start()
            .starts_with("model.layers.0-2.self_attn.q_proj ")
            && l.ends_with("QuantizedLinear (q8_0) by exact \"Linear\"; q8_0 (default)")),
        "{text}"
    );
    let text = stdout(&patchwork(&[
        "generate",
        d,
        "--prompt-ids",
        "5,6,7",
        "--max-new-tokens",
        "4",
        "--ignore-eos",
        "--quantize",
        "q8_0",
    ]));
    assert_eq!(text.lines().last().unwrap().split(',').count(), 7, "{text}");
    let args = [
        "bench",
        d,
        "--prompt-len",
        "4",
        "--decode",
        "2",
        "--repeats",
        "1",
        "--quantize",
        "q8_0",
    ];
    let text = stdout(&patchwork(&args));
    assert!(
        text.lines().last().unwrap().starts_with("prefill_tok_s="),
        "{text}"
    );
    // A format the widths do not allow falls back, and says so; rules apply by path.
    let text = stdout(&patchwork(&[
        "inspect",
        d,
        "--quantize",
        "q4k",
        "--quantize-rule",
        "lm_head=q8_0",
        "--quantize-rule",
        r"layers\.0\.=none",
    ]));
    assert!(
        text.contains("q5_0 (default asked q4_k; q4_k needs rows in blocks of 256, these have 64)"),
        "{text}"
    );
    assert!(
        text.contains("lm_head") && text.contains("q8_0 (rule /lm_head/)"),
        "{text}"
    );
    assert!(text.contains(r"float (rule /layers\.0\./)"), "{text}");
    // Unknown formats and malformed rules: errors naming them.
    let out = patchwork(&["inspect", d, "--quantize", "q3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown format \"q3\" (known: f16, bf16, q8_0"),
        "{err}"
    );
    let out = patchwork(&["inspect", d, "--quantize-rule", "lm_head"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("expected REGEX=FORMAT"),
        "{err}"
    );
}
