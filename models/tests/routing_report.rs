//! The rollout-vs-trainer routing report on the MoE fixtures, with routings made to differ
//! from the trainer's own in known tokens and layers: the counts, overlaps, shares and which
//! labels' distributions move are checked exactly, with both paddings.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use patch_core::PatchSet;
use patchwork_models::rollouts::{Padding, Rollout, RolloutBatch, RoutingReport, routing_report};
use patchwork_models::routing::moe_layers;
use patchwork_models::{AutoModelForCausalLM, CausalLM, ForwardOptions, LoadOptions};

fn load(name: &str) -> CausalLM {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name);
    AutoModelForCausalLM::from_pretrained(
        dir,
        &LoadOptions::default().with_patches(PatchSet::empty()),
    )
    .unwrap()
}

/// The two rollouts: 3 + 3 and 2 + 2 tokens.
const SEQUENCES: [(&[u32], &[u32]); 2] = [(&[1, 17, 42], &[99, 7, 23]), (&[5, 9], &[77, 31])];

/// The trainer's own routing of `tokens` run alone: `[len][moe layer ordinal][k]`.
fn own_routing(model: &CausalLM, tokens: &[u32]) -> Vec<Vec<Vec<i64>>> {
    let input = Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let options = ForwardOptions {
        output_router_logits: Some(true),
        ..ForwardOptions::default()
    };
    let out = model.forward_with(&input, None, None, &options).unwrap();
    let per_layer: Vec<Vec<Vec<i64>>> = out
        .router_logits
        .iter()
        .map(|r| {
            r.router
                .indices
                .to_dtype(DType::I64)
                .unwrap()
                .to_vec2()
                .unwrap()
        })
        .collect();
    (0..tokens.len())
        .map(|t| per_layer.iter().map(|l| l[t].clone()).collect())
        .collect()
}

/// The first `n` experts not in `set`.
fn others(set: &[i64], n: usize) -> Vec<i64> {
    (0..).filter(|e| !set.contains(e)).take(n).collect()
}

/// The rollouts with vLLM's routing (every token but the last) taken from the trainer's own,
/// changed when `change`: MoE layer ordinal 0 (`A`) at rollout 0 position 3 wholly; `A` and
/// ordinal 1 (`B`) at rollout 0 position 4 wholly; `B` at rollout 1 position 1 in its last
/// slot only; `A` at rollout 1 position 0 left unrecorded (-1).
fn rollouts(model: &CausalLM, change: bool) -> Vec<Rollout> {
    let k = model.config().moe().unwrap().num_experts_per_tok;
    SEQUENCES
        .iter()
        .enumerate()
        .map(|(i, (prompt, completion))| {
            let tokens: Vec<u32> = prompt.iter().chain(*completion).copied().collect();
            let mut routing = own_routing(model, &tokens);
            routing.pop();
            if change {
                let mut whole = |t: usize, l: usize| routing[t][l] = others(&routing[t][l], k);
                if i == 0 {
                    whole(3, 0);
                    whole(4, 0);
                    whole(4, 1);
                } else {
                    routing[1][1][k - 1] = others(&routing[1][1], 1)[0];
                    routing[0][0] = vec![-1; k];
                }
            }
            let (len, layers) = (routing.len(), routing[0].len());
            let flat: Vec<i64> = routing.into_iter().flatten().flatten().collect();
            let routed = Tensor::from_vec(flat, (len, layers, k), &Device::Cpu).unwrap();
            Rollout::new(prompt, completion).with_routed_experts(routed)
        })
        .collect()
}

fn report(model: &CausalLM, change: bool, padding: Padding) -> (RolloutBatch, RoutingReport) {
    let batch =
        RolloutBatch::from_rollouts(&rollouts(model, change), model.config(), padding, None)
            .unwrap();
    let report = batch.routing_report(model).unwrap();
    (batch, report)
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-12)
}

#[test]
fn the_trainers_own_routing_agrees_everywhere_and_changes_nothing() {
    for name in ["qwen2-moe-tiny", "qwen3-moe-tiny"] {
        let model = load(name);
        let (batch, r) = report(&model, false, Padding::Right);
        let s = &r.summary;
        // Compared: every token but each rollout's last (5 + 3), in both MoE layers.
        assert_eq!((s.tokens_compared, s.tokens_differing), (8, 0), "{name}");
        assert_eq!(
            (s.decisions_compared, s.decisions_differing),
            (16, 0),
            "{name}"
        );
        assert!(
            close(s.share_tokens_differing, 0.0) && close(s.mean_overlap, 1.0),
            "{name}"
        );
        assert!(s.worst_layers.is_empty(), "{name}");
        for l in &r.layers {
            assert_eq!((l.tokens, l.identical), (8, 8), "{name}");
            assert!(close(l.share_identical, 1.0), "{name}");
        }
        // Labels: the completions, 3 + 2; replaying the trainer's own routing moves nothing.
        assert_eq!(s.labels, 5, "{name}");
        for l in &r.labels {
            assert!(l.free.is_finite() && l.free < 0.0, "{name}: {l:?}");
            assert!(
                l.kl.abs() < 1e-9 && l.difference.abs() < 1e-9,
                "{name}: {l:?}"
            );
        }
        // The free log-probabilities are the loss's: -mean(free) is the cross-entropy.
        let logits = model
            .forward(&batch.input_ids, Some(&batch.attention_mask))
            .unwrap();
        let ce = patchwork_models::loss::causal_lm_loss(&logits, &batch.labels).unwrap();
        let ce = ce.to_scalar::<f32>().unwrap() as f64;
        let mean = -r.labels.iter().map(|l| l.free).sum::<f64>() / r.labels.len() as f64;
        assert!(
            (ce - mean).abs() < 1e-5 * ce.abs().max(1.0),
            "{name}: {ce} vs {mean}"
        );
    }
}

#[test]
fn routings_changed_in_known_places_give_exactly_those_counts() {
    for name in ["qwen2-moe-tiny", "qwen3-moe-tiny"] {
        let model = load(name);
        let k = model.config().moe().unwrap().num_experts_per_tok as f64;
        let [a, b] = moe_layers(model.config())[..] else {
            panic!("{name}: two MoE layers")
        };
        let mut seen = Vec::new();
        for padding in [Padding::Right, Padding::Left] {
            let (batch, r) = report(&model, true, padding);
            let what = format!("{name} {padding:?}");
            let (la, lb) = (&r.layers[0], &r.layers[1]);
            // A: 7 tokens compared (one unrecorded), 2 changed wholly.
            assert_eq!((la.layer, la.tokens, la.identical), (a, 7, 5), "{what}");
            assert!(
                close(la.share_identical, 5.0 / 7.0) && close(la.mean_overlap, 5.0 / 7.0),
                "{what}"
            );
            // B: 8 tokens, one changed wholly, one in one slot.
            assert_eq!((lb.layer, lb.tokens, lb.identical), (b, 8, 6), "{what}");
            let overlap_b = (6.0 + (k - 1.0) / k) / 8.0;
            assert!(
                close(lb.share_identical, 0.75) && close(lb.mean_overlap, overlap_b),
                "{what}"
            );
            let s = &r.summary;
            assert_eq!((s.tokens_compared, s.tokens_differing), (8, 3), "{what}");
            assert_eq!(
                (s.decisions_compared, s.decisions_differing),
                (15, 4),
                "{what}"
            );
            assert!(close(s.share_decisions_differing, 4.0 / 15.0), "{what}");
            assert!(
                close(s.mean_overlap, (5.0 + 6.0 + (k - 1.0) / k) / 15.0),
                "{what}"
            );
            assert_eq!(s.worst_layers, [a, b], "{what}");
            // Per token (column = the row's start + position).
            let col = |row: usize, t: usize| batch.starts[row] + t;
            let differing: Vec<(usize, usize, usize, Vec<usize>)> = r
                .tokens
                .iter()
                .map(|t| {
                    (
                        t.row,
                        t.position,
                        t.layers_compared,
                        t.differing_layers.clone(),
                    )
                })
                .collect();
            let want = vec![
                (0, col(0, 0), 2, vec![]),
                (0, col(0, 1), 2, vec![]),
                (0, col(0, 2), 2, vec![]),
                (0, col(0, 3), 2, vec![a]),
                (0, col(0, 4), 2, vec![a, b]),
                (1, col(1, 0), 1, vec![]),
                (1, col(1, 1), 2, vec![b]),
                (1, col(1, 2), 2, vec![]),
            ];
            assert_eq!(differing, want, "{what}");
            // Labels: rollout 0 at 3 (predicted at 2, before any change: unmoved), 4 and 5
            // (predicted at changed tokens); rollout 1 at 2 (predicted at its changed token 1).
            let at = |row: usize, t: usize| {
                r.labels
                    .iter()
                    .find(|l| l.row == row && l.position == col(row, t))
                    .unwrap()
            };
            assert!(
                at(0, 3).kl.abs() < 1e-9 && at(0, 3).difference.abs() < 1e-6,
                "{what}"
            );
            for (row, t) in [(0, 4), (0, 5), (1, 2)] {
                let l = at(row, t);
                assert!(l.kl > 1e-7 && l.kl.is_finite(), "{what}: {l:?}");
                assert!(
                    (l.difference - (l.replayed - l.free)).abs() < 1e-12,
                    "{what}"
                );
            }
            seen.push(
                r.labels
                    .iter()
                    .map(|l| (l.free, l.replayed))
                    .collect::<Vec<_>>(),
            );
        }
        // Left or right padding: the same figures.
        for (x, y) in seen[0].iter().zip(&seen[1]) {
            assert!(
                (x.0 - y.0).abs() < 1e-4 && (x.1 - y.1).abs() < 1e-4,
                "{name}: {x:?} {y:?}"
            );
        }
    }
}

#[test]
fn the_report_serialises_and_refuses_what_it_cannot_compare() {
    let model = load("qwen3-moe-tiny");
    let (batch, r) = report(&model, true, Padding::Right);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["summary"]["decisions_differing"], 4);
    assert_eq!(json["layers"][0]["identical"], 5);
    assert_eq!(
        json["tokens"][4]["differing_layers"],
        serde_json::json!([0, 1])
    );
    assert!(
        json["summary"]["kl"]
            .as_str()
            .unwrap()
            .starts_with("KL(replayed || free)")
    );
    assert!(
        json["labels"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["kl"].is_f64())
    );
    let text = r.to_string();
    assert!(
        text.contains("tokens differing in some layer: 3 of 8 (37.5%)"),
        "{text}"
    );
    assert!(
        text.contains("router decisions differing: 4 of 15 (26.7%)"),
        "{text}"
    );
    assert!(text.contains("worst layers: 0 (71.4% identical"), "{text}");
    // Nothing to compare, or a routing of the wrong shape.
    let none = Default::default();
    let err = routing_report(&model, &batch.input_ids, None, None, &none).unwrap_err();
    assert!(err.to_string().contains("no routing to compare"), "{err}");
    let mut wrong = batch.forced_experts.clone();
    wrong.insert(2, wrong[&0].clone());
    let err = routing_report(&model, &batch.input_ids, None, None, &wrong).unwrap_err();
    assert!(
        err.to_string().contains("layer 2 is not an MoE layer"),
        "{err}"
    );
    // Without labels, every real token after a real one is scored: 5 + 3.
    let r = routing_report(
        &model,
        &batch.input_ids,
        Some(&batch.attention_mask),
        None,
        &batch.forced_experts,
    )
    .unwrap();
    assert_eq!(r.summary.labels, 8);
}
