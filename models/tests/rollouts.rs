//! Rollouts of uneven lengths as one padded batch: every position checked by hand, both
//! paddings, both layer axes, a row for the last token ignored; and on a real model, the
//! replayed batch routes every token as its rollout recorded.

mod rollouts_shared;

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use patch_core::PatchSet;
use patchwork_models::rollouts::{Padding, Rollout, RolloutBatch};
use patchwork_models::{AutoModelForCausalLM, ForwardOptions, GenerationConfig, LoadOptions};
use rollouts_shared::{F, X, config, fixture, grid, rollouts, rows};

#[test]
fn right_padding_lines_up_every_position() {
    let b = RolloutBatch::from_rollouts(&rollouts(), &config(), Padding::Right, None).unwrap();
    // Padding holds the first eos token (2): the config has no pad token.
    let ids = [
        [10, 11, 12, 13, 14],
        [20, 21, 22, 2, 2],
        [30, 31, 32, 2, 2],
        [40, 41, 2, 2, 2],
    ];
    assert_eq!(rows(&b.input_ids), ids);
    let mask = [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0],
    ];
    assert_eq!(rows(&b.attention_mask), mask);
    // Labels: the token on completion positions, unshifted; -100 on prompts and padding.
    let labels = [
        [X, X, X, 13, 14],
        [X, 21, 22, X, X],
        [X, X, 32, X, X],
        [X; 5],
    ];
    assert_eq!(rows(&b.labels), labels);
    assert_eq!(b.forced_experts.keys().copied().collect::<Vec<_>>(), [0, 2]);
    // Row b * 5 + t is column t of row b; -1 on each rollout's last token and on padding.
    assert_eq!(b.forced_experts[&0].dims(), [20, 2]);
    let layer0 = [
        [[0, 7], [1, 6], [2, 5], [3, 4], F],
        [[5, 6], [6, 7], F, F, F],
        [[1, 2], [2, 3], F, F, F],
        [F; 5],
    ];
    assert_eq!(grid(&b.forced_experts[&0], 5), layer0);
    let layer2 = [
        [[1, 6], [2, 5], [3, 4], [4, 3], F],
        [[7, 0], [0, 1], F, F, F],
        [[3, 4], [4, 5], F, F, F],
        [F; 5],
    ];
    assert_eq!(grid(&b.forced_experts[&2], 5), layer2);
    assert_eq!(b.starts, [0; 4]);
    assert_eq!(
        (b.lengths.clone(), b.prompt_lens.clone()),
        (vec![5, 3, 3, 2], vec![3, 1, 2, 2])
    );
    let names: Vec<String> = b.to_tensors().into_keys().collect();
    let want = [
        "attention_mask",
        "input_ids",
        "labels",
        "selected_experts.0",
        "selected_experts.2",
    ];
    assert_eq!(names, want);
}

#[test]
fn left_padding_lines_up_every_position() {
    let b = RolloutBatch::from_rollouts(&rollouts(), &config(), Padding::Left, Some(255)).unwrap();
    assert_eq!(b.starts, [0, 2, 2, 3]);
    let p = 255;
    let ids = [
        [10, 11, 12, 13, 14],
        [p, p, 20, 21, 22],
        [p, p, 30, 31, 32],
        [p, p, p, 40, 41],
    ];
    assert_eq!(rows(&b.input_ids), ids);
    let mask = [
        [1, 1, 1, 1, 1],
        [0, 0, 1, 1, 1],
        [0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1],
    ];
    assert_eq!(rows(&b.attention_mask), mask);
    let labels = [
        [X, X, X, 13, 14],
        [X, X, X, 21, 22],
        [X, X, X, X, 32],
        [X; 5],
    ];
    assert_eq!(rows(&b.labels), labels);
    let layer0 = [
        [[0, 7], [1, 6], [2, 5], [3, 4], F],
        [F, F, [5, 6], [6, 7], F],
        [F, F, [1, 2], [2, 3], F],
        [F; 5],
    ];
    assert_eq!(grid(&b.forced_experts[&0], 5), layer0);
    let layer2 = [
        [[1, 6], [2, 5], [3, 4], [4, 3], F],
        [F, F, [7, 0], [0, 1], F],
        [F, F, [3, 4], [4, 5], F],
        [F; 5],
    ];
    assert_eq!(grid(&b.forced_experts[&2], 5), layer2);
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
