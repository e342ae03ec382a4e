//! `patchwork rollouts` and `patchwork routing-report`: rollouts as the engines return them
//! become the batch `forward` reads, and the report compares the trainer's routing with it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use patchwork_models::rollouts::encode_sglang_routed_experts;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

fn patchwork(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patchwork"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "patchwork failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn failed(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<i64>> {
    t.to_vec2::<i64>().unwrap()
}

/// Three rollouts for qwen2-moe-tiny (MoE layers 0 and 2, top-2): vLLM's names and nested
/// routing over the MoE layers; SGLang's `/generate` response with base64 routing over all 3
/// layers; one without routing.
fn write_rollouts(dir: &Path) -> PathBuf {
    let sglang = Tensor::new(
        &[[[5i64, 6], [0, 0], [7, 0]], [[6, 7], [0, 0], [0, 1]]],
        &Device::Cpu,
    )
    .unwrap();
    let lines = [
        serde_json::json!({
            "prompt_token_ids": [10, 11, 12], "token_ids": [13, 14],
            "routed_experts": [[[0, 7], [1, 6]], [[1, 6], [2, 5]], [[2, 5], [3, 4]], [[3, 4], [4, 3]]],
        }),
        serde_json::json!({
            "input_ids": [20], "output_ids": [21, 22],
            "meta_info": {"routed_experts": encode_sglang_routed_experts(&sglang).unwrap()},
        }),
        serde_json::json!({"prompt_ids": [40, 41], "completion_ids": [42]}),
    ];
    let path = dir.join("rollouts.jsonl");
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    path
}

#[test]
fn rollouts_write_the_batch_forward_and_routing_report_read() {
    let model = fixture("qwen2-moe-tiny");
    let model = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_rollouts(dir.path());
    let batch = dir.path().join("batch.safetensors");
    let (i, b) = (inputs.to_str().unwrap(), batch.to_str().unwrap());
    let text = ok(&patchwork(&[
        "rollouts",
        model,
        "--inputs",
        i,
        "--out",
        b,
        "--padding-side",
        "left",
    ]));
    assert_eq!(
        text.trim(),
        "3 rollouts -> [3, 5], left padding, 5 labels; routing of 2 rollouts on MoE layers [0, 2]"
    );
    let t = load(&batch);
    let p = 2; // qwen2-moe-tiny's first eos token: it has no pad token.
    assert_eq!(
        rows(&t["input_ids"]),
        [[10, 11, 12, 13, 14], [p, p, 20, 21, 22], [p, p, 40, 41, 42]]
    );
    assert_eq!(
        rows(&t["attention_mask"]),
        [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 1, 1, 1]]
    );
    let x = -100;
    assert_eq!(
        rows(&t["labels"]),
        [[x, x, x, 13, 14], [x, x, x, 21, 22], [x, x, x, x, 42]]
    );
    let f = [-1, -1];
    assert_eq!(
        rows(&t["selected_experts.2"]),
        [
            [1, 6],
            [2, 5],
            [3, 4],
            [4, 3],
            f,
            f,
            f,
            [7, 0],
            [0, 1],
            f,
            f,
            f,
            f,
            f,
            f
        ]
    );
    assert_eq!(t["selected_experts.0"].dims(), [15, 2]);
    assert_eq!(t["input_ids"].dtype(), DType::I64);

    // One file serves forward as inputs and routing; the replayed experts are the rollouts'.
    let out = dir.path().join("out.safetensors");
    let o = out.to_str().unwrap();
    for flag in ["--forced-experts", "--routed-experts"] {
        ok(&patchwork(&[
            "forward", model, "--inputs", b, flag, b, "--out", o,
        ]));
        let used = rows(&load(&out)["selected_experts.2"]);
        assert_eq!(used[..4], [[1, 6], [2, 5], [3, 4], [4, 3]]);
        assert_eq!(used[7..9], [[7, 0], [0, 1]]);
        assert!(load(&out)["loss"].to_scalar::<f32>().unwrap().is_finite());
    }

    // The report, from our routing and from vLLM's layout of the same routing.
    let report = dir.path().join("report.json");
    let r = report.to_str().unwrap();
    let text = ok(&patchwork(&[
        "routing-report",
        model,
        "--inputs",
        b,
        "--forced-experts",
        b,
        "--out",
        r,
    ]));
    assert!(
        text.starts_with(
            "routing report: 3 rows x 5 positions, 6 tokens compared over 2 MoE layers"
        ),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let s = &json["summary"];
    // Compared: the tokens with routing, every one but each rollout's last (4 + 2).
    assert_eq!(
        (
            s["tokens_compared"].as_u64(),
            s["decisions_compared"].as_u64()
        ),
        (Some(6), Some(12))
    );
    assert_eq!(s["labels"], 5);
    assert_eq!(json["layers"].as_array().unwrap().len(), 2);
    let routed: Vec<Tensor> = [0usize, 1, 2]
        .iter()
        .map(|l| match l {
            1 => Tensor::zeros((15, 1, 2), DType::I64, &Device::Cpu).unwrap(),
            l => t[&format!("selected_experts.{l}")].unsqueeze(1).unwrap(),
        })
        .collect();
    let vllm = Tensor::cat(&routed, 1)
        .unwrap()
        .reshape((3, 5, 3, 2))
        .unwrap();
    let vllm_file = dir.path().join("vllm.safetensors");
    candle_core::safetensors::save(&HashMap::from([("routed_experts", vllm)]), &vllm_file).unwrap();
    let again = dir.path().join("again.json");
    ok(&patchwork(&[
        "routing-report",
        model,
        "--inputs",
        b,
        "--routed-experts",
        vllm_file.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]));
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&report).unwrap()
    );
}

#[test]
fn rollouts_and_routing_report_refuse_what_does_not_line_up() {
    let model = fixture("qwen2-moe-tiny");
    let model = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("r.jsonl");
    let i = inputs.to_str().unwrap();
    let out = dir.path().join("batch.safetensors");
    let o = out.to_str().unwrap();
    // Five rows of routing for a 3 + 2 token rollout on line 2.
    let good = r#"{"prompt_ids": [1], "completion_ids": [2]}"#;
    let bad = r#"{"prompt_ids": [1, 2, 3], "completion_ids": [4, 5], "routed_experts": [[[0, 1], [0, 1]], [[0, 1], [0, 1]], [[0, 1], [0, 1]], [[0, 1], [0, 1]], [[0, 1], [0, 1]], [[0, 1], [0, 1]]]}"#;
    std::fs::write(&inputs, format!("{good}\n{bad}\n")).unwrap();
    let err = failed(&patchwork(&["rollouts", model, "--inputs", i, "--out", o]));
    assert!(
        err.contains("rollout 1: routed_experts has 6 rows from position 0, for a sequence of 5 tokens (3 prompt + 2 completion): expected 4 rows"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");
    std::fs::write(&inputs, format!("{good}\n{{\"prompt_ids\": [1]\n")).unwrap();
    let err = failed(&patchwork(&["rollouts", model, "--inputs", i, "--out", o]));
    assert!(err.contains("r.jsonl line 2: invalid JSON"), "{err}");
    // The output is never the input.
    let err = failed(&patchwork(&["rollouts", model, "--inputs", i, "--out", i]));
    assert!(err.contains("r.jsonl"), "{err}");
    let usage = patchwork(&[
        "rollouts",
        model,
        "--inputs",
        i,
        "--out",
        o,
        "--padding",
        "middle",
    ]);
    assert!(!usage.status.success());
    assert!(String::from_utf8_lossy(&usage.stderr).contains("middle"));
    // A routing file without a routing.
    std::fs::write(&inputs, format!("{good}\n")).unwrap();
    ok(&patchwork(&["rollouts", model, "--inputs", i, "--out", o]));
    let report = dir.path().join("report.json");
    let err = failed(&patchwork(&[
        "routing-report",
        model,
        "--inputs",
        o,
        "--forced-experts",
        o,
        "--out",
        report.to_str().unwrap(),
    ]));
    assert!(
        err.contains("no selected_experts.L tensor") && err.contains("routed_experts"),
        "{err}"
    );
    assert!(!report.exists());
}

#[test]
fn rollouts_read_the_config_of_a_gguf_file() {
    let gguf = fixture("gguf").join("qwen3-moe-allmoe-Q8_0.gguf");
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("r.jsonl");
    std::fs::write(&inputs, r#"{"prompt_ids": [1, 2], "completion_ids": [3]}"#).unwrap();
    let out = dir.path().join("batch.safetensors");
    let text = ok(&patchwork(&[
        "rollouts",
        gguf.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(text.contains("1 rollouts -> [1, 3]"), "{text}");
    let t = load(&out);
    assert_eq!(rows(&t["labels"]), [[-100, -100, 3]]);
    assert!(!t.keys().any(|k| k.starts_with("selected_experts.")));
    // An id past the GGUF model's vocabulary is an error naming it.
    std::fs::write(
        &inputs,
        r#"{"prompt_ids": [1, 999999], "completion_ids": [3]}"#,
    )
    .unwrap();
    let err = failed(&patchwork(&[
        "rollouts",
        gguf.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(err.contains("token id 999999 at rollouts[0, 1]"), "{err}");
}
