//! The `patchwork` binary's output contracts, checked on the reference checkpoints: inspect, forward, generate and bench, and the MoE router outputs.

mod cli_support;

use cli_support::*;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

#[test]
fn inspect_prints_type_count_dtype_and_explain() {
    let text = stdout(&patchwork(&[
        "inspect",
        fixture("llama-tiny").to_str().unwrap(),
    ]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "model_type: llama");
    assert_eq!(lines[1], "architecture: LlamaForCausalLM");
    assert_eq!(lines[2], "parameters: 102720");
    assert_eq!(lines[3], "dtype: float32");
    assert!(
        text.contains("patch explain: 7 sites")
            && text.contains("model.layers.0-1.self_attn.q_proj"),
        "{text}"
    );
}

#[test]
fn forward_writes_logits_matching_the_reference() {
    let r = reference("llama-tiny");
    let dir = tempfile::tempdir().unwrap();
    for (ids, mask, expected) in [
        ("input_ids", None, "logits"),
        (
            "padded_input_ids",
            Some("padded_attention_mask"),
            "padded_logits",
        ),
    ] {
        let inputs = dir.path().join("in.safetensors");
        let out = dir.path().join("out.safetensors");
        let mut tensors = HashMap::from([("input_ids".to_string(), r[ids].clone())]);
        if let Some(m) = mask {
            tensors.insert("attention_mask".into(), r[m].clone());
        }
        candle_core::safetensors::save(&tensors, &inputs).unwrap();
        stdout(&patchwork(&[
            "forward",
            fixture("llama-tiny").to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]));
        let written = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        assert_eq!(written.len(), 1, "a dense model writes logits only");
        let logits = &written["logits"];
        assert_eq!(logits.dtype(), DType::F32);
        let keep: Vec<i64> = match mask {
            Some(m) => r[m].flatten_all().unwrap().to_vec1().unwrap(),
            None => vec![1; 24],
        };
        assert_close(expected, logits, &r[expected], |i| keep[i / 256] == 1);
    }
}

#[test]
fn forward_accepts_u32_ids_and_rejects_bad_inputs() {
    let r = reference("llama-tiny");
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in.safetensors");
    let out = dir.path().join("out.safetensors");
    let run = |tensors: HashMap<String, Tensor>| {
        candle_core::safetensors::save(&tensors, &inputs).unwrap();
        patchwork(&[
            "forward",
            fixture("llama-tiny").to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    stdout(&run(HashMap::from([("input_ids".to_string(), ids)])));
    let logits = candle_core::safetensors::load(&out, &Device::Cpu).unwrap()["logits"].clone();
    assert_close("u32 ids", &logits, &r["logits"], |_| true);

    let bad = run(HashMap::from([(
        "input_ids".to_string(),
        Tensor::new(&[[3i64, 999]], &Device::Cpu).unwrap(),
    )]));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("999") && err.contains("256"), "{err}");
    let missing = run(HashMap::from([(
        "tokens".to_string(),
        r["input_ids"].clone(),
    )]));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("input_ids"));
}

#[test]
fn generate_prints_the_whole_sequence_last() {
    let r = reference("llama-tiny");
    let prompt: Vec<i64> = r["gen_prompt"].flatten_all().unwrap().to_vec1().unwrap();
    let expected: Vec<i64> = r["gen_output"].flatten_all().unwrap().to_vec1().unwrap();
    let prompt_arg: Vec<String> = prompt.iter().map(i64::to_string).collect();
    let text = stdout(&patchwork(&[
        "generate",
        fixture("llama-tiny").to_str().unwrap(),
        "--prompt-ids",
        &prompt_arg.join(","),
        "--max-new-tokens",
        "16",
        "--ignore-eos",
    ]));
    let last = text.lines().last().unwrap();
    let expected: Vec<String> = expected.iter().map(i64::to_string).collect();
    assert_eq!(last, expected.join(","));

    let sample = |seed: &str| {
        let text = stdout(&patchwork(&[
            "generate",
            fixture("llama-tiny").to_str().unwrap(),
            "--prompt-ids",
            "5,6,7",
            "--max-new-tokens",
            "8",
            "--ignore-eos",
            "--temperature",
            "1.5",
            "--top-k",
            "40",
            "--top-p",
            "0.9",
            "--seed",
            seed,
        ]));
        text.lines().last().unwrap().to_string()
    };
    assert_eq!(sample("1"), sample("1"));
    assert!(sample("1").starts_with("5,6,7,"));
}

#[test]
fn generate_rejects_bad_arguments() {
    let dir = fixture("llama-tiny");
    let out = patchwork(&[
        "generate",
        dir.to_str().unwrap(),
        "--prompt-ids",
        "5",
        "--max-new-tokens",
        "2",
        "--top-k",
        "3",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--temperature"));
    let out = patchwork(&[
        "generate",
        dir.to_str().unwrap(),
        "--prompt-ids",
        "5,300",
        "--max-new-tokens",
        "2",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("300"));
    let out = patchwork(&[
        "generate",
        dir.to_str().unwrap(),
        "--prompt-ids",
        "5",
        "--max-new-tokens",
        "2",
        "--temperature",
        "0",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("temperature"));
    let out = patchwork(&["inspect", "/nonexistent/model"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model"));
}

#[test]
fn forward_writes_router_outputs_of_moe_layers() {
    let r = reference("qwen2-moe-tiny");
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in.safetensors");
    let out = dir.path().join("out.safetensors");
    candle_core::safetensors::save(
        &HashMap::from([("input_ids".to_string(), r["input_ids"].clone())]),
        &inputs,
    )
    .unwrap();
    stdout(&patchwork(&[
        "forward",
        fixture("qwen2-moe-tiny").to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    let written = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let mut keys: Vec<&String> = written.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "logits",
            "router_logits.0",
            "router_logits.2",
            "selected_experts.0",
            "selected_experts.2"
        ]
    );
    assert_close("logits", &written["logits"], &r["logits"], |_| true);
    for l in [0, 2] {
        let rl = &written[&format!("router_logits.{l}")];
        assert_eq!((rl.dtype(), rl.dims()), (DType::F32, &[24usize, 8][..]));
        assert_close(
            "router logits",
            rl,
            &r[&format!("router_logits.{l}")],
            |_| true,
        );
        let se = &written[&format!("selected_experts.{l}")];
        assert_eq!((se.dtype(), se.dims()), (DType::I64, &[24usize, 2][..]));
        let ours: Vec<i64> = se.flatten_all().unwrap().to_vec1().unwrap();
        let theirs: Vec<i64> = r[&format!("selected_experts.{l}")]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ours, theirs);
    }
    let text = stdout(&patchwork(&[
        "inspect",
        fixture("qwen2-moe-tiny").to_str().unwrap(),
    ]));
    assert!(
        text.starts_with("model_type: qwen2_moe\narchitecture: Qwen2MoeForCausalLM\n"),
        "{text}"
    );
    assert!(
        text.contains("Qwen2MoeExperts") && text.contains("dtype: float32"),
        "{text}"
    );
}

#[test]
fn bench_reports_load_speeds_memory_and_a_parsable_last_line() {
    let dir = fixture("llama-tiny");
    let args = [
        "bench",
        dir.to_str().unwrap(),
        "--prompt-len",
        "5",
        "--decode",
        "3",
        "--repeats",
        "2",
    ];
    let text = stdout(&patchwork(&args));
    assert!(
        text.contains("load: ") && text.contains("peak_rss: "),
        "{text}"
    );
    assert_eq!(text.matches("repeat ").count(), 2, "{text}");
    let last = text.lines().last().unwrap();
    let (p, d) = last.split_once(' ').unwrap();
    let p: f64 = p.strip_prefix("prefill_tok_s=").unwrap().parse().unwrap();
    let d: f64 = d.strip_prefix("decode_tok_s=").unwrap().parse().unwrap();
    assert!(p > 0.0 && d > 0.0, "{last}");
    let out = patchwork(&["bench", dir.to_str().unwrap(), "--repeats", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--repeats"));
}
