//! Rollouts read from JSON under vLLM's and SGLang's names, and every way a rollout can fail
//! to line up: errors that name the rollout (or the file and line) and the lengths.

mod rollouts_shared;

use candle_core::{Device, Tensor};
use patchwork_models::decoder::DecoderConfig;
use patchwork_models::rollouts::{
    Padding, Rollout, RolloutBatch, encode_sglang_routed_experts, read_rollouts,
};
use rollouts_shared::{F, config, config_of, grid, rollouts};

#[test]
fn rollouts_read_from_json_with_vllm_and_sglang_names() {
    let c = config();
    // SGLang's routing of rollout 1 (every layer, int32) and, for a 4 + 1 token rollout asked
    // with routed_experts_start_len 2, the rows of positions 2 and 3 only.
    let sglang =
        encode_sglang_routed_experts(rollouts()[1].routed_experts.as_ref().unwrap()).unwrap();
    let tail = Tensor::new(
        &[[[4i64, 5], [0, 0], [6, 7]], [[5, 6], [0, 0], [7, 0]]],
        &Device::Cpu,
    )
    .unwrap();
    let tail = encode_sglang_routed_experts(&tail).unwrap();
    let lines = [
        serde_json::json!({
            "prompt_token_ids": [10, 11, 12], "token_ids": [13, 14],
            "routed_experts": [[[0, 7], [1, 6]], [[1, 6], [2, 5]], [[2, 5], [3, 4]], [[3, 4], [4, 3]]],
        })
        .to_string(),
        String::new(),
        serde_json::json!({
            "input_ids": [20], "output_ids": [21, 22],
            "meta_info": {"prompt_tokens": 1, "completion_tokens": 2, "routed_experts": sglang},
        })
        .to_string(),
        serde_json::json!({
            "prompt_ids": [30, 31, 32, 33], "completion_ids": [34], "routed_experts_start_len": 2,
            "sglext": {"routed_experts": tail, "routed_experts_dtype": "int32"},
        })
        .to_string(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rollouts.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let read = read_rollouts(&path, &c).unwrap();
    assert_eq!(read.len(), 3);
    assert_eq!((read[2].prompt_len, read[2].routed_experts_start), (4, 2));
    let b = RolloutBatch::from_rollouts(&read, &c, Padding::Right, Some(0)).unwrap();
    let layer0 = [
        [[0, 7], [1, 6], [2, 5], [3, 4], F],
        [[5, 6], [6, 7], F, F, F],
        [F, F, [4, 5], [5, 6], F],
    ];
    assert_eq!(grid(&b.forced_experts[&0], 5), layer0);
    assert_eq!(grid(&b.forced_experts[&2], 5)[2], [F, F, [6, 7], [7, 0], F]);
    // The same as a JSON array.
    let array = format!("[{}, {}]", lines[0], lines[2]);
    std::fs::write(&path, array).unwrap();
    assert_eq!(read_rollouts(&path, &c).unwrap().len(), 2);
}

/// The error of batching `rollouts` (right padding).
fn batch_error(rollouts: &[Rollout], config: &DecoderConfig) -> String {
    RolloutBatch::from_rollouts(rollouts, config, Padding::Right, None)
        .unwrap_err()
        .to_string()
}

#[test]
fn misaligned_rollouts_are_errors_naming_the_rollout_and_the_lengths() {
    let c = config();
    let zeros = |rows: usize, layers: usize, k: usize| {
        Tensor::zeros((rows, layers, k), candle_core::DType::I64, &Device::Cpu).unwrap()
    };
    let mut rs = rollouts();
    for rows in [1, 4] {
        rs[1] = Rollout::new(&[20], &[21, 22]).with_routed_experts(zeros(rows, 2, 2));
        let err = batch_error(&rs, &c);
        let want = format!(
            "input rollout 1: routed_experts has {rows} rows from position 0, for a sequence of 3 tokens (1 prompt + 2 completion): expected 2 rows (every token but the last, as vLLM and SGLang record) or 3"
        );
        assert_eq!(err, want);
    }
    rs[1] = Rollout::new(&[20], &[21, 22])
        .with_routed_experts(zeros(0, 2, 2))
        .with_routed_experts_start(4);
    assert!(
        batch_error(&rs, &c).contains("rollout 1: routed_experts has 0 rows from position 4, for a sequence of 3 tokens (1 prompt + 2 completion): expected routed_experts_start 4 to be below 3"),
        "{}",
        batch_error(&rs, &c)
    );
    rs[1] = Rollout::new(&[20], &[21, 22]).with_routed_experts(zeros(2, 2, 3));
    let err = batch_error(&rs, &c);
    assert!(
        err.contains(
            "rollout 1 routed_experts: shape [2, 2, 3]: this model chooses 2 experts per token"
        ),
        "{err}"
    );
    rs[1] = Rollout::new(&[20], &[21, 22]).with_routed_experts(zeros(2, 4, 2));
    let err = batch_error(&rs, &c);
    assert!(
        err.contains("the layer axis must count the 2 MoE layers or all 3 layers"),
        "{err}"
    );
    let mut bad = zeros(2, 2, 2).to_vec3::<i64>().unwrap();
    bad[1][0][1] = 8;
    rs[1] = Rollout::new(&[20], &[21, 22]).with_routed_experts(
        Tensor::new(bad, &Device::Cpu)
            .unwrap()
            .reshape((2, 2, 2))
            .unwrap(),
    );
    let err = batch_error(&rs, &c);
    assert!(
        err.contains("rollout 1 routed_experts: expert id 8 at [1, 0, 1]"),
        "{err}"
    );
    rs[1] = Rollout {
        prompt_len: 4,
        ..Rollout::new(&[20], &[21, 22])
    };
    assert_eq!(
        batch_error(&rs, &c),
        "input rollout 1: prompt_len 4 is longer than its 3 token ids"
    );
    rs[1] = Rollout::new(&[20], &[300, 22]);
    assert!(batch_error(&rs, &c).contains("token id 300 at rollouts[1, 1]"));
    rs[1] = Rollout::new(&[], &[]);
    assert_eq!(batch_error(&rs, &c), "input rollout 1: no token ids");
    assert!(batch_error(&[], &c).contains("no rollout to batch"));
    let err = RolloutBatch::from_rollouts(&rollouts(), &c, Padding::Right, Some(256)).unwrap_err();
    assert!(
        err.to_string()
            .contains("pad_token_id: 256 is not below the vocabulary size 256")
    );
    // Routing for a model without experts.
    let llama = config_of("llama-tiny");
    let err = batch_error(&rollouts()[..1], &llama);
    assert!(
        err.contains("rollout 0") && err.contains("no mixture-of-experts"),
        "{err}"
    );
    // Without routing, a dense model batches.
    let plain = [Rollout::new(&[1, 2], &[3])];
    let b = RolloutBatch::from_rollouts(&plain, &llama, Padding::Left, None).unwrap();
    assert!(b.forced_experts.is_empty());
}

#[test]
fn bad_json_rollouts_are_errors_naming_the_line_and_the_field() {
    let c = config();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.jsonl");
    let name = path.display().to_string();
    for (line, want) in [
        (
            r#"{"prompt_ids": [1], "input_ids": [1], "completion_ids": [2]}"#,
            "line 2: both prompt_ids and input_ids are given",
        ),
        (
            r#"{"prompt_ids": [1], "completion_ids": [2, 3], "meta_info": {"completion_tokens": 3}}"#,
            "line 2: meta_info.completion_tokens is 3 but completion_ids has 2 ids",
        ),
        (
            r#"{"prompt_ids": [1, -4], "completion_ids": [2]}"#,
            "line 2: prompt_ids[1]: expected a token id, found -4",
        ),
        (r#"{"completion_ids": [2]}"#, "line 2: no prompt ids"),
        (
            r#"{"prompt_ids": [1], "completion_ids": [2], "routed_experts": [[[0, 1], [1, 2]], [[0, 1]]]}"#,
            "line 2: routed_experts[1]: expected 2 layers like row 0",
        ),
        (
            r#"{"prompt_ids": [1], "completion_ids": [2], "routed_experts": "Zm9v!g=="}"#,
            "line 2: routed_experts (SGLang's base64): character '!' at offset 4 is not base64",
        ),
        (
            r#"{"prompt_ids": [1], "completion_ids": [2], "routed_experts": 7}"#,
            "line 2: routed_experts: expected [tokens][layers][top_k] integers (vLLM) or a base64 string (SGLang), found a number",
        ),
        (
            r#"{"prompt_ids": [1], "completion_ids": [2]"#,
            "line 2: invalid JSON",
        ),
    ] {
        std::fs::write(
            &path,
            format!("{{\"prompt_ids\": [1], \"completion_ids\": [2]}}\n{line}\n"),
        )
        .unwrap();
        let err = read_rollouts(&path, &c).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{name} {want}")),
            "{err}\nwanted: {want}"
        );
    }
    std::fs::write(&path, "\n\n").unwrap();
    assert!(
        read_rollouts(&path, &c)
            .unwrap_err()
            .to_string()
            .contains("no rollout in the file")
    );
}
