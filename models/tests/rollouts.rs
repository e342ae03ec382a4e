//! Rollouts of uneven lengths as one padded batch: every position checked by hand, both
//! paddings, both layer axes, vLLM's and SGLang's layouts, the errors that name the rollout;
//! and on a real model, the replayed batch routes every token as its rollout recorded.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use patch_core::PatchSet;
use patchwork_models::decoder::DecoderConfig;
use patchwork_models::rollouts::{
    Padding, Rollout, RolloutBatch, encode_sglang_routed_experts, read_rollouts,
};
use patchwork_models::{AutoModelForCausalLM, ForwardOptions, GenerationConfig, LoadOptions};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

/// qwen2-moe-tiny's config: 3 layers, layer 1 dense (MoE layers 0 and 2), 8 experts, top-2,
/// vocabulary 256, eos 2 and no pad token.
fn config() -> DecoderConfig {
    let path = fixture("qwen2-moe-tiny").join("config.json");
    let json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    patchwork_models::family::decoder_config(&json, "config.json").unwrap()
}

fn ids3(rows: &[[[i64; 2]; 2]]) -> Tensor {
    let flat: Vec<i64> = rows.iter().flatten().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), 2, 2), &Device::Cpu).unwrap()
}

/// The four rollouts every test batches (see each line).
fn rollouts() -> Vec<Rollout> {
    // 3 + 2 tokens; vLLM's layout over the MoE layers only: 4 rows (every token but the last).
    let r0 = Rollout::new(&[10, 11, 12], &[13, 14]).with_routed_experts(ids3(&[
        [[0, 7], [1, 6]],
        [[1, 6], [2, 5]],
        [[2, 5], [3, 4]],
        [[3, 4], [4, 3]],
    ]));
    // 1 + 2 tokens; every decoder layer on the axis (the dense layer 1 left zero, as SGLang).
    let all_layers = Tensor::new(
        &[[[5i64, 6], [0, 0], [7, 0]], [[6, 7], [0, 0], [0, 1]]],
        &Device::Cpu,
    )
    .unwrap();
    let r1 = Rollout::new(&[20], &[21, 22]).with_routed_experts(all_layers);
    // 2 + 1 tokens with a row for every token (as `generate` returns): the last row is ignored.
    let r2 = Rollout::new(&[30, 31], &[32]).with_routed_experts(ids3(&[
        [[1, 2], [3, 4]],
        [[2, 3], [4, 5]],
        [[7, 7], [6, 6]],
    ]));
    // 2 + 0 tokens, no routing: routes freely.
    let r3 = Rollout::new(&[40, 41], &[]);
    vec![r0, r1, r2, r3]
}

fn flat(t: &Tensor) -> Vec<Vec<i64>> {
    t.to_vec2::<i64>().unwrap()
}

const F: [i64; 2] = [-1, -1];

#[test]
fn right_padding_lines_up_every_position() {
    let b = RolloutBatch::from_rollouts(&rollouts(), &config(), Padding::Right, None).unwrap();
    // Padding holds the first eos token (2): the config has no pad token.
    assert_eq!(
        flat(&b.input_ids),
        [
            [10, 11, 12, 13, 14],
            [20, 21, 22, 2, 2],
            [30, 31, 32, 2, 2],
            [40, 41, 2, 2, 2]
        ]
    );
    assert_eq!(
        flat(&b.attention_mask),
        [
            [1, 1, 1, 1, 1],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 0, 0, 0]
        ]
    );
    // Labels: the token on completion positions, unshifted; -100 on prompts and padding.
    let x = -100;
    assert_eq!(
        flat(&b.labels),
        [
            [x, x, x, 13, 14],
            [x, 21, 22, x, x],
            [x, x, 32, x, x],
            [x, x, x, x, x]
        ]
    );
    assert_eq!(b.forced_experts.keys().copied().collect::<Vec<_>>(), [0, 2]);
    // Row b * 5 + t is column t of row b; -1 on each rollout's last token and on padding.
    assert_eq!(
        flat(&b.forced_experts[&0]),
        [
            [0, 7],
            [1, 6],
            [2, 5],
            [3, 4],
            F,
            [5, 6],
            [6, 7],
            F,
            F,
            F,
            [1, 2],
            [2, 3],
            F,
            F,
            F,
            F,
            F,
            F,
            F,
            F,
        ]
    );
    assert_eq!(
        flat(&b.forced_experts[&2]),
        [
            [1, 6],
            [2, 5],
            [3, 4],
            [4, 3],
            F,
            [7, 0],
            [0, 1],
            F,
            F,
            F,
            [3, 4],
            [4, 5],
            F,
            F,
            F,
            F,
            F,
            F,
            F,
            F,
        ]
    );
    assert_eq!(
        (b.starts.clone(), b.lengths.clone(), b.prompt_lens.clone()),
        (vec![0; 4], vec![5, 3, 3, 2], vec![3, 1, 2, 2])
    );
    let names: Vec<String> = b.to_tensors().into_keys().collect();
    assert_eq!(
        names,
        [
            "attention_mask",
            "input_ids",
            "labels",
            "selected_experts.0",
            "selected_experts.2"
        ]
    );
}

#[test]
fn left_padding_lines_up_every_position() {
    let b = RolloutBatch::from_rollouts(&rollouts(), &config(), Padding::Left, Some(255)).unwrap();
    assert_eq!(b.starts, [0, 2, 2, 3]);
    let p = 255;
    assert_eq!(
        flat(&b.input_ids),
        [
            [10, 11, 12, 13, 14],
            [p, p, 20, 21, 22],
            [p, p, 30, 31, 32],
            [p, p, p, 40, 41]
        ]
    );
    assert_eq!(
        flat(&b.attention_mask),
        [
            [1, 1, 1, 1, 1],
            [0, 0, 1, 1, 1],
            [0, 0, 1, 1, 1],
            [0, 0, 0, 1, 1]
        ]
    );
    let x = -100;
    assert_eq!(
        flat(&b.labels),
        [
            [x, x, x, 13, 14],
            [x, x, x, 21, 22],
            [x, x, x, x, 32],
            [x, x, x, x, x]
        ]
    );
    assert_eq!(
        flat(&b.forced_experts[&0]),
        [
            [0, 7],
            [1, 6],
            [2, 5],
            [3, 4],
            F,
            F,
            F,
            [5, 6],
            [6, 7],
            F,
            F,
            F,
            [1, 2],
            [2, 3],
            F,
            F,
            F,
            F,
            F,
            F,
        ]
    );
    assert_eq!(
        flat(&b.forced_experts[&2]),
        [
            [1, 6],
            [2, 5],
            [3, 4],
            [4, 3],
            F,
            F,
            F,
            [7, 0],
            [0, 1],
            F,
            F,
            F,
            [3, 4],
            [4, 5],
            F,
            F,
            F,
            F,
            F,
            F,
        ]
    );
}

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
    assert_eq!(
        flat(&b.forced_experts[&0]),
        [
            [0, 7],
            [1, 6],
            [2, 5],
            [3, 4],
            F,
            [5, 6],
            [6, 7],
            F,
            F,
            F,
            F,
            F,
            [4, 5],
            [5, 6],
            F,
        ]
    );
    assert_eq!(flat(&b.forced_experts[&2])[10..], [F, F, [6, 7], [7, 0], F]);
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
    let llama = fixture("llama-tiny").join("config.json");
    let llama = serde_json::from_str(&std::fs::read_to_string(llama).unwrap()).unwrap();
    let llama = patchwork_models::family::decoder_config(&llama, "llama").unwrap();
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

/// On qwen3-moe-tiny: two generated rollouts of different lengths, one in the engines' layout
/// (every token but the last) and one with `generate`'s row for every token, batched with each
/// padding and replayed: every recorded token routes to its recorded experts, and every real
/// position's logits equal those of the rollout run alone.
#[test]
fn a_replayed_batch_routes_every_token_as_its_rollout_recorded() {
    let model = AutoModelForCausalLM::from_pretrained(
        fixture("qwen3-moe-tiny"),
        &LoadOptions::default().with_patches(PatchSet::empty()),
    )
    .unwrap();
    let mut rollouts = Vec::new();
    for (prompt, new, engine_layout) in [(vec![1u32, 17, 42], 6, true), (vec![5u32, 9], 2, false)] {
        let config = GenerationConfig {
            output_routed_experts: true,
            ignore_eos: true,
            ..GenerationConfig::greedy(new)
        };
        let g = model
            .generate(std::slice::from_ref(&prompt), &config)
            .unwrap();
        let mut routed = g.routed_experts[0].clone();
        if engine_layout {
            routed = routed.narrow(0, 0, routed.dim(0).unwrap() - 1).unwrap();
        }
        rollouts.push(Rollout::new(&prompt, &g.new_tokens[0]).with_routed_experts(routed));
    }
    for padding in [Padding::Right, Padding::Left] {
        let b = RolloutBatch::from_rollouts(&rollouts, model.config(), padding, None).unwrap();
        let options = ForwardOptions {
            output_router_logits: Some(true),
            forced_experts: b.forced_experts.clone(),
            ..ForwardOptions::default()
        };
        let out = model
            .forward_with(&b.input_ids, Some(&b.attention_mask), None, &options)
            .unwrap();
        let seq = b.seq_len();
        let moe: BTreeMap<usize, usize> = patchwork_models::routing::moe_layers(model.config())
            .into_iter()
            .enumerate()
            .map(|(i, l)| (l, i))
            .collect();
        for record in &out.router_logits {
            let used = record
                .router
                .indices
                .to_dtype(candle_core::DType::I64)
                .unwrap();
            let used = used.to_vec2::<i64>().unwrap();
            for (row, r) in rollouts.iter().enumerate() {
                let recorded = r.routed_experts.as_ref().unwrap().to_vec3::<i64>().unwrap();
                for t in 0..r.len() - 1 {
                    assert_eq!(
                        used[row * seq + b.starts[row] + t],
                        recorded[t][moe[&record.layer]],
                        "{padding:?}: layer {}, rollout {row}, token {t}",
                        record.layer
                    );
                }
            }
        }
        let logits = out.logits.unwrap();
        for (row, r) in rollouts.iter().enumerate() {
            let alone = Tensor::new(r.token_ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let alone = model.forward(&alone, None).unwrap().squeeze(0).unwrap();
            let batched = logits
                .get(row)
                .unwrap()
                .narrow(0, b.starts[row], r.len())
                .unwrap();
            let diff = (alone - batched).unwrap().abs().unwrap().max_all().unwrap();
            let diff = diff.to_scalar::<f32>().unwrap();
            assert!(
                diff < 1e-4,
                "{padding:?}: rollout {row}'s logits differ by {diff}"
            );
        }
    }
}
